"""Attempts: one push to some tokens through an app's lane, every outcome recorded once.

The lane decides whether it may go at all (an app paused after a credential error
records ``paused`` without sending: not sent, so not lost), how many may be in flight
(its budget: a large fan-out goes in chunks as units free up), and what each answer
tells its circuit.  A credential failure pauses the app here, with one ALARM line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from pushd.config import RetryConfig
from pushd.lanes import Lane
from pushd.metrics.tally import DeliveryTally
from pushd.model import Failed, Outcome, RetryLater
from pushd.requestid import REQUEST_ID

log = logging.getLogger("pushd.dispatch")


class Attempts:
    """Sends through the lanes; ``clock`` is the wall clock."""

    def __init__(
        self, lanes: Mapping[str, Lane], retry: RetryConfig, clock: Callable[[], float]
    ) -> None:
        self.lanes = lanes
        self.retry = retry
        self.clock = clock
        #: Counts for the metrics (:mod:`pushd.metrics`); None when they are off.
        self.tally: DeliveryTally | None = None

    async def attempt(
        self, app: str, tokens: list[str], push: Any, record: Callable[[int, Outcome], None]
    ) -> None:
        """Send ``push`` to ``tokens`` through the app's lane; ``record(index, outcome)``
        is called exactly once per token."""
        lane = self.lanes.get(app)
        if lane is None:
            for position in range(len(tokens)):
                record(position, Failed(f"no app named {app!r} is configured"))
            return
        now = self.clock()
        if lane.paused_until > now:
            # Not sent, so not lost: retried once the pause is over, when the
            # credential may work again (a propagating key, a clock fixed, Google's
            # token endpoint back).  If it still fails, that one attempt pauses again.
            paused = RetryLater(
                f"app {lane.name} is paused after a credential error: {lane.pause_reason}",
                after=lane.paused_until - now,
                kind="paused",
            )
            for position in range(len(tokens)):
                record(position, paused)
            return
        granted = await lane.budget.take(len(tokens))
        if granted == len(tokens):  # the usual case: no extra task
            await self._send_chunk(lane, tokens, push, 0, granted, record)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_chunk, lane, tokens, push, 0, granted, record)
            start = granted
            while start < len(tokens):
                granted = await lane.budget.take(len(tokens) - start)
                nursery.start_soon(self._send_chunk, lane, tokens, push, start, granted, record)
                start += granted

    async def _send_chunk(
        self,
        lane: Lane,
        tokens: list[str],
        push: Any,
        start: int,
        count: int,
        record: Callable[[int, Outcome], None],
    ) -> None:
        reported = 0
        tally = self.tally
        started = time.perf_counter()
        # Upstream clients report from their connection's task: its lines (a pause, a
        # retry decision) belong to this delivery's request.
        request_id = REQUEST_ID.get()

        def report(index: int, outcome: Outcome) -> None:
            current = REQUEST_ID.set(request_id)
            try:
                _report(index, outcome)
            finally:
                REQUEST_ID.reset(current)

        def _report(index: int, outcome: Outcome) -> None:
            nonlocal reported
            reported += 1
            lane.budget.give()
            if tally is not None:
                tally.answered(lane.name, outcome, time.perf_counter() - started)
            if isinstance(outcome, Failed) and outcome.credential:
                self._pause(lane, outcome.reason)
            if lane.observe(outcome, self.clock()):
                log.warning(
                    "app %s: %d upstream failures in a row (last: %s); retries from the "
                    "spool wait until it answers again",
                    lane.name,
                    lane.circuit.failures,
                    getattr(outcome, "reason", "?"),
                )
            record(start + index, outcome)

        try:
            await lane.send_many(tokens[start : start + count], push, report)
        finally:
            lane.budget.give(count - reported)  # only if cancelled part-way (shutdown)

    def _pause(self, lane: Lane, reason: str) -> None:
        first = lane.paused_until <= self.clock()
        lane.paused_until = self.clock() + self.retry.credential_pause
        lane.pause_reason = reason
        if first:
            log.error(
                "ALARM app %s paused for %.0f s: credential error %s; fix its key or "
                "certificate (other apps are not affected)",
                lane.name,
                self.retry.credential_pause,
                reason,
            )
