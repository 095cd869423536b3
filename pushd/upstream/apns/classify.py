"""Map one APNs response to an :data:`~pushd.model.Outcome`: a pure function, no I/O.

The table is the protocol notes' §1.4.  Reasons decide first (they are unique across
statuses); a reason we do not know falls back on its status class, choosing the outcome
that does the least harm: an unknown 403 pauses the app (credentials), an unknown 4xx
fails only this message, unknown 5xx and 429 retry.  Nothing here deletes a token unless
APNs named one of the token reasons, and two of those (:data:`MISMATCH_REASONS`) are also
what a wrong environment or topic earns every token, so they are marked as such.
"""

from __future__ import annotations

from typing import Final

import attrs

from pushd import jsonutil
from pushd.model import Delivered, Failed, Outcome, RetryKind, RetryLater, TokenDead

#: The token will never work again.
TOKEN_DEAD_REASONS: Final = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
#: Dead-token reasons that every token gets when the app is set up wrongly: a sandbox
#: token sent to production (or the reverse) is a ``BadDeviceToken``, a wrong bundle id
#: a ``DeviceTokenNotForTopic``.  ``TokenDead.mismatch``: believed only from an app
#: that has delivered since its configuration was loaded (:mod:`pushd.proof`).
MISMATCH_REASONS: Final = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
#: The app's credentials or topic configuration are wrong: pause the app, keep tokens.
CREDENTIAL_REASONS: Final = frozenset(
    {
        "TopicDisallowed",
        "BadTopic",
        "MissingTopic",
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "BadEnvironmentKeyIdInToken",
        "BadEnvironmentKeyInToken",
        "UnrelatedKeyIdInToken",
    }
)
#: We built the request wrongly: fail this message, never retry it as is.
REQUEST_REASONS: Final = frozenset(
    {
        "InvalidPushType",
        "BadPriority",
        "BadExpirationDate",
        "BadMessageId",
        "BadCollapseId",
        "DuplicateHeaders",
        "PayloadEmpty",
        "MissingDeviceToken",
        "BadPath",
        "MethodNotAllowed",
        "PayloadTooLarge",
    }
)
#: Transient on APNs' side: try again later (on another connection, the pool's business).
#: Retry reasons that are not the upstream's trouble: one device pushed too often, or
#: this app's JWT refreshed too often (see ``RetryLater.kind``).
_RETRY_KINDS: Final[dict[str, RetryKind]] = {
    "TooManyRequests": "device",
    "TooManyProviderTokenUpdates": "throttled",
}
RETRY_REASONS: Final = frozenset(
    {
        "IdleTimeout",
        "TooManyRequests",
        "TooManyProviderTokenUpdates",
        "InternalServerError",
        "ServiceUnavailable",
        "Shutdown",
    }
)
#: The one reason the client answers itself: regenerate the JWT and resend once.
EXPIRED_PROVIDER_TOKEN: Final = "ExpiredProviderToken"
#: Retry reasons that also say the connection is closing: 503 ``Shutdown``, "this APNs
#: server is going down": move to a new connection, then retry (protocol notes §1.4).
CONNECTION_CLOSING_REASONS: Final = frozenset({"Shutdown"})


def mismatch_hint(environment: str, topic: str) -> str:
    """What an ALARM about an app's :data:`MISMATCH_REASONS` asks the operator to check."""
    return (
        f"is environment {environment!r} the one its tokens come from (a sandbox build's "
        f"tokens are BadDeviceToken on production, and the reverse)? is topic {topic!r} "
        "the app's bundle id?"
    )


@attrs.frozen
class ProviderTokenExpired:
    """Not an outcome: APNs says our JWT is too old.  The client regenerates and resends."""


#: The single instance :func:`classify` returns for ``ExpiredProviderToken``.
PROVIDER_TOKEN_EXPIRED: Final = ProviderTokenExpired()


def parse_body(body: bytes) -> tuple[str | None, float | None]:
    """``(reason, timestamp in seconds)`` from an APNs error body; ``None`` for what is absent.

    Never raises: a proxy's HTML error page or a truncated body yields ``(None, None)``.
    """
    if not body:
        return None, None
    try:
        data = jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    reason = data.get("reason")
    if not isinstance(reason, str):
        reason = None
    timestamp = data.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return reason, None
    return reason, timestamp / 1000


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header, or ``None``.

    Only the delay-seconds form is understood: APNs does not document the header at all,
    and an HTTP-date would need a clock, which this pure module does not have.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not seconds >= 0 or seconds == float("inf"):  # also rejects NaN
        return None
    return seconds


def classify(
    status: int,
    body: bytes,
    retry_after: str | None = None,
    apns_id: str | None = None,
) -> Outcome | ProviderTokenExpired:
    """The outcome of one APNs response.

    ``retry_after`` is the raw ``Retry-After`` header, ``apns_id`` the ``apns-id``
    response header (it becomes :attr:`Delivered.upstream_id`).
    """
    if status == 200:
        return Delivered(apns_id)
    reason, timestamp = parse_body(body)
    if reason is not None:
        if reason in TOKEN_DEAD_REASONS:
            since = timestamp if reason == "Unregistered" else None
            return TokenDead(reason, since=since, mismatch=reason in MISMATCH_REASONS)
        if reason in CREDENTIAL_REASONS:
            return Failed(reason, credential=True)
        if reason in REQUEST_REASONS:
            return Failed(reason)
        if reason == EXPIRED_PROVIDER_TOKEN:
            return PROVIDER_TOKEN_EXPIRED
        if reason in RETRY_REASONS:
            kind: RetryKind = _RETRY_KINDS.get(reason, "server")
            return RetryLater(reason, parse_retry_after(retry_after), kind=kind)
    label = reason if reason is not None else f"HTTP {status}"
    if status == 429:  # APNs' only 429 is TooManyRequests: one device, too often
        return RetryLater(label, parse_retry_after(retry_after), kind="device")
    if 500 <= status <= 599:
        return RetryLater(label, parse_retry_after(retry_after))
    if status == 403:
        return Failed(label, credential=True)
    if 200 <= status <= 299:  # no APNs status, but a success is a success
        return Delivered(apns_id)
    # Unknown 4xx, or a status APNs never sends (a proxy in between): this message failed.
    return Failed(label)


def connection_closing(status: int, body: bytes) -> str | None:
    """The reason an answer gives for leaving its connection (``Shutdown``), or None.

    The push itself is retried as :func:`classify` says; this is about the connection,
    which should take no new requests (the pool opens another).
    """
    if status == 200:
        return None
    reason, _ = parse_body(body)
    return reason if reason in CONNECTION_CLOSING_REASONS else None


def goaway_outcome(reason: str) -> Outcome | ProviderTokenExpired | None:
    """What a request left unprocessed by a GOAWAY with ``reason`` reports, or None.

    APNs closes a connection with a credential reason in the GOAWAY's debug data
    (``{"reason": "InvalidProviderToken"}``): the request gets what an answer with that
    reason would (the app pauses; an expired JWT is regenerated), since resending it
    on a new connection only hears the same.  Any other reason (``Shutdown``,
    ``IdleTimeout``) is None: resend on another connection.
    """
    if reason in CREDENTIAL_REASONS:
        return Failed(reason, credential=True)
    if reason == EXPIRED_PROVIDER_TOKEN:
        return PROVIDER_TOKEN_EXPIRED
    return None
