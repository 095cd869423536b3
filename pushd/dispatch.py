"""The delivery engine: per-app lanes, inline first attempts, background retries.

A frontend hands :meth:`Dispatcher.deliver` a batch of :class:`~pushd.model.Delivery`
values and gets one :class:`Report` per delivery back.  Every attempt runs as a task in
the dispatcher's own nursery, not the caller's: when the caller's deadline passes, the
attempt is not cancelled (that could send a notification twice), it simply goes on in
the background and the caller hears "retrying".

Isolation: each app has its own lane, with its own sender (and so its own connections),
its own concurrency limit and its own paused state.  A credential error pauses only that
lane; nothing one app does can block another's tasks.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import attrs
import trio

from pushd.config import RetryConfig
from pushd.model import (
    Delivered,
    Delivery,
    Failed,
    Outcome,
    RetryLater,
    TokenDead,
    mask_token,
)
from pushd.store.sqlite import DeadToken, Store

log = logging.getLogger(__name__)

Status = Literal["delivered", "removed", "retrying", "failed"]


PushT = TypeVar("PushT", contravariant=True)


class Sender(Protocol[PushT]):
    """An upstream client (APNs, FCM): what a lane needs from it.

    Each client takes its own provider's push type; a lane only ever hands its sender
    deliveries built for that lane's app, so the lane holds a ``Sender[Any]``.
    """

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def send(self, token: str, push: PushT) -> Outcome: ...


@attrs.frozen
class Report:
    """What happened to one delivery, as far as the caller is told."""

    delivery: Delivery
    status: Status
    reason: str | None = None


@attrs.define
class LaneStats:
    """Counters per app, for /healthz and the logs."""

    delivered: int = 0
    removed: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0


@attrs.define
class Lane:
    """One app's private share of the engine."""

    name: str
    sender: Sender[Any]
    limiter: trio.CapacityLimiter
    paused_until: float = 0.0
    pause_reason: str | None = None
    stats: LaneStats = attrs.Factory(LaneStats)


@attrs.define(eq=False)
class _Batch:
    """The results one ``deliver`` call is waiting for."""

    outcomes: list[Outcome | None]
    pending: int
    done: trio.Event = attrs.Factory(trio.Event)
    #: Set when the caller stops waiting; later outcomes are handled in the background.
    closed: bool = False


@attrs.frozen(order=True)
class _Retry:
    due: float
    seq: int
    delivery: Delivery = attrs.field(order=False)
    attempt: int = attrs.field(order=False)


def backoff(attempt: int, config: RetryConfig, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, with jitter.

    "Equal jitter": half the step is fixed, half random, so retries of a burst spread out
    but none comes back almost at once.
    """
    step = min(config.max_delay, config.base_delay * 2.0 ** (attempt - 1))
    return step / 2 + rng() * step / 2


class Dispatcher:
    """Runs every delivery of every app.  Start :meth:`run` in a nursery first."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        store: Store,
        retry: RetryConfig,
        *,
        first_attempt_deadline: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lanes = {lane.name: lane for lane in lanes}
        self.store = store
        self.retry = retry
        self.first_attempt_deadline = first_attempt_deadline
        self.clock = clock
        self._nursery: trio.Nursery | None = None
        self._queue: list[_Retry] = []
        self._seq = itertools.count()
        self._queue_changed = trio.Event()
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every app's sender and the retry loop; run until cancelled."""
        async with trio.open_nursery() as nursery:
            for lane in self.lanes.values():
                await nursery.start(lane.sender.run)
            nursery.start_soon(self._retry_loop)
            self._nursery = nursery
            task_status.started()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for attempts in flight to finish (shutdown)."""
        with trio.move_on_after(grace):
            await self._idle.wait()
        if self._in_flight:
            log.warning("shutdown: %d deliveries still in flight were abandoned", self._in_flight)
        if self._queue:
            log.warning("shutdown: %d queued retries were dropped", len(self._queue))

    @property
    def queued_retries(self) -> int:
        return len(self._queue)

    # --- the caller's side ------------------------------------------------------------

    async def deliver(
        self, deliveries: Sequence[Delivery], deadline: float | None = None
    ) -> list[Report]:
        """Attempt every delivery at once; wait until all answered or the deadline passed.

        Dead tokens among the answers are deleted from the store in one transaction
        before this returns, so "removed" in a report is true when the caller reads it.
        """
        if self._nursery is None:
            raise RuntimeError("Dispatcher.run() has not been started")
        if not deliveries:
            return []
        batch = _Batch(outcomes=[None] * len(deliveries), pending=len(deliveries))
        for index, delivery in enumerate(deliveries):
            self._start(delivery, 1, batch, index)
        timeout = self.first_attempt_deadline if deadline is None else deadline
        with trio.move_on_after(timeout):
            await batch.done.wait()
        batch.closed = True
        reports: list[Report] = []
        dead: list[DeadToken] = []
        for delivery, outcome in zip(deliveries, batch.outcomes, strict=True):
            if outcome is None:
                reports.append(Report(delivery, "retrying", "upstream has not answered yet"))
                continue
            report, dead_token = self._settle(delivery, outcome, attempt=1)
            reports.append(report)
            if dead_token is not None:
                dead.append(dead_token)
        await self.store.remove_dead(dead)
        return reports

    # --- attempts ---------------------------------------------------------------------

    def _start(self, delivery: Delivery, attempt: int, batch: _Batch | None, index: int) -> None:
        assert self._nursery is not None
        self._in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._nursery.start_soon(self._attempt, delivery, attempt, batch, index)

    async def _attempt(
        self, delivery: Delivery, attempt: int, batch: _Batch | None, index: int
    ) -> None:
        try:
            outcome = await self._send(delivery)
            if batch is not None and not batch.closed:
                batch.outcomes[index] = outcome
                batch.pending -= 1
                if batch.pending == 0:
                    batch.done.set()
                return
            # Nobody is waiting any more: act on the outcome here.
            _, dead_token = self._settle(delivery, outcome, attempt)
            if dead_token is not None:
                await self.store.remove_dead([dead_token])
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _send(self, delivery: Delivery) -> Outcome:
        lane = self.lanes.get(delivery.app)
        if lane is None:
            return Failed(f"no app named {delivery.app!r} is configured")
        now = self.clock()
        if lane.paused_until > now:
            return Failed(
                f"app {lane.name} is paused after a credential error: {lane.pause_reason}"
            )
        async with lane.limiter:
            outcome = await lane.sender.send(delivery.token, delivery.push)
        if isinstance(outcome, Failed) and outcome.credential:
            self._pause(lane, outcome.reason)
        return outcome

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

    def _settle(
        self, delivery: Delivery, outcome: Outcome, attempt: int
    ) -> tuple[Report, DeadToken | None]:
        """Turn an outcome into a report, scheduling a retry or naming a dead token."""
        lane = self.lanes.get(delivery.app)
        stats = lane.stats if lane is not None else LaneStats()
        if isinstance(outcome, Delivered):
            stats.delivered += 1
            return Report(delivery, "delivered"), None
        if isinstance(outcome, TokenDead):
            kept = (
                outcome.since is not None
                and delivery.registered_at is not None
                and delivery.registered_at >= outcome.since
            )
            if kept:
                # The device registered this token again after APNs saw it die.
                stats.failed += 1
                return Report(delivery, "failed", f"{outcome.reason} (kept: re-registered)"), None
            stats.removed += 1
            log.info(
                "app %s: token %s is dead (%s), removing it",
                delivery.app,
                mask_token(delivery.token),
                outcome.reason,
            )
            return Report(delivery, "removed", outcome.reason), DeadToken(
                delivery.app, delivery.token, outcome.since
            )
        if isinstance(outcome, RetryLater):
            if self._schedule(delivery, attempt, outcome):
                stats.retried += 1
                return Report(delivery, "retrying", outcome.reason), None
            stats.dropped += 1
            return Report(delivery, "failed", f"gave up: {outcome.reason}"), None
        stats.failed += 1
        return Report(delivery, "failed", outcome.reason), None

    # --- retries ----------------------------------------------------------------------

    def _schedule(self, delivery: Delivery, attempt: int, outcome: RetryLater) -> bool:
        """Queue a retry if attempts and expiry allow; False if the delivery is given up."""
        now = self.clock()
        if delivery.push.expiration == 0 or attempt >= self.retry.max_attempts:
            self._give_up(delivery, outcome.reason, "no attempts left")
            return False
        expires_at = delivery.expires_at
        if expires_at is None:
            expires_at = now + self.retry.default_ttl
            delivery = attrs.evolve(delivery, expires_at=expires_at)
        delay = max(backoff(attempt, self.retry), outcome.after or 0.0)
        if now + delay >= expires_at:
            self._give_up(delivery, outcome.reason, "it expires before the next attempt")
            return False
        if len(self._queue) >= self.retry.max_queued:
            oldest = min(self._queue, key=lambda item: item.seq)
            self._queue.remove(oldest)
            heapq.heapify(self._queue)
            self._give_up(oldest.delivery, "retry queue full", "dropped the oldest")
        heapq.heappush(self._queue, _Retry(now + delay, next(self._seq), delivery, attempt + 1))
        self._queue_changed.set()
        return True

    def _give_up(self, delivery: Delivery, reason: str, why: str) -> None:
        log.warning(
            "app %s: giving up on a notification to %s after %s: %s",
            delivery.app,
            mask_token(delivery.token),
            reason,
            why,
        )

    async def _retry_loop(self) -> None:
        while True:
            self._queue_changed = trio.Event()
            wait = math.inf
            if self._queue:
                wait = max(0.0, self._queue[0].due - self.clock())
            with trio.move_on_after(wait):
                await self._queue_changed.wait()
            now = self.clock()
            while self._queue and self._queue[0].due <= now:
                item = heapq.heappop(self._queue)
                self._start(item.delivery, item.attempt, None, 0)
