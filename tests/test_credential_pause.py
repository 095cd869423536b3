"""An app whose credential keeps failing: after each pause one push tests it, the rest
wait in the spool, and nothing promised is lost (over HTTP, against the APNs
simulator)."""

from __future__ import annotations

import collections
import json
from typing import Any

import trio

from pushd.simulators.apns import ApnsSimulator, SimReply
from tests.conftest import Pushd, PushdFactory, token

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
