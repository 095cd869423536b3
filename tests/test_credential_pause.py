"""An app whose credential keeps failing: after each pause one push tests it, the rest
wait in the spool, and nothing promised is lost (over HTTP, against the APNs
simulator)."""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

import pytest
import trio

from pushd.simulators.apns import ApnsSimulator, SimReply
from tests.conftest import Pushd, PushdFactory, token
from tests.test_metrics import parse, scrape, value

#: Short enough that a few pauses pass in a test.
PAUSE = 0.5
HELD = 5
#: Pauses the test waits through with the key still refused.
PROBES = 3


async def health(pushd: Pushd) -> dict[str, Any]:
    answer = await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())
    detail: dict[str, Any] = answer.json()
    return detail


async def test_after_a_pause_one_push_tests_the_credential_and_none_is_lost(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    """APNs refuses the key (every request 403): a fresh push hears "failed"; pushes
    sent then are spooled, and after each pause one of them goes alone to test the key
    (and back to the spool on a 403), never the whole backlog.  Once the key works, the
    test push is delivered and the rest follow, each exactly once."""
    pushd = await start_pushd(retry={"credential_pause": PAUSE, "base_delay": 0.2})
    held = [token(n) for n in range(2, 2 + HELD)]
    for n, device in enumerate([token(1), *held]):
        await pushd.register(f"u{n}", device, app="chat")
    simulator.set_default(SimReply(status=403, reason="InvalidProviderToken"))
    first = await pushd.send({"tokens": [token(1)], "alert": "the first"})
    assert first["results"][0]["status"] == "failed"  # a fresh push hears it at once
    answer = await pushd.send({"tokens": held, "alert": "held"})
    assert [r["status"] for r in answer["results"]] == ["retrying"] * HELD
    with trio.fail_after(20):
        await simulator.wait_for(1 + PROBES)
    tests = simulator.received[1:]
    # One push a pause: each test came at least a pause after the one before.
    gaps = [b.at - a.at for a, b in zip(simulator.received, tests, strict=False)]
    assert all(gap >= PAUSE * 0.9 for gap in gaps), gaps
    assert (await health(pushd))["spooled"] == HELD  # none lost meanwhile
    simulator.clear()  # the operator fixed the key (APNs accepts it again)
    with trio.fail_after(20):
        while (await health(pushd))["spooled"]:  # noqa: ASYNC110
            await trio.sleep(0.05)
    delivered = [r.token for r in simulator.received if r.status == 200]
    assert collections.Counter(delivered) == dict.fromkeys(held, 1)
    assert all(json.loads(r.payload)["aps"]["alert"] == "held" for r in simulator.received[1:])
    detail = await health(pushd)
    assert detail["apps"]["chat"]["failed"] == 1  # only the fresh one
    assert detail["apps"]["chat"]["delivered"] == HELD
    assert detail["apps"]["chat"]["state"] == "ok"


@pytest.mark.parametrize("reason", ["InvalidProviderToken", "BadCertificate"])
async def test_a_goaway_naming_a_credential_reason_pauses_the_app(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    caplog: pytest.LogCaptureFixture,
    reason: str,
) -> None:
    """APNs closing the connection with GOAWAY ``{"reason": "InvalidProviderToken"}``
    was only logged: the requests were resent on new connections that heard the same
    (tester: 7 connections in 35 s, no ALARM, pushd_app_paused 0, pushes stuck in the
    spool as "no APNs connection available").  Now the GOAWAY's reason is what the
    answer would have said: the push fails on the credential, the app pauses with an
    ALARM, and nothing more is sent while it is paused."""
    caplog.set_level(logging.WARNING, "pushd")
    pushd = await start_pushd(retry={"credential_pause": 60})
    await pushd.register("u", token(1), app="chat")
    await pushd.register("v", token(2), app="chat")
    simulator.set_default(SimReply(action="goaway", reason=reason))
    first = await pushd.send({"tokens": [token(1)], "alert": "x"})
    assert first["results"][0]["status"] == "failed"
    held = await pushd.send({"tokens": [token(2)], "alert": "y"})
    assert held["results"][0]["status"] == "retrying"  # paused: spooled, not sent
    samples = parse((await scrape(pushd)).text)
    assert value(samples, "pushd_app_paused", app="chat", reason=reason) == 1
    assert any("ALARM app chat paused" in r.getMessage() for r in caplog.records)
    assert simulator.goaways_sent == 1  # never resent into the same refusal
