"""Building APNs requests: topics, limits, headers, and what is refused before sending."""

from __future__ import annotations

import pytest
from hpack import NeverIndexedHeaderTuple

from pushd.model import APNS_PUSH_TYPES, ApnsPush
from pushd.upstream.apns.request import (
    InvalidDeviceToken,
    InvalidPush,
    build_request,
    payload_limit,
    topic_for,
)

TOKEN = "ab" * 32
JWT = "header.claims.signature"


@pytest.mark.parametrize(
    ("push_type", "topic"),
    [
        ("alert", "com.example.app"),
        ("background", "com.example.app"),
        ("mdm", "com.example.app"),
        ("voip", "com.example.app.voip"),
        ("complication", "com.example.app.complication"),
        ("fileprovider", "com.example.app.pushkit.fileprovider"),
        ("location", "com.example.app.location-query"),
        ("liveactivity", "com.example.app.push-type.liveactivity"),
        ("pushtotalk", "com.example.app.voip-ptt"),
        ("widgets", "com.example.app.push-type.widgets"),
        ("controls", "com.example.app.push-type.controls"),
    ],
)
def test_topic_for(push_type: str, topic: str) -> None:
    assert topic_for("com.example.app", push_type) == topic


def test_topic_for_covers_every_push_type() -> None:
    for push_type in APNS_PUSH_TYPES:
        assert topic_for("b", push_type).startswith("b")


def test_topic_for_unknown_type() -> None:
    with pytest.raises(InvalidPush, match="InvalidPushType"):
        topic_for("com.example.app", "telepathy")


def test_payload_limit() -> None:
    assert payload_limit("alert") == 4096
    assert payload_limit("background") == 4096
    assert payload_limit("voip") == 5120


def test_minimal_request() -> None:
    push = ApnsPush(b'{"aps":{}}')
    path, headers, body = build_request(
        "com.example.app", TOKEN, push, JWT, authority="api.push.apple.com"
    )
    assert path == b"/3/device/" + TOKEN.encode()
    assert body == b'{"aps":{}}'
    assert [tuple(h) for h in headers] == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"api.push.apple.com"),
        (b":path", path),
        (b"apns-topic", b"com.example.app"),
        (b"apns-push-type", b"alert"),
        (b"authorization", b"bearer " + JWT.encode()),
    ]
    for name, value in headers:
        assert isinstance(name, bytes)
        assert isinstance(value, bytes)
    never = {h[0] for h in headers if isinstance(h, NeverIndexedHeaderTuple)}
    assert never == {b":path", b"authorization"}


def test_full_request_header_order() -> None:
    push = ApnsPush(
        b"{}",
        push_type="voip",
        priority=5,
        expiration=1_700_000_000,
        collapse_id="room-1",
        apns_id="123e4567-e89b-12d3-a456-426614174000",
    )
    _, headers, _ = build_request(
        "com.example.app.voip", TOKEN, push, None, authority="localhost:8443"
    )
    assert [tuple(h) for h in headers] == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"localhost:8443"),
        (b":path", b"/3/device/" + TOKEN.encode()),
        (b"apns-topic", b"com.example.app.voip"),
        (b"apns-push-type", b"voip"),
        (b"apns-priority", b"5"),
        (b"apns-expiration", b"1700000000"),
        (b"apns-collapse-id", b"room-1"),
        (b"apns-id", b"123e4567-e89b-12d3-a456-426614174000"),
    ]  # no authorization header with certificate auth


def test_background_defaults_to_priority_5() -> None:
    _, headers, _ = build_request(
        "t", TOKEN, ApnsPush(b"{}", push_type="background"), None, authority="h"
    )
    assert (b"apns-priority", b"5") in [tuple(h) for h in headers]


def test_expiration_zero_is_sent() -> None:
    _, headers, _ = build_request("t", TOKEN, ApnsPush(b"{}", expiration=0), None, authority="h")
    assert (b"apns-expiration", b"0") in [tuple(h) for h in headers]


def test_payload_at_the_limits() -> None:
    build_request("t", TOKEN, ApnsPush(b"x" * 4096), None, authority="h")
    build_request("t", TOKEN, ApnsPush(b"x" * 5120, push_type="voip"), None, authority="h")


@pytest.mark.parametrize(
    ("push", "token", "reason"),
    [
        (ApnsPush(b"x" * 4097), TOKEN, "PayloadTooLarge"),
        (ApnsPush(b"x" * 5121, push_type="voip"), TOKEN, "PayloadTooLarge"),
        (ApnsPush(b""), TOKEN, "PayloadEmpty"),
        (ApnsPush(b"{}", push_type="telepathy"), TOKEN, "InvalidPushType"),
        (ApnsPush(b"{}", priority=7), TOKEN, "BadPriority"),
        (ApnsPush(b"{}", push_type="background", priority=10), TOKEN, "BadPriority"),
        (ApnsPush(b"{}", expiration=-1), TOKEN, "BadExpirationDate"),
        (ApnsPush(b"{}", collapse_id="x" * 65), TOKEN, "BadCollapseId"),
        (ApnsPush(b"{}", collapse_id="é" * 33), TOKEN, "BadCollapseId"),  # 66 bytes
        (ApnsPush(b"{}", apns_id="not-a-uuid"), TOKEN, "BadMessageId"),
        (ApnsPush(b"{}", apns_id="123E4567-E89B-12D3-A456-426614174000"), TOKEN, "BadMessageId"),
        (ApnsPush(b"{}"), "", "MissingDeviceToken"),
        (ApnsPush(b"{}"), "zz" * 32, "BadDeviceToken"),
        (ApnsPush(b"{}"), "ab/../x", "BadDeviceToken"),
    ],
)
def test_invalid(push: ApnsPush, token: str, reason: str) -> None:
    with pytest.raises(InvalidPush, match=f"^{reason}"):
        build_request("t", token, push, None, authority="h")


def test_bad_token_is_its_own_subclass() -> None:
    with pytest.raises(InvalidDeviceToken):
        build_request("t", "nothex", ApnsPush(b"{}"), None, authority="h")


def test_collapse_id_of_64_bytes_is_fine() -> None:
    build_request("t", TOKEN, ApnsPush(b"{}", collapse_id="x" * 64), None, authority="h")


def test_error_message_never_contains_payload() -> None:
    with pytest.raises(InvalidPush) as info:
        build_request("t", TOKEN, ApnsPush(b"secret" * 1000), None, authority="h")
    assert "secret" not in str(info.value)
