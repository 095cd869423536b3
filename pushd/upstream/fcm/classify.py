"""Map one FCM HTTP v1 response to an :data:`~pushd.model.Outcome`: a pure function.

The table is the protocol notes' §2.3.  FCM's own ``errorCode`` (in a
``google.firebase.fcm.v1.FcmError`` detail) decides first; without one, the Google API
``status`` and then the HTTP status class decide, choosing the outcome that does the
least harm: nothing deletes a token unless FCM said the token is unregistered, belongs
to another project, or is not a registration token at all.  "Another project" is also
what every token hears when the app's ``project_id`` is wrong, so that verdict is marked
``mismatch`` (believed only once the app has delivered: :mod:`pushd.proof`).

``INVALID_ARGUMENT`` is the awkward one: FCM uses it both for a malformed token (which
Google's token-management guide calls stale, so we delete it) and for a payload we built
wrongly (which must fail only that message).  The two are told apart by a
``google.rpc.BadRequest`` field violation on ``message.token`` or by FCM's message about
the registration token; everything else is a payload error.
"""

from __future__ import annotations

import email.utils
import re
import time
from typing import Any, Final

import attrs

from pushd import jsonutil
from pushd.model import Delivered, Failed, Outcome, RetryLater, TokenDead

#: Floor for retrying after ``QUOTA_EXCEEDED``: Google asks for at least a minute of
#: backoff without ``Retry-After``, and a shorter header would only earn another 429.
QUOTA_RETRY_FLOOR: Final = 60.0
#: The ``@type`` of FCM's own error detail, and of the standard field-violation detail.
FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE: Final = "type.googleapis.com/google.rpc.BadRequest"
#: The field a token-format violation names.
TOKEN_FIELD: Final = "message.token"
#: A success body that is only ``{"name": "<printable ASCII, no quote or backslash>"}``
#: (JSON whitespace allowed around the tokens): the name is the text between the quotes.
_SUCCESS_BODY: Final = re.compile(
    rb"""[ \t\r\n]* \{ [ \t\r\n]* "name" [ \t\r\n]* : [ \t\r\n]*
         " ([\x20\x21\x23-\x5b\x5d-\x7e]*) " [ \t\r\n]* \} [ \t\r\n]*""",
    re.VERBOSE,
)

#: FCM error codes that retry later, honouring Retry-After.
RETRY_CODES: Final = frozenset({"UNAVAILABLE", "INTERNAL"})
#: FCM error codes (and Google statuses) that mean the app's credentials are wrong:
#: pause the app, keep the tokens.
CREDENTIAL_CODES: Final = frozenset({"PERMISSION_DENIED"})
#: Firebase refused the APNs (or web push) credentials uploaded to the project: only
#: the iOS and web tokens sent through FCM are concerned, so the message fails with
#: its token kept and the app goes on serving Android (the client raises the ALARM,
#: :mod:`pushd.upstream.fcm.alarms`).  ``APNS_AUTH_ERROR`` is the older name of
#: ``THIRD_PARTY_AUTH_ERROR``.  Code -> the outcome reported.
THIRD_PARTY_OUTCOMES: Final = {
    code: Failed(f"{code}: Firebase refused the app's APNs credentials; token kept")
    for code in ("THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR")
}
#: The reasons of :data:`THIRD_PARTY_OUTCOMES`.
THIRD_PARTY_FAILURES: Final = frozenset(outcome.reason for outcome in THIRD_PARTY_OUTCOMES.values())


def mismatch_hint(project: str) -> str:
    """What an ALARM about an app's ``SENDER_ID_MISMATCH`` asks the operator to check."""
    return (
        f"is project {project!r} the Firebase project the app registers its tokens with? "
        "check project_id and the service-account file"
    )


@attrs.frozen
class Unauthenticated:
    """Not an outcome: FCM refused our access token.  The client refreshes it and resends."""


#: The single instance :func:`classify` returns for a 401 ``UNAUTHENTICATED``.
UNAUTHENTICATED: Final = Unauthenticated()


@attrs.frozen
class FcmErrorBody:
    """What a Google API error body says; ``None`` for what is absent or malformed."""

    status: str | None = None
    message: str | None = None
    error_code: str | None = None
    #: ``fieldViolations[].field`` of any ``google.rpc.BadRequest`` detail.
    fields: tuple[str, ...] = ()


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_error(body: bytes) -> FcmErrorBody:
    """The parts of ``{"error": {...}}`` that classification needs.

    Never raises: a proxy's HTML page, a truncated body or odd types yield empty parts.
    """
    if not body:
        return FcmErrorBody()
    try:
        data = jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return FcmErrorBody()
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return FcmErrorBody()
    error_code = None
    fields: list[str] = []
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type")
        if kind == FCM_ERROR_TYPE and error_code is None:
            error_code = _str(detail.get("errorCode"))
        elif kind == BAD_REQUEST_TYPE:
            violations = detail.get("fieldViolations")
            for violation in violations if isinstance(violations, list) else ():
                field = violation.get("field") if isinstance(violation, dict) else None
                if isinstance(field, str):
                    fields.append(field)
    return FcmErrorBody(
        status=_str(error.get("status")),
        message=_str(error.get("message")),
        error_code=error_code,
        fields=tuple(fields),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or HTTP-date), or ``None``.

    An HTTP-date is measured from ``now`` (default: the wall clock); a date in the past
    means "now" (0).  Garbage, negative or infinite values are ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates: RFC 9110 dates are always GMT
            return None
        start = time.time() if now is None else now
        return max(0.0, when.timestamp() - start)
    if not seconds >= 0 or seconds == float("inf"):  # also rejects NaN
        return None
    return seconds


def _message_id(body: bytes) -> str | None:
    """``name`` of a success body (``projects/p/messages/0:15...``), or None.

    The body of nearly every answer is ``{"name": "..."}`` alone, whose name has nothing
    to unescape: :data:`_SUCCESS_BODY` reads that shape without a JSON parser (about a
    quarter of its cost); anything else, escapes included, goes through the parser.
    """
    match = _SUCCESS_BODY.fullmatch(body)
    if match is not None:
        return match.group(1).decode("ascii")
    try:
        data: Any = jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return _str(data.get("name")) if isinstance(data, dict) else None


def _is_token_error(error: FcmErrorBody) -> bool:
    if TOKEN_FIELD in error.fields:
        return True
    return error.message is not None and "registration token" in error.message.lower()


def _invalid_argument(error: FcmErrorBody) -> Outcome:
    if _is_token_error(error):
        return TokenDead("INVALID_ARGUMENT")
    # Field names help find our bug; FCM's message could quote a value, so it stays out.
    fields = ",".join(sorted(set(error.fields)))[:200]
    return Failed(f"INVALID_ARGUMENT ({fields})" if fields else "INVALID_ARGUMENT")


def _quota(retry_after: float | None) -> RetryLater:
    return RetryLater(
        "QUOTA_EXCEEDED", max(retry_after or 0.0, QUOTA_RETRY_FLOOR), kind="throttled"
    )


def classify(
    status: int, body: bytes, retry_after: str | None = None, *, now: float | None = None
) -> Outcome | Unauthenticated:
    """The outcome of one FCM ``messages:send`` response.

    ``retry_after`` is the raw ``Retry-After`` header; ``now`` the wall clock, only used
    for an HTTP-date ``Retry-After`` (pass it to keep this function pure).
    """
    if status == 200:
        return Delivered(_message_id(body))
    error = parse_error(body)
    code = error.error_code
    delay = parse_retry_after(retry_after, now)
    if code is not None:
        if code == "UNREGISTERED":
            return TokenDead(code)
        if code == "SENDER_ID_MISMATCH":
            return TokenDead(code, mismatch=True)
        if code == "QUOTA_EXCEEDED":
            return _quota(delay)
        if code == "INVALID_ARGUMENT":
            return _invalid_argument(error)
        if code in RETRY_CODES:
            return RetryLater(code, delay)
        third_party = THIRD_PARTY_OUTCOMES.get(code)
        if third_party is not None:
            return third_party
        if code in CREDENTIAL_CODES:
            return Failed(code, credential=True)

    # No FCM error code we know: the Google status, then the HTTP status class.
    google = error.status
    if status == 401:
        if google in (None, "UNAUTHENTICATED"):
            return UNAUTHENTICATED
        return Failed(code or google, credential=True)
    if status == 429 or google == "RESOURCE_EXHAUSTED":
        return _quota(delay)
    if google == "INVALID_ARGUMENT":
        return _invalid_argument(error)
    label = code or google or f"HTTP {status}"
    if status == 403 or google == "PERMISSION_DENIED":
        return Failed(label, credential=True)
    if 500 <= status <= 599 or google in ("UNAVAILABLE", "INTERNAL"):
        return RetryLater(label, delay)
    if 200 <= status <= 299:  # not an FCM status, but a success is a success
        return Delivered(_message_id(body))
    # Unknown 4xx, or a status FCM never sends (a proxy in between): this message failed.
    return Failed(label)
