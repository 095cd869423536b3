"""Sygnal's APNs and FCM payloads from Matrix notify requests (protocol notes §2, §3, §5.3).

Requests go through the real parser (:func:`wire.parse_notify`), so each case reads like
the JSON a homeserver sends.  Expected payloads are compared whole, as JSON values.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

import pytest

from pushd.config import MatrixAppOptions
from pushd.frontends.matrix import payloads, wire
from pushd.frontends.matrix.payloads import (
    ELLIPSIS,
    FIELD_MAX_BYTES,
    NAME_MAX_CHARS,
    TRUNCATED_BYTES,
    PayloadError,
    apns_payload,
    apns_push,
    apns_token,
    default_payload,
    fcm_data,
    fcm_push,
    is_event_id_only,
    truncate_apns,
)
from pushd.model import FcmPush
from pushd.upstream.apns.request import PAYLOAD_LIMIT, VOIP_PAYLOAD_LIMIT
from pushd.upstream.fcm.message import PAYLOAD_LIMIT as FCM_LIMIT
from pushd.upstream.fcm.message import check_data

TOKEN_BYTES = bytes(range(0xA0, 0xC0))  # 32 bytes, like today's APNs tokens
TOKEN_HEX = TOKEN_BYTES.hex()
PUSHKEY = base64.b64encode(TOKEN_BYTES).decode()
OPTIONS = MatrixAppOptions(app_ids=("im.vector.app.ios",))
ELEMENT_IOS_DEFAULT = {
    "aps": {"mutable-content": 1, "alert": {"loc-key": "Notification", "loc-args": []}}
}
ROOM_ID = "!slw48wfj34rtnrf:example.com"
EVENT_ID = "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs"


def parse(
    notification: dict[str, Any], device: dict[str, Any] | None = None
) -> tuple[wire.Notification, wire.Device]:
    """One notify request with one device, through the real parser."""
    device_json = {"app_id": "im.vector.app.ios", "pushkey": PUSHKEY, **(device or {})}
    body = {"notification": {**notification, "devices": [device_json]}}
    parsed = wire.parse_notify(json.dumps(body).encode())
    return parsed, parsed.devices[0]


def options(**changes: Any) -> MatrixAppOptions:
    return MatrixAppOptions(app_ids=("im.vector.app.ios",), **changes)


def apns_json(
    notification: dict[str, Any],
    device: dict[str, Any] | None = None,
    opts: MatrixAppOptions = OPTIONS,
) -> Any:
    """The payload as APNs receives it: built, truncated, encoded, decoded again."""
    n, d = parse(notification, device)
    push = apns_push(n, d, opts)
    return None if push is None else json.loads(push.payload)


def fcm_message(push: FcmPush) -> dict[str, Any]:
    """The v1 ``message`` object of ``push`` (``fields`` are its members, no braces)."""
    assert not push.fields.startswith(b"{")
    message: dict[str, Any] = json.loads(b"{" + push.fields + b"}")
    assert "token" not in message
    return message


def message_event(**fields: Any) -> dict[str, Any]:
    """A Synapse full-format message notification."""
    return {
        "event_id": EVENT_ID,
        "room_id": ROOM_ID,
        "type": "m.room.message",
        "sender": "@tom:example.com",
        "prio": "high",
        **fields,
    }


# --- The loc-key table (§2.5) --------------------------------------------------------

TEXT = {"msgtype": "m.text", "body": "I'm floating"}
IMAGE = {"msgtype": "m.image", "body": "earth.png", "url": "mxc://x/y"}
EMOTE = {"msgtype": "m.emote", "body": "waves"}
NOTICE = {"msgtype": "m.notice", "body": "Ground control"}
NAMED = {"sender_display_name": "Major Tom", "room_name": "Mission Control"}
UNNAMED = {"sender_display_name": "Major Tom"}
VIDEO_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
AUDIO_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"

LOC_KEY_TABLE: list[tuple[str, dict[str, Any], str, list[str]]] = [
    # (case, notification fields, loc-key, loc-args)
    (
        "image in room",
        {**NAMED, "content": IMAGE},
        "IMAGE_FROM_USER_IN_ROOM",
        ["Major Tom", "earth.png", "Mission Control"],
    ),
    (
        "emote in room",
        {**NAMED, "content": EMOTE},
        "ACTION_FROM_USER_IN_ROOM",
        ["Mission Control", "Major Tom", "waves"],
    ),
    (
        "text in room",
        {**NAMED, "content": TEXT},
        "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
        ["Major Tom", "Mission Control", "I'm floating"],
    ),
    (
        "other msgtype in room",
        {**NAMED, "content": NOTICE},
        "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
        ["Major Tom", "Mission Control", "Ground control"],
    ),
    (
        "encrypted in room",
        {
            **NAMED,
            "type": "m.room.encrypted",
            "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"},
        },
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    ("no content in room", NAMED, "MSG_FROM_USER_IN_ROOM", ["Major Tom", "Mission Control"]),
    (
        "body without msgtype",
        {**NAMED, "content": {"body": "hi"}},
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    (
        "msgtype without body",
        {**NAMED, "content": {"msgtype": "m.text"}},
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    (
        "empty text body",
        {**NAMED, "content": {"msgtype": "m.text", "body": ""}},
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    (
        "empty emote body",
        {**NAMED, "content": {"msgtype": "m.emote", "body": ""}},
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    (
        "non-string body",
        {**NAMED, "content": {"msgtype": "m.image", "body": 7}},
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    (
        "decrypted-type text",
        {**NAMED, "type": "m.room.encrypted", "content": TEXT},
        "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
        ["Major Tom", "Mission Control", "I'm floating"],
    ),
    (
        "room alias",
        {**UNNAMED, "room_alias": "#mc:example.com", "content": TEXT},
        "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
        ["Major Tom", "#mc:example.com", "I'm floating"],
    ),
    (
        "empty room name, alias",
        {**UNNAMED, "room_name": "", "room_alias": "#mc:x"},
        "MSG_FROM_USER_IN_ROOM",
        ["Major Tom", "#mc:x"],
    ),
    (
        "image, no room",
        {**UNNAMED, "content": IMAGE},
        "IMAGE_FROM_USER",
        ["Major Tom", "earth.png"],
    ),
    ("emote, no room", {**UNNAMED, "content": EMOTE}, "ACTION_FROM_USER", ["Major Tom", "waves"]),
    (
        "text, no room",
        {**UNNAMED, "content": TEXT},
        "MSG_FROM_USER_WITH_CONTENT",
        ["Major Tom", "I'm floating"],
    ),
    ("nothing, no room", UNNAMED, "MSG_FROM_USER", ["Major Tom"]),
    (
        "video call",
        {
            **NAMED,
            "type": "m.call.invite",
            "content": {"call_id": "c", "offer": {"type": "offer", "sdp": VIDEO_SDP}},
        },
        "VIDEO_CALL_FROM_USER",
        ["Major Tom"],
    ),
    (
        "voice call",
        {
            **NAMED,
            "type": "m.call.invite",
            "content": {"call_id": "c", "offer": {"type": "offer", "sdp": AUDIO_SDP}},
        },
        "VOICE_CALL_FROM_USER",
        ["Major Tom"],
    ),
    (
        "call without offer",
        {**NAMED, "type": "m.call.invite", "content": {"call_id": "c"}},
        "VOICE_CALL_FROM_USER",
        ["Major Tom"],
    ),
    (
        "call with odd offer",
        {**NAMED, "type": "m.call.invite", "content": {"offer": "m=video"}},
        "VOICE_CALL_FROM_USER",
        ["Major Tom"],
    ),
    (
        "invite to named room",
        {**NAMED, "type": "m.room.member", "membership": "invite", "user_is_target": True},
        "USER_INVITE_TO_NAMED_ROOM",
        ["Major Tom", "Mission Control"],
    ),
    (
        "invite to aliased room",
        {
            **UNNAMED,
            "type": "m.room.member",
            "membership": "invite",
            "user_is_target": True,
            "room_alias": "#mc:x",
        },
        "USER_INVITE_TO_NAMED_ROOM",
        ["Major Tom", "#mc:x"],
    ),
    (
        "invite to chat",
        {**UNNAMED, "type": "m.room.member", "membership": "invite", "user_is_target": True},
        "USER_INVITE_TO_CHAT",
        ["Major Tom"],
    ),
    (
        "other type",
        {**NAMED, "type": "m.sticker", "content": {"body": "x"}},
        "MSG_FROM_USER",
        ["Major Tom"],
    ),
    ("sender when no display name", {"type": "m.sticker"}, "MSG_FROM_USER", ["@tom:example.com"]),
    ("space when no sender", {"type": "m.sticker", "sender": None}, "MSG_FROM_USER", [" "]),
    (
        "sender when empty display name",
        {"type": "m.sticker", "sender_display_name": ""},
        "MSG_FROM_USER",
        ["@tom:example.com"],
    ),
]


@pytest.mark.parametrize(
    ("fields", "loc_key", "loc_args"),
    [row[1:] for row in LOC_KEY_TABLE],
    ids=[row[0] for row in LOC_KEY_TABLE],
)
def test_loc_key_table(fields: dict[str, Any], loc_key: str, loc_args: list[str]) -> None:
    payload = apns_json(message_event(**fields))
    assert payload == {
        "aps": {"alert": {"loc-key": loc_key, "loc-args": loc_args}},
        "room_id": ROOM_ID,
        "event_id": EVENT_ID,
    }


NO_LOC_KEY: list[tuple[str, dict[str, Any]]] = [
    ("member join", {"type": "m.room.member", "membership": "join", "user_is_target": True}),
    ("invite of someone else", {"type": "m.room.member", "membership": "invite"}),
    ("member, target, no membership", {"type": "m.room.member", "user_is_target": True}),
    ("empty type, no event", {"type": "", "event_id": None}),
]


@pytest.mark.parametrize("fields", [row[1] for row in NO_LOC_KEY], ids=[r[0] for r in NO_LOC_KEY])
def test_no_loc_key(fields: dict[str, Any]) -> None:
    """No alert and no count: nothing to send; with a count: the badge alone."""
    assert apns_json(message_event(**fields)) is None
    assert apns_json(message_event(**fields, counts={"unread": 4})) == {"aps": {"badge": 4}}


def test_names_are_cut_to_1024_characters() -> None:
    long_name = "é" * (NAME_MAX_CHARS + 10)
    n, device = parse(message_event(sender_display_name=long_name, room_name=long_name))
    payload = apns_payload(n, device, OPTIONS)
    assert payload is not None
    assert payload["aps"]["alert"]["loc-args"] == ["é" * 1024, "é" * 1024]
    invite = message_event(
        type="m.room.member", membership="invite", user_is_target=True, room_alias=long_name
    )
    n, device = parse(invite)
    payload = apns_payload(n, device, OPTIONS)
    assert payload is not None
    assert payload["aps"]["alert"]["loc-args"] == ["@tom:example.com", "é" * 1024]


# --- Sygnal's APNs examples (§2.3 to §2.5) --------------------------------------------


def test_sygnal_full_example() -> None:
    notification = message_event(
        sender="@exampleuser:matrix.org",
        sender_display_name="Major Tom",
        room_name="Mission Control",
        content={"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
        counts={"unread": 2, "missed_calls": 1},
    )
    assert apns_json(notification) == {
        "aps": {
            "alert": {
                "loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                "loc-args": [
                    "Major Tom",
                    "Mission Control",
                    "I'm floating in a most peculiar way.",
                ],
            },
            "badge": 3,
        },
        "room_id": ROOM_ID,
        "event_id": EVENT_ID,
    }


def test_element_ios_event_id_only() -> None:
    notification = {
        "event_id": "$ev",
        "room_id": "!r:example.org",
        "prio": "high",
        "counts": {"unread": 2},
    }
    device = {"data": {"format": "event_id_only", "default_payload": ELEMENT_IOS_DEFAULT}}
    assert apns_json(notification, device) == {
        "aps": {"mutable-content": 1, "alert": {"loc-key": "Notification", "loc-args": []}},
        "room_id": "!r:example.org",
        "event_id": "$ev",
        "unread_count": 2,
    }


SYNAPSE_BADGE_UPDATE = {
    "notification": {
        "id": "",
        "type": None,
        "sender": "",
        "counts": {"unread": 0},
        "devices": [
            {
                "app_id": "im.vector.app.ios",
                "pushkey": "dGVzdA==",
                "pushkey_ts": 1700000000,
                "data": {
                    "format": "event_id_only",
                    "default_payload": {"aps": {"mutable-content": 1}},
                },
            }
        ],
    }
}


def test_synapse_badge_update_takes_the_full_path() -> None:
    """``data.format`` says event_id_only, but there is no event: a badge-only push,
    without the default payload."""
    n = wire.parse_notify(json.dumps(SYNAPSE_BADGE_UPDATE).encode())
    assert not is_event_id_only(n)
    assert apns_payload(n, n.devices[0], OPTIONS) == {"aps": {"badge": 0}}
    push = apns_push(n, n.devices[0], OPTIONS)
    assert push is not None
    assert push.payload == b'{"aps":{"badge":0}}'
    assert (push.push_type, push.priority) == ("alert", 10)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"event_id": "$e"}, True),
        ({"event_id": "$e", "type": None}, True),
        ({"event_id": "$e", "type": ""}, True),
        ({"event_id": "$e", "type": "m.room.message"}, False),
        ({"type": "m.room.message"}, False),
        ({"event_id": "", "type": None}, False),
        ({}, False),
    ],
)
def test_event_id_only_detection(fields: dict[str, Any], expected: bool) -> None:
    n, _ = parse(fields, {"data": {"format": "event_id_only"}})
    assert is_event_id_only(n) is expected
    n, _ = parse(fields)  # the pusher's format never matters
    assert is_event_id_only(n) is expected


def test_full_format_pusher_with_event_id_only_request() -> None:
    """A full-format pusher still gets the event_id_only payload for such a request."""
    payload = apns_json({"event_id": "$e", "room_id": "!r:x", "counts": {"unread": 0}})
    assert payload == {"room_id": "!r:x", "event_id": "$e", "unread_count": 0}


def test_event_id_only_passes_default_payload_through() -> None:
    default = {**ELEMENT_IOS_DEFAULT, "pusher_notification_client_identifier": "abc"}
    notification = {"event_id": "$e", "room_id": "!r:x", "counts": {"unread": 0, "missed_calls": 2}}
    n, device = parse(notification, {"data": {"default_payload": default}})
    assert apns_payload(n, device, OPTIONS) == {
        **default,
        "room_id": "!r:x",
        "event_id": "$e",
        "unread_count": 0,
        "missed_calls": 2,
    }
    without_counts = apns_payload(n, device, options(send_badge_counts=False))
    assert without_counts == {**default, "room_id": "!r:x", "event_id": "$e"}


def test_full_path_uses_and_copies_the_default_payload() -> None:
    default = {
        "aps": {
            "mutable-content": 1,
            "alert": {"title-loc-key": "T", "loc-key": "X", "loc-args": ["y"]},
        },
        "extra": {"nested": [1]},
    }
    n, device = parse(
        message_event(content=TEXT, counts={"unread": 1}), {"data": {"default_payload": default}}
    )
    before = copy.deepcopy(device.data)
    payload = apns_payload(n, device, OPTIONS)
    assert payload == {
        "aps": {
            "mutable-content": 1,
            "alert": {
                "title-loc-key": "T",
                "loc-key": "MSG_FROM_USER_WITH_CONTENT",
                "loc-args": ["@tom:example.com", "I'm floating"],
            },
            "badge": 1,
        },
        "extra": {"nested": [1]},
        "room_id": ROOM_ID,
        "event_id": EVENT_ID,
    }
    # Built without writing into the homeserver's payload (the next device's may be
    # compared with it); what the payload does not change is shared, not copied.
    assert device.data == before
    assert payload["extra"] is device.data["default_payload"]["extra"]


@pytest.mark.parametrize("alert", ["Hello", ["x"], 5])
def test_default_alert_that_is_not_an_object_is_replaced(alert: Any) -> None:
    device = {"data": {"default_payload": {"aps": {"alert": alert, "sound": "a.caf"}}}}
    payload = apns_json(message_event(), device)
    assert payload["aps"] == {
        "alert": {"loc-key": "MSG_FROM_USER", "loc-args": ["@tom:example.com"]},
        "sound": "a.caf",
    }


def test_default_aps_that_is_not_an_object_is_replaced() -> None:
    payload = apns_json(message_event(), {"data": {"default_payload": {"aps": "x", "k": 1}}})
    assert payload == {
        "aps": {"alert": {"loc-key": "MSG_FROM_USER", "loc-args": ["@tom:example.com"]}},
        "k": 1,
        "room_id": ROOM_ID,
        "event_id": EVENT_ID,
    }


def test_badge_only_keeps_default_alert_untouched() -> None:
    """With a type but no loc-key, the default payload is sent with the badge alone."""
    device = {"data": {"default_payload": {"aps": {"alert": "Hi"}}}}
    fields = {"type": "m.room.member", "membership": "leave", "counts": {"missed_calls": 2}}
    assert apns_json(message_event(**fields), device) == {"aps": {"alert": "Hi", "badge": 2}}


def test_send_badge_counts_false() -> None:
    no_badges = options(send_badge_counts=False)
    assert apns_json(message_event(counts={"unread": 3}), opts=no_badges) == {
        "aps": {"alert": {"loc-key": "MSG_FROM_USER", "loc-args": ["@tom:example.com"]}},
        "room_id": ROOM_ID,
        "event_id": EVENT_ID,
    }
    n = wire.parse_notify(json.dumps(SYNAPSE_BADGE_UPDATE).encode())
    assert apns_push(n, n.devices[0], no_badges) is None
    assert fcm_push(n, n.devices[0], no_badges) is None


@pytest.mark.parametrize(
    ("prio", "push_type", "priority"),
    [
        ("high", "alert", 10),
        ("low", "alert", 5),
        ("high", "background", 5),
        ("low", "background", 5),
        ("high", "voip", 10),
    ],
)
def test_apns_priority(prio: str, push_type: str, priority: int) -> None:
    n, device = parse(message_event(prio=prio))
    push = apns_push(n, device, options(push_type=push_type))
    assert push is not None
    assert (push.push_type, push.priority, push.expiration, push.collapse_id) == (
        push_type,
        priority,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("enabled", "tweaks", "fields", "sound"),
    [
        (False, {"sound": "default"}, {}, None),
        (True, {"sound": "default"}, {}, "default"),
        (True, {}, {}, None),
        (True, {"sound": "ring.caf"}, {"type": "m.room.member"}, None),  # no loc-key
    ],
)
def test_sound_from_tweaks(
    enabled: bool, tweaks: dict[str, Any], fields: dict[str, Any], sound: str | None
) -> None:
    fields = {**fields, "counts": {"unread": 1}}
    payload = apns_json(
        message_event(**fields), {"tweaks": tweaks}, options(sound_from_tweaks=enabled)
    )
    assert payload["aps"].get("sound") == sound


def test_sound_from_tweaks_not_on_event_id_only() -> None:
    payload = apns_json(
        {"event_id": "$e"}, {"tweaks": {"sound": "default"}}, options(sound_from_tweaks=True)
    )
    assert payload == {"event_id": "$e"}


def test_no_default_payload_and_no_aps_on_event_id_only() -> None:
    assert apns_json({"event_id": "$e", "room_id": "!r:x"}) == {"room_id": "!r:x", "event_id": "$e"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, {}),
        ({"default_payload": None}, {}),
        ({"default_payload": {"a": 1}}, {"a": 1}),
        ({"default_payload": []}, None),
        ({"default_payload": "x"}, None),
        ({"default_payload": 3}, None),
    ],
)
def test_default_payload(data: dict[str, Any], expected: dict[str, Any] | None) -> None:
    _, device = parse({}, {"data": data})
    assert default_payload(device) == expected


def test_bad_default_payload_is_a_payload_error() -> None:
    """The frontend rejects such a pushkey first; building anyway is an error."""
    n, device = parse(message_event(), {"data": {"default_payload": ["x"]}})
    with pytest.raises(PayloadError):
        apns_payload(n, device, OPTIONS)
    with pytest.raises(PayloadError):
        fcm_data(n, device, OPTIONS)


# --- Pushkeys (§2.2) ------------------------------------------------------------------

TOKEN_CASES: list[tuple[str, str, bool, str | None]] = [
    ("padded base64", PUSHKEY, True, TOKEN_HEX),
    ("unpadded base64", PUSHKEY.rstrip("="), True, TOKEN_HEX),
    (
        "url-safe base64",
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
        True,
        (b"\xfb\xff" * 16).hex(),
    ),
    (
        "url-safe unpadded",
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode().rstrip("="),
        True,
        (b"\xfb\xff" * 16).hex(),
    ),
    ("hex passed through", TOKEN_HEX, False, TOKEN_HEX),
    ("upper-case hex lowered", TOKEN_HEX.upper(), False, TOKEN_HEX),
    ("base64 with convert off", PUSHKEY, False, None),
    ("not base64", "not*base64" * 5, True, None),
    ("bad length", PUSHKEY.rstrip("=") + "AB", True, None),
    ("padding inside", PUSHKEY[:8] + "=" + PUSHKEY[9:], True, None),
    ("non-ASCII", "é" * 44, True, None),
    ("too short a token", base64.b64encode(b"short").decode(), True, None),
    ("empty", "", True, None),
    ("odd hex", TOKEN_HEX + "a", False, None),
]


@pytest.mark.parametrize(
    ("pushkey", "convert", "expected"),
    [row[1:] for row in TOKEN_CASES],
    ids=[row[0] for row in TOKEN_CASES],
)
def test_apns_token(pushkey: str, convert: bool, expected: str | None) -> None:
    assert apns_token(pushkey, convert) == expected
    assert apns_token(pushkey, convert) == expected  # remembered: the same answer again


def test_decoded_pushkeys_are_remembered_within_bounds() -> None:
    """A base64 pushkey is decoded once (a homeserver names its pushers again and
    again); a long one (a 512 KB notify can carry one) is decoded but never kept, and
    the number kept is capped."""
    payloads._remembered_token.cache_clear()
    token = (b"\x01\x02" * 16).hex()
    pushkey = base64.b64encode(bytes.fromhex(token)).decode()
    assert apns_token(pushkey, True) == token
    assert apns_token(pushkey, True) == token
    info = payloads._remembered_token.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)
    long_pushkey = pushkey + "=" * payloads.REMEMBERED_PUSHKEY_CHARS  # still decodes
    assert apns_token(long_pushkey, True) == token
    assert payloads._remembered_token.cache_info().currsize == 1
    assert apns_token("A" * 400, True) is None
    assert payloads._remembered_token.cache_info().currsize == 1
    for n in range(payloads.DECODED_TOKENS + 10):
        apns_token(base64.b64encode(n.to_bytes(32, "big")).decode(), True)
    assert payloads._remembered_token.cache_info().currsize == payloads.DECODED_TOKENS


def test_hex_pushkey_with_convert_on_is_the_pitfall() -> None:
    """A hex token is valid base64: with the option mis-set it decodes to 48 bytes, a
    96-character "token" that is plausible by length, so it is *not* refused here, and
    APNs answers BadDeviceToken (notes §2.2)."""
    token = apns_token(TOKEN_HEX, True)
    assert token is not None
    assert len(token) == 96
    assert token != TOKEN_HEX


# --- APNs truncation (§2.7) -----------------------------------------------------------


def compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def naive_truncate(payload: dict[str, Any], limit: int) -> bytes:
    """Sygnal's loop, literally, on the compact encoding: one character at a time."""
    payload = copy.deepcopy(payload)
    while len(compact(payload)) > limit:
        aps = payload.get("aps")
        if not isinstance(aps, dict):
            raise PayloadError("no aps")
        slots: list[tuple[Any, Any]] = []
        alert = aps.get("alert")
        if isinstance(alert, str):
            slots.append((aps, "alert"))
        elif isinstance(alert, dict):
            if isinstance(alert.get("body"), str):
                slots.append((alert, "body"))
            for index, arg in enumerate(alert.get("loc-args", [])):
                if isinstance(arg, str):
                    slots.append((alert["loc-args"], index))
        longest, longest_bytes = None, 0
        for container, key in slots:
            size = len(container[key].encode())
            if size > longest_bytes:
                longest, longest_bytes = (container, key), size
        if longest is None:
            raise PayloadError("nothing to chop")
        container, key = longest
        container[key] = container[key][:-1]
    return compact(payload)


def loc_args_payload(*args: str, **extra: Any) -> dict[str, Any]:
    return {
        "aps": {"alert": {"loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT", "loc-args": list(args)}},
        "room_id": ROOM_ID,
        **extra,
    }


#: The size of the payload below with its loc-args emptied.
EMPTIED = len(compact(loc_args_payload("", "", filler="z" * 150)))

TRUNCATION_CASES: list[tuple[str, dict[str, Any], int]] = [
    ("fits", loc_args_payload("a", "b"), PAYLOAD_LIMIT),
    ("long body", loc_args_payload("Tom", "Room", "x" * 5000), PAYLOAD_LIMIT),
    ("long loc-args", loc_args_payload("T" * 3000, "R" * 3000, "b" * 3000), PAYLOAD_LIMIT),
    ("equal loc-args", loc_args_payload("a" * 100, "b" * 100, "c" * 100), 200),
    ("two-byte chars", loc_args_payload("é" * 3000, "ab"), PAYLOAD_LIMIT),
    ("four-byte chars", loc_args_payload("x", "😀" * 1500), PAYLOAD_LIMIT),
    ("mixed widths", loc_args_payload("aé😀" * 400, "é" * 700, "漢" * 500), 1000),
    ("escapes", loc_args_payload('"\\\n\x01' * 400, "plain" * 100), 900),
    ("alert string", {"aps": {"alert": "y" * 5000, "badge": 2}}, PAYLOAD_LIMIT),
    (
        "alert body and loc-args",
        {"aps": {"alert": {"body": "b" * 3000, "loc-args": ["a" * 2000, 5]}}},
        PAYLOAD_LIMIT,
    ),
    ("voip limit", loc_args_payload("x" * 4500), VOIP_PAYLOAD_LIMIT),
    # Emptied all but one character: just fits.
    ("down to one character", loc_args_payload("abc", "def", filler="z" * 150), EMPTIED + 1),
    ("down to empty strings", loc_args_payload("abc", "def", filler="z" * 150), EMPTIED),
]


@pytest.mark.parametrize(
    ("payload", "limit"),
    [row[1:] for row in TRUNCATION_CASES],
    ids=[row[0] for row in TRUNCATION_CASES],
)
def test_truncation_matches_sygnals_loop(payload: dict[str, Any], limit: int) -> None:
    before = copy.deepcopy(payload)
    result = truncate_apns(payload, limit)
    assert result == naive_truncate(payload, limit)
    assert len(result) <= limit
    json.loads(result)  # whole characters only: a split one would not decode
    assert payload == before  # the caller's dicts are untouched


def random_text(rng: random.Random, length: int) -> str:
    alphabet = "ab c" + "é漢" + "😀" + '"\\\n\x02'
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize("seed", range(40))
def test_truncation_matches_sygnals_loop_on_random_payloads(seed: int) -> None:
    rng = random.Random(seed)
    args = [random_text(rng, rng.randrange(0, 120)) for _ in range(rng.randrange(1, 5))]
    alert: dict[str, Any] = {"loc-key": "K", "loc-args": args}
    if rng.random() < 0.5:
        alert["body"] = random_text(rng, rng.randrange(0, 200))
    payload = {"aps": {"alert": alert}, "room_id": random_text(rng, rng.randrange(0, 40))}
    size = len(compact(payload))
    limit = rng.randrange(max(size // 4, 1), size + 2)
    try:
        expected = naive_truncate(payload, limit)
    except PayloadError:
        with pytest.raises(PayloadError):
            truncate_apns(payload, limit)
        return
    assert truncate_apns(payload, limit) == expected


def test_truncation_measures_compact_json() -> None:
    """4096 bytes of compact JSON is the limit, not Sygnal's spaced encoding."""
    payload = loc_args_payload("x")
    filler = PAYLOAD_LIMIT - len(compact(payload))
    payload = loc_args_payload("x" * (1 + filler))
    result = truncate_apns(payload, PAYLOAD_LIMIT)
    assert len(result) == PAYLOAD_LIMIT
    assert len(json.dumps(payload, ensure_ascii=False).encode()) > PAYLOAD_LIMIT


def test_multibyte_characters_are_never_split() -> None:
    payload = loc_args_payload("Tom", "😀" * 3000)
    result = json.loads(truncate_apns(payload, PAYLOAD_LIMIT))
    body = result["aps"]["alert"]["loc-args"][1]
    assert body == "😀" * len(body)
    assert len(compact(result)) <= PAYLOAD_LIMIT < len(compact(result)) + 4


def test_megabyte_body() -> None:
    body = ("Ground control to Major Tom é漢😀 " * 40_000)[:1_000_000]
    payload = loc_args_payload("Major Tom", "Mission Control", body)
    result = truncate_apns(payload, PAYLOAD_LIMIT)
    assert len(result) <= PAYLOAD_LIMIT
    args = json.loads(result)["aps"]["alert"]["loc-args"]
    assert args[:2] == ["Major Tom", "Mission Control"]
    assert body.startswith(args[2])
    # As long as it can be: one more character would not fit.
    longer = loc_args_payload("Major Tom", "Mission Control", body[: len(args[2]) + 1])
    assert len(compact(longer)) > PAYLOAD_LIMIT


def test_untouchable_default_payload_too_large() -> None:
    payload = loc_args_payload("Tom", "body", blob="x" * PAYLOAD_LIMIT)
    with pytest.raises(PayloadError) as raised:
        truncate_apns(payload, PAYLOAD_LIMIT)
    assert "xxxx" not in str(raised.value)
    n, device = parse(
        message_event(content=TEXT), {"data": {"default_payload": {"blob": "x" * PAYLOAD_LIMIT}}}
    )
    with pytest.raises(PayloadError):
        apns_push(n, device, OPTIONS)


def test_too_large_even_when_emptied() -> None:
    payload = loc_args_payload("abc", "def", filler="z" * 150)
    with pytest.raises(PayloadError):
        naive_truncate(payload, EMPTIED - 1)
    with pytest.raises(PayloadError):
        truncate_apns(payload, EMPTIED - 1)


def test_too_large_without_aps() -> None:
    with pytest.raises(PayloadError):
        truncate_apns({"blob": "x" * PAYLOAD_LIMIT}, PAYLOAD_LIMIT)
    assert truncate_apns({"blob": "x"}, PAYLOAD_LIMIT) == b'{"blob":"x"}'


def test_event_id_only_payload_too_large_is_an_error() -> None:
    """Nothing is choppable in an event_id_only payload (its alert has no text)."""
    default = {**ELEMENT_IOS_DEFAULT, "blob": "x" * PAYLOAD_LIMIT}
    n, device = parse({"event_id": "$e"}, {"data": {"default_payload": default}})
    with pytest.raises(PayloadError):
        apns_push(n, device, OPTIONS)


def test_apns_push_truncates_a_long_message() -> None:
    n, device = parse(
        message_event(room_name="R", content={"msgtype": "m.text", "body": "é" * 9000})
    )
    push = apns_push(n, device, OPTIONS)
    assert push is not None
    assert len(push.payload) <= PAYLOAD_LIMIT
    payload = json.loads(push.payload)
    assert payload["room_id"] == ROOM_ID
    assert payload["event_id"] == EVENT_ID
    loc_args = payload["aps"]["alert"]["loc-args"]
    assert loc_args[:2] == ["@tom:example.com", "R"]
    assert 1000 < len(loc_args[2]) < 9000


# --- FCM (§3) -------------------------------------------------------------------------


def fcm(
    notification: dict[str, Any],
    device: dict[str, Any] | None = None,
    opts: MatrixAppOptions = OPTIONS,
) -> dict[str, Any] | None:
    n, d = parse(
        notification, {"app_id": "im.vector.app.android", "pushkey": "fcm:tok", **(device or {})}
    )
    push = fcm_push(n, d, opts)
    return None if push is None else fcm_message(push)


def test_fcm_full_example() -> None:
    notification = {
        "event_id": "$3957tyerfgewrf384",
        "room_id": "!r:example.org",
        "type": "m.room.message",
        "sender": "@u:example.org",
        "sender_display_name": "Major Tom",
        "room_name": "Mission Control",
        "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating…", "m.relates_to": {"x": 1}, "n": 3},
        "counts": {"unread": 2},
    }
    assert fcm(notification) == {
        "data": {
            "event_id": "$3957tyerfgewrf384",
            "type": "m.room.message",
            "sender": "@u:example.org",
            "room_name": "Mission Control",
            "sender_display_name": "Major Tom",
            "content_msgtype": "m.text",
            "content_body": "I'm floating…",
            "room_id": "!r:example.org",
            "prio": "high",
            "unread": "2",
        },
        "android": {"priority": "HIGH"},
    }


def test_fcm_event_id_only_example() -> None:
    notification = {
        "event_id": "$ev",
        "room_id": "!r:example.org",
        "prio": "low",
        "counts": {"unread": 2},
    }
    device = {"data": {"format": "event_id_only", "default_payload": {"cs": "secret"}}}
    assert fcm(notification, device) == {
        "data": {
            "cs": "secret",
            "event_id": "$ev",
            "room_id": "!r:example.org",
            "prio": "normal",
            "unread": "2",
        },
        "android": {"priority": "NORMAL"},
    }


def test_fcm_badge_update() -> None:
    notification = {"id": "", "type": None, "sender": "", "counts": {"unread": 3}}
    assert fcm(notification, {"data": {"default_payload": {"cs": "s"}}}) == {
        "data": {"cs": "s", "sender": "", "prio": "high", "unread": "3"},
        "android": {"priority": "HIGH"},
    }


@pytest.mark.parametrize(
    ("notification", "opts"),
    [
        ({"id": "", "type": None, "sender": "", "counts": {"unread": 0}}, OPTIONS),
        ({"type": None, "counts": {"unread": 3}}, options(send_badge_counts=False)),
        ({"type": "m.room.message", "sender": "@u:x"}, OPTIONS),
        ({"event_id": "", "room_id": "", "counts": {"missed_calls": 0}}, OPTIONS),
    ],
)
def test_fcm_nothing_to_send(notification: dict[str, Any], opts: MatrixAppOptions) -> None:
    n, device = parse(notification)
    assert fcm_data(n, device, opts) is None
    assert fcm_push(n, device, opts) is None


def test_fcm_counts() -> None:
    counts = {"unread": 0, "missed_calls": 5}
    data = fcm({"room_id": "!r:x", "counts": counts})
    assert data is not None
    assert data["data"] == {"room_id": "!r:x", "prio": "high", "missed_calls": "5"}
    data = fcm({"room_id": "!r:x", "counts": counts}, opts=options(send_badge_counts=False))
    assert data is not None
    assert data["data"] == {"room_id": "!r:x", "prio": "high"}


def test_fcm_copies_every_field() -> None:
    notification = message_event(
        sender_display_name="Tom",
        room_name="Room",
        room_alias="#r:x",
        membership="invite",
        user_is_target=True,
        type="m.room.member",
        content={"membership": "invite", "displayname": "Al"},
    )
    message = fcm(notification, {"tweaks": {"sound": "default"}})
    assert message is not None
    assert message["data"] == {
        "event_id": EVENT_ID,
        "type": "m.room.member",
        "sender": "@tom:example.com",
        "room_name": "Room",
        "room_alias": "#r:x",
        "membership": "invite",
        "sender_display_name": "Tom",
        "content_membership": "invite",
        "content_displayname": "Al",
        "room_id": ROOM_ID,
        "prio": "high",
    }


def test_fcm_default_payload_values_become_strings() -> None:
    default = {"cs": "s", "n": 3, "f": 1.5, "t": True, "o": {"a": [1, "é"]}, "l": [], "z": None}
    message = fcm({"event_id": "$e"}, {"data": {"default_payload": default}})
    assert message is not None
    assert message["data"] == {
        "cs": "s",
        "n": "3",
        "f": "1.5",
        "t": "true",
        "o": '{"a":[1,"é"]}',
        "l": "[]",
        "event_id": "$e",
        "prio": "high",
    }


def test_fcm_notification_overrides_default_keys() -> None:
    default = {"prio": "x", "event_id": "old", "room_name": "kept"}
    message = fcm({"event_id": "$e", "prio": "low"}, {"data": {"default_payload": default}})
    assert message is not None
    assert message["data"] == {"prio": "normal", "event_id": "$e", "room_name": "kept"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * FIELD_MAX_BYTES, "a" * FIELD_MAX_BYTES),
        ("a" * (FIELD_MAX_BYTES + 1), "a" * TRUNCATED_BYTES + ELLIPSIS),
        ("é" * 600, "é" * 510 + ELLIPSIS),  # 1021 bytes would split the 511th
        ("😀" * 300, "😀" * 255 + ELLIPSIS),
        ("a" + "😀" * 300, "a" + "😀" * 255 + ELLIPSIS),
    ],
)
def test_fcm_field_truncation(text: str, expected: str) -> None:
    message = fcm({"event_id": "$e", "room_name": text, "content": {"body": text}})
    assert message is not None
    assert message["data"]["room_name"] == expected
    assert message["data"]["content_body"] == expected
    assert len(expected.encode()) <= FIELD_MAX_BYTES


def test_fcm_data_limit_is_enforced() -> None:
    """Four long texts overflow 4096 bytes: the longest are cut evenly, ids are kept."""
    content = {"msgtype": "m.text", "body": "b" * 5000, "formatted_body": "f" * 5000}
    notification = message_event(
        sender_display_name="s" * 900, room_name="r" * 2000, content=content, counts={"unread": 1}
    )
    message = fcm(notification)
    assert message is not None
    data = message["data"]
    assert check_data(data) <= FCM_LIMIT
    assert check_data(data) > FCM_LIMIT - 16  # no more than needed is cut
    assert data["sender_display_name"] == "s" * 900
    for key in ("room_name", "content_body", "content_formatted_body"):
        assert data[key].endswith(ELLIPSIS)
        assert 900 < len(data[key].encode()) < FIELD_MAX_BYTES
    assert {data["event_id"], data["room_id"], data["sender"], data["type"]} == {
        EVENT_ID,
        ROOM_ID,
        "@tom:example.com",
        "m.room.message",
    }
    assert data["content_msgtype"] == "m.text"


def test_fcm_data_limit_with_many_content_fields() -> None:
    content = {f"k{i}": "é" * 400 for i in range(30)}
    message = fcm(message_event(content=content))
    assert message is not None
    assert check_data(message["data"]) <= FCM_LIMIT
    assert all(message["data"][f"content_k{i}"].endswith(ELLIPSIS) for i in range(30))


def test_fcm_huge_default_payload_is_an_error() -> None:
    device = {"data": {"default_payload": {"blob": "x" * FCM_LIMIT}}}
    n, d = parse(message_event(content=TEXT), device)
    with pytest.raises(PayloadError) as raised:
        fcm_push(n, d, OPTIONS)
    assert "xxxx" not in str(raised.value)


@pytest.mark.parametrize("key", ["from", "collapse_key", "message_type", "google.x", "gcm.n"])
def test_fcm_reserved_key_in_default_payload(key: str) -> None:
    n, device = parse({"event_id": "$e"}, {"data": {"default_payload": {key: "secret-value"}}})
    with pytest.raises(PayloadError) as raised:
        fcm_push(n, device, OPTIONS)
    assert "secret-value" not in str(raised.value)


def test_fcm_options_are_the_base_of_the_message() -> None:
    fcm_options = {
        "android": {"ttl": "3600s", "priority": "normal", "collapse_key": "c"},
        "apns": {"payload": {"aps": {"content-available": 1, "mutable-content": 1}}},
        "token": "from-the-config",
        "data": {"old": "x"},
    }
    before = copy.deepcopy(fcm_options)
    opts = options(fcm_options=fcm_options)
    message = fcm({"event_id": "$e", "prio": "high"}, opts=opts)
    assert message == {
        "android": {"ttl": "3600s", "priority": "HIGH", "collapse_key": "c"},
        "apns": {"payload": {"aps": {"content-available": 1, "mutable-content": 1}}},
        "data": {"event_id": "$e", "prio": "high"},
    }
    assert fcm_options == before
    low = fcm({"event_id": "$e", "prio": "low"}, opts=opts)
    assert low is not None
    assert low["android"]["priority"] == "NORMAL"
    assert low["data"]["prio"] == "normal"


def test_fcm_push_fields() -> None:
    n, device = parse({"event_id": "$e", "room_id": "!r:x"})
    push = fcm_push(n, device, OPTIONS)
    assert push == FcmPush(
        fields=b'"data":{"event_id":"$e","room_id":"!r:x","prio":"high"},'
        b'"android":{"priority":"HIGH"}',
        expiration=None,
    )
