"""The INFO line per retry decision, and its summary when an outage makes many.

A real pushd, an APNs simulator answering 503 once per device: the admin reading the
log sees which app, which (masked) device, which attempt, why and when next, for the
first few each second, and one line with the count and reasons for the rest.
"""

from __future__ import annotations

import logging
import re

import pytest
import trio

from pushd.model import mask_token
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.faults import parse_plan
from pushd.spool.retrylog import LINES_PER_SECOND
from tests.conftest import Pushd, PushdFactory, token

DEVICES = 20


async def test_each_retry_decision_is_logged_and_a_burst_summarised(
    start_pushd: PushdFactory, simulator: ApnsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pushd.retry")
    pushd: Pushd = await start_pushd(retry={"base_delay": 0.5, "max_delay": 1.0})
    tokens = [token(100 + n) for n in range(DEVICES)]
    parse_plan([f"{t}={reply}" for t in tokens for reply in ("503", "200")]).apply(simulator, None)
    for device in tokens:
        await pushd.register("carol", device)
    answer = await pushd.send({"user": "carol", "alert": "x"})
    assert {r["status"] for r in answer["results"]} == {"retrying"}

    def retry_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "pushd.retry"]

    with trio.fail_after(15):
        while not any("more retries scheduled" in line for line in retry_lines()):  # noqa: ASYNC110
            await trio.sleep(0.1)
    lines = retry_lines()
    full = [line for line in lines if "attempt 1 failed" in line]
    assert len(full) == LINES_PER_SECOND
    masked = {mask_token(t) for t in tokens}
    for line in full:
        match = re.fullmatch(
            r"app chat: (\S+) attempt 1 failed \(ServiceUnavailable\); next in (\d+\.\d) s"
            r" as s\d+",
            line,
        )
        assert match is not None, line
        assert match.group(1) in masked
        assert 0.0 <= float(match.group(2)) <= 1.0
    (summary,) = [line for line in lines if "more retries scheduled" in line]
    assert summary == (
        f"app chat: {DEVICES - LINES_PER_SECOND} more retries scheduled in the last second: "
        f"ServiceUnavailable x{DEVICES - LINES_PER_SECOND}"
    )
    for device in tokens:  # never a whole token
        assert all(device not in line for line in lines)
