"""Answers a misconfigured app hears for every token do not wipe the store (over HTTP,
against the APNs and FCM simulators).

APNs answers ``BadDeviceToken`` to a production app sending sandbox tokens and
``DeviceTokenNotForTopic`` to the wrong bundle id; FCM answers ``SENDER_ID_MISMATCH``
to the wrong project.  Such a verdict removes a token only once the app has delivered
a push since start (or its last config change); before that the push fails with the
token kept, and one ALARM (with a gauge) names what to check.  See :mod:`pushd.proof`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.proof import ALARM_AFTER, KEPT
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from tests.conftest import FCM_PROJECT, Pushd, PushdFactory, fcm_entry, token
from tests.test_fcm_end_to_end import fcm_token
from tests.test_metrics import parse, scrape, value

#: Registrations of the misconfigured app: more than one burst's worth of the alarm.
DEVICES = 30


async def stored(pushd: Pushd, users: list[str]) -> list[str]:
    """The tokens the store still holds for ``users``."""
    tokens = []
    for user in users:
        devices = (await pushd.post("/v1/users/devices", {"user": user})).json()["devices"]
        tokens.extend(device["token"] for device in devices)
    return tokens


def alarms(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ALARM" in r.getMessage()]


@pytest.mark.parametrize(
    ("reason", "hint"),
    [("BadDeviceToken", "environment 'sandbox'"), ("DeviceTokenNotForTopic", "topic ")],
)
async def test_apns_mismatches_before_a_delivery_keep_every_token(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    caplog: pytest.LogCaptureFixture,
    reason: str,
    hint: str,
) -> None:
    """The app's environment or topic is wrong: every token answers ``reason``.  None is
    removed, one ALARM names what to check, the gauge says so; once the app delivers,
    the same answer removes its token at once."""
    caplog.set_level(logging.INFO, "pushd")
    pushd: Pushd = await start_pushd()
    users = [f"u{n}" for n in range(DEVICES)]
    tokens = [token(n) for n in range(1, DEVICES + 1)]
    for user, device in zip(users, tokens, strict=True):
        await pushd.register(user, device)
    simulator.set_default(SimReply(status=400, reason=reason))
    for _ in range(2):  # the second burst raises no second ALARM
        answer = await pushd.send({"tokens": tokens, "alert": "x"})
        results = {(r["status"], r.get("reason")) for r in answer["results"]}
        assert results == {("failed", f"{reason} {KEPT}")}
    assert sorted(await stored(pushd, users)) == tokens
    (alarm,) = alarms(caplog)
    assert "app chat" in alarm and reason in alarm and hint in alarm
    samples = parse((await scrape(pushd)).text)
    assert value(samples, "pushd_app_mismatch_alarm", app="chat", reason=reason) == 1
    assert value(samples, "pushd_app_mismatch_alarm", app="other", reason="") == 0
    kept = value(
        samples,
        "pushd_notifications_total",
        app="chat",
        provider="apns",
        protocol="native",
        outcome="failed",
        reason="unproven",
    )
    assert kept == 2 * DEVICES >= ALARM_AFTER

    # The operator fixes the app: a delivery proves it, the alarm clears, and from now on
    # the same answer is about the token alone.
    simulator.set_default(SimReply())
    simulator.script(tokens[1], SimReply(status=400, reason=reason))
    answer = await pushd.send({"tokens": tokens[:2], "alert": "x"})
    statuses = [(r["status"], r.get("reason")) for r in answer["results"]]
    assert statuses == [("delivered", None), ("removed", reason)]
    assert tokens[1] not in await stored(pushd, users[:2])
    samples = parse((await scrape(pushd)).text)
    assert value(samples, "pushd_app_mismatch_alarm", app="chat", reason="") == 0


async def test_a_wrong_fcm_project_deletes_no_token(
    start_pushd: PushdFactory,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every token answers SENDER_ID_MISMATCH (the project is wrong) before any delivery:
    none is removed, where the first 19 were (the window alarm needs 20 answers, and
    forgets them on a restart); the window's alarm still pauses the app, and the proof
    ALARM names the project."""
    caplog.set_level(logging.INFO, "pushd")
    apps = [fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path)]
    pushd: Pushd = await start_pushd(apps=apps)
    users = [f"u{n}" for n in range(DEVICES)]
    tokens = [fcm_token(n) for n in range(DEVICES)]
    for user, device in zip(users, tokens, strict=True):
        await pushd.register(user, device, app="android")
    fcm_simulator.set_default(FcmReply(error_code="SENDER_ID_MISMATCH"))
    answer = await pushd.send({"tokens": tokens, "alert": "x"})
    statuses = Counter(r["status"] for r in answer["results"])
    assert "removed" not in statuses
    reasons = {r.get("reason") for r in answer["results"] if r["status"] == "failed"}
    assert f"SENDER_ID_MISMATCH {KEPT}" in reasons
    assert sorted(await stored(pushd, users)) == sorted(tokens)
    lines = alarms(caplog)
    assert any("app android" in line and f"project {FCM_PROJECT!r}" in line for line in lines)
    assert any("does not match the app's tokens" in line for line in lines)  # the window's
    samples = parse((await scrape(pushd)).text)
    gauge = value(samples, "pushd_app_mismatch_alarm", app="android", reason="SENDER_ID_MISMATCH")
    assert gauge == 1


async def test_firebase_refusing_the_apns_credentials_fails_only_ios_deliveries(
    start_pushd: PushdFactory,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """THIRD_PARTY_AUTH_ERROR concerns the APNs credentials uploaded to Firebase, so only
    iOS (and web) tokens sent through FCM: that delivery fails with its token kept and
    one ALARM says so, while the app's Android devices are served at once; the app was
    paused before, holding the next Android push as ``retrying (paused)``."""
    caplog.set_level(logging.INFO, "pushd")
    apps = [fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path)]
    pushd: Pushd = await start_pushd(apps=apps)
    iphone, android = fcm_token(1), fcm_token(2)
    await pushd.register("ios-user", iphone, app="android")
    await pushd.register("android-user", android, app="android")
    fcm_simulator.script(iphone, FcmReply(error_code="THIRD_PARTY_AUTH_ERROR"))
    fcm_simulator.script(iphone, FcmReply(error_code="THIRD_PARTY_AUTH_ERROR"))
    for _ in range(2):  # the second refusal raises no second ALARM
        (result,) = (await pushd.send({"tokens": [iphone], "alert": "x"}))["results"]
        assert result["status"] == "failed"
        assert result["reason"].startswith("THIRD_PARTY_AUTH_ERROR: Firebase refused")
        (result,) = (await pushd.send({"tokens": [android], "alert": "x"}))["results"]
        assert result["status"] == "delivered"
    assert await stored(pushd, ["ios-user", "android-user"]) == [iphone, android]
    (alarm,) = alarms(caplog)
    assert "fcm[android]" in alarm and "APNs credentials" in alarm and FCM_PROJECT in alarm
    samples = parse((await scrape(pushd)).text)
    assert value(samples, "pushd_app_paused", app="android", reason="") == 0
