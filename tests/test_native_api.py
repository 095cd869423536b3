"""The native API end to end: HTTP into pushd, HTTP/2 + TLS out to the APNs simulator."""

from __future__ import annotations

import json
import time

import trio

from pushd.simulators.apns import ApnsSimulator, SimReply
from tests.conftest import TOPIC, Pushd, PushdFactory, token


async def test_register_and_send_reaches_the_simulator(pushd: Pushd, simulator) -> None:
    first = await pushd.register("alice", token(1).upper())
    assert first.status_code == 201
    assert first.json()["token"] == token(1)  # stored in canonical lower case
    again = await pushd.register("alice", token(1))
    assert again.status_code == 200

    answer = await pushd.send(
        {
            "user": "alice",
            "alert": {"title": "Hi", "body": "secret message"},
            "badge": 3,
            "sound": "default",
            "data": {"room": "42"},
            "collapse_id": "room-42",
            "ttl": 600,
        }
    )
    assert answer["results"] == [{"token": token(1), "app": "chat", "status": "delivered"}]
    assert answer["summary"]["delivered"] == 1
    (received,) = simulator.received
    assert received.token == token(1)
    assert received.topic == TOPIC
    assert received.push_type == "alert"
    assert received.collapse_id == "room-42"
    assert received.expiration is not None and received.expiration > 0
    payload = json.loads(received.payload)
    assert payload == {
        "aps": {"alert": {"title": "Hi", "body": "secret message"}, "badge": 3, "sound": "default"},
        "room": "42",
    }


async def test_send_reaches_every_device_of_a_user_across_apps(pushd: Pushd, simulator) -> None:
    for n in range(5):
        await pushd.register("bob", token(n), app="chat")
    await pushd.register("bob", token(99), app="other")
    await pushd.register("carol", token(100))
    answer = await pushd.send({"user": "bob", "alert": "hello"})
    assert sorted((r["token"], r["app"]) for r in answer["results"]) == sorted(
        [(token(n), "chat") for n in range(5)] + [(token(99), "other")]
    )
    assert {r["status"] for r in answer["results"]} == {"delivered"}
    assert {r.token for r in simulator.received} == {token(n) for n in (0, 1, 2, 3, 4, 99)}


async def test_dead_token_is_removed_and_reported(pushd: Pushd, simulator) -> None:
    await pushd.register("dave", token(1))
    await pushd.register("dave", token(2))
    # token(3) is delivered: the app proves its configuration, so APNs' BadDeviceToken
    # is about token(2) alone (pushd.proof), not a wrong environment.
    await pushd.register("dave", token(3))
    simulator.script(
        token(1),
        SimReply(status=410, reason="Unregistered", timestamp_ms=int(time.time() * 1000) + 60_000),
    )
    simulator.script(token(2), SimReply(status=400, reason="BadDeviceToken"))
    answer = await pushd.send({"user": "dave", "alert": "x"})
    statuses = {r["token"]: (r["status"], r.get("reason")) for r in answer["results"]}
    assert statuses == {
        token(1): ("removed", "Unregistered"),
        token(2): ("removed", "BadDeviceToken"),
        token(3): ("delivered", None),
    }
    devices = await pushd.post("/v1/users/devices", {"user": "dave"})
    assert [d["token"] for d in devices.json()["devices"]] == [token(3)]


async def test_410_before_registration_keeps_the_token(pushd: Pushd, simulator) -> None:
    # APNs says the token died at t=1000 s (1970): the registration is newer, so keep it.
    await pushd.register("erin", token(7))
    simulator.script(token(7), SimReply(status=410, reason="Unregistered", timestamp_ms=1_000_000))
    answer = await pushd.send({"user": "erin", "alert": "x"})
    (result,) = answer["results"]
    assert result["status"] == "failed"
    assert "re-registered" in result["reason"]
    devices = await pushd.post("/v1/users/devices", {"user": "erin"})
    assert [d["token"] for d in devices.json()["devices"]] == [token(7)]


async def test_transient_failure_is_retried_in_the_background(pushd: Pushd, simulator) -> None:
    await pushd.register("fred", token(3))
    simulator.script(token(3), SimReply(status=503, reason="ServiceUnavailable"))
    answer = await pushd.send({"user": "fred", "alert": "x"})
    assert answer["results"][0]["status"] == "retrying"
    with trio.fail_after(5):
        received = await simulator.wait_for(2)
    assert [r.status for r in received if r.token == token(3)] == [503, 200]


async def test_send_to_listed_tokens(pushd: Pushd, simulator) -> None:
    await pushd.register("gina", token(10))
    await pushd.register("gina", token(11))
    answer = await pushd.send({"tokens": [token(11), token(12)], "alert": "x"})
    assert answer["results"] == [
        {"token": token(11), "app": "chat", "status": "delivered"},
        {"token": token(12), "app": None, "status": "failed", "reason": "not registered"},
    ]
    assert [r.token for r in simulator.received] == [token(11)]


async def test_unregister_one_and_all(pushd: Pushd) -> None:
    for n in range(3):
        await pushd.register("hank", token(n))
    removed = await pushd.post("/v1/devices/unregister", {"token": token(0)})
    assert removed.json() == {"removed": 1}
    removed = await pushd.post("/v1/users/unregister", {"user": "hank"})
    assert removed.json() == {"removed": 2}
    devices = await pushd.post("/v1/users/devices", {"user": "hank"})
    assert devices.json() == {"devices": []}


async def test_credential_error_pauses_only_that_app(pushd: Pushd, simulator) -> None:
    await pushd.register("ivy", token(1), app="chat")
    await pushd.register("ivy", token(2), app="other")
    simulator.script(token(1), SimReply(status=403, reason="InvalidProviderToken"))
    answer = await pushd.send({"user": "ivy", "alert": "x"})
    statuses = {r["app"]: r["status"] for r in answer["results"]}
    assert statuses == {"chat": "failed", "other": "delivered"}
    # chat is now paused: nothing more goes upstream for it (the push waits for the
    # pause to end), other still delivers.
    answer = await pushd.send({"user": "ivy", "alert": "y"})
    by_app = {r["app"]: r for r in answer["results"]}
    assert by_app["chat"]["status"] == "retrying" and "paused" in by_app["chat"]["reason"]
    assert by_app["other"]["status"] == "delivered"
    assert [r.token for r in simulator.received].count(token(1)) == 1
    health = (await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())).json()
    assert health["status"] == "degraded"
    assert health["apps"]["chat"]["state"] == "paused"
    assert health["apps"]["other"]["state"] == "ok"


async def test_a_push_held_by_a_pause_is_sent_when_the_pause_ends(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    pushd = await start_pushd(retry={"credential_pause": 0.5})
    await pushd.register("jan", token(1), app="chat")
    simulator.script(token(1), SimReply(status=403, reason="InvalidProviderToken"))
    first = await pushd.send({"user": "jan", "alert": "lost: the credential failed"})
    assert first["results"][0]["status"] == "failed"
    held = await pushd.send({"user": "jan", "alert": "held"})
    assert held["results"][0]["status"] == "retrying"
    assert len(simulator.received) == 1  # nothing sent while paused
    with trio.fail_after(10):
        await simulator.wait_for(2)  # the credential works again after the pause
    assert simulator.received[1].status == 200
    assert json.loads(simulator.received[1].payload)["aps"]["alert"] == "held"
