"""The Matrix push gateway end to end: a homeserver's notify requests into pushd over
HTTP, out to the APNs and FCM simulators over HTTP/2 + TLS.  Expected payloads and
answers are the notes' (matrix.md §2, §3, §5)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd import logs
from pushd.frontends.matrix.gateway import late_ref
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from pushd.store.errors import StoreUnavailable
from tests import matrix_homeserver as hs
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, fcm_entry, token

FCM_TOKEN = "matrix-device-0001:APA91b" + "m" * 40
OTHER_FCM_TOKEN = "matrix-device-0002:APA91b" + "n" * 40
ROOM = "!slw48wfj34rtnrf:example.com"
EVENT = "$qTOWWTEL48yPm3uT-gdNhFcoHxfKbZuqRVnnWWSkGBs"
BODY = "I'm floating in a most peculiar way."
MESSAGE = {"msgtype": "m.text", "body": BODY}


@pytest.fixture
def start_gateway(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> Any:
    async def start(
        ios: dict[str, Any] | None = None,
        android: dict[str, Any] | None = None,
        extra_apps: list[dict[str, Any]] = (),  # type: ignore[assignment]
        **settings: Any,
    ) -> tuple[Pushd, hs.Homeserver]:
        upstream = f"https://127.0.0.1:{simulator.port}"
        apps = [
            {
                **app_entry("ios", TOPIC, upstream, key_file, ca_file),
                "matrix": {"app_ids": [hs.IOS_APP], **(ios or {})},
            },
            {
                **fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
                "matrix": {"app_ids": [hs.ANDROID_APP], **(android or {})},
            },
            *extra_apps,
        ]
        matrix = {"answer_within": 1.0, **settings.pop("matrix", {})}
        pushd: Pushd = await start_pushd(apps=apps, matrix=matrix, **settings)
        return pushd, hs.Homeserver(pushd.client, pushd.url)

    return start


@pytest.fixture
async def homeserver(start_gateway: Any) -> hs.Homeserver:
    _, homeserver = await start_gateway()
    return homeserver


def apns_sent(simulator: ApnsSimulator, index: int = 0) -> dict[str, Any]:
    received = simulator.received[index]
    assert received.topic == TOPIC
    assert received.status == 200
    payload: dict[str, Any] = json.loads(received.payload)
    return payload


def ios_device(n: int = 1, **options: Any) -> dict[str, Any]:
    return hs.device(hs.IOS_APP, hs.pushkey_for(token(n)), **options)


def android_device(pushkey: str = FCM_TOKEN, **options: Any) -> dict[str, Any]:
    return hs.device(hs.ANDROID_APP, pushkey, **options)


async def verdict_kept(pushd: Pushd, device: dict[str, Any]) -> None:
    """Wait until the dead-token reaper has kept a late verdict for ``device``.

    The reaper runs after the upstream's answer, with nothing to wait on from outside
    the process, so this polls the store (a read costs microseconds).
    """
    refs = [late_ref(device["app_id"], device["pushkey"])]
    with trio.fail_after(10):
        while not await pushd.services.store.late_verdicts(refs):  # noqa: ASYNC110
            await trio.sleep(0.01)


# --- payloads, through the real sockets ------------------------------------------------


async def test_a_full_event_reaches_apns_as_sygnal_builds_it(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    body = hs.full_event([ios_device()], event_id=EVENT, room_id=ROOM, content=MESSAGE, unread=3)
    assert await homeserver.rejected(body) == []
    received = simulator.received[0]
    assert received.token == token(1)  # base64 pushkey sent as hex
    assert received.push_type == "alert"
    assert received.priority == 10
    assert apns_sent(simulator) == {
        "aps": {
            "alert": {
                "loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                "loc-args": ["Major Tom", "Mission Control", BODY],
            },
            "badge": 3,
        },
        "room_id": ROOM,
        "event_id": EVENT,
    }


async def test_event_id_only_gets_the_apps_default_payload_and_low_priority(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    device = ios_device(event_id_only=True, default_payload=hs.ELEMENT_IOS_DEFAULT)
    device["data"]["default_payload"]["pusher_notification_client_identifier"] = "acct-1"
    body = hs.event_id_only([device], event_id=EVENT, room_id=ROOM, prio="low", unread=2)
    assert await homeserver.rejected(body) == []
    assert simulator.received[0].priority == 5
    assert apns_sent(simulator) == {
        "aps": {"mutable-content": 1, "alert": {"loc-key": "Notification", "loc-args": []}},
        "pusher_notification_client_identifier": "acct-1",
        "room_id": ROOM,
        "event_id": EVENT,
        "unread_count": 2,
    }


async def test_a_badge_update_clears_the_ios_badge_and_skips_android(
    homeserver: hs.Homeserver, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    devices = [
        ios_device(event_id_only=True, default_payload=hs.ELEMENT_IOS_DEFAULT),
        android_device(event_id_only=True),
    ]
    assert await homeserver.rejected(hs.badge_update(devices, unread=0)) == []
    assert apns_sent(simulator) == {"aps": {"badge": 0}}
    assert fcm_simulator.received == []  # nothing to show: FCM gets nothing (as Sygnal)


async def test_a_full_event_reaches_fcm_as_a_data_message(
    homeserver: hs.Homeserver, fcm_simulator: FcmSimulator
) -> None:
    body = hs.full_event([android_device()], event_id=EVENT, room_id=ROOM, content=MESSAGE)
    assert await homeserver.rejected(body) == []
    message = fcm_simulator.received[0].message
    assert message["token"] == FCM_TOKEN
    assert message["android"]["priority"].lower() == "high"
    assert "notification" not in message
    assert message["data"] == {
        "event_id": EVENT,
        "type": "m.room.message",
        "sender": "@tom:example.org",
        "room_name": "Mission Control",
        "sender_display_name": "Major Tom",
        "content_msgtype": "m.text",
        "content_body": BODY,
        "room_id": ROOM,
        "prio": "high",
        "unread": "2",
    }


async def test_event_id_only_reaches_element_android_with_its_client_secret(
    start_gateway: Any, fcm_simulator: FcmSimulator
) -> None:
    _, homeserver = await start_gateway(
        android={"fcm_options": {"android": {"ttl": "3600s", "priority": "HIGH"}}}
    )
    device = android_device(event_id_only=True, default_payload={"cs": "client-secret"})
    body = hs.event_id_only([device], event_id=EVENT, room_id=ROOM, prio="low", unread=2)
    assert await homeserver.rejected(body) == []
    message = fcm_simulator.received[0].message
    assert message["android"]["ttl"] == "3600s"  # from fcm_options
    assert message["android"]["priority"].lower() == "normal"  # prio low wins
    assert message["data"] == {
        "event_id": EVENT,
        "room_id": ROOM,
        "prio": "normal",
        "unread": "2",
        "cs": "client-secret",
    }


async def test_unpadded_base64_and_hex_pushkeys(
    start_gateway: Any, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    hex_app = {
        **app_entry("ios-hex", TOPIC, upstream, key_file, ca_file),
        "matrix": {"app_ids": ["org.example.hex"], "convert_pushkey_to_hex": False},
    }
    _, homeserver = await start_gateway(extra_apps=[hex_app])
    unpadded = hs.device(hs.IOS_APP, hs.pushkey_for(token(7), padded=False))
    assert not unpadded["pushkey"].endswith("=") and hs.pushkey_for(token(7)).endswith("=")
    hex_key = hs.device("org.example.hex", token(8).upper())
    assert await homeserver.rejected(hs.full_event([unpadded, hex_key], content=MESSAGE)) == []
    await simulator.wait_for(2)
    assert sorted(r.token for r in simulator.received) == sorted([token(7), token(8)])


async def test_tweaks_sound_is_used_only_when_the_app_asks(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    _, homeserver = await start_gateway(ios={"sound_from_tweaks": True, "push_type": "alert"})
    body = hs.full_event([ios_device(tweaks={"sound": "default", "highlight": True})])
    assert await homeserver.rejected(body) == []
    assert apns_sent(simulator)["aps"]["sound"] == "default"


async def test_a_sound_tweak_that_is_not_a_string_is_ignored(
    start_gateway: Any, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    # Synapse accepts any set_tweak action in a push rule and sends a tweak without a
    # value as true (httppusher.tweaks_for_actions): a user's {"set_tweak": "sound"}
    # puts "sound": true in every push.  A 400 for it made Synapse retry each event for
    # 24 hours, holding every later push to the device behind it.
    _, homeserver = await start_gateway(ios={"sound_from_tweaks": True, "push_type": "alert"})
    devices = [
        ios_device(1, tweaks={"sound": True, "highlight": True}),
        ios_device(2, tweaks={"sound": 1}),
        hs.device(hs.ANDROID_APP, FCM_TOKEN, tweaks={"sound": {"name": "ding"}}),
    ]
    assert await homeserver.rejected(hs.full_event(devices, content=MESSAGE)) == []
    await simulator.wait_for(2)
    assert all("sound" not in json.loads(r.payload)["aps"] for r in simulator.received)
    await fcm_simulator.wait_for(1)


async def test_devices_of_one_request_each_get_their_own_payload(
    start_gateway: Any, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    """Devices that would get the same push share one (same_push); any difference in
    what the builders read (default payload, down to a JSON type, or sound) is kept."""
    _, homeserver = await start_gateway(ios={"sound_from_tweaks": True})
    ding = {"sound": "ding.caf"}
    ios = [
        ios_device(1, default_payload=hs.ELEMENT_IOS_DEFAULT, tweaks=ding),
        ios_device(2, default_payload=hs.ELEMENT_IOS_DEFAULT, tweaks=ding),
        ios_device(3, default_payload={"flag": 1}, tweaks=ding),
        ios_device(4, default_payload={"flag": True}, tweaks=ding),
        ios_device(5, default_payload={"flag": 1.0}, tweaks=ding),
        ios_device(6, default_payload=hs.ELEMENT_IOS_DEFAULT, tweaks={"sound": "bell.caf"}),
        ios_device(7, default_payload=hs.ELEMENT_IOS_DEFAULT, tweaks=ding),
    ]
    android = [
        android_device(FCM_TOKEN, default_payload={"cs": "a"}),
        android_device(OTHER_FCM_TOKEN, default_payload={"cs": "b"}),
    ]
    body = hs.full_event([*ios, *android], content=MESSAGE)
    assert await homeserver.rejected(body) == []
    await simulator.wait_for(len(ios))
    await fcm_simulator.wait_for(len(android))
    raw = {r.token: r.payload for r in simulator.received}
    sent = {t: json.loads(p) for t, p in raw.items()}
    assert [sent[token(n)]["aps"]["sound"] for n in range(1, 8)] == ["ding.caf"] * 5 + [
        "bell.caf",
        "ding.caf",
    ]
    assert sent[token(1)]["aps"]["mutable-content"] == 1
    assert raw[token(1)] == raw[token(2)] == raw[token(7)]
    assert b'"flag":1,' in raw[token(3)]
    assert b'"flag":true,' in raw[token(4)]
    assert b'"flag":1.0,' in raw[token(5)]
    assert sent[token(6)] == {
        **sent[token(1)],
        "aps": {**sent[token(1)]["aps"], "sound": "bell.caf"},
    }
    fcm = {r.token: r.message["data"] for r in fcm_simulator.received}
    assert (fcm[FCM_TOKEN]["cs"], fcm[OTHER_FCM_TOKEN]["cs"]) == ("a", "b")


async def test_a_background_push_type_goes_at_priority_5(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    _, homeserver = await start_gateway(ios={"push_type": "background"})
    device = ios_device(default_payload={"aps": {"content-available": 1}})
    assert await homeserver.rejected(hs.event_id_only([device])) == []
    assert simulator.received[0].push_type == "background"
    assert simulator.received[0].priority == 5
    assert simulator.received[0].status == 200


# --- rejected pushkeys ---------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        SimReply(410, "Unregistered"),
        SimReply(410, "ExpiredToken"),
        SimReply(400, "BadDeviceToken"),
        SimReply(400, "DeviceTokenNotForTopic"),
    ],
    ids=lambda reply: reply.reason,
)
async def test_dead_apns_tokens_are_rejected(
    homeserver: hs.Homeserver, simulator: ApnsSimulator, reply: SimReply
) -> None:
    # A delivery first: only an app that has delivered believes BadDeviceToken and
    # DeviceTokenNotForTopic, which a wrong environment or topic earns every token.
    assert await homeserver.rejected(hs.full_event([ios_device(2)])) == []
    simulator.script(token(1), reply)
    device = ios_device(pushkey_ts=int(time.time()) - 86400)
    assert await homeserver.rejected(hs.full_event([device])) == [device["pushkey"]]


async def test_a_410_older_than_the_pusher_is_not_a_rejection(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    # The token died an hour ago, but the pusher was set a minute ago: a device that
    # got the same token back.  Sygnal would reject it; the notes say keep it.
    an_hour_ago_ms = int((time.time() - 3600) * 1000)
    simulator.script(token(1), SimReply(410, "Unregistered", timestamp_ms=an_hour_ago_ms))
    device = ios_device(pushkey_ts=int(time.time()) - 60)
    assert await homeserver.rejected(hs.full_event([device])) == []


@pytest.mark.parametrize(
    "reply",
    [FcmReply(error_code="UNREGISTERED"), FcmReply(error_code="SENDER_ID_MISMATCH")],
    ids=lambda reply: reply.error_code,
)
async def test_dead_fcm_tokens_are_rejected(
    homeserver: hs.Homeserver, fcm_simulator: FcmSimulator, reply: FcmReply
) -> None:
    # A delivery first: only an app that has delivered believes SENDER_ID_MISMATCH,
    # which a wrong project earns every token.
    proof = hs.full_event([android_device(OTHER_FCM_TOKEN)], content=MESSAGE)
    assert await homeserver.rejected(proof) == []
    fcm_simulator.script(FCM_TOKEN, reply)
    device = android_device()
    assert await homeserver.rejected(hs.full_event([device], content=MESSAGE)) == [FCM_TOKEN]


@pytest.mark.parametrize("pushkey", ["not a token\u00e9", ""])
async def test_a_malformed_fcm_token_is_rejected(homeserver: hs.Homeserver, pushkey: str) -> None:
    """An empty pushkey was "failed: token: missing" and never rejected: the homeserver
    kept the pusher, and pushed to it, for ever."""
    body = hs.full_event([android_device(pushkey)], content=MESSAGE)
    assert await homeserver.rejected(body) == [pushkey]


async def test_unknown_app_ids_bad_pushkeys_and_bad_default_payloads_are_rejected(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    devices = [
        hs.device("org.example.unknown", "c29tZXRoaW5n"),
        hs.device(hs.IOS_APP, "!!not base64!!"),
        ios_device(2, default_payload=["not", "an", "object"]),
        ios_device(3),
    ]
    rejected = await homeserver.rejected(hs.full_event(devices, content=MESSAGE))
    assert rejected == [d["pushkey"] for d in devices[:3]]
    await simulator.wait_for(1)
    assert [r.token for r in simulator.received] == [token(3)]


async def test_app_ids_match_exactly_or_by_glob_and_ambiguity_rejects(
    start_gateway: Any, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    extra = [
        {
            **app_entry("beta", TOPIC, upstream, key_file, ca_file),
            "matrix": {"app_ids": ["im.vector.app.ios.beta", "org.example.*"]},
        },
        {
            **app_entry("wild", TOPIC, upstream, key_file, ca_file),
            "matrix": {"app_ids": ["im.vector.app.ios.?eta", "org.example.?"]},
        },
    ]
    pushd, homeserver = await start_gateway(extra_apps=extra)
    gateway_match = {
        app_id: (
            await homeserver.rejected(
                hs.full_event([hs.device(app_id, hs.pushkey_for(token(n)))], content=MESSAGE)
            )
        )
        for n, app_id in enumerate(
            ["im.vector.app.ios.beta", "im.vector.app.ios.zeta", "org.example.xy", "org.example.x"],
            start=1,
        )
    }
    assert gateway_match == {
        "im.vector.app.ios.beta": [],  # exact beats the ?eta glob
        "im.vector.app.ios.zeta": [],  # one glob
        "org.example.xy": [],  # one glob (? is exactly one character)
        "org.example.x": [hs.pushkey_for(token(4))],  # two apps' globs: ambiguous
    }
    await simulator.wait_for(3)
    assert sorted(r.token for r in simulator.received) == [token(1), token(2), token(3)]
    assert pushd.services.dispatcher.lanes["beta"].stats.delivered == 2
    assert pushd.services.dispatcher.lanes["wild"].stats.delivered == 1


# --- better than Sygnal ----------------------------------------------------------------


async def test_good_dead_and_failing_devices_in_one_request(
    homeserver: hs.Homeserver, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    simulator.script(token(2), SimReply(410, "Unregistered"))
    simulator.script(token(3), SimReply(500, "InternalServerError"))  # once, then fine
    fcm_simulator.script(OTHER_FCM_TOKEN, FcmReply(error_code="UNREGISTERED"))
    fcm_simulator.script(FCM_TOKEN, FcmReply(status=503))  # once, then fine
    devices = [
        ios_device(1),
        ios_device(2),
        ios_device(3),
        android_device(FCM_TOKEN),
        android_device(OTHER_FCM_TOKEN),
        hs.device("org.example.unknown", "c29tZXRoaW5n"),
    ]
    rejected = await homeserver.rejected(hs.full_event(devices, content=MESSAGE))
    assert rejected == [ios_device(2)["pushkey"], OTHER_FCM_TOKEN, "c29tZXRoaW5n"]
    # The transient failures are retried in the background and delivered.
    with trio.fail_after(10):
        await simulator.wait_for(4)
        await fcm_simulator.wait_for(3)
    assert [r.status for r in simulator.received if r.token == token(3)] == [500, 200]
    assert [r.status for r in fcm_simulator.received if r.token == FCM_TOKEN] == [503, 200]


async def test_the_answer_does_not_wait_for_a_slow_upstream(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    _, homeserver = await start_gateway(matrix={"answer_within": 0.2})
    simulator.script(token(1), SimReply(delay=2.0))
    assert await homeserver.rejected(hs.full_event([ios_device(1)])) == []
    assert simulator.received == []  # answered before APNs did
    await simulator.wait_for(1)
    assert simulator.received[0].status == 200  # and the push still went out once
    await trio.sleep(0.3)
    assert len(simulator.received) == 1


async def test_a_badge_update_does_not_use_up_a_late_rejection(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    # Synapse sends a badge update after a read receipt and discards the answer
    # (httppusher._send_badge): a rejection told there is never heard.  The next event
    # push must still hear it, and not go upstream.
    pushd, homeserver = await start_gateway()
    simulator.script(token(1), SimReply(500, "InternalServerError"), SimReply(410, "Unregistered"))
    device = ios_device(1, pushkey_ts=int(time.time()) - 86400)
    assert await homeserver.rejected(hs.full_event([device], event_id="$a")) == []
    await simulator.wait_for(2)
    await verdict_kept(pushd, device)
    await homeserver.notify(hs.badge_update([device], unread=0))
    assert await homeserver.rejected(hs.full_event([device], event_id="$b")) == [device["pushkey"]]
    await trio.sleep(0.1)
    assert len(simulator.received) == 2


async def test_a_token_found_dead_in_a_background_retry_is_rejected_next_time(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    pushd, homeserver = await start_gateway()
    simulator.script(token(1), SimReply(500, "InternalServerError"), SimReply(410, "Unregistered"))
    device = ios_device(1, pushkey_ts=int(time.time()) - 86400)
    assert await homeserver.rejected(hs.full_event([device], event_id="$a")) == []
    await simulator.wait_for(2)
    store = pushd.services.store
    await verdict_kept(pushd, device)
    # The next notify for that pushkey hears of it, and is not sent upstream.
    assert await homeserver.rejected(hs.full_event([device], event_id="$b")) == [device["pushkey"]]
    await trio.sleep(0.1)
    assert len(simulator.received) == 2
    refs = [late_ref(device["app_id"], device["pushkey"])]
    assert await store.late_verdicts(refs) == {}  # told once


async def test_a_kept_verdict_does_not_reject_a_pusher_set_after_it(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    pushd, homeserver = await start_gateway()
    simulator.script(token(1), SimReply(500, "InternalServerError"), SimReply(410, "Unregistered"))
    old = ios_device(1, pushkey_ts=int(time.time()) - 86400)
    assert await homeserver.rejected(hs.full_event([old], event_id="$a")) == []
    await verdict_kept(pushd, old)
    renewed = ios_device(1, pushkey_ts=int(time.time()) + 5)
    assert await homeserver.rejected(hs.full_event([renewed], event_id="$b")) == []
    await simulator.wait_for(3)
    assert simulator.received[2].status == 200


async def test_a_device_rejected_by_its_verdict_is_not_recorded_as_sent(
    start_gateway: Any, simulator: ApnsSimulator, store_sections: dict[str, Any]
) -> None:
    """A notify's dedupe keys are recorded with its verdicts read (on PostgreSQL in one
    store call): not for a device a verdict rejects, whose pusher may be set again and
    must then get the homeserver's retry of that event."""
    pushd, homeserver = await start_gateway(**store_sections)
    simulator.script(token(1), SimReply(410, "Unregistered"))
    old = ios_device(1, pushkey_ts=int(time.time()) - 86400)
    assert await homeserver.rejected(hs.full_event([old], event_id="$a")) == [old["pushkey"]]
    await verdict_kept(pushd, old)
    both = [old, ios_device(2)]
    assert await homeserver.rejected(hs.full_event(both, event_id="$b")) == [old["pushkey"]]
    renewed = ios_device(1, pushkey_ts=int(time.time()) + 5)
    retry = hs.full_event([renewed, ios_device(2)], event_id="$b")
    assert await homeserver.rejected(retry) == []  # token 1 sent; token 2 a repeat
    assert await homeserver.rejected(retry) == []  # now both repeats
    with trio.move_on_after(5):
        await simulator.wait_for(3)
    await trio.sleep(0.1)
    assert [r.token for r in simulator.received] == [token(1), token(2), token(1)]
    assert [r.status for r in simulator.received] == [410, 200, 200]


async def test_a_repeated_event_is_not_sent_twice(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    body = hs.full_event([ios_device(1)], event_id="$same")
    assert await homeserver.rejected(body) == []
    assert await homeserver.rejected(body) == []  # Synapse retrying a lost answer
    other = hs.full_event([ios_device(1)], event_id="$other")
    assert await homeserver.rejected(other) == []
    badge = hs.badge_update([ios_device(1)], unread=1)
    assert await homeserver.rejected(badge) == []
    assert await homeserver.rejected(badge) == []  # badge updates are not deduplicated
    await simulator.wait_for(4)
    await trio.sleep(0.1)
    assert len(simulator.received) == 4


async def test_a_broken_credential_fails_only_its_own_devices(
    start_gateway: Any,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    _, homeserver = await start_gateway()
    fcm_simulator.script_token_endpoint(FcmReply(status=400, message="invalid_grant"))
    devices = [ios_device(1), android_device()]
    # Not rejected: the token is not at fault, and the homeserver must keep the pusher.
    assert await homeserver.rejected(hs.full_event(devices, content=MESSAGE)) == []
    assert [r.token for r in simulator.received] == [token(1)]
    assert fcm_simulator.received == []


async def test_a_payload_that_cannot_fit_fails_only_that_device(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    huge = {"aps": {"mutable-content": 1}, "padding": "x" * 5000}
    devices = [ios_device(1, default_payload=huge), ios_device(2)]
    assert await homeserver.rejected(hs.full_event(devices, content=MESSAGE)) == []
    await simulator.wait_for(1)
    assert [r.token for r in simulator.received] == [token(2)]


async def test_a_long_message_is_truncated_to_fit_apns(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    content = {"msgtype": "m.text", "body": "é" * 5000}
    assert await homeserver.rejected(hs.full_event([ios_device(1)], content=content)) == []
    received = simulator.received[0]
    assert received.status == 200
    assert len(received.payload) <= 4096
    body = json.loads(received.payload)["aps"]["alert"]["loc-args"][2]
    assert body and set(body) == {"é"}


# --- the HTTP contract -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "errcode", "error"),
    [
        (b"{not json", "M_NOT_JSON", "Expected JSON request body"),
        (
            b'{"notification": {"devices": [], "x": NaN}}',
            "M_NOT_JSON",
            "Expected JSON request body",
        ),
        (b"[]", "M_BAD_JSON", "Invalid notification: expecting object in 'notification' key"),
        (
            b'{"notification": 5}',
            "M_BAD_JSON",
            "Invalid notification: expecting object in 'notification' key",
        ),
        (b'{"notification": {}}', "M_BAD_JSON", "Expected list in 'devices' key"),
        (b'{"notification": {"devices": {}}}', "M_BAD_JSON", "Expected list in 'devices' key"),
        (b'{"notification": {"devices": []}}', "M_BAD_JSON", "No devices in notification"),
        (
            b'{"notification": {"devices": [{"pushkey": "k"}]}}',
            "M_BAD_JSON",
            "Device with missing or non-string app_id",
        ),
        (
            b'{"notification": {"devices": [{"app_id": "a", "pushkey": 5}]}}',
            "M_BAD_JSON",
            "Device with missing or non-string pushkey",
        ),
        (
            b'{"notification": {"devices": [{"app_id": "a", "pushkey": "k", "pushkey_ts": "1"}]}}',
            "M_BAD_JSON",
            "pushkey_ts is of invalid type",
        ),
        (
            b'{"notification": {"devices": [{"app_id": "a", "pushkey": "k", "pushkey_ts": '
            + b"9" * 400
            + b"}]}}",
            "M_BAD_JSON",
            "pushkey_ts is of invalid type",
        ),
        (  # out of a double's range: refused as NaN is (Sygnal reads it as infinity)
            b'{"notification": {"counts": {"unread": 1e400},'
            b' "devices": [{"app_id": "a", "pushkey": "k"}]}}',
            "M_NOT_JSON",
            "Expected JSON request body",
        ),
        (
            b'{"notification": {"devices": [{"app_id": "a", "pushkey": "k", "data": null}]}}',
            "M_BAD_JSON",
            "data is of invalid type",
        ),
        (
            b'{"notification": {"devices": [{"app_id": "a", "pushkey": "k", "tweaks": []}]}}',
            "M_BAD_JSON",
            "tweaks is of invalid type",
        ),
        (
            b'{"notification": {"counts": {"unread": "2"},'
            b' "devices": [{"app_id": "a", "pushkey": "k"}]}}',
            "M_BAD_JSON",
            "counts.unread is of invalid type",
        ),
        (
            b'{"notification": {"counts": {"missed_calls": null},'
            b' "devices": [{"app_id": "a", "pushkey": "k"}]}}',
            "M_BAD_JSON",
            "counts.missed_calls is of invalid type",
        ),
        (
            b'{"notification": {"devices": [], "x": "\\ud800"}}',
            "M_NOT_JSON",
            "Expected JSON request body",
        ),
    ],
)
async def test_malformed_requests_get_sygnals_400_texts(
    homeserver: hs.Homeserver,
    simulator: ApnsSimulator,
    body: bytes,
    errcode: str,
    error: str,
) -> None:
    response = await homeserver.notify_raw(body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"errcode": errcode, "error": error}
    assert simulator.received == []


async def test_a_malformed_device_fails_the_request_before_any_is_sent(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    body = hs.full_event([ios_device(1), {"app_id": hs.IOS_APP}])
    response = await homeserver.notify(body)
    assert response.status_code == 400
    await trio.sleep(0.1)
    assert simulator.received == []


async def test_matrix_errors_for_other_paths_methods_and_big_bodies(
    homeserver: hs.Homeserver,
) -> None:
    client, url = homeserver.client, homeserver.base_url
    response = await client.post(url + "/_matrix/push/v1/other", json={})
    assert (response.status_code, response.json()["errcode"]) == (404, "M_UNRECOGNIZED")
    response = await client.get(url + "/_matrix/push/v1/notify")
    assert (response.status_code, response.json()["errcode"]) == (405, "M_UNRECOGNIZED")
    big = b'{"notification": {"devices": [], "pad": "' + b"x" * (512 * 1024) + b'"}}'
    response = await homeserver.notify_raw(big)
    assert (response.status_code, response.json()["errcode"]) == (413, "M_TOO_LARGE")
    # Under the cap is fine, even over the native API's limit.
    body = hs.full_event([ios_device(1)], content={"msgtype": "m.text", "body": "y" * 100_000})
    assert await homeserver.rejected(body) == []


async def test_health_answers_200_with_an_empty_body(homeserver: hs.Homeserver) -> None:
    response = await homeserver.client.get(homeserver.base_url + "/health")
    assert response.status_code == 200
    assert response.content == b""


async def test_healthz_counts_matrix_work(start_gateway: Any, simulator: ApnsSimulator) -> None:
    pushd, homeserver = await start_gateway()
    simulator.script(token(2), SimReply(410, "Unregistered"))
    body = hs.full_event([ios_device(1), ios_device(2)], event_id="$x")
    await homeserver.rejected(body)
    await homeserver.rejected(body)  # a repeat: both devices deduplicated
    response = await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())
    counters = response.json()["matrix"]
    assert counters["notifications"] == 2
    # The repeat is not sent again (1), and hears of the dead token again (2).
    assert counters["deduplicated"] == 1
    assert counters["rejected"] == 2


async def test_a_repeat_whose_rejection_was_lost_hears_it_again(
    homeserver: hs.Homeserver, simulator: ApnsSimulator
) -> None:
    simulator.script(token(1), SimReply(410, "Unregistered"))
    device = ios_device(1, pushkey_ts=int(time.time()) - 86400)
    body = hs.full_event([device], event_id="$lost")
    assert await homeserver.rejected(body) == [device["pushkey"]]
    # The answer never reached the homeserver; it retries the same event.
    assert await homeserver.rejected(body) == [device["pushkey"]]
    assert len(simulator.received) == 1


async def test_a_failing_store_is_a_503_the_homeserver_retries(
    start_gateway: Any, simulator: ApnsSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    pushd, homeserver = await start_gateway()
    # A verdict is kept for the device (found dead after the answer), so its next
    # notify must read the store: the only per-notify read on SQLite.
    simulator.script(token(1), SimReply(500, "InternalServerError"), SimReply(410, "Unregistered"))
    device = ios_device(1, pushkey_ts=int(time.time()) - 86400)
    assert await homeserver.rejected(hs.full_event([device], event_id="$a")) == []
    await verdict_kept(pushd, device)
    sent = len(simulator.received)

    def broken(refs: Any) -> Any:
        raise StoreUnavailable("io_error")

    monkeypatch.setattr(pushd.services.store, "late_verdicts", broken)
    response = await homeserver.notify(hs.full_event([device], event_id="$b"))
    assert response.status_code == 503
    assert response.json()["errcode"] == "M_UNKNOWN"
    assert response.json()["error"].startswith("store_unavailable: ")
    assert "retry-after" in response.headers
    assert len(simulator.received) == sent
    # A device with no kept verdict needs no read: delivered even so.
    assert await homeserver.rejected(hs.full_event([ios_device(2)], event_id="$c")) == []
    await simulator.wait_for(sent + 1)


async def test_source_networks_restrict_notify(start_gateway: Any) -> None:
    _, closed = await start_gateway(matrix={"allowed_networks": ["10.0.0.0/8"]})
    response = await closed.notify(hs.full_event([ios_device(1)]))
    assert response.status_code == 403
    assert response.json()["errcode"] == "M_FORBIDDEN"
    _, opened = await start_gateway(matrix={"allowed_networks": ["10.0.0.0/8", "127.0.0.0/8"]})
    assert await opened.rejected(hs.full_event([ios_device(1)])) == []


async def test_notify_is_not_served_without_a_matrix_app(pushd: Pushd) -> None:
    # Answering would reject (and so delete) every pusher; a 404 keeps them.
    homeserver = hs.Homeserver(pushd.client, pushd.url)
    response = await homeserver.notify(hs.full_event([ios_device(1)]))
    assert response.status_code == 404


async def test_logs_hold_no_content_and_no_full_pushkeys(
    homeserver: hs.Homeserver,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    logs.quiet_libraries()  # as `pushd serve` does: h2/hpack debug lines carry raw headers
    secret = "the secret launch code"
    simulator.script(token(2), SimReply(410, "Unregistered"))
    simulator.script(token(3), SimReply(500, "InternalServerError"))
    fcm_simulator.script(FCM_TOKEN, FcmReply(error_code="UNREGISTERED"))
    devices = [
        ios_device(1),
        ios_device(2),
        ios_device(3),
        android_device(),
        hs.device("org.example.unknown", "c29tZXRoaW5nLXNlY3JldA=="),
        ios_device(4, default_payload={"aps": {}, "pad": secret * 400}),
    ]
    body = hs.full_event(
        devices,
        content={"msgtype": "m.text", "body": secret},
        sender_display_name=secret,
        room_name=secret,
    )
    await homeserver.rejected(body)
    with trio.fail_after(10):
        await simulator.wait_for(4)
    texts = [record.getMessage() for record in caplog.records]
    assert texts, "expected pushd to log something on these failures"
    for text in texts:
        assert "secret" not in text and "launch" not in text
        for n in (1, 2, 3, 4):
            assert token(n) not in text and hs.pushkey_for(token(n)) not in text
        assert FCM_TOKEN not in text and "c29tZXRoaW5nLXNlY3JldA==" not in text


async def test_one_app_serves_the_native_api_and_matrix_at_once(
    start_gateway: Any, simulator: ApnsSimulator
) -> None:
    pushd, homeserver = await start_gateway()
    await pushd.register("alice", token(5), app="ios")
    assert (await pushd.send({"user": "alice", "alert": "native"}))["summary"]["delivered"] == 1
    assert await homeserver.rejected(hs.full_event([ios_device(6)], content=MESSAGE)) == []
    await simulator.wait_for(2)
    assert [r.token for r in simulator.received] == [token(5), token(6)]
    assert pushd.services.dispatcher.lanes["ios"].stats.delivered == 2
