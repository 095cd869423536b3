"""Building FCM HTTP v1 messages: pure functions over values, no I/O.

:func:`build_push` turns typed inputs into an :class:`~pushd.model.FcmPush` whose
``fields`` are the JSON members of the v1 ``message`` object except ``token``, encoded
once per notification.  :func:`body_for` splices one token in front of them, so a
fan-out to many devices serialises the message once and each request costs a few byte
concatenations.  Splicing means the token is written into JSON without an encoder, which
is only safe because :func:`body_for` refuses any token outside a conservative
character set (no quote, backslash, control or non-ASCII character can get through).

Everything FCM would refuse with ``400 INVALID_ARGUMENT`` that we can see locally is
refused here with :class:`InvalidMessage`, naming the field (never its value): sending it
would only cost a request, count against the project's quota (4xx answers count) and
come back as ``Failed``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from pushd import jsonutil
from pushd.model import FcmPush

#: FCM's limit on a message's payload: the data keys and values (and a notification's
#: fields), in UTF-8 bytes (protocol notes §2.2).  Topic messages have 2048; pushd only
#: sends to tokens.
PAYLOAD_LIMIT: Final = 4096
#: APNs' own payload limit applies to the ``apns.payload`` FCM forwards to iOS devices.
APNS_PAYLOAD_LIMIT: Final = 4096
#: ``android.ttl`` range FCM accepts, in seconds (0 up to 28 days).
MAX_TTL: Final = 28 * 24 * 3600
#: Data keys FCM (and its client SDKs, which consume them) reserve; see RESERVED_PREFIXES.
RESERVED_KEYS: Final = frozenset({"from", "message_type", "collapse_key"})
#: Data key prefixes FCM reserves for its own use.
RESERVED_PREFIXES: Final = ("google", "gcm")
#: FCM's pattern for ``fcm_options.analytics_label``.
_ANALYTICS_LABEL_RE: Final = re.compile(r"[a-zA-Z0-9\-_.~%]{1,50}")
#: Characters accepted in a registration token.  Today's tokens are an instance id, a
#: colon and a base64url string; the set also admits ``.``, ``+``, ``/`` and ``=`` so a
#: future format is not declared dead by us.  None of these needs escaping in JSON.
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_\-:.+/=]{1,4096}")
#: ``android.priority`` on the wire: the v1 API's enum names.
_PRIORITIES: Final = {"normal": "NORMAL", "high": "HIGH"}

Priority = Literal["normal", "high"]


class InvalidMessage(ValueError):
    """FCM would refuse this message; the text names the field (never its value)."""


class InvalidToken(ValueError):
    """The token cannot be a registration token (and must not be spliced into JSON)."""


@attrs.frozen
class Notification:
    """The v1 ``notification`` object: what the FCM SDK shows by itself."""

    title: str | None = None
    body: str | None = None
    #: An https URL of an image to show with the notification.
    image: str | None = None


@attrs.frozen
class AndroidOptions:
    """The parts of the v1 ``android`` object a chat gateway sets."""

    #: ``high`` wakes a dozing device; FCM may demote high-priority messages that show
    #: nothing to the user.
    priority: Priority | None = None
    #: Seconds FCM keeps the message for an offline device (0 = now or never).
    ttl: int | None = None
    #: Messages with the same key replace each other while undelivered.
    collapse_key: str | None = None
    restricted_package_name: str | None = None


@attrs.frozen(hash=False)
class ApnsOptions:
    """The v1 ``apns`` object, for iOS devices reached through FCM: APNs headers and payload."""

    headers: Mapping[str, str] = attrs.field(factory=dict)
    payload: Mapping[str, Any] | None = None


def _text(field: str, value: object) -> bytes:
    """``value`` as UTF-8, or :class:`InvalidMessage` naming ``field``."""
    if not isinstance(value, str):
        raise InvalidMessage(f"{field}: must be a string, not {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not representable in a JSON body
        raise InvalidMessage(f"{field}: not valid Unicode") from None


def _key_label(key: str) -> str:
    """A data key fit for an error message: keys are names, but keep it short."""
    return repr(key[:40] + ("…" if len(key) > 40 else ""))


def check_data(data: Mapping[str, str]) -> int:
    """Check the ``data`` map; return its payload size (keys plus values, UTF-8 bytes)."""
    size = 0
    for key, value in data.items():
        encoded_key = _text("data key", key)
        if not key:
            raise InvalidMessage("data: empty key")
        lowered = key.lower()
        if lowered in RESERVED_KEYS or lowered.startswith(RESERVED_PREFIXES):
            raise InvalidMessage(f"data: key {_key_label(key)} is reserved by FCM")
        size += len(encoded_key) + len(_text(f"data[{_key_label(key)}]", value))
    return size


def payload_size(data: Mapping[str, str] | None, notification: Notification | None) -> int:
    """The size FCM's 4096-byte limit applies to: data keys and values plus the
    notification's field names and values, in UTF-8 bytes."""
    size = check_data(data) if data else 0
    if notification is not None:
        for name in ("title", "body", "image"):
            value = getattr(notification, name)
            if value is not None:
                size += len(name) + len(_text(f"notification.{name}", value))
    return size


def _android(options: AndroidOptions) -> dict[str, Any]:
    android: dict[str, Any] = {}
    if options.priority is not None:
        if options.priority not in _PRIORITIES:
            raise InvalidMessage('android.priority: must be "normal" or "high"')
        android["priority"] = _PRIORITIES[options.priority]
    ttl = options.ttl
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise InvalidMessage("android.ttl: must be an integer number of seconds")
        if not 0 <= ttl <= MAX_TTL:
            raise InvalidMessage(f"android.ttl: must be between 0 and {MAX_TTL} seconds")
        android["ttl"] = f"{ttl}s"
    if options.collapse_key is not None:
        _text("android.collapse_key", options.collapse_key)
        android["collapse_key"] = options.collapse_key
    if options.restricted_package_name is not None:
        _text("android.restricted_package_name", options.restricted_package_name)
        android["restricted_package_name"] = options.restricted_package_name
    return android


def _apns(options: ApnsOptions) -> dict[str, Any]:
    apns: dict[str, Any] = {}
    if options.headers:
        for name, value in options.headers.items():
            _text("apns.headers key", name)
            _text(f"apns.headers[{_key_label(name)}]", value)
        apns["headers"] = dict(options.headers)
    if options.payload is not None:
        if not isinstance(options.payload, Mapping):
            raise InvalidMessage("apns.payload: must be a JSON object")
        try:
            encoded = jsonutil.dumpb(options.payload)
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            raise InvalidMessage("apns.payload: not encodable as JSON") from None
        if len(encoded) > APNS_PAYLOAD_LIMIT:
            raise InvalidMessage(
                f"apns.payload: {len(encoded)} bytes > {APNS_PAYLOAD_LIMIT} (APNs' limit)"
            )
        apns["payload"] = options.payload
    return apns


def build_push(
    *,
    data: Mapping[str, str] | None = None,
    notification: Notification | None = None,
    android: AndroidOptions | None = None,
    apns: ApnsOptions | None = None,
    analytics_label: str | None = None,
    now: float | None = None,
) -> FcmPush:
    """Build one FCM message (everything but its target) from typed inputs.

    Raises :class:`InvalidMessage` naming the field for non-string data values, reserved
    or empty data keys, a TTL outside 0..28 days, a bad analytics label, an APNs payload
    that is not JSON or too big, and a payload over :data:`PAYLOAD_LIMIT`.

    ``FcmPush.expiration`` is ``now + ttl`` (``now`` defaults to the wall clock, the one
    impure default here), 0 for a zero TTL ("now or never"), None without a TTL.
    """
    message: dict[str, Any] = {}
    size = payload_size(data, notification)
    if size > PAYLOAD_LIMIT:
        raise InvalidMessage(f"data: payload of {size} bytes > {PAYLOAD_LIMIT}")
    if data:
        message["data"] = dict(data)
    if notification is not None:
        members = attrs.asdict(notification, filter=lambda _, value: value is not None)
        if members:
            message["notification"] = members
    expiration: int | None = None
    if android is not None:
        android_members = _android(android)
        if android_members:
            message["android"] = android_members
        if android.ttl is not None:
            start = time.time() if now is None else now
            expiration = 0 if android.ttl == 0 else int(start) + android.ttl
    if apns is not None:
        apns_members = _apns(apns)
        if apns_members:
            message["apns"] = apns_members
    if analytics_label is not None:
        if not isinstance(analytics_label, str) or not _ANALYTICS_LABEL_RE.fullmatch(
            analytics_label
        ):
            raise InvalidMessage("fcm_options.analytics_label: 1 to 50 of A-Z a-z 0-9 - _ . ~ %")
        message["fcm_options"] = {"analytics_label": analytics_label}
    try:
        encoded = jsonutil.dumpb(message)
    except ValueError:  # NaN in a value the checks above let through, or a lone surrogate
        raise InvalidMessage("message: not encodable as JSON") from None
    # Strip the braces: ``fields`` are members, ready to follow the token.
    return FcmPush(fields=encoded[1:-1], expiration=expiration)


def check_token(token: str) -> None:
    """Raise :class:`InvalidToken` unless ``token`` looks like a registration token."""
    if not token:
        raise InvalidToken("token: missing")
    if _TOKEN_RE.fullmatch(token) is None:
        raise InvalidToken("token: not a valid FCM registration token")


def body_for(token: str, push: FcmPush) -> bytes:
    """The request body sending ``push`` to ``token``: ``{"message":{"token":...,fields}}``.

    The token is checked first (:func:`check_token`): it is spliced in unescaped.  The
    client answers an :class:`InvalidToken` with ``TokenDead("INVALID_ARGUMENT")`` —
    what FCM itself would answer ("not a valid FCM registration token") — or, for an
    empty token, ``Failed``: there is nothing to delete.
    """
    check_token(token)
    head = b'{"message":{"token":"' + token.encode("ascii")
    if push.fields:
        return head + b'",' + push.fields + b"}}"
    return head + b'"}}'
