"""FCM through pushd: HTTP into pushd, HTTP/2 + TLS out to the FCM (and APNs) simulators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, fcm_entry, token


def fcm_token(n: int) -> str:
    return f"fcm-device-{n:04d}:APA91b" + "x" * 40


@pytest.fixture
async def mixed(
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
        {
            **fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
            "android_ttl": 3600,
            "fcm_apns": {"headers": {"apns-priority": "10"}, "aps": {"mutable-content": 1}},
        },
    ]
    pushd: Pushd = await start_pushd(apps=apps)
    return pushd


async def test_one_send_reaches_apns_and_fcm_devices(
    mixed: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    await mixed.register("ann", token(1), app="ios")
    await mixed.register("ann", fcm_token(1), app="android")
    await mixed.register("ann", fcm_token(2), app="android")
    answer = await mixed.send(
        {
            "user": "ann",
            "alert": {"title": "Hi", "body": "secret"},
            "badge": 2,
            "data": {"room": "42", "n": 7},
            "collapse_id": "room-42",
        }
    )
    statuses = {(r["app"], r["token"]): r["status"] for r in answer["results"]}
    assert statuses == {
        ("ios", token(1)): "delivered",
        ("android", fcm_token(1)): "delivered",
        ("android", fcm_token(2)): "delivered",
    }
    assert [r.token for r in simulator.received] == [token(1)]
    messages = {r.token: r.message for r in fcm_simulator.received}
    assert set(messages) == {fcm_token(1), fcm_token(2)}
    message: dict[str, Any] = messages[fcm_token(1)]
    assert message["data"] == {"room": "42", "n": "7"}  # FCM data values are strings
    assert message["notification"] == {"title": "Hi", "body": "secret"}
    assert message["android"]["ttl"] == "3600s"
    assert message["android"]["collapse_key"] == "room-42"
    assert message["android"]["priority"].lower() == "high"
    assert message["apns"]["headers"] == {"apns-priority": "10"}
    assert message["apns"]["payload"]["aps"] == {"mutable-content": 1, "badge": 2}


async def test_fcm_dead_tokens_are_removed_and_reported(
    mixed: Pushd, fcm_simulator: FcmSimulator
) -> None:
    for n in (1, 2, 3):
        await mixed.register("bo", fcm_token(n), app="android")
    fcm_simulator.script(fcm_token(1), FcmReply(error_code="UNREGISTERED"))
    fcm_simulator.script(fcm_token(2), FcmReply(error_code="SENDER_ID_MISMATCH"))
    answer = await mixed.send({"user": "bo", "alert": "x"})
    statuses = {r["token"]: (r["status"], r.get("reason")) for r in answer["results"]}
    assert statuses[fcm_token(1)] == ("removed", "UNREGISTERED")
    assert statuses[fcm_token(2)] == ("removed", "SENDER_ID_MISMATCH")
    assert statuses[fcm_token(3)] == ("delivered", None)
    devices = (await mixed.post("/v1/users/devices", {"user": "bo"})).json()["devices"]
    assert [d["token"] for d in devices] == [fcm_token(3)]


async def test_quota_slows_only_that_app(
    mixed: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    await mixed.register("cy", fcm_token(1), app="android")
    await mixed.register("cy", token(1), app="ios")
    fcm_simulator.script(fcm_token(1), FcmReply(error_code="QUOTA_EXCEEDED", retry_after=120))
    answer = await mixed.send({"user": "cy", "alert": "x"})
    statuses = {r["app"]: (r["status"], r.get("reason")) for r in answer["results"]}
    assert statuses["ios"] == ("delivered", None)
    assert statuses["android"][0] == "retrying"
    health = (await mixed.client.get(mixed.url + "/healthz", headers=mixed.auth())).json()
    assert health["spooled"] == 1
    assert health["apps"]["android"]["spool"]["depth"] == 1
    assert health["apps"]["ios"]["state"] == "ok"


async def test_expired_access_token_is_replaced_without_losing_the_message(
    mixed: Pushd, fcm_simulator: FcmSimulator
) -> None:
    await mixed.register("di", fcm_token(1), app="android")
    await mixed.send({"user": "di", "alert": "first"})
    issued = fcm_simulator.tokens_issued
    fcm_simulator.expire_tokens()  # the next send gets 401 UNAUTHENTICATED
    answer = await mixed.send({"user": "di", "alert": "second"})
    assert answer["results"][0]["status"] == "delivered"
    assert fcm_simulator.tokens_issued == issued + 1
    assert [r.status for r in fcm_simulator.received] == [200, 401, 200]


async def test_broken_fcm_credentials_pause_fcm_while_apns_delivers(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd: Pushd = await start_pushd(
        apps=[
            app_entry("ios", TOPIC, upstream, key_file, ca_file),
            fcm_entry("android", fcm_simulator, wrong_key, ca_file, tmp_path),
        ]
    )
    await pushd.register("ed", token(1), app="ios")
    await pushd.register("ed", fcm_token(1), app="android")
    with trio.fail_after(10):
        answer = await pushd.send({"user": "ed", "alert": "x"})
    statuses = {r["app"]: r["status"] for r in answer["results"]}
    assert statuses == {"ios": "delivered", "android": "failed"}
    health = (await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())).json()
    assert health["apps"]["android"]["state"] == "paused"
    assert health["apps"]["ios"]["state"] == "ok"
    assert fcm_simulator.received == []  # the token endpoint refused: nothing was sent


async def test_fcm_registration_checks_the_token_form(mixed: Pushd) -> None:
    response = await mixed.post(
        "/v1/devices", {"user": "fi", "token": "has spaces", "app": "android"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "token"
    # An FCM token is kept as given (case matters), unlike an APNs token.
    registered = await mixed.register("fi", fcm_token(1).upper(), app="android")
    assert registered.json()["token"] == fcm_token(1).upper()


async def test_apns_failure_does_not_stall_fcm(
    mixed: Pushd, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    await mixed.register("gu", token(1), app="ios")
    await mixed.register("gu", fcm_token(1), app="android")
    simulator.script(token(1), SimReply(status=403, reason="InvalidProviderToken"))
    answer = await mixed.send({"user": "gu", "alert": "x"})
    statuses = {r["app"]: r["status"] for r in answer["results"]}
    assert statuses == {"ios": "failed", "android": "delivered"}
