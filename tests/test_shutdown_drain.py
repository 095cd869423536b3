"""SIGTERM with callers still waiting for a slow upstream: each is answered before its
connection closes, and the whole stop fits ``drain_seconds`` plus a bounded margin.

A real pushd process and the APNs simulator as a process of its own
(``tests/spoolrig.py``), answering later than the drain allows.  Before, the server
closed the busy connections at ``drain_seconds`` (the callers got no answer and their
deliveries were neither reported nor spooled), then the dispatcher waited a second
``drain_seconds`` window and a third for its flush.
"""

from __future__ import annotations

import re
import signal
import time
from typing import Any

import trio

from pushd.config.constants import SHUTDOWN_MARGIN
from tests import spoolrig
from tests.conftest import token
from tests.spoolrig import Rig, spool_rows

rig = spoolrig.rig

#: Short, so the test is quick; the upstream answers well after it.
DRAIN_SECONDS = 2.0
#: The simulator answers this long after a request: past the drain, within the attempt's
#: own timeout, so only the shutdown can end the callers' waits.
UPSTREAM_DELAY = 15.0
#: Concurrent sends in flight at the signal, one device each.
CALLERS = 3


async def test_sigterm_answers_every_waiting_caller_retrying_and_spools_first(rig: Rig) -> None:
    """Sends in flight when pushd gets SIGTERM, the upstream answering after the drain:
    every caller hears ``retrying`` (not a closed connection), each delivery is in the
    spool when pushd has exited, pushd exits 0 about ``drain_seconds`` after the signal
    (not twice that), and a restart with the upstream back delivers them."""
    await rig.sim.start(delay=UPSTREAM_DELAY)
    await rig.configure(
        server={"first_attempt_deadline": 10.0, "drain_seconds": DRAIN_SECONDS},
        app={"request_timeout": UPSTREAM_DELAY + 5},
    )
    await rig.start()
    devices = [token(n) for n in range(CALLERS)]
    await rig.register(devices)
    results: dict[int, dict[str, Any]] = {}

    async def send(n: int) -> None:
        results[n] = await rig.send(n, devices[n])

    async with trio.open_nursery() as nursery:
        for n in range(CALLERS):
            nursery.start_soon(send, n)
        with trio.fail_after(10):  # every attempt taken by the simulator, none answered
            while len([s for s in rig.sim.seen() if s.kind == "req"]) < CALLERS:  # noqa: ASYNC110
                await trio.sleep(0.02)
        signalled = time.monotonic()
        code = await rig.stop(signal.SIGTERM)
        took = time.monotonic() - signalled
    log = rig.logs[-1]
    assert code == 0, log
    assert {r["status"] for r in results.values()} == {"retrying"}, results
    assert DRAIN_SECONDS - 0.5 < took < DRAIN_SECONDS + SHUTDOWN_MARGIN, (took, log)
    assert "closed without an answer" not in log
    assert len(spool_rows(rig)) == CALLERS
    assert re.search(rf"{CALLERS} spooled deliveries left for the next start", log), log

    await rig.sim.kill()
    await rig.sim.start(delay=0.0)
    await rig.start()
    await rig.sim.wait_delivered(set(range(CALLERS)), within=20)
    await rig.wait_spool_empty()
