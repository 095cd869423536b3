"""The FCM simulator's tunables, and the rules, codes and texts of FCM and Google's
token endpoint it follows."""

from __future__ import annotations

import re
from collections.abc import Mapping

# --- Tunables --------------------------------------------------------------------------

#: ``expires_in`` of an access token, as Google answers (one second under an hour).
DEFAULT_TOKEN_LIFETIME = 3599
#: Longest ``exp - iat`` Google accepts in a JWT-bearer assertion.
ASSERTION_MAX_LIFETIME = 3600
#: Clock skew tolerated for an assertion's ``iat`` in the future.
ASSERTION_CLOCK_SKEW = 60.0
#: Streams per HTTP/2 connection; Google publishes no figure, 100 is the assumption.
MAX_CONCURRENT_STREAMS = 100
#: Idle connections are closed after this long (HTTP/2: with GOAWAY).  hypercorn's 5 s
#: would make a client reconnect between every burst, which FCM does not do.
KEEP_ALIVE_TIMEOUT = 300.0
#: hypercorn closes a connection after 1000 requests by default; FCM does not.
KEEP_ALIVE_MAX_REQUESTS = 2**62
#: How long a TLS handshake may take before the connection is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: The HTTP/2 loop's flow-control windows, per stream and for the connection: 1 MiB each,
#: what Google's front end advertises, and at least :data:`MAX_REQUEST_BODY`, so the
#: largest body FCM takes arrives without waiting for a WINDOW_UPDATE.
H2_STREAM_WINDOW = 1 << 20
H2_CONNECTION_WINDOW = 1 << 20
#: Bytes asked of the TLS stream per read by the HTTP/2 loop.
H2_RECEIVE_SIZE = 65536
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
SEND_PATH_RE = re.compile(r"/v1/projects/([^/]+)/messages:send")

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
CODE_OF_STATUS = {
    400: "INVALID_ARGUMENT",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
#: ``google.rpc.Code`` names of HTTP statuses (Google's canonical mapping).
GOOGLE_STATUS = {
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
OAUTH_ERRORS = {
    400: "invalid_grant",
    401: "invalid_client",
    403: "access_denied",
    429: "rate_limit_exceeded",
    500: "internal_failure",
    503: "temporarily_unavailable",
}

UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
MISSING_CREDENTIAL_MESSAGE = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
TIMEFRAME_MESSAGE = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
BAD_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"

#: Fields of ``Message`` (JSON accepts the proto name and its lowerCamel form).
MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options", "fcmOptions"}
    | {"token", "topic", "condition"}
)
ANDROID_FIELDS = frozenset(
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
NOTIFICATION_FIELDS = frozenset({"title", "body", "image"})
PRIORITIES = frozenset({"normal", "high"})
