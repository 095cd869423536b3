"""The Mattermost push proxy end to end: a Mattermost server's requests into pushd over
HTTP, out to the APNs and FCM simulators over HTTP/2 + TLS.  Expected payloads are the
notes' (mattermost-rocketchat.md §1.7, §1.8)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.frontends.mattermost.wire import MAX_BODY_BYTES
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from tests import mattermost_client as mm
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, fcm_entry, token

SECRET = "s3cret-path-0123456789"
OTHER_SECRET = "other-path-0123456789"
OK = {"status": "OK"}
REMOVE = {"status": "REMOVE"}
#: Well within the proxy's own answer deadline (10 s).
ANSWER_WITHIN_S = 5
FCM_TOKEN = "mm-device-0001:APA91b" + "z" * 40


def fail(error: str) -> dict[str, str]:
    return {"status": "FAIL", "error": error}


@pytest.fixture
def start_proxy(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> Any:
    async def start(servers: list[dict[str, Any]] | None = None, **settings: Any) -> Pushd:
        upstream = f"https://127.0.0.1:{simulator.port}"
        apps = [
            {**app_entry("ios", TOPIC, upstream, key_file, ca_file), "mattermost_type": "apple_rn"},
            {
                **fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
                "mattermost_type": "android_rn",
            },
        ]
        if servers is None:
            servers = [{"name": "chat.example.com", "path_secret": SECRET}]
        server = settings.pop("server", {})
        pushd: Pushd = await start_pushd(
            apps=apps, mattermost={"servers": servers, **settings}, server=server
        )
        return pushd

    return start


@pytest.fixture
async def proxy(start_proxy: Any) -> Pushd:
    pushd: Pushd = await start_proxy()
    return pushd


@pytest.fixture
def mattermost(proxy: Pushd) -> mm.MattermostServer:
    return mm.MattermostServer(proxy.client, f"{proxy.url}/{SECRET}/")


def apns_payload(simulator: ApnsSimulator, index: int = 0) -> dict[str, Any]:
    received = simulator.received[index]
    assert received.topic == TOPIC
    assert received.push_type == "alert"
    assert received.priority == 10
    payload: dict[str, Any] = json.loads(received.payload)
    return payload


# --- push types, APNs -------------------------------------------------------------------


async def test_message_to_ios(mattermost: mm.MattermostServer, simulator: ApnsSimulator) -> None:
    body = mm.message(token(1))
    body["unknown_future_field"] = {"nested": True}
    assert await mattermost.send(body) == OK
    assert simulator.received[0].token == token(1)
    assert apns_payload(simulator) == {
        "aps": {
            "badge": 3,
            "category": "CAN_REPLY",
            "sound": "default",
            "mutable-content": 1,
            "content-available": 1,
            "alert": {"title": "Town Square", "body": "alice: secret lunch plans"},
            "thread-id": "chan0000000000000000000000",
        },
        "version": "v2",
        "channel_name": "Town Square",
        "type": "message",
        "sub_type": "",
        "server_id": mm.SERVER_ID,
        "is_crt_enabled": False,
        "signature": "eyJhbGciOiJFUzI1NiJ9.e30.sig",
        "ack_id": "ackid00000000000000000000a",
        "channel_id": "chan0000000000000000000000",
        "team_id": "team0000000000000000000000",
        "sender_id": "user0000000000000000000000",
        "sender_name": "alice",
        "post_id": "post0000000000000000000000",
    }


async def test_message_without_channel_name_and_crt_thread(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    body = mm.message(token(1), channel_name="", is_crt_enabled=True, root_id="root1")
    assert await mattermost.send(body) == OK
    payload = apns_payload(simulator)
    assert payload["aps"]["alert"] == "alice: secret lunch plans"
    assert payload["aps"]["thread-id"] == "root1"
    assert "channel_name" not in payload
    assert payload["signature"] == "eyJhbGciOiJFUzI1NiJ9.e30.sig"


@pytest.mark.parametrize(
    ("body", "aps", "custom"),
    [
        # v2 apps: a clear to 0 is sent as badge 1 (the iOS quirk).
        (
            mm.clear(token(1)),
            {"badge": 1, "content-available": 1, "thread-id": "chan0000000000000000000000"},
            {"type": "clear", "ack_id": "ackclear", "channel_id": "chan0000000000000000000000"},
        ),
        (
            mm.clear(token(1), platform="apple_rn", badge=0),
            {"badge": 0, "content-available": 1, "thread-id": "chan0000000000000000000000"},
            {"type": "clear", "ack_id": "ackclear", "channel_id": "chan0000000000000000000000"},
        ),
        (
            mm.clear(token(1), badge=4),
            {"badge": 4, "content-available": 1, "thread-id": "chan0000000000000000000000"},
            {"type": "clear", "ack_id": "ackclear", "channel_id": "chan0000000000000000000000"},
        ),
        (mm.update_badge(token(1)), {"badge": 2}, {"type": "update_badge", "ack_id": "ackbadge"}),
        (
            mm.session(token(1)),
            {
                "badge": 0,
                "sound": "default",
                "mutable-content": 1,
                "alert": "Session Expired: Please log in to continue receiving notifications.",
            },
            {"type": "session", "version": "v2", "ack_id": "acksession"},
        ),
        # The System Console's test push: badge -1 leaves the badge alone.
        (mm.system_console_test(token(1)), {"content-available": 1}, {"type": "test"}),
        (
            mm.id_loaded(token(1)),
            {
                "badge": 1,
                "category": "CAN_REPLY",
                "sound": "default",
                "mutable-content": 1,
                "content-available": 1,
                "alert": {"body": "You've received a new message."},
                "thread-id": "root0000000000000000000000",
            },
            {
                "type": "message",
                "version": "v2",
                "id_loaded": True,
                "is_crt_enabled": True,
                "ack_id": "ackidloaded",
                "channel_id": "chan0000000000000000000000",
                "team_id": "team0000000000000000000000",
                "sender_id": "user0000000000000000000000",
                "post_id": "post0000000000000000000000",
                "root_id": "root0000000000000000000000",
            },
        ),
    ],
    ids=["clear-v2", "clear-v1", "clear-badge", "update_badge", "session", "test", "id_loaded"],
)
async def test_silent_and_other_push_types_to_ios(
    mattermost: mm.MattermostServer,
    simulator: ApnsSimulator,
    body: dict[str, Any],
    aps: dict[str, Any],
    custom: dict[str, Any],
) -> None:
    assert await mattermost.send(body) == OK
    expected = {
        "sub_type": "",
        "server_id": mm.SERVER_ID,
        "is_crt_enabled": False,
        "signature": "NO_SIGNATURE",
        **custom,
        "aps": aps,
    }
    assert apns_payload(simulator) == expected


async def test_voip_push(mattermost: mm.MattermostServer, simulator: ApnsSimulator) -> None:
    body = mm.message(token(1), transport="voip", sub_type="calls", root_id="root1")
    assert await mattermost.send(body) == OK
    (received,) = simulator.received
    assert received.topic == TOPIC + ".voip"
    assert received.push_type == "voip"
    assert received.priority == 10
    assert json.loads(received.payload) == {
        "aps": {"content-available": 1},
        "type": "message",
        "sub_type": "calls",
        "channel_id": "chan0000000000000000000000",
        "server_id": mm.SERVER_ID,
        "post_id": "post0000000000000000000000",
        "thread_id": "root1",
        "sender_id": "user0000000000000000000000",
        "id_loaded": False,
        "signature": "eyJhbGciOiJFUzI1NiJ9.e30.sig",
        "sender_name": "alice",
        "channel_name": "Town Square",
        "ack_id": "ackid00000000000000000000a",
    }


async def test_payload_limits(mattermost: mm.MattermostServer, simulator: ApnsSimulator) -> None:
    # A long message is cut to 2046 bytes, as MPNS does, and fits.
    assert await mattermost.send(mm.message(token(1), message="é" * 2000)) == OK
    body = apns_payload(simulator)["aps"]["alert"]["body"]
    assert body == "é" * 1023
    # VoIP allows 5120 bytes; other fields are not cut, so this is too large for both.
    big = mm.message(token(1), sender_name="x" * 5200)
    assert (await mattermost.send(big))["error"].startswith("payload too large:")
    voip = await mattermost.send({**big, "transport": "voip"})
    assert voip == fail("payload too large: 5585 bytes > 5120 (APNs' limit)")
    # ... and a VoIP payload between 4096 and 5120 bytes is sent.
    assert await mattermost.send(mm.message(token(2), transport="voip", sender_name="x" * 4500))
    assert len(simulator.received) == 2


async def test_longest_post_is_sent_cut(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    # Mattermost sends a post's whole text (up to 16,383 runes, plus its attachments'
    # fallback texts) and MPNS reads any size, then cuts it: a 64 KiB cap was a FAIL.
    text = "alice: " + "😀" * mm.POST_MESSAGE_MAX_RUNES
    fallback = "\n" + "<&>" * 20_000  # json.Marshal writes each as 6 bytes
    body = mm.message(token(1), message=text + fallback)
    assert len(mm.go_json(body)) > 400_000
    assert await mattermost.send(body) == OK
    alert = apns_payload(simulator)["aps"]["alert"]["body"]
    assert alert == "alice: " + "😀" * 509  # 2046 bytes, the split emoji dropped


# --- push types, FCM --------------------------------------------------------------------


async def test_message_to_android(
    mattermost: mm.MattermostServer, fcm_simulator: FcmSimulator
) -> None:
    assert await mattermost.send(mm.message(FCM_TOKEN, platform=mm.ANDROID)) == OK
    (received,) = fcm_simulator.received
    assert received.token == FCM_TOKEN
    assert received.message == {
        "token": FCM_TOKEN,
        "android": {"priority": "HIGH"},
        "data": {
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
            "sender_id": "user0000000000000000000000",
            "sender_name": "alice",
            "message": "alice: secret lunch plans",
            "channel_name": "Town Square",
            "post_id": "post0000000000000000000000",
            "override_username": "",
            "override_icon_url": "",
            "from_webhook": "",
        },
    }


async def test_other_push_types_to_android(
    mattermost: mm.MattermostServer, fcm_simulator: FcmSimulator
) -> None:
    for body in (
        mm.clear(FCM_TOKEN, platform=mm.ANDROID),
        mm.update_badge(FCM_TOKEN, platform=mm.ANDROID),
        mm.system_console_test(FCM_TOKEN, platform=mm.ANDROID),
        mm.id_loaded(FCM_TOKEN, platform=mm.ANDROID),
        mm.session(FCM_TOKEN, platform=mm.ANDROID),
    ):
        assert await mattermost.send(body) == OK
    clear, badge, probe, loaded, session = (r.message["data"] for r in fcm_simulator.received)
    common = {"sub_type": "", "version": "v2", "is_crt_enabled": "false"}
    common |= {"server_id": mm.SERVER_ID, "category": "", "signature": "NO_SIGNATURE"}
    assert clear == {
        **common,
        "ack_id": "ackclear",
        "type": "clear",
        "channel_id": "chan0000000000000000000000",
        "badge": "0",  # no iOS quirk on Android
    }
    assert badge == {
        **common,
        "ack_id": "ackbadge",
        "type": "update_badge",
        "channel_id": "",
        "badge": "2",
    }
    assert probe == {**common, "ack_id": "", "type": "test", "version": "2", "channel_id": ""}
    assert loaded == {
        **common,
        "ack_id": "ackidloaded",
        "type": "message",
        "category": "CAN_REPLY",
        "channel_id": "chan0000000000000000000000",
        "is_crt_enabled": "true",
        "badge": "1",
        "root_id": "root0000000000000000000000",
        "post_id": "post0000000000000000000000",
        "message": "You've received a new message.",
        "id_loaded": "true",
        "sender_id": "user0000000000000000000000",
        "sender_name": "Someone",
        "team_id": "team0000000000000000000000",
    }
    assert session["message"].startswith("Session Expired")
    assert session["sender_name"] == ""


async def test_emoji_shortcodes_expanded_where_mpns_expands_them(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    # MPNS runs the message (APNs alert body, Android "message") through emoji.Sprint;
    # the channel name and id-loaded messages go as they are.
    text = "alice: ship it :rocket: :+1:"
    channel = "Launch :rocket:"
    assert await mattermost.send(mm.message(token(1), message=text, channel_name=channel)) == OK
    assert await mattermost.send(mm.message(token(2), message=text, channel_name="")) == OK
    loaded = {**mm.id_loaded(token(3)), "message": "New :rocket:"}
    assert await mattermost.send(loaded) == OK
    android = mm.message(FCM_TOKEN, platform=mm.ANDROID, message=text, channel_name=channel)
    assert await mattermost.send(android) == OK
    by_token = {r.token: json.loads(r.payload) for r in simulator.received}
    assert by_token[token(1)]["aps"]["alert"] == {
        "title": "Launch :rocket:",
        "body": "alice: ship it 🚀 👍",
    }
    assert by_token[token(1)]["channel_name"] == "Launch :rocket:"
    assert by_token[token(2)]["aps"]["alert"] == "alice: ship it 🚀 👍"
    assert by_token[token(3)]["aps"]["alert"] == {"body": "New :rocket:"}
    (received,) = fcm_simulator.received
    assert received.message["data"]["message"] == "alice: ship it 🚀 👍"
    assert received.message["data"]["channel_name"] == "Launch :rocket:"


# --- outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"])
async def test_dead_apns_token_is_remove(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator, reason: str
) -> None:
    status = 410 if reason == "Unregistered" else 400
    # A delivery first: only an app that has delivered believes BadDeviceToken and
    # DeviceTokenNotForTopic, which a wrong environment or topic earns every token.
    assert await mattermost.send(mm.message(token(2))) == OK
    simulator.script(token(1), SimReply(status=status, reason=reason))
    assert await mattermost.send(mm.message(token(1))) == REMOVE


async def test_non_hex_apns_token_is_remove(mattermost: mm.MattermostServer) -> None:
    assert await mattermost.send(mm.message("not-a-token")) == REMOVE


@pytest.mark.parametrize("code", ["UNREGISTERED", "SENDER_ID_MISMATCH"])
async def test_dead_fcm_token_is_remove(
    mattermost: mm.MattermostServer, fcm_simulator: FcmSimulator, code: str
) -> None:
    # A delivery first: only an app that has delivered believes SENDER_ID_MISMATCH,
    # which a wrong project earns every token.
    proof = mm.message("mm-device-0002:APA91b" + "y" * 40, platform=mm.ANDROID)
    assert await mattermost.send(proof) == OK
    fcm_simulator.script(FCM_TOKEN, FcmReply(error_code=code))
    assert await mattermost.send(mm.message(FCM_TOKEN, platform=mm.ANDROID)) == REMOVE


async def test_invalid_fcm_token_is_a_fail_as_in_mpns(mattermost: mm.MattermostServer) -> None:
    body = mm.message("bad token!", platform=mm.ANDROID)
    assert await mattermost.send(body) == fail("INVALID_ARGUMENT")


async def test_apns_rejection_is_fail(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    simulator.script(token(1), SimReply(status=400, reason="BadCollapseId"))
    assert await mattermost.send(mm.message(token(1))) == fail(
        "unknown send response error (BadCollapseId)"
    )


async def test_transient_failure_is_spooled_ok_and_retried(
    mattermost: mm.MattermostServer,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    # MPNS answers FAIL on a 5xx and the push is lost (the server never retries a
    # FAIL); pushd spools it, answers OK, and delivers it in the background.
    simulator.script(token(1), SimReply(status=503, reason="ServiceUnavailable"))
    assert await mattermost.send(mm.message(token(1))) == OK
    with trio.fail_after(5):
        await simulator.wait_for(2)
    assert [r.status for r in simulator.received] == [503, 200]
    fcm_simulator.script(FCM_TOKEN, FcmReply(status=500, error_code="INTERNAL"))
    assert await mattermost.send(mm.message(FCM_TOKEN, platform=mm.ANDROID)) == OK
    with trio.fail_after(5):
        await fcm_simulator.wait_for(2)
    assert [r.status for r in fcm_simulator.received] == [500, 200]


@pytest.mark.parametrize(
    "reply",
    [
        SimReply(status=500, reason="InternalServerError"),
        SimReply(status=429, reason="TooManyRequests"),
        SimReply(status=429),
    ],
    ids=["500", "TooManyRequests", "bare-429"],
)
async def test_a_persistent_transient_failure_is_ok_then_retried_until_max_attempts(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator, reply: SimReply
) -> None:
    simulator.set_default(reply)
    assert await mattermost.send(mm.message(token(1))) == OK
    # After 5 failures in a row the app's circuit opens (1 s, then 2 s, 4 s between
    # single probes), so the 8th attempt comes about 8 s after the first.
    with trio.fail_after(20):
        await simulator.wait_for(8)  # [retry] max_attempts, the default
    await trio.sleep(0.5)  # several backoff periods here: no ninth attempt comes
    assert len(simulator.received) == 8


async def test_a_long_retry_after_is_ok_and_waits_in_the_spool(
    proxy: Pushd, mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    # APNs asks for 60 s: the push waits in the spool that long, not the request.
    busy = SimReply(status=503, reason="ServiceUnavailable", retry_after=60)
    simulator.script(token(1), busy)
    with trio.fail_after(ANSWER_WITHIN_S):
        assert await mattermost.send(mm.message(token(1))) == OK
    await trio.sleep(0.3)
    assert len(simulator.received) == 1
    health = (await proxy.client.get(proxy.url + "/healthz", headers=proxy.auth())).json()
    assert health["apps"]["ios"]["spool"]["depth"] == 1


async def test_a_token_found_dead_in_a_retry_is_remove_on_the_next_push(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    simulator.script(
        token(1),
        SimReply(status=503, reason="ServiceUnavailable"),
        SimReply(status=410, reason="Unregistered", timestamp_ms=1),
    )
    assert await mattermost.send(mm.message(token(1))) == OK
    with trio.fail_after(5):
        await simulator.wait_for(2)
    # The verdict is written as the retry settles: the next push to that device is
    # answered REMOVE without going upstream, once.
    with trio.fail_after(5):
        while (answer := await mattermost.send(mm.message(token(1)))) != REMOVE:
            assert answer == OK  # the verdict is not written yet: that push was sent
            await trio.sleep(0.05)
    sent = len(simulator.received)
    assert await mattermost.send(mm.message(token(1))) == OK
    assert len(simulator.received) == sent + 1


async def test_a_test_push_does_not_use_up_a_late_remove(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    # The System Console's test push (SendTestPushNotification) reads REMOVE as "not
    # sent" and keeps the device: only a push through sendToPushProxy detaches it, so
    # that push must still hear the REMOVE, and not go upstream.
    simulator.script(
        token(1),
        SimReply(status=503, reason="ServiceUnavailable"),
        SimReply(status=410, reason="Unregistered", timestamp_ms=1),
    )
    assert await mattermost.send(mm.message(token(1))) == OK
    with trio.fail_after(5):
        await simulator.wait_for(2)
    with trio.fail_after(5):
        while (answer := await mattermost.send(mm.system_console_test(token(1)))) != REMOVE:
            assert answer == OK
            await trio.sleep(0.05)
    sent = len(simulator.received)
    assert await mattermost.send(mm.message(token(1))) == REMOVE
    assert len(simulator.received) == sent


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "Failed to read message body: "),
        (b"[1, 2]", "Failed to read message body: not a JSON object"),
        ({"device_id": token(1), "platform": mm.APPLE}, "Failed because of missing server Id"),
        ({"server_id": "s", "platform": mm.APPLE}, "Failed because of missing device Id"),
        (
            {"server_id": "s", "device_id": token(1), "badge": "3"},
            "Failed to read message body: badge must be a int",
        ),
        (
            {"server_id": "s", "device_id": token(1), "message": 5},
            "Failed to read message body: message must be a str",
        ),
        (
            {"server_id": "srv", "device_id": token(1), "platform": "windows-v2"},
            "Did not send message because of missing platform property type=windows serverId=srv",
        ),
        (
            {"server_id": "srv", "device_id": token(1)},
            "Did not send message because of missing platform property type= serverId=srv",
        ),
        (
            b'{"server_id": "s", "device_id": "d", "message": "\\ud800"}',
            "Failed to read message body: a lone surrogate escape",
        ),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-server",
        "no-device",
        "int-type",
        "str-type",
        "platform",
        "no-platform",
        "surrogate",
    ],
)
async def test_bad_input_is_fail(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator, body: Any, error: str
) -> None:
    response = await mattermost.send_push(body)
    assert response.status_code == 200
    result = response.json()
    assert result["status"] == "FAIL"
    assert result["error"].startswith(error)
    assert simulator.received == []


async def test_oversized_body_is_fail(start_proxy: Any, simulator: ApnsSimulator) -> None:
    # send_push takes what a Mattermost server can build, whatever [server] says.
    pushd = await start_proxy(server={"max_body_bytes": 2048})
    server = mm.MattermostServer(pushd.client, f"{pushd.url}/{SECRET}")
    assert (await server.send(mm.message(token(1), message="x" * 3000))) == OK
    response = await server.send_push(mm.message(token(1), message="x" * MAX_BODY_BYTES))
    assert response.status_code == 200
    too_large = f"Failed to read message body: the body exceeds {MAX_BODY_BYTES} bytes"
    assert response.json() == fail(too_large)
    assert len(simulator.received) == 1


async def test_version_suffix_variants(
    mattermost: mm.MattermostServer, simulator: ApnsSimulator
) -> None:
    huge = (str(2**63), "9" * 4301)  # outside Go's int: version 1, as Atoi's error gives
    variants = ("apple_rn", "apple_rn-v2", "apple_rn-vX", "apple_rn-v3-v4")
    for platform in (*variants, *(f"apple_rn-v{number}" for number in huge)):
        assert await mattermost.send(mm.message(token(1), platform=platform)) == OK
    assert len(simulator.received) == 6


# --- ack and version --------------------------------------------------------------------


async def test_ack(mattermost: mm.MattermostServer) -> None:
    ack = {"id": "ack1", "received_at": 1700000000000, "platform": "ios", "type": "message"}
    response = await mattermost.ack(ack)
    assert response.status_code == 200
    assert response.json() == OK
    missing = await mattermost.ack({**ack, "platform": ""})
    assert missing.json() == fail("Failed because of missing ack platform")
    assert (await mattermost.ack({"platform": "ios"})).json() == fail(
        "Failed because of missing ack Id"
    )


async def test_an_ack_cannot_forge_log_lines(
    mattermost: mm.MattermostServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's ``platform`` and ``type`` go into a debug line escaped: a line
    break or a NUL in them cannot start a line of its own in pushd's log."""
    caplog.set_level(logging.DEBUG)
    ack = {"id": "a", "platform": "ios\nFORGED line", "type": "message\x00\nFORGED too"}
    assert (await mattermost.ack(ack)).json() == OK
    lines = [r.getMessage() for r in caplog.records if "delivery receipt" in r.getMessage()]
    assert lines and all("\n" not in line and "\x00" not in line for line in lines), lines


async def test_version(proxy: Pushd) -> None:
    response = await proxy.client.get(f"{proxy.url}/{SECRET}/version")
    assert response.status_code == 200
    assert set(response.json()) == {"hash", "version"}
    # Un-prefixed paths identify no server: not served.
    assert (await proxy.client.get(f"{proxy.url}/version")).status_code == 404
    assert (
        await proxy.client.post(f"{proxy.url}/api/v1/send_push", content=b"{}")
    ).status_code == 404
    wrong = await proxy.client.get(f"{proxy.url}/{OTHER_SECRET}/version")
    assert wrong.status_code == 403


# --- access control ---------------------------------------------------------------------


async def test_wrong_secret_is_fail(proxy: Pushd, simulator: ApnsSimulator) -> None:
    server = mm.MattermostServer(proxy.client, f"{proxy.url}/{OTHER_SECRET}")
    assert await server.send(mm.message(token(1))) == fail("pushd: unknown push proxy path")
    assert (await server.ack({"id": "a", "platform": "ios", "type": "message"})).json() == fail(
        "pushd: unknown push proxy path"
    )
    assert simulator.received == []


async def test_network_and_server_id_allowlists(start_proxy: Any, simulator: ApnsSimulator) -> None:
    pushd = await start_proxy(
        servers=[
            {"name": "far", "path_secret": SECRET, "allowed_networks": ["10.0.0.0/8"]},
            {
                "name": "near",
                "path_secret": OTHER_SECRET,
                "allowed_networks": ["127.0.0.0/8", "::1/128"],
                "server_ids": [mm.SERVER_ID],
            },
        ]
    )
    far = mm.MattermostServer(pushd.client, f"{pushd.url}/{SECRET}")
    assert await far.send(mm.message(token(1))) == fail("pushd: source address not allowed for far")
    near = mm.MattermostServer(pushd.client, f"{pushd.url}/{OTHER_SECRET}")
    other_id = mm.message(token(1), server_id="someone-else")
    assert await near.send(other_id) == fail("pushd: server_id not allowed for near")
    assert simulator.received == []
    assert await near.send(mm.message(token(1))) == OK


async def test_throttle(start_proxy: Any, simulator: ApnsSimulator) -> None:
    pushd = await start_proxy(throttle_per_second=2)
    server = mm.MattermostServer(pushd.client, f"{pushd.url}/{SECRET}")
    assert await server.send(mm.message(token(1))) == OK
    assert await server.send(mm.message(token(1))) == OK
    response = await server.send_push(mm.message(token(1)))
    assert response.status_code == 429
    assert response.text == "limit exceeded\n"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-ratelimit-limit"] == "2"
    assert len(simulator.received) == 2


async def test_message_content_never_logged(
    mattermost: mm.MattermostServer,
    simulator: ApnsSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    simulator.script(token(2), SimReply(status=410, reason="Unregistered"))
    await mattermost.send(mm.message(token(1)))
    await mattermost.send(mm.message(token(2)))
    await mattermost.send(mm.message("zz", platform="nope"))
    text = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("pushd") and not record.name.startswith("pushd.simulators")
    )
    assert "mattermost: message push" in text
    for secret in ("secret lunch plans", "Town Square", "alice", token(1)):
        assert secret not in text
