"""An FCM HTTP v1 look-alike: Google's OAuth token endpoint and the send endpoint.

Like :mod:`pushd.simulators.apns` it serves pushd's tests (faults on demand, a record of
what arrived), benchmarks and ``pushd simulate``.  One server answers both endpoints:

- ``POST /token``: the OAuth 2 JWT-bearer grant a service account uses.  The RS256
  assertion is verified against the accounts registered with
  :meth:`FcmSimulator.add_account`, with the claim rules Google applies (``iss``,
  ``scope``, ``aud``, a lifetime of at most an hour), and a random access token comes
  back.  Tokens expire (:attr:`FcmSimulator.token_lifetime`, :meth:`expire_tokens`), so a
  client's refresh logic and its handling of 401 can be tested.
- ``POST /v1/projects/{project_id}/messages:send``: checks the bearer token, the project,
  a per-project quota, then the message the way FCM does (one target, ``data`` a map of
  strings, no reserved keys, a well-formed ``android.ttl`` and ``priority``, the size
  limit, a plausible registration token), and answers with ``{"name": ...}`` or Google's
  error body (``google.rpc.Status`` with ``FcmError``/``BadRequest``/... details).

Facts come from ``/work/shared/protocols/apns-fcm-and-peers.md`` §2 and §7; where Google
documents nothing (the text of some messages), the simulator picks something plausible
and clients must not depend on it beyond status, ``status`` and ``errorCode``.

Why hypercorn, unlike the APNs simulator: FCM's behaviour that matters to a client lives
in requests and answers, not in connection-level SETTINGS changes, and FCM is reached over
both HTTP/2 and HTTP/1.1, which hypercorn speaks.  Its defaults suit a web app, not an
upstream, so :func:`hypercorn_config` raises the idle timeout and the per-connection
request cap and advertises the 100 streams FCM is assumed to allow.  The accept loop is
ours (hypercorn's trio ``TCPServer`` per connection) so a scripted ``"drop"`` can reset
the very connection a request arrived on, and ``"goaway"`` can send that connection a
GOAWAY through hypercorn's own h2 state (the one place this module reaches past
hypercorn's public API: hypercorn has no way to close one connection gracefully).
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import parse_qsl

import attrs
import h2.exceptions
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, LifespanState

from pushd import jsonutil
from pushd.simulators.recording import Recording
from pushd.upstream.fcm.settings import OAUTH_SCOPE

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "FCM_ERROR_CODES",
    "FcmReceived",
    "FcmReply",
    "FcmSimulator",
    "configure_alpn",
    "hypercorn_config",
    "make_service_account",
    "payload_size",
]

log = logging.getLogger(__name__)

# --- Tunables --------------------------------------------------------------------------

#: ``expires_in`` of an access token, as Google answers (one second under an hour).
DEFAULT_TOKEN_LIFETIME = 3599
#: Longest ``exp - iat`` Google accepts in a JWT-bearer assertion.
ASSERTION_MAX_LIFETIME = 3600
#: Clock skew tolerated for an assertion's ``iat`` in the future.
ASSERTION_CLOCK_SKEW = 60.0
#: Streams per HTTP/2 connection; Google publishes no figure, 100 is the assumption.
MAX_CONCURRENT_STREAMS = 100
#: Idle connections are closed after this long.  hypercorn's 5 s would make a client
#: reconnect between every burst, which FCM does not do.
KEEP_ALIVE_TIMEOUT = 300.0
#: hypercorn closes a connection after 1000 requests by default; FCM does not.
KEEP_ALIVE_MAX_REQUESTS = 2**62
#: How long a TLS handshake may take before the connection is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: After a GOAWAY, how long the connection stays open for the client to read it and hang
#: up: closing at once could reset the connection before the GOAWAY is read.
CLOSE_LINGER = 1.0
#: Data + notification bytes allowed in one message, and in one topic/condition message.
MAX_PAYLOAD = 4096
MAX_TOPIC_PAYLOAD = 2048
#: Longest ``android.ttl``: 28 days.
MAX_TTL_SECONDS = 2_419_200
#: Request bodies beyond this are refused before parsing (Google's API front end limit).
MAX_REQUEST_BODY = 1024 * 1024
#: Issued access tokens kept before expired ones are swept.
GRANT_SWEEP_THRESHOLD = 4096
#: Size of the RSA keys :func:`make_service_account` makes (Google's is 2048 too).
SERVICE_ACCOUNT_KEY_BITS = 2048

#: A plausible FCM registration token.  Real ones are ~150 characters of base64url with a
#: colon (``<instance id>:APA91b...``); 20 keeps test tokens short.
REGISTRATION_TOKEN_RE = re.compile(r"[A-Za-z0-9_:\-]{20,4096}")
#: ``google.protobuf.Duration`` in JSON: seconds with up to nine fractional digits.
TTL_RE = re.compile(r"(\d+)(\.\d{1,9})?s")
#: FCM's topic name rule, optionally with the ``/topics/`` prefix.
TOPIC_RE = re.compile(r"(/topics/)?[a-zA-Z0-9\-_.~%]{1,900}")
#: ``data`` keys FCM rejects: these exact keys, and keys starting with these prefixes.
RESERVED_DATA_KEYS = frozenset({"from", "message_type", "gcm"})
RESERVED_DATA_PREFIXES = ("google", "gcm.")

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/token"
_SEND_PATH_RE = re.compile(r"/v1/projects/([^/]+)/messages:send")

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"

#: FcmError codes: HTTP status, ``google.rpc`` status and default message of each.
FCM_ERROR_CODES: Mapping[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per "
        "minute' of service 'fcm.googleapis.com'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
}
#: The FcmError code a scripted status without ``error_code`` carries.  401 and 403 carry
#: none: alone they are the access-token and IAM rejections, not FcmErrors.
_CODE_OF_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
#: ``google.rpc.Code`` names of HTTP statuses (Google's canonical mapping).
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: OAuth ``error`` strings of token endpoint statuses (scripted replies).
_OAUTH_ERRORS = {
    400: "invalid_grant",
    401: "invalid_client",
    403: "access_denied",
    429: "rate_limit_exceeded",
    500: "internal_failure",
    503: "temporarily_unavailable",
}

_UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_MISSING_CREDENTIAL_MESSAGE = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_TIMEFRAME_MESSAGE = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
_BAD_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"

#: Fields of ``Message`` (JSON accepts the proto name and its lowerCamel form).
_MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "fcmOptions"}
    | {"token", "topic", "condition"}
)
_ANDROID_FIELDS = frozenset(
    {
        "collapse_key",
        "collapseKey",
        "priority",
        "ttl",
        "restricted_package_name",
        "restrictedPackageName",
        "data",
        "notification",
        "fcm_options",
        "fcmOptions",
        "direct_boot_ok",
        "directBootOk",
        "bandwidth_constrained_ok",
        "bandwidthConstrainedOk",
        "restricted_satellite_ok",
        "restrictedSatelliteOk",
    }
)
_NOTIFICATION_FIELDS = frozenset({"title", "body", "image"})
_PRIORITIES = frozenset({"normal", "high"})

Action = Literal["reply", "goaway", "drop"]
_ACTIONS = frozenset({"reply", "goaway", "drop"})


# --- Public values ---------------------------------------------------------------------


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
    action: Action = attrs.field(default="reply")

    @action.validator
    def _check_action(self, _attribute: attrs.Attribute[Action], value: str) -> None:
        if value not in _ACTIONS:
            raise ValueError(f"action must be one of {sorted(_ACTIONS)}, not {value!r}")

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
            code = _CODE_OF_STATUS.get(status)
            if code is not None:
                _, google, text = FCM_ERROR_CODES[code]
            elif status == 401:
                google, text = "UNAUTHENTICATED", _UNAUTHENTICATED_MESSAGE
            else:
                google = _GOOGLE_STATUS.get(status, "UNKNOWN")
                text = "The caller does not have permission" if status == 403 else google
        return status, code, self.google_status or google, self.message or text

    @property
    def is_success(self) -> bool:
        return self.status == 200 and self.error_code is None and self.action == "reply"


_SUCCESS = FcmReply()


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


# --- Service accounts and assertions ---------------------------------------------------


def make_service_account(
    path: str | os.PathLike[str],
    project_id: str,
    token_uri: str,
    client_email: str | None = None,
    *,
    key: rsa.RSAPrivateKey | None = None,
) -> rsa.RSAPrivateKey:
    """Write a service-account JSON file in Google's format; return its private key.

    ``client_email`` defaults to ``pushd-sim@<project_id>.iam.gserviceaccount.com``.
    Generating a 2048-bit RSA key takes tens of milliseconds to seconds, so tests pass a
    ``key`` made once per session.  The file is created 0600, as a secret should be.
    """
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=SERVICE_ACCOUNT_KEY_BITS)
    email = client_email or f"pushd-sim@{project_id}.iam.gserviceaccount.com"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)).rjust(21, "1"),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        + email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return key


@attrs.frozen
class _Account:
    public_key: rsa.RSAPublicKey
    projects: frozenset[str]


@attrs.frozen
class _Grant:
    """An issued access token: whose it is, where it may send, until when."""

    client_email: str
    #: Projects the token may send to; ``None`` = any (an assertion accepted unverified).
    projects: frozenset[str] | None
    expires_at: float
    epoch: int


@attrs.frozen
class _AssertionVerdict:
    """The outcome of checking an assertion: an OAuth error, or who signed it."""

    error: str | None
    description: str = ""
    client_email: str = ""


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_assertion(
    assertion: str,
    accounts: Mapping[str, _Account],
    audience: str,
    now: float,
    *,
    verify_signature: bool = True,
) -> _AssertionVerdict:
    """Check a JWT-bearer assertion the way Google's token endpoint does.

    Order: shape and ``alg``, issuer known, signature, scope, audience, timeframe.  With
    ``verify_signature`` false an unknown issuer is let through too (``pushd simulate
    --fcm-accept-any-assertion``), but every claim is still checked.
    """

    def grant_error(description: str) -> _AssertionVerdict:
        return _AssertionVerdict("invalid_grant", description)

    parts = assertion.split(".")
    if len(parts) != 3:
        return grant_error("Invalid JWT: not a compact JWS (header.claims.signature).")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        return grant_error("Invalid JWT: a part is not base64url-encoded JSON.")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return grant_error("Invalid JWT: header and claims must be JSON objects.")
    if header.get("alg") != "RS256":
        return grant_error("Invalid JWT: the signing algorithm must be RS256.")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        return _AssertionVerdict("invalid_request", "Invalid JWT: no iss claim.")
    account = accounts.get(iss)
    if account is None and verify_signature:
        return grant_error("Invalid grant: account not found")
    if verify_signature:
        assert account is not None
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
        try:
            account.public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return grant_error("Invalid JWT Signature.")
    scope = claims.get("scope")
    if not isinstance(scope, str) or not scope.strip():
        return _AssertionVerdict("invalid_scope", "Empty or missing scope not allowed.")
    if OAUTH_SCOPE not in scope.split():
        return _AssertionVerdict(
            "invalid_scope", "Invalid OAuth scope or ID token audience provided."
        )
    if claims.get("aud") != audience:
        return grant_error(
            f"Invalid JWT: Failed audience check. The expected audience is {audience}."
        )
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _is_number(iat) or not _is_number(exp):
        return grant_error(_TIMEFRAME_MESSAGE)
    iat_f, exp_f = float(cast(float, iat)), float(cast(float, exp))
    if (
        iat_f > now + ASSERTION_CLOCK_SKEW
        or exp_f <= now
        or exp_f <= iat_f
        or exp_f - iat_f > ASSERTION_MAX_LIFETIME
    ):
        return grant_error(_TIMEFRAME_MESSAGE)
    return _AssertionVerdict(None, client_email=iss)


# --- Message validation ----------------------------------------------------------------


@attrs.frozen
class _Rejection:
    """A 400 the message earned, with its ``details``."""

    message: str
    details: tuple[dict[str, Any], ...]


@attrs.frozen
class _Checked:
    """A send body as parsed, and the first fault found in it (if any)."""

    message: dict[str, Any]
    target: str | None
    token: str | None
    validate_only: bool
    size: int
    rejection: _Rejection | None


def _fcm_error(code: str) -> dict[str, Any]:
    return {"@type": FCM_ERROR_TYPE, "errorCode": code}


def _bad_request(field: str | None, description: str) -> dict[str, Any]:
    violation = (
        {"description": description}
        if field is None
        else {
            "field": field,
            "description": description,
        }
    )
    return {"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]}


def _field_error(field: str, description: str) -> _Rejection:
    """A fault of JSON-to-proto mapping: ``BadRequest`` only, as Google's front end says."""
    return _Rejection(description, (_bad_request(field, description),))


def _fcm_argument_error(field: str, message: str, description: str | None = None) -> _Rejection:
    """A fault FCM itself found: ``FcmError INVALID_ARGUMENT`` and the field."""
    return _Rejection(
        message, (_fcm_error("INVALID_ARGUMENT"), _bad_request(field, description or message))
    )


def _unknown_field(name: str, at: str | None = None) -> _Rejection:
    where = f" at '{at}'" if at else ""
    text = f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'
    return _Rejection(text, (_bad_request(None, text),))


def _dump(value: object) -> str:
    """Compact JSON of a value, for error messages and size counting."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _dumps(document: object) -> bytes:
    """A response body."""
    return json.dumps(document, separators=(",", ":")).encode()


def _check_string_map(value: object, field: str) -> _Rejection | None:
    """``map<string, string>``: a JSON object whose values are all strings."""
    if not isinstance(value, dict):
        return _field_error(
            field,
            f"Invalid value at '{field}' (type.googleapis.com/google.protobuf.Struct), "
            + _dump(value),
        )
    for index, item in enumerate(value.values()):
        if not isinstance(item, str):
            where = f"{field}[{index}].value"
            return _field_error(where, f"Invalid value at '{where}' (TYPE_STRING), {_dump(item)}")
    return None


def _check_notification(value: object, field: str) -> _Rejection | None:
    if not isinstance(value, dict):
        return _field_error(field, f"Invalid value at '{field}', {_dump(value)}")
    for key, item in value.items():
        if key not in _NOTIFICATION_FIELDS and field == "message.notification":
            return _unknown_field(str(key), field)
        if key in _NOTIFICATION_FIELDS and not isinstance(item, str):
            where = f"{field}.{key}"
            return _field_error(where, f"Invalid value at '{where}' (TYPE_STRING), {_dump(item)}")
    return None


def _reserved_key(data: Mapping[str, Any]) -> str | None:
    for key in data:
        if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
            return str(key)
    return None


def _measure_map(value: object) -> int:
    if not isinstance(value, dict):
        return 0
    size = 0
    for key, item in value.items():
        size += len(str(key).encode("utf-8", "surrogatepass"))
        text = item if isinstance(item, str) else _dump(item)
        size += len(text.encode("utf-8", "surrogatepass"))
    return size


def payload_size(message: Mapping[str, Any]) -> int:
    """The bytes FCM's size limit counts, as this simulator measures them.

    Google counts "the payload": keys plus values of the data and notification parts.
    Here: UTF-8 bytes of every key and value in ``data``, ``notification``,
    ``android.data`` and ``android.notification`` (a non-string value counts as its
    compact JSON).  ``apns`` and ``webpush`` are left out: their limits are APNs' and
    the browsers', enforced further down the line.
    """
    size = _measure_map(message.get("data")) + _measure_map(message.get("notification"))
    android = message.get("android")
    if isinstance(android, dict):
        size += _measure_map(android.get("data")) + _measure_map(android.get("notification"))
    return size


def _check_android(android: object) -> _Rejection | None:
    """Types and formats inside ``message.android``."""
    if not isinstance(android, dict):
        return _field_error(
            "message.android", f"Invalid value at 'message.android', {_dump(android)}"
        )
    for key in android:
        if key not in _ANDROID_FIELDS:
            return _unknown_field(str(key), "message.android")
    if "data" in android:
        fault = _check_string_map(android["data"], "message.android.data")
        if fault is not None:
            return fault
    if "notification" in android and not isinstance(android["notification"], dict):
        return _field_error(
            "message.android.notification",
            f"Invalid value at 'message.android.notification', {_dump(android['notification'])}",
        )
    priority = android.get("priority")
    if priority is not None and (
        not isinstance(priority, str) or priority.lower() not in _PRIORITIES
    ):
        return _field_error(
            "message.android.priority",
            "Invalid value at 'message.android.priority' "
            "(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), "
            + _dump(priority),
        )
    ttl = android.get("ttl")
    if ttl is not None:
        match = TTL_RE.fullmatch(ttl) if isinstance(ttl, str) else None
        if match is None:
            return _field_error(
                "message.android.ttl",
                "Invalid value at 'message.android.ttl' "
                f"(type.googleapis.com/google.protobuf.Duration), {_dump(ttl)}",
            )
        seconds, fraction = int(match.group(1)), match.group(2) or ""
        if seconds > MAX_TTL_SECONDS or (seconds == MAX_TTL_SECONDS and fraction.strip(".0")):
            return _fcm_argument_error(
                "message.android.ttl", f"TTL must be at most {MAX_TTL_SECONDS}s (28 days)"
            )
    return None


def _check_send_body(body: bytes) -> _Checked:
    """Parse a ``messages:send`` body and find its first fault, in FCM's order.

    JSON-to-proto faults come first (unknown fields, wrong types, bad ``ttl`` or
    ``priority``): Google's front end rejects those before FCM sees the message.  Then
    FCM's own: the target, the token's format, reserved ``data`` keys, the TTL ceiling,
    the size.  Pure, so the rules are testable without a socket.
    """
    empty: dict[str, Any] = {}

    def reject(
        fault: _Rejection,
        message: dict[str, Any] = empty,
        target: str | None = None,
        token: str | None = None,
        validate_only: bool = False,
        size: int = 0,
    ) -> _Checked:
        return _Checked(message, target, token, validate_only, size, fault)

    try:
        document = jsonutil.loads(body)  # FCM's parser takes no NaN or Infinity
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        text = f"Invalid JSON payload received. {exc}"
        return reject(_Rejection(text, (_bad_request(None, text),)))
    if not isinstance(document, dict):
        text = f"Invalid JSON payload received. Expected an object, got {type(document).__name__}."
        return reject(_Rejection(text, (_bad_request(None, text),)))
    for key in document:
        if key not in ("message", "validate_only", "validateOnly"):
            return reject(_unknown_field(str(key)))
    validate_only = document.get("validate_only", document.get("validateOnly", False))
    if not isinstance(validate_only, bool):
        return reject(
            _field_error(
                "validate_only",
                f"Invalid value at 'validate_only' (TYPE_BOOL), {_dump(validate_only)}",
            )
        )
    message = document.get("message")
    if message is None:
        return reject(
            _fcm_argument_error("message", "Recipient of the message is not set."),
            validate_only=validate_only,
        )
    if not isinstance(message, dict):
        return reject(
            _field_error("message", f"Invalid value at 'message', {_dump(message)}"),
            validate_only=validate_only,
        )
    raw_token = message.get("token")
    token = raw_token if isinstance(raw_token, str) else None
    raw_target = message.get("token", message.get("topic", message.get("condition")))
    target = raw_target if isinstance(raw_target, str) else None
    size = payload_size(message)

    def fail(fault: _Rejection) -> _Checked:
        return reject(fault, message, target, token, validate_only, size)

    for key, value in message.items():
        if key not in _MESSAGE_FIELDS:
            return fail(_unknown_field(str(key), "message"))
        if key in ("token", "topic", "condition", "name") and not isinstance(value, str):
            where = f"message.{key}"
            return fail(
                _field_error(where, f"Invalid value at '{where}' (TYPE_STRING), {_dump(value)}")
            )
        if key in ("apns", "webpush", "fcm_options", "fcmOptions") and not isinstance(value, dict):
            where = f"message.{key}"
            return fail(_field_error(where, f"Invalid value at '{where}', {_dump(value)}"))
    if "data" in message:
        fault = _check_string_map(message["data"], "message.data")
        if fault is not None:
            return fail(fault)
    if "notification" in message:
        fault = _check_notification(message["notification"], "message.notification")
        if fault is not None:
            return fail(fault)
    if "android" in message:
        fault = _check_android(message["android"])
        if fault is not None:
            return fail(fault)

    targets = [name for name in ("token", "topic", "condition") if name in message]
    if not targets:
        return fail(_fcm_argument_error("message", "Recipient of the message is not set."))
    if len(targets) > 1:
        text = (
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. "
            f"Cannot set '{targets[1]}'"
        )
        return fail(_field_error("message", text))
    if token is not None and not REGISTRATION_TOKEN_RE.fullmatch(token):
        return fail(
            _fcm_argument_error("message.token", _BAD_TOKEN_MESSAGE, "Invalid registration token")
        )
    topic = message.get("topic")
    if isinstance(topic, str) and not TOPIC_RE.fullmatch(topic):
        return fail(_fcm_argument_error("message.topic", "Invalid topic name"))
    condition = message.get("condition")
    if isinstance(condition, str) and not condition.strip():
        return fail(_fcm_argument_error("message.condition", "Invalid condition expression"))
    for field, data in (
        ("message.data", message.get("data")),
        ("message.android.data", (message.get("android") or {}).get("data")),
    ):
        if isinstance(data, dict):
            reserved = _reserved_key(data)
            if reserved is not None:
                return fail(
                    _fcm_argument_error(
                        field, f'Invalid data payload key: "{reserved}" is reserved'
                    )
                )
    limit = MAX_PAYLOAD if token is not None else MAX_TOPIC_PAYLOAD
    if size > limit:
        return fail(
            _fcm_argument_error(
                "message", f"Message is too big: {size} bytes of payload, the limit is {limit}"
            )
        )
    return _Checked(message, target, token, validate_only, size, None)


# --- Responses -------------------------------------------------------------------------


@attrs.frozen
class _Answer:
    """A response decided, not yet sent; ``record`` fields describe it for the log."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    reply: FcmReply = _SUCCESS
    error_code: str | None = None
    #: For a send: what to record once the answer goes out (``at`` is set then).
    received: FcmReceived | None = None


def google_error_body(
    code: int, status: str, message: str, details: Iterable[dict[str, Any]] = ()
) -> bytes:
    """Google's JSON error (``google.rpc.Status`` in an ``error`` member)."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    details = list(details)
    if details:
        error["details"] = details
    return _dumps({"error": error})


def _json_answer(
    status: int,
    body: bytes,
    *,
    retry_after: int | None = None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    reply: FcmReply = _SUCCESS,
    error_code: str | None = None,
) -> _Answer:
    headers = [(b"content-type", b"application/json; charset=UTF-8"), *extra]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return _Answer(status, body, tuple(headers), reply, error_code)


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": ERROR_INFO_TYPE,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {
            "service": "fcm.googleapis.com",
            "method": "google.firebase.fcm.v1.FcmService.SendMessage",
        },
    }


def _oauth_error(status: int, error: str, description: str, reply: FcmReply = _SUCCESS) -> _Answer:
    body = _dumps({"error": error, "error_description": description})
    return _json_answer(status, body, retry_after=reply.retry_after, reply=reply, error_code=error)


@attrs.define
class _Bucket:
    """A token bucket: ``capacity`` requests, refilled continuously over a minute.

    FCM's windows are not aligned to the clock, so a continuous refill is the closest
    simple model; it starts full.
    """

    capacity: float
    rate: float
    tokens: float
    #: Set on first use, so a quota can be configured before trio runs.
    updated: float | None = None

    def refill(self, now: float) -> None:
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def retry_after(self) -> int:
        """Whole seconds until one request fits (at least 1, as Google says)."""
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


# --- TLS and hypercorn -----------------------------------------------------------------


def configure_alpn(context: ssl.SSLContext) -> ssl.SSLContext:
    """Offer both HTTP/2 and HTTP/1.1 on a server ``context``, as FCM does; return it.

    :func:`pushd.simulators.certs.configure_h2` offers only ``h2`` (APNs has no HTTP/1.1);
    an FCM client may use either.
    """
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def hypercorn_config() -> HypercornConfig:
    """hypercorn settings for an upstream look-alike, not a web app (see the module doc)."""
    config = HypercornConfig()
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.h2_max_concurrent_streams = MAX_CONCURRENT_STREAMS
    config.ssl_handshake_timeout = HANDSHAKE_TIMEOUT
    config.accesslog = None  # tokens and projects stay out of logs
    config.errorlog = log
    config.include_server_header = False
    return config


class _Connection:
    """One accepted connection, so a scripted ``drop`` or ``goaway`` can end it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.dropped = False
        #: Set once GOAWAY went out: no more answers are recorded on it.
        self.closing = False
        #: Requests taken on this connection (for ``goaway_after``).
        self.taken = 0
        self.server: TCPServer | None = None

    async def goaway(self, reason: str) -> None:
        """Send GOAWAY, give the client :data:`CLOSE_LINGER` to hang up, then close.

        Every stream not yet answered lies above the GOAWAY's last stream id, so the
        client knows none of them was processed.  An HTTP/1.1 connection is just closed.
        """
        if self.closing:
            return
        self.closing = True
        wrapper = getattr(self.server, "protocol", None)
        protocol = getattr(wrapper, "protocol", None)
        if self.server is not None and isinstance(protocol, H2Protocol):
            h2conn = protocol.connection
            pending = list(protocol.streams)
            last = min(pending) - 2 if pending else h2conn.highest_inbound_stream_id
            try:
                h2conn.close_connection(
                    error_code=0, additional_data=reason.encode(), last_stream_id=max(last, 0)
                )
            except h2.exceptions.ProtocolError:
                pass  # h2 has closed the connection already (the client's GOAWAY)
            else:
                await self.server.protocol_send(RawData(data=h2conn.data_to_send()))
                await trio.sleep(CLOSE_LINGER)
        self.scope.cancel()

    def drop(self) -> None:
        """Reset the connection: RST on close, and stop hypercorn serving it."""
        self.dropped = True
        transport: object = self.stream
        while isinstance(transport, trio.SSLStream):
            transport = transport.transport_stream
        if isinstance(transport, trio.SocketStream):
            with contextlib.suppress(OSError):
                transport.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()


def _peer_key(stream: trio.abc.Stream) -> tuple[str, int] | None:
    transport: object = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    if not isinstance(transport, trio.SocketStream):
        return None
    try:
        peer = transport.socket.getpeername()
    except OSError:
        return None
    return str(peer[0]), int(peer[1])


# --- The simulator ---------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Disconnected(Exception):
    pass


class FcmSimulator(Recording[FcmReceived]):
    """FCM HTTP v1 and Google's token endpoint for tests, benchmarks and ``pushd simulate``.

    Register the test service account(s) with :meth:`add_account` (or write one with
    :func:`make_service_account`, pointing its ``token_uri`` at :attr:`token_url`), start
    :meth:`serve` in a nursery, and point a client at ``https://127.0.0.1:<port>``.
    Faults are scripted per registration token (:meth:`script`) or for every token
    (:meth:`set_default`); the token endpoint has :attr:`token_endpoint_down` and
    :meth:`script_token_endpoint`; quotas are per project (:meth:`set_quota`).  What
    arrived is in :attr:`received`; :meth:`wait_for` waits for it without polling.
    """

    def __init__(
        self,
        *,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        token_url: str | None = None,
        accept_any_assertion: bool = False,
        record: bool = True,
        on_received: Callable[[FcmReceived], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(record=record, on_received=on_received)
        if token_lifetime < 1:
            raise ValueError("token_lifetime must be at least 1 second")
        #: ``expires_in`` of issued access tokens, and how long they work.
        self.token_lifetime = token_lifetime
        #: Check assertions' claims but not their signature; unknown issuers may send
        #: to any project.
        self.accept_any_assertion = accept_any_assertion
        #: Every token request fails with 503 ``temporarily_unavailable`` while true.
        self.token_endpoint_down = False
        #: Called with connection-level and token events.
        self.log = log

        #: Requests to the token endpoint, and access tokens issued.
        self.token_requests = 0
        self.tokens_issued = 0
        #: Requests answered 429 by the quota (not scripted 429s).
        self.quota_rejections = 0
        #: Seconds every send's answer waits, on top of a scripted reply's ``delay``.
        self.answer_delay = 0.0
        #: A connection that has taken this many requests answers the next one with
        #: GOAWAY (see :class:`FcmReply`'s ``"goaway"``); None never does.
        self.goaway_after: int | None = None
        #: Connections accepted since start, and dropped by a scripted ``drop``.
        self.connections_opened = 0
        self.connections_dropped = 0
        #: GOAWAY frames sent (scripted or by ``goaway_after``).
        self.goaways_sent = 0
        #: Requests seen per HTTP version (``"2"``, ``"1.1"``).
        self.http_versions: collections.Counter[str] = collections.Counter()
        #: The bound port, once :meth:`serve` has started.
        self.port: int | None = None

        self._token_url = token_url
        self._host = "127.0.0.1"
        self._accounts: dict[str, _Account] = {}
        self._grants: dict[str, _Grant] = {}
        self._epoch = 0
        self._scripts: dict[str, collections.deque[FcmReply]] = {}
        self._token_replies: dict[str, FcmReply] = {}
        self._token_scripts: collections.deque[FcmReply] = collections.deque()
        self._default = _SUCCESS
        self._quotas: dict[str, _Bucket] = {}
        self._connections: dict[tuple[str, int], _Connection] = {}
        self._last_message_us = 0
        self._project_suffix: dict[str, str] = {}

    # -- configuration --

    def add_account(self, client_email: str, public_key: rsa.RSAPublicKey, project_id: str) -> None:
        """Trust assertions of ``client_email`` signed by ``public_key``.

        Its tokens may send to ``project_id``; calling again with another project adds
        that project (and replaces the key).
        """
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TypeError("service-account keys are RSA (RS256)")
        known = self._accounts.get(client_email)
        projects = (known.projects if known else frozenset()) | {project_id}
        self._accounts[client_email] = _Account(public_key, projects)

    def script(self, token: str, *replies: FcmReply) -> None:
        """Queue replies for ``token`` (or a topic/condition string), one per valid send.

        A send that fails validation does not use one.  Once they are used up the token
        gets its standing reply (:meth:`set_token_reply`) or else the default
        (:meth:`set_default`).
        """
        self._scripts.setdefault(token, collections.deque()).extend(replies)

    def set_token_reply(self, token: str, reply: FcmReply) -> None:
        """Answer ``token`` with ``reply`` every time its scripted replies are used up.

        A dead token stays dead: ``pushd simulate --reply`` needs a reply that does not
        wear off after one send, unlike :meth:`script`'s.
        """
        self._token_replies[token] = reply

    def set_default(self, reply: FcmReply) -> None:
        """Set the reply for tokens without scripted replies (e.g. every send 503)."""
        self._default = reply

    def script_token_endpoint(self, *replies: FcmReply) -> None:
        """Queue replies for the next token requests (e.g. ``FcmReply(status=503)``).

        A reply of plain success lets the request through to normal checking.
        """
        self._token_scripts.extend(replies)

    def clear(self) -> None:
        """Forget scripted replies (sends and token endpoint) and restore success.

        Accounts, quotas, issued tokens, :attr:`received` and counters are kept.
        """
        self._scripts.clear()
        self._token_replies.clear()
        self._token_scripts.clear()
        self._default = _SUCCESS
        self.token_endpoint_down = False

    def set_quota(self, project_id: str, per_minute: int | None) -> None:
        """Limit ``project_id`` to ``per_minute`` requests (a full bucket to start with).

        Every request that is not answered 429 or 5xx counts, client errors too, as FCM
        counts them.  ``None`` removes the limit.
        """
        if per_minute is None:
            self._quotas.pop(project_id, None)
            return
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._quotas[project_id] = _Bucket(float(per_minute), per_minute / 60.0, float(per_minute))

    def expire_tokens(self) -> None:
        """Make every access token issued so far invalid: sends get 401 until a refresh."""
        self._epoch += 1

    @property
    def token_url(self) -> str:
        """The ``aud`` assertions must carry, and a service account's ``token_uri``."""
        if self._token_url is not None:
            return self._token_url
        if self.port is None:
            raise RuntimeError("token_url is known once serve() has bound a port")
        return self.base_url + TOKEN_PATH

    @property
    def base_url(self) -> str:
        """``https://host:port`` of the send endpoint: an FCM app's ``upstream_url``.

        ``upstream_url`` moves only the send endpoint; access tokens come from the
        service account's ``token_uri``, which must name :attr:`token_url` too.
        """
        if self.port is None:
            raise RuntimeError("base_url is known once serve() has bound a port")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # -- serving --

    async def serve(
        self,
        ssl_context: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve both endpoints until cancelled.

        ``ssl_context`` decides the protocols through ALPN: see :func:`configure_alpn`
        for both HTTP/2 and HTTP/1.1.  ``None`` serves clear-text HTTP/1.1 (and h2c with
        prior knowledge), handy for a quick look with curl.  Reports the bound port
        through ``task_status`` and sets :attr:`port`.
        """
        tcp_listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = int(tcp_listeners[0].socket.getsockname()[1])
        self._host = host
        listeners: list[trio.abc.Listener[Any]] = list(tcp_listeners)
        if ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True)
                for listener in tcp_listeners
            ]
        config = hypercorn_config()
        context = WorkerContext(None)
        app = ASGIWrapper(cast(ASGIFramework, self))
        state: LifespanState = {}

        async def handle(stream: trio.abc.Stream) -> None:
            key = _peer_key(stream)
            conn = _Connection(stream)
            if key is not None:
                self._connections[key] = conn
            self.connections_opened += 1
            try:
                with conn.scope:
                    conn.server = TCPServer(app, config, context, state, cast(Any, stream))
                    await conn.server.run()
            finally:
                if key is not None and self._connections.get(key) is conn:
                    del self._connections[key]
                await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            task_status.started(self.port)

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    async def _goaway(self, conn: _Connection, reason: str) -> None:
        if not conn.closing:
            self.goaways_sent += 1
            self._log(f"GOAWAY {reason}")
        await conn.goaway(reason)

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application hypercorn runs for every request."""
        if scope["type"] != "http":
            return
        self.http_versions[scope.get("http_version", "?")] += 1
        client = scope.get("client")
        conn = self._connections.get((str(client[0]), int(client[1]))) if client else None
        if conn is not None and self.goaway_after is not None:
            conn.taken += 1
            if conn.taken > self.goaway_after:
                await self._goaway(conn, "Shutdown")
                return
        try:
            body = await _read_body(receive)
        except _Disconnected:
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers: dict[bytes, bytes] = {bytes(k).lower(): bytes(v) for k, v in scope["headers"]}
        if path == TOKEN_PATH:
            answer = self._token_request(method, headers, body)
        else:
            match = _SEND_PATH_RE.fullmatch(path)
            if match is None or method != "POST":
                answer = _json_answer(
                    404,
                    google_error_body(
                        404, "NOT_FOUND", f"The requested URL {path} was not found on this server."
                    ),
                )
            else:
                answer = self._send_request(match.group(1), headers, body)
        reply = answer.reply
        delay = reply.delay + (self.answer_delay if path != TOKEN_PATH else 0.0)
        if delay > 0:
            await trio.sleep(delay)
        if reply.action == "drop":
            if conn is not None:
                self.connections_dropped += 1
                self._log("connection dropped (scripted)")
                conn.drop()
                await trio.sleep_forever()
            return  # hypercorn answers 500 if the connection cannot be found
        if reply.action == "goaway":
            if conn is not None:
                await self._goaway(conn, reply.message or "Shutdown")
            return
        if conn is not None and conn.closing:
            return  # after our GOAWAY this stream is not answered, so not recorded
        if answer.received is not None:
            self._record(answer.received)
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [*answer.headers, (b"content-length", str(len(answer.body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})

    # -- token endpoint --

    def _token_request(self, method: str, headers: Mapping[bytes, bytes], body: bytes) -> _Answer:
        """A scripted reply if one is queued, else the checked grant; a scripted success
        still passes its ``delay`` on."""
        self.token_requests += 1
        if not self._token_scripts:
            return self._token_answer(method, headers, body)
        reply = self._token_scripts.popleft()
        if reply.action != "reply":
            return _Answer(0, b"", reply=reply)
        if reply.is_success:
            return attrs.evolve(self._token_answer(method, headers, body), reply=reply)
        status = reply.resolved()[0]
        error = _OAUTH_ERRORS.get(status, "server_error" if status >= 500 else "invalid_request")
        return _oauth_error(status, error, reply.message or error, reply)

    def _token_answer(self, method: str, headers: Mapping[bytes, bytes], body: bytes) -> _Answer:
        if self.token_endpoint_down:
            return _oauth_error(
                503, "temporarily_unavailable", "The service is currently unavailable."
            )
        if method != "POST":
            return _oauth_error(405, "invalid_request", "The token endpoint takes POST.")
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/x-www-form-urlencoded":
            return _oauth_error(
                400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded."
            )
        try:
            form = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            return _oauth_error(400, "invalid_request", "The body is not a valid form.")
        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "Missing required parameter: grant_type")
        if grant_type != JWT_BEARER_GRANT:
            return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = form.get("assertion")
        if not assertion:
            return _oauth_error(400, "invalid_request", "Missing required parameter: assertion")
        verdict = _check_assertion(
            assertion,
            self._accounts,
            self.token_url,
            time.time(),
            verify_signature=not self.accept_any_assertion,
        )
        if verdict.error is not None:
            self._log(f"token request rejected: {verdict.error}: {verdict.description}")
            return _oauth_error(400, verdict.error, verdict.description)
        account = self._accounts.get(verdict.client_email)
        now = trio.current_time()
        if len(self._grants) >= GRANT_SWEEP_THRESHOLD:
            self._grants = {
                k: g
                for k, g in self._grants.items()
                if g.expires_at > now and g.epoch == self._epoch
            }
        access_token = "ya29.sim." + secrets.token_urlsafe(32)
        self._grants[access_token] = _Grant(
            verdict.client_email,
            account.projects if account is not None else None,
            now + self.token_lifetime,
            self._epoch,
        )
        self.tokens_issued += 1
        self._log(f"access token issued to {verdict.client_email}")
        document = {
            "access_token": access_token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }
        return _json_answer(
            200,
            _dumps(document),
            extra=((b"cache-control", b"no-cache, no-store, max-age=0, must-revalidate"),),
        )

    # -- send endpoint --

    def _send_request(
        self, project_id: str, headers: Mapping[bytes, bytes], body: bytes
    ) -> _Answer:
        checked = _check_send_body(body) if len(body) <= MAX_REQUEST_BODY else None
        answer, counted = self._judge_send(project_id, headers, checked)
        bucket = self._quotas.get(project_id)
        unanswered = answer.reply.action != "reply"
        if counted and bucket is not None and (unanswered or not 200 <= answer.status < 429):
            bucket.tokens += 1.0  # only 2xx and 4xx other than 429 use the quota
        if unanswered:
            return answer
        received = FcmReceived(
            project_id=project_id,
            token=checked.token if checked is not None else None,
            message=checked.message if checked is not None else {},
            status=answer.status,
            error_code=answer.error_code,
            at=0.0,
            validate_only=checked.validate_only if checked is not None else False,
            size=checked.size if checked is not None else 0,
        )
        return attrs.evolve(answer, received=received)

    def _judge_send(
        self,
        project_id: str,
        headers: Mapping[bytes, bytes],
        checked: _Checked | None,
    ) -> tuple[_Answer, bool]:
        """Decide the answer; the flag says whether the request took a quota token."""
        auth = headers.get(b"authorization")
        if auth is None or auth[:7].lower() != b"bearer " or not auth[7:].strip():
            return self._unauthenticated(_MISSING_CREDENTIAL_MESSAGE, "CREDENTIALS_MISSING"), False
        access_token = auth[7:].strip().decode("latin-1")
        grant = self._grants.get(access_token)
        if grant is None:
            return self._unauthenticated(
                _UNAUTHENTICATED_MESSAGE, "ACCESS_TOKEN_TYPE_UNSUPPORTED"
            ), False
        if grant.epoch != self._epoch or trio.current_time() >= grant.expires_at:
            return self._unauthenticated(_UNAUTHENTICATED_MESSAGE, "ACCESS_TOKEN_EXPIRED"), False
        if grant.projects is not None and project_id not in grant.projects:
            text = (
                "Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project_id}' "
                "(or it may not exist)."
            )
            body_bytes = google_error_body(
                403, "PERMISSION_DENIED", text, [_error_info("IAM_PERMISSION_DENIED")]
            )
            return _json_answer(403, body_bytes, error_code="PERMISSION_DENIED"), False

        bucket = self._quotas.get(project_id)
        if bucket is not None:
            bucket.refill(trio.current_time())
            if bucket.tokens < 1.0:
                self.quota_rejections += 1
                _, google, text = FCM_ERROR_CODES["QUOTA_EXCEEDED"]
                details = [
                    _fcm_error("QUOTA_EXCEEDED"),
                    {
                        "@type": QUOTA_FAILURE_TYPE,
                        "violations": [{"subject": f"project:{project_id}", "description": text}],
                    },
                ]
                return (
                    _json_answer(
                        429,
                        google_error_body(429, google, text, details),
                        retry_after=bucket.retry_after(),
                        error_code="QUOTA_EXCEEDED",
                    ),
                    False,
                )
            bucket.tokens -= 1.0

        if checked is None:
            text = f"Request payload size exceeds the limit: {MAX_REQUEST_BODY} bytes."
            return (
                _json_answer(
                    400,
                    google_error_body(400, "INVALID_ARGUMENT", text, [_bad_request(None, text)]),
                    error_code="INVALID_ARGUMENT",
                ),
                True,
            )
        if checked.rejection is not None:
            fault = checked.rejection
            return (
                _json_answer(
                    400,
                    google_error_body(400, "INVALID_ARGUMENT", fault.message, fault.details),
                    error_code="INVALID_ARGUMENT",
                ),
                True,
            )

        target = checked.target or ""
        queue = self._scripts.get(target)
        reply = queue.popleft() if queue else self._token_replies.get(target, self._default)
        if reply.action != "reply":
            return _Answer(0, b"", reply=reply), True
        if reply.status == 200 and reply.error_code is None:
            if checked.validate_only:
                name = f"projects/{project_id}/messages/fake_message_id"
            else:
                name = f"projects/{project_id}/messages/{self._message_id(project_id)}"
            return (
                _json_answer(200, _dumps({"name": name}), reply=reply),
                True,
            )
        status, code, google, text = reply.resolved()
        details = [_fcm_error(code)] if code is not None else []
        return (
            _json_answer(
                status,
                google_error_body(status, google, text, details),
                retry_after=reply.retry_after,
                reply=reply,
                error_code=code or google,
            ),
            True,
        )

    def _unauthenticated(self, text: str, reason: str) -> _Answer:
        body = google_error_body(401, "UNAUTHENTICATED", text, [_error_info(reason)])
        challenge = (
            (
                b"www-authenticate",
                b'Bearer realm="https://accounts.google.com/", error="invalid_token"',
            ),
        )
        return _json_answer(401, body, extra=challenge, error_code="UNAUTHENTICATED")

    def _message_id(self, project_id: str) -> str:
        """``0:<microseconds>%<16 hex>``: FCM's shape, unique within this simulator."""
        now_us = max(time.time_ns() // 1000, self._last_message_us + 1)
        self._last_message_us = now_us
        suffix = self._project_suffix.get(project_id)
        if suffix is None:
            half = hashlib.sha256(project_id.encode()).hexdigest()[:8]
            suffix = self._project_suffix[project_id] = half + half
        return f"0:{now_us}%{suffix}"

    def _record(self, received: FcmReceived) -> None:
        """Note a send as answered; done just before the answer goes out, so a client
        that has its answer finds it recorded."""
        received = attrs.evolve(received, at=time.time())
        self._note(received)


async def _read_body(receive: Receive) -> bytes:
    """The whole request body; beyond :data:`MAX_REQUEST_BODY` only its size matters."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if size <= MAX_REQUEST_BODY:
            chunks.append(chunk)  # the chunk that crosses the limit is kept: len > limit
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
