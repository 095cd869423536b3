"""Zulip's wire conventions, as an unmodified Zulip server expects them (no I/O).

A Zulip server treats anything but ``200`` + JSON as failure, reads ``code`` from every
4xx body to decide what to do (turn push notifications off, e-mail its admins, show the
user an error), and sends some endpoints form-encoded, others as JSON.  Everything here
reproduces that exactly; see ``/work/shared/protocols/zulip.md`` §1.
"""

from __future__ import annotations

import re
import uuid as uuid_module
from collections.abc import Mapping
from typing import Any, Final, TypeGuard
from urllib.parse import parse_qsl, urlsplit

from pushd import jsonutil
from pushd.config import ZULIP_KIND_APNS, ZULIP_KIND_FCM
from pushd.frontends.http import Reply, has_lone_surrogate, json_reply
from pushd.frontends.ratelimit import FixedWindowLimiter

#: ``RemotePushDeviceToken.APNS`` / ``.FCM`` (the old name GCM is also 2).
KIND_APNS = ZULIP_KIND_APNS
KIND_FCM = ZULIP_KIND_FCM
TOKEN_KINDS = frozenset({KIND_APNS, KIND_FCM})
#: Longest device token Zulip accepts (``validate_token``).
MAX_TOKEN_LENGTH = 4096
#: ``ApnsAppId`` in Zulip's ``typed_endpoint``.
IOS_APP_ID_RE = re.compile(r"[.a-zA-Z0-9-]+")
#: Exact lengths of ``zulip_org_id`` (a UUID) and ``zulip_org_key``.
ORG_ID_LENGTH = 36
ORG_KEY_LENGTH = 64
MAX_HOSTNAME_LENGTH = 128
_HOST_LABEL_RE = re.compile(r"(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")
#: An address part: no ``@``, no space and no control character (``\s`` leaves NUL and
#: most C0 and C1 codes in, which PostgreSQL or a log line cannot take).
_EMAIL_PART = r"[^@\s\x00-\x1f\x7f-\x9f]+"
_EMAIL_RE = re.compile(rf"{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")
#: Integers pushd stores are signed 64-bit (SQLite's INTEGER, PostgreSQL's bigint), as
#: Zulip's own are: a larger one fails in the store (a 500 after part of the request ran),
#: so it is refused at the door.  Python's JSON reads integers of thousands of digits.
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
#: C0 and C1 control characters (NUL among them) and the Unicode line and paragraph
#: separators: no identifier or token of Zulip's holds one, PostgreSQL refuses NUL in
#: text, and a line break written into a log line forges the lines after it.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Zulip's rate-limit window (``api_by_remote_server``: 1000 requests in 60 s).
RATE_WINDOW_SECONDS = 60.0


class ZulipError(Exception):
    """A request Zulip's bouncer would refuse; becomes ``{"result":"error",...}``."""

    def __init__(
        self,
        status: int,
        code: str,
        msg: str,
        data: Mapping[str, Any] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.data = dict(data or {})
        self.headers = headers

    def reply(self) -> Reply:
        body = {"result": "error", "msg": self.msg, "code": self.code, **self.data}
        return json_reply(self.status, body, self.headers)


def bad_request(msg: str, **data: Any) -> ZulipError:
    return ZulipError(400, "BAD_REQUEST", msg, data)


def unauthorized(msg: str) -> ZulipError:
    """Zulip's ``UnauthorizedError``: 401, with the Basic challenge Django sends."""
    return ZulipError(
        401, "UNAUTHORIZED", msg, headers=(("www-authenticate", 'Basic realm="zulip"'),)
    )


def success(**data: Any) -> Reply:
    return json_reply(200, {"result": "success", "msg": "", **data})


# --- bodies -----------------------------------------------------------------------------


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; the last value of a repeated key."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("Malformed request body: not UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Malformed request body") from None
    return dict(pairs)


def parse_json_body(body: bytes) -> dict[str, Any]:
    """A JSON object body (``JsonBodyPayload``); anything else is a 400.

    UTF-8 only, as Zulip's own parser (orjson) reads it: the lone-surrogate check looks
    for the escape in UTF-8 bytes, and a UTF-16 body would carry one past it.
    """
    try:
        value = jsonutil.loads((body or b"{}").decode("utf-8"))
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, NaN, Infinity
        raise bad_request("Malformed JSON") from None
    if not isinstance(value, dict):
        raise bad_request("Malformed payload")
    if has_lone_surrogate(body, value):
        raise bad_request("Malformed JSON")
    return value


def ignored(form: Mapping[str, str], used: frozenset[str]) -> dict[str, Any]:
    """Zulip's ``ignored_parameters_unsupported``, present only when there are any."""
    extra = sorted(set(form) - used)
    return {"ignored_parameters_unsupported": extra} if extra else {}


def required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise ZulipError(
            400, "REQUEST_VARIABLE_MISSING", f"Missing '{name}' argument", {"var_name": name}
        )
    return value


def is_int64(value: object) -> TypeGuard[int]:
    """A JSON integer (not a boolean) the store can keep: see :data:`INT64_MAX`."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
    )


def has_control(value: str) -> bool:
    """Whether ``value`` holds a control character or a line separator."""
    return _CONTROL_RE.search(value) is not None


def check_text(value: str | None, name: str) -> str | None:
    """A caller's identifier (``user_uuid``, ``realm_uuid``) fit for the store and a log
    line; a 400 naming the field if it holds a control character."""
    if value is not None and has_control(value):
        raise bad_request(f"Invalid {name}")
    return value


def json_int(form: Mapping[str, str], name: str) -> int | None:
    """A ``Json[int]`` form field: the decimal string of a 64-bit integer."""
    raw = form.get(name)
    if raw is None:
        return None
    try:
        value = jsonutil.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request(f"{name} is not valid JSON") from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"{name} is not an integer")
    if not is_int64(value):
        raise bad_request(f"{name} is out of range")
    return value


def is_uuid(value: str) -> bool:
    try:
        return str(uuid_module.UUID(value)) == value.lower()
    except ValueError:
        return False


def check_token(token: str, kind: int) -> str:
    """Zulip's ``validate_token``; the stored form (APNs tokens in lower case)."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise bad_request("Empty or invalid length token")
    if kind == KIND_APNS:
        if _HEX_RE.fullmatch(token) is None:  # Zulip: bytes.fromhex(token) fails
            raise bad_request("Invalid APNS token")
        return token.lower()
    if has_control(token):  # FCM's are base64url and ':'; PostgreSQL refuses NUL
        raise bad_request("Invalid FCM token")
    return token


def check_kind(kind: int | None) -> int:
    if kind not in TOKEN_KINDS:
        raise bad_request("Invalid token type")
    assert kind is not None
    return kind


def check_hostname(hostname: str) -> str:
    """Zulip's hostname check: ``host[:port]``, nothing else, at most 128 characters."""
    if len(hostname) > MAX_HOSTNAME_LENGTH:
        raise bad_request(f"{hostname} is not a valid hostname")
    try:
        parts = urlsplit("http://" + hostname)
        port = parts.port
    except ValueError:
        raise bad_request(f"{hostname} is not a valid hostname") from None
    if parts.path or parts.query or parts.fragment:
        raise bad_request(f"{hostname} contains invalid components (e.g., path, query, fragment).")
    host = parts.hostname or ""
    if parts.username is not None or port == 0 or not host:
        raise bad_request(f"{hostname} is not a valid hostname")
    labels = host.removesuffix(".").split(".")  # one root dot, as DNS (and Django) allow
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels) and host != "localhost":
        raise bad_request(f"{hostname} is not a valid hostname")
    return hostname


def check_email(email: str) -> str:
    if _EMAIL_RE.fullmatch(email) is None:
        reason = "Enter a valid email address."
        raise bad_request(
            f"Invalid server administrator email address: {reason}", email_reason=reason
        )
    return email


# --- rate limit -------------------------------------------------------------------------


#: Zulip's per-server limit counts in pushd's shared fixed windows of
#: :data:`RATE_WINDOW_SECONDS`, not in Zulip's sliding one: a window is two numbers, which
#: several pushd instances can share in a database.  A server can thus burst up to twice
#: the limit across a window's end, harmless for a guard against runaway loops.
RateLimiter = FixedWindowLimiter


def rate_limited(retry_after: float) -> ZulipError:
    """Zulip's ``RateLimitedError`` body and ``Retry-After`` header."""
    return ZulipError(
        429,
        "RATE_LIMIT_HIT",
        "API usage exceeded rate limit",
        {"retry-after": retry_after},
        headers=(("retry-after", str(retry_after)),),
    )
