"""Building one APNs request: pure functions over values, no I/O.

Per-request CPU matters (protocol notes §3.8: HPACK was 28 % of Sygnal's APNs path), so
headers are bytes, come in one stable order, and the ones that repeat are the same
objects every time (cached here), which :mod:`pushd.upstream.hpack` turns into
cached encoded bytes.  ``:path`` and ``authorization`` — the values that change per
request or per token refresh — are never-indexed literals, as Apple suggests (as are
``apns-id`` and ``apns-expiration``, unique per request).  Our encoder uses no dynamic
table at all, so the never-indexed marking only tells intermediaries not to index them.
"""

from __future__ import annotations

import re
from functools import lru_cache

from hpack import HeaderTuple, NeverIndexedHeaderTuple

from pushd.model import APNS_PRIORITIES, APNS_PUSH_TYPES, ApnsPush

#: Topic suffix per push type (protocol notes §1.2); absent means the plain bundle id.
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

#: Payload limits in bytes: 4096, except VoIP pushes.
PAYLOAD_LIMIT = 4096
VOIP_PAYLOAD_LIMIT = 5120
#: ``apns-collapse-id`` limit in bytes (UTF-8).
COLLAPSE_ID_LIMIT = 64

_TOKEN_RE = re.compile(r"[0-9a-fA-F]+")
_APNS_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Header = HeaderTuple | tuple[bytes, bytes]


class InvalidPush(ValueError):
    """APNs would reject this request as built; the message starts with APNs' reason name."""


class InvalidDeviceToken(InvalidPush):
    """The token is not a hex string: APNs would answer ``BadDeviceToken``."""


def topic_for(bundle_id: str, push_type: str) -> str:
    """The ``apns-topic`` for ``push_type``: the bundle id plus the type's suffix."""
    if push_type not in APNS_PUSH_TYPES:
        raise InvalidPush(f"InvalidPushType: {push_type!r}")
    return bundle_id + TOPIC_SUFFIXES.get(push_type, "")


def payload_limit(push_type: str) -> int:
    """Largest payload APNs accepts for ``push_type``, in bytes."""
    return VOIP_PAYLOAD_LIMIT if push_type == "voip" else PAYLOAD_LIMIT


@lru_cache(maxsize=64)
def _fixed_headers(authority: str) -> tuple[Header, ...]:
    """Pseudo-headers shared by every request to one host, encoded once."""
    return (
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", authority.encode("ascii")),
    )


@lru_cache(maxsize=64)
def _topic_headers(topic: str, push_type: str) -> tuple[Header, ...]:
    """Per-(topic, type) headers; a client sends few distinct pairs, so cache them."""
    return (
        (b"apns-topic", topic.encode("ascii")),
        (b"apns-push-type", push_type.encode("ascii")),
    )


@lru_cache(maxsize=4)
def _authorization_header(authorization: str) -> Header:
    # The same JWT is used for ~45 minutes: encode it once, not per request.
    return NeverIndexedHeaderTuple(b"authorization", b"bearer " + authorization.encode("ascii"))


def device_path(token: str) -> bytes:
    """The ``:path`` for ``token``; :class:`InvalidDeviceToken` if APNs would refuse it."""
    if not token:
        raise InvalidDeviceToken("MissingDeviceToken")
    if _TOKEN_RE.fullmatch(token) is None:
        raise InvalidDeviceToken("BadDeviceToken: not a hex string")
    return b"/3/device/" + token.encode("ascii")


def path_header(path: bytes) -> Header:
    """The ``:path`` header field: a never-indexed literal, as Apple suggests."""
    return NeverIndexedHeaderTuple(b":path", path)


def _check_payload(push: ApnsPush) -> None:
    """The checks APNs makes before it looks at the token (so they win over token errors)."""
    push_type = push.push_type
    if push_type not in APNS_PUSH_TYPES:
        raise InvalidPush(f"InvalidPushType: {push_type!r}")
    payload = push.payload
    if not payload:
        raise InvalidPush("PayloadEmpty")
    limit = VOIP_PAYLOAD_LIMIT if push_type == "voip" else PAYLOAD_LIMIT
    if len(payload) > limit:
        raise InvalidPush(f"PayloadTooLarge: {len(payload)} bytes > {limit}")


def request_template(
    topic: str,
    push: ApnsPush,
    authorization: str | None,
    *,
    authority: str,
) -> tuple[list[Header], list[Header], bytes]:
    """``(headers before :path, headers after it, body)``: everything but the token.

    One push to many tokens differs only in ``:path``, so a batch builds (and encodes)
    these once.  Raises :class:`InvalidPush` for a push APNs would reject whatever the
    token; the checks on the token itself are :func:`device_path`'s.
    """
    _check_payload(push)
    push_type = push.push_type
    prefix: list[Header] = [*_fixed_headers(authority)]
    suffix: list[Header] = [*_topic_headers(topic, push_type)]
    priority = push.priority
    if priority is None and push_type == "background":
        # APNs' default priority is 10, which it rejects for background pushes.
        priority = 5
    if priority is not None:
        if priority not in APNS_PRIORITIES:
            raise InvalidPush(f"BadPriority: {priority!r}")
        if push_type == "background" and priority == 10:
            raise InvalidPush("BadPriority: background pushes must use priority 5 or 1")
        suffix.append((b"apns-priority", b"%d" % priority))
    expiration = push.expiration
    if expiration is not None:
        if expiration < 0:
            raise InvalidPush(f"BadExpirationDate: {expiration!r}")
        # Absolute times differ per request: indexing them would only churn the table.
        suffix.append(NeverIndexedHeaderTuple(b"apns-expiration", b"%d" % expiration))
    if push.collapse_id is not None:
        collapse_id = push.collapse_id.encode("utf-8")
        if len(collapse_id) > COLLAPSE_ID_LIMIT:
            raise InvalidPush(f"BadCollapseId: {len(collapse_id)} bytes > {COLLAPSE_ID_LIMIT}")
        suffix.append((b"apns-collapse-id", collapse_id))
    if push.apns_id is not None:
        if _APNS_ID_RE.fullmatch(push.apns_id) is None:
            raise InvalidPush("BadMessageId: not a lowercase canonical UUID")
        suffix.append(NeverIndexedHeaderTuple(b"apns-id", push.apns_id.encode("ascii")))
    if authorization is not None:
        suffix.append(_authorization_header(authorization))
    return prefix, suffix, push.payload


def build_request(
    topic: str,
    token: str,
    push: ApnsPush,
    authorization: str | None,
    *,
    authority: str,
) -> tuple[bytes, list[Header], bytes]:
    """Return ``(path, headers, body)`` for one notification to ``token``.

    ``topic`` is the full topic (see :func:`topic_for`); ``authorization`` is the JWT for
    token auth, ``None`` for certificate auth; ``authority`` is the ``host[:port]`` the
    connection was made to.  Raises :class:`InvalidPush` for anything APNs would reject
    as a malformed request, so the message is never sent.  Checks run in APNs' order:
    push type and payload, then the token, then the other headers.
    """
    _check_payload(push)
    path = device_path(token)
    prefix, suffix, body = request_template(topic, push, authorization, authority=authority)
    return path, [*prefix, path_header(path), *suffix], body
