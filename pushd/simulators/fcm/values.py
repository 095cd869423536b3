"""What a test scripts (:class:`FcmReply`) and what the simulator records
(:class:`FcmReceived`)."""

from __future__ import annotations

from typing import Any

import attrs

from pushd.simulators.fcm.constants import (
    CODE_OF_STATUS,
    FCM_ERROR_CODES,
    GOOGLE_STATUS,
    UNAUTHENTICATED_MESSAGE,
)
from pushd.simulators.script import Action, check_action


@attrs.frozen
class FcmReply:
    """What the simulator does with one send (or token request), scripted by a test.

    ``error_code`` is an FcmError code (:data:`FCM_ERROR_CODES`); with the default
    ``status`` of 200 it means that code's usual status (``UNREGISTERED`` → 404), so
    ``FcmReply(error_code="UNREGISTERED")`` is enough.  A status alone gets the code FCM
    uses with it (404 → ``UNREGISTERED``, 503 → ``UNAVAILABLE``, ...), except 401 and 403,
    which then come without an FcmError detail, as Google's access-token and IAM
    rejections do.  ``google_status`` defaults to the status's ``google.rpc`` name and
    ``message`` to Google's text.  ``retry_after`` adds a ``Retry-After`` header
    (seconds).  ``delay`` seconds pass before the answer, without holding other requests.
    ``action="drop"`` resets the TCP connection the request came on (every stream on it
    stays unanswered), as a crashed front end would; ``action="goaway"`` sends that
    connection GOAWAY (debug data ``message`` or ``Shutdown``) whose last stream id lies
    below every unanswered stream, and closes it, as a front end being drained does.

    A plain 200 reply does not skip validation: the message must still be valid.  On the
    token endpoint only ``status``, ``message`` (``error_description``), ``retry_after``,
    ``delay`` and ``action`` matter.
    """

    status: int = attrs.field(default=200)
    error_code: str | None = attrs.field(default=None)
    google_status: str | None = None
    message: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    action: Action = attrs.field(default="reply", validator=check_action)

    @error_code.validator
    def _check_code(self, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and value not in FCM_ERROR_CODES:
            raise ValueError(f"error_code must be one of {sorted(FCM_ERROR_CODES)}, not {value!r}")

    @status.validator
    def _check_status(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if not 200 <= value <= 599:
            raise ValueError(f"status must be an HTTP status from 200 to 599, not {value}")

    def resolved(self) -> tuple[int, str | None, str, str]:
        """``(http status, FcmError code or None, google status, message)`` of an error.

        Meaningless for a success (status 200 without a code).
        """
        code = self.error_code
        if code is not None:
            code_status, google, text = FCM_ERROR_CODES[code]
            status = code_status if self.status == 200 else self.status
        else:
            status = self.status
            code = CODE_OF_STATUS.get(status)
            if code is not None:
                _, google, text = FCM_ERROR_CODES[code]
            elif status == 401:
                google, text = "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE
            else:
                google = GOOGLE_STATUS.get(status, "UNKNOWN")
                text = "The caller does not have permission" if status == 403 else google
        return status, code, self.google_status or google, self.message or text

    @property
    def is_success(self) -> bool:
        return self.status == 200 and self.error_code is None and self.action == "reply"


SUCCESS = FcmReply()


@attrs.frozen
class FcmReceived:
    """One send that got an answer, as the simulator understood it.

    ``message`` is the parsed ``message`` object (empty if the body was not JSON or had
    none); ``token`` is its registration token, or ``None`` for a topic or condition
    message (then ``message["topic"]`` says which).  ``error_code`` is the FcmError code
    answered, or the ``google.rpc`` status for an error without one (``UNAUTHENTICATED``,
    ``PERMISSION_DENIED``).  ``size`` is :func:`payload_size` of the message.  ``at`` is
    UNIX time.
    """

    project_id: str
    token: str | None
    message: dict[str, Any] = attrs.field(repr=False)
    status: int
    error_code: str | None
    at: float
    validate_only: bool = False
    size: int = 0
