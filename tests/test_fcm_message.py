"""Building FCM v1 messages: field encoding, refusals, size, and splicing the token in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pushd.model import FcmPush
from pushd.upstream.fcm.message import (
    MAX_TTL,
    PAYLOAD_LIMIT,
    AndroidOptions,
    ApnsOptions,
    InvalidMessage,
    InvalidToken,
    Notification,
    body_for,
    build_push,
    payload_size,
)

TOKEN = "fX1a2b3c4d5e:APA91bH" + "x" * 130 + "-_Q"
NOW = 1_700_000_000.0


def message_of(push: FcmPush, token: str = TOKEN) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(body_for(token, push))
    assert list(decoded) == ["message"]
    message: dict[str, Any] = decoded["message"]
    assert message.pop("token") == token
    return message


def test_data_only() -> None:
    push = build_push(data={"room": "!abc:example.org", "unread": "2"})
    assert push.fields == b'"data":{"room":"!abc:example.org","unread":"2"}'
    assert push.expiration is None
    assert message_of(push) == {"data": {"room": "!abc:example.org", "unread": "2"}}


def test_everything() -> None:
    push = build_push(
        data={"k": "v"},
        notification=Notification(title="Hi", body="Hello", image="https://x.test/i.png"),
        android=AndroidOptions(
            priority="high", ttl=3600, collapse_key="room-1", restricted_package_name="org.x"
        ),
        apns=ApnsOptions(
            headers={"apns-priority": "10", "apns-push-type": "alert"},
            payload={"aps": {"mutable-content": 1}},
        ),
        analytics_label="chat_v1",
        now=NOW,
    )
    assert message_of(push) == {
        "data": {"k": "v"},
        "notification": {"title": "Hi", "body": "Hello", "image": "https://x.test/i.png"},
        "android": {
            "priority": "HIGH",
            "ttl": "3600s",
            "collapse_key": "room-1",
            "restricted_package_name": "org.x",
        },
        "apns": {
            "headers": {"apns-priority": "10", "apns-push-type": "alert"},
            "payload": {"aps": {"mutable-content": 1}},
        },
        "fcm_options": {"analytics_label": "chat_v1"},
    }
    assert push.expiration == int(NOW) + 3600


def test_partial_notification_and_normal_priority() -> None:
    push = build_push(notification=Notification(body="x"), android=AndroidOptions("normal"))
    assert message_of(push) == {"notification": {"body": "x"}, "android": {"priority": "NORMAL"}}


def test_empty_message_is_just_the_token() -> None:
    push = build_push()
    assert push.fields == b""
    assert body_for(TOKEN, push) == b'{"message":{"token":"' + TOKEN.encode() + b'"}}'
    # Empty parts are left out rather than sent as {}.
    assert build_push(data={}, notification=Notification(), apns=ApnsOptions()).fields == b""


def test_non_ascii_is_utf8_not_escaped() -> None:
    push = build_push(data={"t": "héllo ✓"})
    assert "héllo ✓".encode() in push.fields
    assert message_of(push) == {"data": {"t": "héllo ✓"}}


@pytest.mark.parametrize(
    ("ttl", "expiration", "wire"),
    [(0, 0, "0s"), (1, int(NOW) + 1, "1s"), (MAX_TTL, int(NOW) + MAX_TTL, "2419200s")],
)
def test_ttl(ttl: int, expiration: int, wire: str) -> None:
    push = build_push(android=AndroidOptions(ttl=ttl), now=NOW)
    assert push.expiration == expiration
    assert message_of(push)["android"]["ttl"] == wire


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"data": {"n": 2}}, "data['n']: must be a string, not int"),
    ({"data": {"n": None}}, "data['n']: must be a string"),
    ({"data": {3: "x"}}, "data key: must be a string"),
    ({"data": {"": "x"}}, "data: empty key"),
    ({"data": {"from": "x"}}, "data: key 'from' is reserved"),
    ({"data": {"message_type": "x"}}, "data: key 'message_type' is reserved"),
    ({"data": {"collapse_key": "x"}}, "data: key 'collapse_key' is reserved"),
    ({"data": {"gcm": "x"}}, "data: key 'gcm' is reserved"),
    ({"data": {"gcm.notification.x": "x"}}, "is reserved"),
    ({"data": {"google.c.a.e": "x"}}, "is reserved"),
    ({"data": {"Google": "x"}}, "is reserved"),
    ({"data": {"k": "\ud800"}}, "data['k']: not valid Unicode"),
    ({"notification": Notification(title=5)}, "notification.title: must be a string"),  # type: ignore[arg-type]
    ({"android": AndroidOptions(ttl=-1)}, "android.ttl: must be between 0 and 2419200"),
    ({"android": AndroidOptions(ttl=MAX_TTL + 1)}, "android.ttl: must be between"),
    ({"android": AndroidOptions(ttl=1.5)}, "android.ttl: must be an integer"),  # type: ignore[arg-type]
    ({"android": AndroidOptions(ttl=True)}, "android.ttl: must be an integer"),
    ({"android": AndroidOptions(priority="urgent")}, "android.priority"),  # type: ignore[arg-type]
    ({"android": AndroidOptions(collapse_key=1)}, "android.collapse_key"),  # type: ignore[arg-type]
    ({"apns": ApnsOptions(headers={"apns-priority": 10})}, "apns.headers['apns-priority']"),  # type: ignore[dict-item]
    ({"apns": ApnsOptions(payload={"x": object()})}, "apns.payload: not encodable"),
    ({"apns": ApnsOptions(payload={"x": float("nan")})}, "apns.payload: not encodable"),
    ({"apns": ApnsOptions(payload={"x": "y" * 4100})}, "apns.payload: 4108 bytes > 4096"),
    ({"analytics_label": "has space"}, "fcm_options.analytics_label"),
    ({"analytics_label": "x" * 51}, "fcm_options.analytics_label"),
    ({"analytics_label": ""}, "fcm_options.analytics_label"),
]


@pytest.mark.parametrize(("kwargs", "error"), REFUSED)
def test_refused(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        build_push(**kwargs)
    assert error in str(info.value)


def test_refusals_never_quote_values() -> None:
    with pytest.raises(InvalidMessage) as info:
        build_push(data={"body": "secret text", "x": 1})  # type: ignore[dict-item]
    assert "secret" not in str(info.value)
    with pytest.raises(InvalidMessage) as info:
        build_push(data={"body": "secret" * 1000})
    assert "secret" not in str(info.value)


def test_size_counts_keys_and_values_in_utf8() -> None:
    assert payload_size({"ab": "cd", "é": "✓"}, None) == 4 + 2 + 3
    assert payload_size(None, Notification(title="t", body="bb")) == len("title") + 1 + 4 + 2
    assert payload_size({"k": "v"}, Notification(body="b")) == 2 + 5


def test_size_limit_boundary() -> None:
    fits = {"k": "v" * (PAYLOAD_LIMIT - 1)}
    build_push(data=fits)
    with pytest.raises(InvalidMessage, match=r"data: payload of 4097 bytes > 4096"):
        build_push(data={"k": "v" * PAYLOAD_LIMIT})
    # The notification counts too.
    with pytest.raises(InvalidMessage, match="payload of"):
        build_push(data=fits, notification=Notification(body="x"))
    # Multi-byte characters count as bytes, not characters.
    with pytest.raises(InvalidMessage, match="payload of"):
        build_push(data={"k": "é" * 2048})


def test_repr_hides_fields() -> None:
    push = build_push(data={"secret": "text"})
    assert "text" not in repr(push)


@pytest.mark.parametrize(
    "token",
    [
        'abc"def',
        "abc\\def",
        "abc def",
        "abc\ndef",
        "abcdéf",
        "abc\x00",
        "a" * 4097,
        "<script>",
        "a}b",
    ],
)
def test_unsafe_tokens_are_never_spliced(token: str) -> None:
    with pytest.raises(InvalidToken, match="not a valid FCM registration token"):
        body_for(token, build_push(data={"k": "v"}))


def test_empty_token() -> None:
    with pytest.raises(InvalidToken, match="token: missing"):
        body_for("", build_push())


@pytest.mark.parametrize("token", [TOKEN, "a", "abc:def-ghi_jkl.mno+pq/rs=", "0" * 4096])
def test_token_shapes_accepted(token: str) -> None:
    assert message_of(build_push(data={"k": "v"}), token) == {"data": {"k": "v"}}
