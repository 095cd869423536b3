"""Core values shared by the frontends, the delivery engine and the upstream clients.

Everything here is a frozen attrs class: values cross task and thread boundaries (the
store runs on a worker thread), and immutability means no one can change a delivery
under another task's feet.  Nothing in this module does I/O.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import attrs

#: Push types APNs knows (``apns-push-type``).  ``widgets`` and ``controls`` are newer and
#: only seen in third-party notes, but sending them is harmless: APNs answers
#: ``InvalidPushType`` if it does not know them.
APNS_PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "location",
        "liveactivity",
        "pushtotalk",
        "widgets",
        "controls",
    }
)

#: ``apns-priority`` values APNs accepts.
APNS_PRIORITIES = frozenset({1, 5, 10})


@attrs.frozen
class ApnsPush:
    """One APNs notification, ready to send to any number of tokens.

    ``payload`` is the JSON body, already encoded: the delivery engine treats it as
    opaque bytes so that it never ends up in a log line by accident.
    """

    payload: bytes
    push_type: str = "alert"
    priority: int | None = None
    #: Absolute UNIX time in seconds (APNs semantics, not a TTL); 0 means "try once".
    expiration: int | None = None
    collapse_id: str | None = None
    apns_id: str | None = None

    def __repr__(self) -> str:  # never show the payload, even in a traceback
        return (
            f"ApnsPush(<{len(self.payload)} bytes>, push_type={self.push_type!r}, "
            f"priority={self.priority!r}, expiration={self.expiration!r})"
        )


@attrs.frozen
class FcmPush:
    """One FCM HTTP v1 message without its target, ready to send to any number of tokens.

    ``fields`` are the members of the v1 ``message`` object other than ``token``, already
    encoded as JSON object members (``b'"data":{"k":"v"},"android":{...}'``): the client
    splices a token in front of them, so a fan-out serialises the message once.  Opaque
    bytes, like :attr:`ApnsPush.payload`, so they never reach a log line by accident.
    """

    fields: bytes
    #: Absolute UNIX time in seconds after which retrying is pointless (from the TTL);
    #: 0 means "now or never", None the upstream's default.
    expiration: int | None = None

    def __repr__(self) -> str:
        return f"FcmPush(<{len(self.fields)} bytes>, expiration={self.expiration!r})"


Push = ApnsPush | FcmPush


def provider_of(push: Push) -> str:
    """``"apns"`` or ``"fcm"``: the provider whose client can send ``push``."""
    return "apns" if isinstance(push, ApnsPush) else "fcm"


#: The protocol a delivery came in by (a metrics label, and what a dead verdict may touch).
Protocol = Literal["native", "zulip", "mattermost", "rocketchat", "matrix"]
#: Protocols whose devices pushd stores itself: a dead verdict for one of their deliveries
#: removes the stored registrations of that app and environment.  The others name their
#: tokens in each request (Matrix, Mattermost, Rocket.Chat), so their verdicts go back
#: to their caller and touch nothing stored: an open Matrix notify must not be able to
#: delete another tenant's registrations.
STORED_PROTOCOLS: frozenset[str] = frozenset({"native", "zulip"})


@attrs.frozen
class RemovalScope:
    """Which stored registrations a dead verdict of one app removes.

    A token is dead *for an app in an environment*: APNs' BadDeviceToken from the
    sandbox says nothing about the same token in production, nor about another bundle
    id.  So a verdict removes native registrations of that app and environment, and the
    Zulip registrations that pushd routes to that same app (``zulip_kind`` and, for
    APNs, ``zulip_ios_app_id``; None when the app serves no Zulip devices).
    """

    environment: str | None = None
    zulip_kind: int | None = None
    zulip_ios_app_id: str | None = None


@attrs.frozen
class Delivery:
    """One upstream request to make: this push, to this token, through this app."""

    app: str
    token: str
    push: Push
    #: When the token was registered (UNIX seconds), for APNs' 410 timestamp rule;
    #: ``None`` when the caller named a token we do not have stored.
    registered_at: float | None = None
    #: Absolute UNIX time after which retrying is pointless.
    expires_at: float | None = None
    #: The caller's own name for this device, for a protocol that can be told of a dead
    #: verdict on its next request (Matrix: app_id and pushkey): a verdict found after
    #: the caller was answered, or in an answer it may not have received, is kept in
    #: the store under this name.
    ref: str | None = None
    #: The chat server a late verdict is owed to when its protocol reports verdicts on
    #: the server's next request whatever it names (Zulip's ``deleted_devices``).
    caller: str | None = None
    #: The protocol it came in by: see :data:`STORED_PROTOCOLS`.
    protocol: Protocol = attrs.field(kw_only=True)


# --- Outcomes -------------------------------------------------------------------------
# Every upstream answer maps to exactly one of these.  Frontends translate them into their
# own wire format; the delivery engine acts on them (delete, retry, pause).


@attrs.frozen
class Delivered:
    """The upstream accepted the notification."""

    upstream_id: str | None = None


@attrs.frozen
class TokenDead:
    """The token will never work again: delete it and tell the caller.

    ``since`` (UNIX seconds) is APNs' 410 ``timestamp``: the token stopped being valid
    then, so a registration made *after* it is a fresh one and must be kept.

    ``mismatch`` marks a verdict that a misconfigured app hears for *every* token (APNs
    ``BadDeviceToken`` from the wrong environment, ``DeviceTokenNotForTopic`` from the
    wrong topic, FCM ``SENDER_ID_MISMATCH`` from the wrong project): the delivery
    engine believes it only once the app has proven its configuration by a delivery
    (:mod:`pushd.proof`), or a config mistake would wipe the store.
    """

    reason: str
    since: float | None = None
    mismatch: bool = False


#: Why an attempt must be made again, which decides when and how (see RetryLater).
RetryKind = Literal["unreachable", "unknown", "server", "throttled", "device", "paused"]
#: Kinds that say the upstream (or the way to it) is in trouble: they count against
#: the app's circuit, which paces the spool while they last.
UPSTREAM_TROUBLE: frozenset[str] = frozenset({"unreachable", "unknown", "server", "throttled"})


@attrs.frozen
class RetryLater:
    """A transient failure: try again, no sooner than ``after`` seconds if given.

    ``kind`` says what happened, because it decides how to try again:

    - ``unreachable``: never sent (no connection, connection refused, the server
      refused the stream or sent GOAWAY below it): safe to send again at once;
    - ``unknown``: sent, and no answer came (a timeout, the connection died after the
      request went out): it may have been delivered, so it is sent again once, and
      only when the upstream is healthy again;
    - ``server``: the upstream answered with a 5xx; ``throttled``: it asked the app to
      slow down (a quota); ``device``: it asked to slow down for this device only;
    - ``paused``: not sent, because the app is paused after a credential error (or is
      no longer configured: a reload removed it).
    """

    reason: str
    after: float | None = None
    kind: RetryKind = "server"

    @property
    def maybe_delivered(self) -> bool:
        return self.kind == "unknown"


@attrs.frozen
class Failed:
    """A permanent failure of this one message (bad payload, bad header): never retried.

    ``credential`` marks a failure of the app's credentials rather than of the message:
    the delivery engine pauses that app and raises an alarm.
    """

    reason: str
    credential: bool = False


Outcome = Delivered | TokenDead | RetryLater | Failed


def mask_token(token: str) -> str:
    """Return a token fit for a log line: enough to correlate, too little to use."""
    if len(token) <= 12:
        return "*" * len(token)
    return f"{token[:6]}…{token[-4:]}"


#: APNs tokens are hex; today's are 64 characters, Apple says not to rely on a length.
APNS_TOKEN_MIN_LENGTH = 64
APNS_TOKEN_MAX_LENGTH = 200
_HEX = frozenset("0123456789abcdef")


def normalize_apns_token(token: str) -> str | None:
    """The canonical (lower-case) form of an APNs token, or None if it is not one.

    APNs treats tokens case-insensitively, so storing one form keeps a device that
    re-registers in upper case from appearing twice.
    """
    lowered = token.lower()
    if not APNS_TOKEN_MIN_LENGTH <= len(lowered) <= APNS_TOKEN_MAX_LENGTH or len(lowered) % 2:
        return None
    if not _HEX.issuperset(lowered):
        return None
    return lowered


#: Zulip servers are reached over HTTPS, so a hostname ending in this port names the
#: same server as one without it.
ZULIP_DEFAULT_PORT: Final = 443
#: ``RemoteZulipServer.hostname`` holds at most this many characters.
ZULIP_HOSTNAME_MAX: Final = 128
_DNS_LABEL_RE: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_MAX_PORT: Final = 65535


def normalize_zulip_hostname(hostname: str) -> str | None:
    """The one form of a Zulip server's ``host[:port]`` that pushd compares and stores,
    or None if it is not one.

    A server names itself by ``EXTERNAL_HOST`` as its admin typed it, so one server can
    arrive as ``CHAT.example.com``, ``chat.example.com.`` or ``chat.example.com:443``.
    All three are one HTTPS origin; if they compared different, anyone could register
    a second server for a hostname already taken or pinned just by spelling it
    differently.  So case is folded, one trailing dot (the DNS root) is dropped, and so
    is the default port.  Any other port stays part of the name: ``chat.example.com:8443``
    is another origin, possibly another Zulip installation on the same machine, and
    needs its own pin.  (Zulip's own bouncer keeps the string as given and compares it
    exactly.)  Only ASCII is accepted: ``str.lower`` maps some non-ASCII letters (the
    Kelvin sign) onto ASCII ones, and no DNS name needs them.
    """
    if not hostname.isascii() or len(hostname) > ZULIP_HOSTNAME_MAX:
        return None
    host, colon, port = hostname.partition(":")
    host = host.lower().removesuffix(".")
    if not host or not all(_DNS_LABEL_RE.fullmatch(label) for label in host.split(".")):
        return None
    if not colon or not port:
        return host
    if not port.isdigit() or not 0 < int(port) <= _MAX_PORT:
        return None
    number = int(port)
    return host if number == ZULIP_DEFAULT_PORT else f"{host}:{number}"
