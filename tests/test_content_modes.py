"""Per-app privacy modes (``content = "full" | "redacted" | "id_only"``), end to end.

Every chat server sends here what it really sends (the same request builders as the
protocol tests); the upstream simulators record what pushd made of it, and each test
spells out the exact APNs payload and FCM data per mode.  ``full`` is the protocol's own
payload, unchanged, so each table also shows what the other modes take away.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd import config
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.fcm import FcmSimulator
from tests import matrix_homeserver as hs
from tests import mattermost_client as mm
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, fcm_entry, token
from tests.rocketchat_client import RocketChat, options
from tests.zulip_client import ZulipServer

MODES = ["full", "redacted", "id_only"]
FCM_TOKEN = "content-0001:APA91b" + "c" * 40
MM_SECRET = "content-mm-secret-0123"
RC_SECRET = "content-rc-secret-0123"
HIDDEN = "New message"
APNS, FCM = 1, 2  # Zulip's token kinds


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
async def pushd(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    mode: str,
) -> Pushd:
    """One iOS and one Android app in ``mode``, serving every protocol."""
    upstream = f"https://127.0.0.1:{simulator.port}"
    ios = app_entry("ios", TOPIC, upstream, key_file, ca_file)
    android = fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path)
    ios |= {"mattermost_type": "apple_rn", "matrix": {"app_ids": [hs.IOS_APP]}}
    android |= {"mattermost_type": "android_rn", "matrix": {"app_ids": [hs.ANDROID_APP]}}
    started: Pushd = await start_pushd(
        apps=[{**ios, "content": mode}, {**android, "content": mode}],
        zulip={"registration": "open", "fcm_app": "android"},
        mattermost={"servers": [{"name": "mm", "path_secret": MM_SECRET}]},
        rocketchat={"servers": [{"name": "rc", "path_secret": RC_SECRET}], "fcm_app": "android"},
    )
    return started


def sent(simulator: ApnsSimulator) -> dict[str, Any]:
    (received,) = simulator.received
    payload: dict[str, Any] = json.loads(received.payload)
    return payload


def fcm_message(fcm_simulator: FcmSimulator) -> dict[str, Any]:
    (received,) = fcm_simulator.received
    message: dict[str, Any] = received.message
    return message


# --- Mattermost ---------------------------------------------------------------------------

MM_IDS = {
    "ack_id": "ackid00000000000000000000a",
    "channel_id": "chan0000000000000000000000",
    "team_id": "team0000000000000000000000",
    "post_id": "post0000000000000000000000",
}
MM_COMMON = {
    "type": "message",
    "sub_type": "",
    "server_id": mm.SERVER_ID,
    "is_crt_enabled": False,
    "signature": "eyJhbGciOiJFUzI1NiJ9.e30.sig",
}
MM_APS = {
    "badge": 3,
    "category": "CAN_REPLY",
    "sound": "default",
    "mutable-content": 1,
    "content-available": 1,
    "thread-id": "chan0000000000000000000000",
}
MM_SENDER_ID = {"sender_id": "user0000000000000000000000"}
MM_APNS = {
    "full": {
        "aps": {**MM_APS, "alert": {"title": "Town Square", "body": "alice: secret lunch plans"}},
        "version": "v2",
        "channel_name": "Town Square",
        **MM_COMMON,
        **MM_IDS,
        **MM_SENDER_ID,
        "sender_name": "alice",
    },
    # No names, no sender id; the ids a tap needs stay.
    "redacted": {"aps": {**MM_APS, "alert": HIDDEN}, "version": "v2", **MM_COMMON, **MM_IDS},
    # The server's own id_loaded push: the app fetches the post through its ack.
    "id_only": {
        "aps": {**MM_APS, "alert": {"body": HIDDEN}},
        "version": "v2",
        "id_loaded": True,
        **MM_COMMON,
        **MM_IDS,
        **MM_SENDER_ID,
    },
}
MM_FCM_COMMON = {
    "ack_id": "ackid00000000000000000000a",
    "type": "message",
    "sub_type": "",
    "version": "v2",
    "channel_id": "chan0000000000000000000000",
    "is_crt_enabled": "false",
    "server_id": mm.SERVER_ID,
    "category": "CAN_REPLY",
    "signature": "eyJhbGciOiJFUzI1NiJ9.e30.sig",
    "badge": "3",
    "team_id": "team0000000000000000000000",
    "post_id": "post0000000000000000000000",
}
MM_FCM_MESSAGE = {"override_username": "", "override_icon_url": "", "from_webhook": ""}
MM_FCM = {
    "full": {
        **MM_FCM_COMMON,
        **MM_FCM_MESSAGE,
        "sender_id": "user0000000000000000000000",
        "sender_name": "alice",
        "message": "alice: secret lunch plans",
        "channel_name": "Town Square",
    },
    "redacted": {
        **MM_FCM_COMMON,
        **MM_FCM_MESSAGE,
        "sender_id": "",
        "sender_name": "",
        "message": HIDDEN,
        "channel_name": "",
    },
    "id_only": {
        **MM_FCM_COMMON,
        "message": HIDDEN,
        "id_loaded": "true",
        "sender_id": "user0000000000000000000000",
        "sender_name": "Someone",  # MPNS's fixed id_loaded sender
    },
}


async def test_mattermost(
    pushd: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator, mode: str
) -> None:
    server = mm.MattermostServer(pushd.client, f"{pushd.url}/{MM_SECRET}/")
    assert await server.send(mm.message(token(1))) == {"status": "OK"}
    assert sent(simulator) == MM_APNS[mode]
    assert await server.send(mm.message(FCM_TOKEN, platform=mm.ANDROID)) == {"status": "OK"}
    assert fcm_message(fcm_simulator)["data"] == MM_FCM[mode]


async def test_mattermost_calls_and_session_pushes(
    pushd: Pushd, simulator: ApnsSimulator, mode: str
) -> None:
    server = mm.MattermostServer(pushd.client, f"{pushd.url}/{MM_SECRET}/")
    call = mm.message(token(1), transport="voip", sub_type="calls")
    assert await server.send(call) == {"status": "OK"}
    voip = json.loads(simulator.received[0].payload)
    named = {"sender_name": "alice", "channel_name": "Town Square"}
    if mode == "full":
        assert {key: voip[key] for key in named} == named
    else:  # a call cannot be fetched by id: it is redacted in both modes
        assert not named.keys() & voip.keys()
        assert voip["sender_id"] == "" and voip["id_loaded"] is False
    # A session push carries the server's own text, no one's message: unchanged.
    assert await server.send(mm.session(token(2))) == {"status": "OK"}
    alert = json.loads(simulator.received[1].payload)["aps"]["alert"]
    assert alert.startswith("Session Expired")


# --- Rocket.Chat --------------------------------------------------------------------------

RC_PAYLOAD = options()["payload"]
RC_EJSON = {
    "full": RC_PAYLOAD,
    # A channel's name and the ids stay; the sender goes.
    "redacted": {
        key: value for key, value in RC_PAYLOAD.items() if key not in ("sender", "senderName")
    },
    # Rocket.Chat's own id-only push: the apps fetch the message with push.get.
    "id_only": {
        "host": "https://chat.example.com/",
        "messageId": "mid1",
        "notificationType": "message-id-only",
    },
}
RC_TEXT = {
    "full": ("#general", "alice: hello"),
    "redacted": ("", HIDDEN),
    "id_only": ("", HIDDEN),
}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def test_rocketchat(
    pushd: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator, mode: str
) -> None:
    rc = RocketChat(client=pushd.client, gateway=f"{pushd.url}/{RC_SECRET}", cloud_token="")
    assert (await rc.send("apn", token(1), options(topic=TOPIC))).status_code == 200
    title, text = RC_TEXT[mode]
    assert sent(simulator) == {
        "aps": {
            "alert": {"title": title, "body": text},
            "badge": 3,
            "sound": "default",
            "category": "MESSAGE",
            "thread-id": "-123456789",
            "mutable-content": 1,
        },
        "ejson": compact(RC_EJSON[mode]),
        "messageFrom": "push",
    }
    assert (await rc.send("gcm", FCM_TOKEN, options())).status_code == 200
    assert fcm_message(fcm_simulator)["data"] == {
        "notId": "-123456789",
        "title": title,
        "message": text,
        "ejson": compact(RC_EJSON[mode]),
        "msgcnt": "3",
        "soundname": "default",
        "style": "inbox",
        "image": "https://chat.example.com/assets/favicon_192.png",
    }


async def test_rocketchat_direct_chat_loses_its_name(
    pushd: Pushd, simulator: ApnsSimulator, mode: str
) -> None:
    rc = RocketChat(client=pushd.client, gateway=f"{pushd.url}/{RC_SECRET}", cloud_token="")
    payload = {**RC_PAYLOAD, "type": "d", "name": "alice", "msg": "e2e-ciphertext"}
    opts = options(topic=TOPIC, payload=payload)
    assert (await rc.send("apn", token(1), opts)).status_code == 200
    ejson = json.loads(sent(simulator)["ejson"])
    if mode == "full":
        assert ejson == payload
    elif mode == "redacted":
        assert not {"name", "msg", "sender", "senderName"} & ejson.keys()
        assert ejson["rid"] == "room1" and ejson["type"] == "d"
    else:
        assert ejson == RC_EJSON["id_only"]


# --- Matrix -------------------------------------------------------------------------------

MATRIX_EVENT = {"msgtype": "m.text", "body": "I'm floating"}
MATRIX_IDS = {"room_id": "!room:example.org", "event_id": "$ev1"}
MATRIX_APNS = {
    "full": {
        "aps": {
            "mutable-content": 1,
            "alert": {
                "loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                "loc-args": ["Major Tom", "Mission Control", "I'm floating"],
            },
            "badge": 2,
        },
        **MATRIX_IDS,
    },
    "redacted": {
        "aps": {"mutable-content": 1, "alert": {"body": HIDDEN}, "badge": 2},
        **MATRIX_IDS,
    },
    # event_id_only forced on a full-format pusher: Sygnal's payload for it.
    "id_only": {**hs.ELEMENT_IOS_DEFAULT, **MATRIX_IDS, "unread_count": 2},
}
MATRIX_FCM = {
    "full": {
        "event_id": "$ev1",
        "type": "m.room.message",
        "sender": "@tom:example.org",
        "room_name": "Mission Control",
        "sender_display_name": "Major Tom",
        "content_msgtype": "m.text",
        "content_body": "I'm floating",
        "room_id": "!room:example.org",
        "prio": "high",
        "unread": "2",
    },
    "redacted": {
        "event_id": "$ev1",
        "type": "m.room.message",
        "content_body": HIDDEN,
        "room_id": "!room:example.org",
        "prio": "high",
        "unread": "2",
    },
    "id_only": {"event_id": "$ev1", "room_id": "!room:example.org", "prio": "high", "unread": "2"},
}


async def test_matrix(
    pushd: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator, mode: str
) -> None:
    homeserver = hs.Homeserver(pushd.client, pushd.url)
    # Pushers that asked for the full format, which the mode overrides.
    ios = hs.device(hs.IOS_APP, hs.pushkey_for(token(1)), default_payload=hs.ELEMENT_IOS_DEFAULT)
    android = hs.device(hs.ANDROID_APP, FCM_TOKEN)
    body = hs.full_event([ios, android], content=MATRIX_EVENT)
    assert await homeserver.rejected(body) == []
    assert sent(simulator) == MATRIX_APNS[mode]
    assert fcm_message(fcm_simulator)["data"] == MATRIX_FCM[mode]


# --- Zulip --------------------------------------------------------------------------------

ZULIP_APNS = {
    "alert": {"title": "Iago", "subtitle": "", "body": "secret content"},
    "sound": "default",
    "badge": 0,
    "custom": {"zulip": {"message_ids": [7], "server": "zulip.example.com", "user_id": 10}},
}
ZULIP_GCM = {
    "event": "message",
    "zulip_message_id": 7,
    "time": 1700000000,
    "content": "secret content",
    "server": "zulip.example.com",
    "user_id": 10,
    "content_truncated": False,
}


async def test_zulip_legacy_redacts_as_zulip_does(
    pushd: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator, mode: str
) -> None:
    zulip = ZulipServer(client=pushd.client, services_url=pushd.url)
    assert (await zulip.register_server()).status_code == 200
    await zulip.register_device(token(1), APNS, ios_app_id=TOPIC)
    await zulip.register_device(FCM_TOKEN, FCM)
    body = {"user_id": 10, "apns_payload": ZULIP_APNS, "gcm_payload": ZULIP_GCM}
    response = await zulip.json("push/notify", body)
    assert response.status_code == 200, response.text
    # Zulip's apps cannot fetch a legacy push by id: id_only does what redacted does,
    # which is Zulip's own PUSH_NOTIFICATION_REDACT_CONTENT (names stay).
    text = "secret content" if mode == "full" else HIDDEN
    assert sent(simulator) == {
        "aps": {
            "alert": {"title": "Iago", "subtitle": "", "body": text},
            "sound": "default",
            "badge": 0,
        },
        "zulip": ZULIP_APNS["custom"]["zulip"],  # type: ignore[index]
    }
    assert fcm_message(fcm_simulator)["data"] == {
        "event": "message",
        "zulip_message_id": "7",
        "time": "1700000000",
        "content": text,
        "server": "zulip.example.com",
        "user_id": "10",
        "content_truncated": "False",
    }


# --- native -------------------------------------------------------------------------------

NATIVE_ALERT = {
    "full": {"title": "alice", "body": "secret lunch plans"},
    "redacted": {"body": HIDDEN},
    "id_only": None,
}


async def test_native(
    pushd: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator, mode: str
) -> None:
    await pushd.register("u1", token(1), app="ios")
    await pushd.register("u1", FCM_TOKEN, app="android")
    alert = {"title": "alice", "body": "secret lunch plans"}
    result = await pushd.send({"user": "u1", "alert": alert, "data": {"message_id": "42"}})
    assert result["summary"]["delivered"] == 2
    expected = NATIVE_ALERT[mode]
    aps = {} if expected is None else {"alert": expected}
    assert sent(simulator) == {"aps": aps, "message_id": "42"}  # data passes in every mode
    message = fcm_message(fcm_simulator)
    assert message.get("notification") == expected
    assert message["data"] == {"message_id": "42"}


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ok"), [("", False), ("   ", False), ("x" * 201, False)])
def test_redacted_text_is_checked(tmp_path: Path, text: str, ok: bool) -> None:
    app = {"name": "a", "provider": "apns", "topic": "t", "cert_file": str(tmp_path / "c")}
    (tmp_path / "c").write_text("x")
    cfg = config.parse(
        {"store": {"path": str(tmp_path / "s")}, "apps": [{**app, "redacted_text": text}]},
        base=tmp_path,
    )
    problems = config.check(cfg)
    assert ("apps[0].redacted_text: 1 to 200 characters" in problems) is not ok


def test_content_mode_is_one_of_three(tmp_path: Path) -> None:
    app = {"name": "a", "provider": "apns", "topic": "t", "content": "secret"}
    with pytest.raises(config.ConfigError) as error:
        config.parse({"apps": [app]}, base=tmp_path)
    assert "apps[0].content" in str(error.value.problems)
