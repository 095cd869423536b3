"""The APNs simulator's tunables, and the rules and reasons of APNs it follows."""

from __future__ import annotations

import re

from pushd.model import APNS_PUSH_TYPES

# --- Tunables --------------------------------------------------------------------------

#: Streams allowed on a fresh token-auth connection, as APNs does until a valid JWT.
DEFAULT_INITIAL_MAX_STREAMS = 1
#: Streams allowed once authenticated (observed 500, 1000, 1500 on real APNs).
DEFAULT_MAX_STREAMS = 1000
#: Largest payload APNs accepts, and the larger one for VoIP pushes.
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
#: ``apns-collapse-id`` limit, in bytes.
MAX_COLLAPSE_ID = 64
#: A provider token whose ``iat`` is older than this is expired.
JWT_MAX_AGE = 3600.0
#: Clock skew tolerated for an ``iat`` in the future.
JWT_MAX_FUTURE = 60.0
#: Replacing a connection's provider token by one issued within this long of the current
#: one is "too many provider token updates".  Counted from the current token's ``iat``,
#: which is how Apple phrases the rule (refresh no more often than every 20 minutes) and
#: spares a client that refreshes right after an ``ExpiredProviderToken``.
JWT_MIN_REFRESH = 1200.0
#: Distinct tokens remembered per connection; a client cycling through more is broken.
JWT_CACHE_SIZE = 16
#: Device tokens are hex; today 64 characters, Apple warns the length may grow.
TOKEN_RE = re.compile(rb"[0-9a-fA-F]{64,200}")
#: Flow-control windows: big enough that a client never waits for a WINDOW_UPDATE.
INITIAL_WINDOW_SIZE = 1 << 24
CONNECTION_WINDOW_SIZE = 1 << 28
#: Request bodies are kept up to this size; larger ones are only counted (they get 413).
MAX_KEPT_BODY = 64 * 1024
#: How long a TLS handshake may take before the connection is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: After a GOAWAY, how long to read and discard what the client still sends before
#: closing: closing with unread data makes the kernel send RST, which can destroy the
#: GOAWAY before the client reads it.
CLOSE_LINGER = 1.0
RECEIVE_SIZE = 65536

PUSH_TYPES = frozenset(t.encode() for t in APNS_PUSH_TYPES)
#: Topic suffix each push type requires (``<bundle id><suffix>``).
TOPIC_SUFFIXES: dict[str, str] = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
    "widgets": ".push-type.widgets",
    "controls": ".push-type.controls",
}
# Longest first, so ".push-type.liveactivity" is not mistaken for something shorter.
SUFFIXES_LONGEST_FIRST = tuple(sorted(TOPIC_SUFFIXES.values(), key=len, reverse=True))
APNS_ID_RE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
PRIORITIES = {b"1": 1, b"5": 5, b"10": 10}
DEVICE_PREFIX = b"/3/device/"
#: Reason used for a scripted error status given without one.
DEFAULT_REASONS = {
    400: "BadDeviceToken",
    403: "Forbidden",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}

#: Every reason Apple documents, with the status it comes with (protocol notes §1.4), so
#: ``pushd simulate --reply TOKEN=Unregistered`` can be answered as APNs would.
REASON_STATUS: dict[str, int] = {
    **dict.fromkeys(
        [
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
        ],
        400,
    ),
    **dict.fromkeys(
        [
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "BadEnvironmentKeyIdInToken",
            "UnrelatedKeyIdInToken",
        ],
        403,
    ),
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "Unregistered": 410,
    "ExpiredToken": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
