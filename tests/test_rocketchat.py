"""The Rocket.Chat push gateway end to end: a Rocket.Chat server's ``sendGatewayPush``
requests into pushd over HTTP, out to the APNs and FCM simulators over HTTP/2 + TLS.
Expected shapes and statuses are protocol notes §3 (mattermost-rocketchat.md)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.frontends import rocketchat
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from tests.conftest import OTHER_TOPIC, TOPIC, Pushd, PushdFactory, app_entry, fcm_entry, token
from tests.rocketchat_client import TEXT_LIMIT, TITLE_LIMIT, RocketChat, options, truncate_string

CLOUD_TOKEN = "cloud-workspace-token"
SECRET_1 = "rc1-secret-0123456789"
SECRET_2 = "rc2-secret-abcdefghij"
FCM_TOKEN = "rc-device-0001:APA91b" + "x" * 40
CONTENT = "the-launch-code-is-0000"


@pytest.fixture
async def gateway(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> Pushd:
    upstream = f"https://127.0.0.1:{simulator.port}"
    apps = [
        app_entry("ios", TOPIC, upstream, key_file, ca_file),
        app_entry("ios-other", OTHER_TOPIC, upstream, key_file, ca_file),
        fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
        fcm_entry("android-2", fcm_simulator, fcm_key, ca_file, tmp_path),
    ]
    servers = [
        {"name": "rc1", "tokens": [f"Bearer {CLOUD_TOKEN}"], "path_secret": SECRET_1},
        {"name": "rc2", "path_secret": SECRET_2, "fcm_app": "android-2"},
    ]
    pushd: Pushd = await start_pushd(
        apps=apps,
        rocketchat={"servers": servers, "fcm_app": "android"},
        # Keeps the "upstream too slow" test short; pushd uses min(this, 5 s).
        server={"first_attempt_deadline": 1.0},
    )
    return pushd


@pytest.fixture
def rc(gateway: Pushd) -> RocketChat:
    """rc1, authenticated by its cloud token on the plain paths."""
    return RocketChat(client=gateway.client, gateway=gateway.url)


def error_body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["errorId"]
    return body


# --- delivery and payloads ----------------------------------------------------------------


async def test_apn_send_builds_the_native_payload(rc: RocketChat, simulator: ApnsSimulator) -> None:
    before = int(time.time())
    response = await rc.send("apn", token(1), options(topic=TOPIC))
    assert response.status_code == 200, response.text
    [received] = simulator.received
    assert received.token == token(1)
    assert received.topic == TOPIC
    assert received.push_type == "alert"
    assert received.priority == 10
    assert received.expiration is not None
    assert before + 3600 <= received.expiration <= int(time.time()) + 3600
    payload = json.loads(received.payload)
    assert payload == {
        "aps": {
            "alert": {"title": "#general", "body": "alice: hello"},
            "badge": 3,
            "sound": "default",
            "category": "MESSAGE",
            "thread-id": "-123456789",
            "mutable-content": 1,
        },
        "ejson": json.dumps(options()["payload"], separators=(",", ":")),
        "messageFrom": "push",
    }
    assert json.loads(payload["ejson"])["notificationType"] == "message"


async def test_a_title_or_text_cut_inside_an_emoji_is_sent(
    rc: RocketChat, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    # Rocket.Chat cuts title and text by UTF-16 code units; releases whose truncateString
    # predates its surrogate-safe version send the first half of an emoji split by the
    # cut.  A 422 for it lost the push: the half is dropped, as the newer cut does.
    text = truncate_string("a" * 236 + "😀" * 10, TEXT_LIMIT)
    title = truncate_string("#" + "b" * 60 + "🚀" * 5, TITLE_LIMIT)
    assert text.endswith("\ud83d...") and title.endswith("\ud83d...")
    opts = options(title=title, text=text)
    assert (await rc.send("apn", token(1), {**opts, "topic": TOPIC})).status_code == 200
    alert = json.loads(simulator.received[0].payload)["aps"]["alert"]
    assert alert == {"title": "#" + "b" * 60 + "...", "body": "a" * 236 + "..."}
    assert (await rc.send("gcm", FCM_TOKEN, opts)).status_code == 200
    data = fcm_simulator.received[0].message["data"]
    assert (data["title"], data["message"]) == (alert["title"], alert["body"])


async def test_apn_app_is_chosen_by_topic(gateway: Pushd, rc: RocketChat) -> None:
    response = await rc.send("apn", token(2), options(topic=OTHER_TOPIC))
    assert response.status_code == 200
    assert gateway.services.dispatcher.lanes["ios-other"].stats.delivered == 1
    assert gateway.services.dispatcher.lanes["ios"].stats.delivered == 0


async def test_voip_topic_is_a_pushkit_push_of_the_bundles_app(
    gateway: Pushd, rc: RocketChat, simulator: ApnsSimulator
) -> None:
    # Newer Rocket.Chat sends a VoIP token's pushes with options.topic "<bundle>.voip".
    before = int(time.time())
    response = await rc.send("apn", token(6), options(topic=TOPIC + ".voip"))
    assert response.status_code == 200, response.text
    [received] = simulator.received
    assert received.topic == TOPIC + ".voip"
    assert received.push_type == "voip"
    assert received.priority == 10
    assert received.expiration is not None  # a call rings now or never: 60 s
    assert before + 60 <= received.expiration <= int(time.time()) + 60
    payload = json.loads(received.payload)
    assert payload["aps"]["alert"] == {"title": "#general", "body": "alice: hello"}
    assert payload["ejson"] == json.dumps(options()["payload"], separators=(",", ":"))
    assert gateway.services.dispatcher.lanes["ios"].stats.delivered == 1


async def test_voip_topic_of_an_unknown_bundle_is_422(
    rc: RocketChat, simulator: ApnsSimulator
) -> None:
    response = await rc.send("apn", token(6), options(topic="org.unknown.app.voip"))
    assert error_body(response, 422)["error"] == (
        "options.topic: no app with this topic is configured"
    )
    assert simulator.received == []


@pytest.mark.parametrize(("asked", "kept"), [(120, 120), (10**400, 30 * 24 * 3600)])
async def test_apn_expiration_seconds_is_kept_within_what_apns_stores(
    rc: RocketChat, simulator: ApnsSimulator, asked: int, kept: int
) -> None:
    """``options.apn.expirationSeconds`` as asked, up to the 30 days APNs keeps a push:
    an unbounded value (which once overflowed a float after the push had gone out,
    losing the answer) is sent as 30 days."""
    before = int(time.time())
    opts = options(topic=TOPIC, apn={"expirationSeconds": asked})
    response = await rc.send("apn", token(4), opts)
    assert response.status_code == 200, response.text
    [received] = simulator.received
    assert received.expiration is not None
    assert before + kept <= received.expiration <= int(time.time()) + kept


async def test_id_only_push_without_category(rc: RocketChat, simulator: ApnsSimulator) -> None:
    opts = options(
        topic=TOPIC,
        title="",
        text="You have a new message",
        payload={"host": "https://chat.example.com/", "messageId": "m", "notificationType": "x"},
        apn={},
        contentAvailable=True,
    )
    assert (await rc.send("apn", token(3), opts)).status_code == 200
    aps = json.loads(simulator.received[0].payload)["aps"]
    assert "category" not in aps
    assert aps["content-available"] == 1
    assert aps["alert"] == {"title": "", "body": "You have a new message"}


async def test_gcm_send_is_data_only(
    gateway: Pushd, rc: RocketChat, fcm_simulator: FcmSimulator
) -> None:
    response = await rc.send("gcm", FCM_TOKEN, options())
    assert response.status_code == 200, response.text
    [received] = fcm_simulator.received
    assert received.token == FCM_TOKEN
    message = received.message
    assert "notification" not in message
    assert message["android"]["priority"] == "HIGH"
    assert message["data"] == {
        "notId": "-123456789",
        "title": "#general",
        "message": "alice: hello",
        "ejson": json.dumps(options()["payload"], separators=(",", ":")),
        "msgcnt": "3",
        "soundname": "default",
        "style": "inbox",
        "image": "https://chat.example.com/assets/favicon_192.png",
    }
    # rc1 names no FCM app: the [rocketchat] default serves it.
    assert gateway.services.dispatcher.lanes["android"].stats.delivered == 1


async def test_path_secret_prefix_and_its_fcm_app(
    gateway: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    # rc2 is not registered with any token: only its prefix authenticates it.
    rc2 = RocketChat(client=gateway.client, gateway=f"{gateway.url}/{SECRET_2}", cloud_token="")
    assert (await rc2.send("gcm", FCM_TOKEN, options())).status_code == 200
    # sendGatewayPush joins `${gateway}/push/...`: a Push_gateway ending in / still works.
    slash = RocketChat(client=gateway.client, gateway=f"{gateway.url}/{SECRET_2}/", cloud_token="")
    assert (await slash.send("gcm", FCM_TOKEN, options())).status_code == 200
    assert (await rc2.send("apn", token(4), options(topic=TOPIC))).status_code == 200
    assert gateway.services.dispatcher.lanes["android-2"].stats.delivered == 2
    assert gateway.services.dispatcher.lanes["android"].stats.delivered == 0
    assert len(simulator.received) == 1
    # rc1's prefix works too, whatever its Authorization says.
    rc1 = RocketChat(
        client=gateway.client, gateway=f"{gateway.url}/{SECRET_1}", cloud_token="rotated"
    )
    assert (await rc1.send("gcm", FCM_TOKEN, options())).status_code == 200
    assert gateway.services.dispatcher.lanes["android"].stats.delivered == 1


# --- dead tokens: 406 ---------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"])
async def test_dead_apns_token_is_406(
    rc: RocketChat, simulator: ApnsSimulator, reason: str
) -> None:
    status = 410 if reason == "Unregistered" else 400
    # A delivery first: only an app that has delivered believes BadDeviceToken and
    # DeviceTokenNotForTopic, which a wrong environment or topic earns every token.
    assert (await rc.send("apn", token(6), options(topic=TOPIC))).status_code == 200
    simulator.script(token(5), SimReply(status=status, reason=reason))
    error_body(await rc.send("apn", token(5), options(topic=TOPIC)), 406)


@pytest.mark.parametrize("code", ["UNREGISTERED", "SENDER_ID_MISMATCH"])
async def test_dead_fcm_token_is_406(
    rc: RocketChat, fcm_simulator: FcmSimulator, code: str
) -> None:
    # A delivery first: only an app that has delivered believes SENDER_ID_MISMATCH,
    # which a wrong project earns every token.
    assert (await rc.send("gcm", "rc-device-0002:APA91b" + "y" * 40, options())).status_code == 200
    fcm_simulator.script(FCM_TOKEN, FcmReply(error_code=code))
    error_body(await rc.send("gcm", FCM_TOKEN, options()), 406)


async def test_malformed_tokens_are_dead_without_an_upstream_request(
    rc: RocketChat, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    error_body(await rc.send("apn", "not-hex!", options(topic=TOPIC)), 406)
    error_body(await rc.send("gcm", 'bad"token', options()), 406)
    assert simulator.received == []
    assert fcm_simulator.received == []


# --- auth: 401 ----------------------------------------------------------------------------


@pytest.mark.parametrize("cloud_token", [None, "", "someone-else", CLOUD_TOKEN + "x"])
async def test_unknown_authorization_is_401(
    gateway: Pushd, simulator: ApnsSimulator, cloud_token: str | None
) -> None:
    rc = RocketChat(client=gateway.client, gateway=gateway.url, cloud_token=cloud_token)
    error_body(await rc.send("apn", token(6), options(topic=TOPIC)), 401)
    error_body(await rc.send("gcm", FCM_TOKEN, options()), 401)
    assert simulator.received == []


async def test_wrong_path_secret_is_401(gateway: Pushd, simulator: ApnsSimulator) -> None:
    for prefix in ("rc1-secret-012345678X", "short", SECRET_1.upper()):
        rc = RocketChat(client=gateway.client, gateway=f"{gateway.url}/{prefix}")
        error_body(await rc.send("apn", token(7), options(topic=TOPIC)), 401)
    assert simulator.received == []


# --- bad input: 422, never a traceback ----------------------------------------------------

GOOD = {"token": "0" * 64, "options": options(topic=TOPIC)}


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'"token"',
        b"[" * 10_000 + b"]" * 10_000,
        b'{"token": 1' + b"0" * 5000 + b"}",
        json.dumps({"options": options(topic=TOPIC)}).encode(),
        json.dumps({"token": "", "options": options(topic=TOPIC)}).encode(),
        json.dumps({"token": "0" * 64}).encode(),
        json.dumps({"token": "0" * 64, "options": "x"}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, badge="3")}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, badge=-1)}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, badge=True)}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, title=["x"])}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, notId="abc")}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, apn="MESSAGE")}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, contentAvailable="yes")}).encode(),
        json.dumps({**GOOD, "options": options()}).encode(),  # no topic
        json.dumps({**GOOD, "options": options(topic="org.unknown.app")}).encode(),
        json.dumps({**GOOD, "options": options(topic=TOPIC, text="x" * 5000)}).encode(),
        b'{"token":"' + b"0" * 64 + b'","options":{"topic":"' + TOPIC.encode() + b'",'
        b'"payload":{"x":"\\ud800"},"notId":1}}',
        b'{"token":"' + b"0" * 64 + b'","options":{"topic":"' + TOPIC.encode() + b'",'
        b'"payload":{"x":NaN},"notId":1}}',
    ],
)
async def test_bad_apn_input_is_422(
    rc: RocketChat, simulator: ApnsSimulator, content: bytes
) -> None:
    error_body(await rc.post("apn", content), 422)
    assert simulator.received == []


async def test_bad_gcm_input_is_422(rc: RocketChat, fcm_simulator: FcmSimulator) -> None:
    no_not_id = options()
    del no_not_id["notId"]
    for opts in (no_not_id, options(text="x" * 5000), options(gcm={"style": 1})):
        error_body(await rc.send("gcm", FCM_TOKEN, opts), 422)
    assert fcm_simulator.received == []


async def test_oversized_body_is_422_in_the_gateway_shape(
    rc: RocketChat, simulator: ApnsSimulator
) -> None:
    big = {"token": "0" * 64, "options": options(topic=TOPIC, text="x" * 40_000)}
    error_body(await rc.post("apn", json.dumps(big).encode()), 422)
    assert simulator.received == []


async def test_permanent_upstream_failure_is_422(rc: RocketChat, simulator: ApnsSimulator) -> None:
    simulator.script(token(8), SimReply(status=400, reason="BadCollapseId"))
    error_body(await rc.send("apn", token(8), options(topic=TOPIC)), 422)


async def test_no_fcm_app_configured_is_422(
    start_pushd: PushdFactory, fcm_simulator: FcmSimulator
) -> None:
    pushd: Pushd = await start_pushd(
        rocketchat={"servers": [{"name": "rc", "tokens": [f"Bearer {CLOUD_TOKEN}"]}]}
    )
    rc = RocketChat(client=pushd.client, gateway=pushd.url)
    error_body(await rc.send("gcm", FCM_TOKEN, options()), 422)


# --- transient failures: spooled, answered 200, sent by pushd until final ---------------
# Rocket.Chat resends every non-2xx answer (after 1, 2, 4, 8 and 16 minutes), so a 503
# for a push pushd still holds would reach the device twice.


async def test_transient_apns_failure_is_spooled_and_answered_200(
    gateway: Pushd, rc: RocketChat, simulator: ApnsSimulator
) -> None:
    simulator.script(token(9), SimReply(status=503, reason="ServiceUnavailable"))
    response = await rc.send("apn", token(9), options(topic=TOPIC))
    assert response.status_code == 200, response.text
    # pushd's own retry delivers it: the second notification is the 200.
    await simulator.wait_for(2)
    await _spool_drained(gateway, "ios")
    assert [n.token for n in simulator.received] == [token(9), token(9)]


async def test_transient_fcm_failure_is_spooled_and_answered_200(
    gateway: Pushd, rc: RocketChat, fcm_simulator: FcmSimulator
) -> None:
    fcm_simulator.script(FCM_TOKEN, FcmReply(error_code="UNAVAILABLE"))
    assert (await rc.send("gcm", FCM_TOKEN, options())).status_code == 200
    await fcm_simulator.wait_for(2)
    await _spool_drained(gateway, "android")
    assert len(fcm_simulator.received) == 2


async def test_slow_upstream_is_answered_fast_and_sent_once(
    gateway: Pushd, rc: RocketChat, simulator: ApnsSimulator
) -> None:
    simulator.script(token(10), SimReply(status=200, delay=2.0))
    started = trio.current_time()
    response = await rc.send("apn", token(10), options(topic=TOPIC))
    assert trio.current_time() - started < 1.8
    assert response.status_code == 200, response.text
    await simulator.wait_for(1)
    await _spool_drained(gateway, "ios")
    await trio.sleep(0.5)  # nothing more arrives: the in-flight attempt was the one
    assert len(simulator.received) == 1


async def test_dead_verdict_after_the_answer_is_406_next_time(
    gateway: Pushd, rc: RocketChat, simulator: ApnsSimulator
) -> None:
    simulator.script(token(12), SimReply(status=410, reason="Unregistered", delay=2.0))
    assert (await rc.send("apn", token(12), options(topic=TOPIC))).status_code == 200
    ref = rocketchat.late_ref("rc1", "ios", token(12))
    with trio.fail_after(10):
        while not await gateway.services.store.late_verdicts([ref]):  # noqa: ASYNC110
            await trio.sleep(0.05)
    # The server learns it on its next push for the token, without a send.
    error_body(await rc.send("apn", token(12), options(topic=TOPIC)), 406)
    assert len(simulator.received) == 1


async def _spool_drained(gateway: Pushd, app: str) -> None:
    """Wait until the app's spool holds nothing (its retries are final)."""
    with trio.fail_after(10):
        while gateway.services.dispatcher.depth.get(app, 0):  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_credential_failure_is_503(rc: RocketChat, simulator: ApnsSimulator) -> None:
    simulator.script(token(11), SimReply(status=403, reason="InvalidProviderToken"))
    error_body(await rc.send("apn", token(11), options(topic=TOPIC)), 503)


# --- privacy ------------------------------------------------------------------------------


async def test_logs_never_hold_content_tokens_or_secrets(
    gateway: Pushd,
    rc: RocketChat,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pushd")
    opts = options(topic=TOPIC, title=CONTENT, text=CONTENT, payload={"msg": CONTENT})
    simulator.script(token(12), SimReply(status=410, reason="Unregistered"))
    await rc.send("apn", token(12), opts)
    await rc.send("apn", token(13), opts)
    await rc.send("gcm", FCM_TOKEN, {**opts, "text": CONTENT * 1000})
    await rc.send("apn", token(13), {**opts, "badge": CONTENT})
    await rc.post("apn", CONTENT.encode())
    wrong = RocketChat(client=gateway.client, gateway=f"{gateway.url}/{SECRET_1}x")
    await wrong.send("apn", token(13), opts)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "Rocket.Chat" in text
    for secret in (CONTENT, token(12), token(13), FCM_TOKEN, CLOUD_TOKEN, SECRET_1):
        assert secret not in text
