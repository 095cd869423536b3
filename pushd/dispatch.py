"""The delivery engine: per-app lanes, inline first attempts, background retries.

A frontend hands :meth:`Dispatcher.deliver` a batch of :class:`~pushd.model.Delivery`
values and gets one :class:`Report` per delivery back.  Deliveries that share an app and
a push (a user's devices of one app) go to the upstream client together, as one
``send_many`` call: one task per group, not per device, which is most of what a fan-out
costs besides the HTTP/2 frames themselves.

Every attempt runs in the dispatcher's own nursery, not the caller's: when the caller's
deadline passes the attempt is not cancelled (that could send a notification twice), it
goes on in the background, and the caller hears "retrying".  Outcomes that arrive after
that are acted on here: retries are queued, dead tokens deleted (batched, one
transaction for all that arrive together).

Isolation: each app has its own lane, with its own sender (and so its own connections),
its own concurrency budget and its own paused state.  A credential error pauses only
that lane; nothing one app does can block another's tasks.
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
    STORED_PROTOCOLS,
    Delivered,
    Delivery,
    Failed,
    Outcome,
    RemovalScope,
    RetryLater,
    TokenDead,
    mask_token,
)
from pushd.store.sqlite import DeadToken, Store, StoreUnavailable

log = logging.getLogger(__name__)

Status = Literal["delivered", "removed", "retrying", "failed"]

#: While the store cannot write, dead-token removals wait in memory, this many at most,
#: and are tried again this often.
MAX_PENDING_DEAD = 10_000
DEAD_RETRY_SECONDS = 5.0
ReportFn = Callable[[int, Outcome], None]

PushT = TypeVar("PushT", contravariant=True)


class Sender(Protocol[PushT]):
    """An upstream client (APNs, FCM): what a lane needs from it.

    Each client takes its own provider's push type; a lane only ever hands its sender
    deliveries built for that lane's app, so the lane holds a ``Sender[Any]``.
    """

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def send(self, token: str, push: PushT) -> Outcome: ...


async def send_each(
    sender: Sender[Any], tokens: Sequence[str], push: Any, report: ReportFn
) -> None:
    """``send_many`` for a sender that has none: one task per token."""

    async def one(index: int, token: str) -> None:
        report(index, await sender.send(token, push))

    async with trio.open_nursery() as nursery:
        for index, token in enumerate(tokens):
            nursery.start_soon(one, index, token)


@attrs.frozen
class Report:
    """What happened to one delivery, as far as the caller is told."""

    delivery: Delivery
    status: Status
    reason: str | None = None
    #: The upstream's verdict (None: no answer before the deadline), for frontends whose
    #: protocol needs more than the status, e.g. a Retry-After to pass on.
    outcome: Outcome | None = None


@attrs.define
class LaneStats:
    """Counters per app, for /healthz and the logs."""

    delivered: int = 0
    removed: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0


class Budget:
    """How many notifications one app may have in flight; taken and given back in bulk.

    A ``trio.CapacityLimiter`` counts tasks, and a fan-out is one task for many
    notifications, so this counts notifications instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting = 0
        self._freed = trio.Event()

    async def take(self, wanted: int) -> int:
        """Wait until at least one unit is free; take up to ``wanted``; return how many."""
        while self.used >= self.limit:
            self._waiting += 1
            try:
                await self._freed.wait()
            finally:
                self._waiting -= 1
        granted = min(wanted, self.limit - self.used)
        self.used += granted
        return granted

    def give(self, count: int = 1) -> None:
        self.used -= count
        if self._waiting:  # a fan-out gives back one unit per answer: keep that cheap
            self._freed.set()
            self._freed = trio.Event()


@attrs.define(eq=False)
class Lane:
    """One app's private share of the engine."""

    name: str
    sender: Sender[Any]
    budget: Budget
    paused_until: float = 0.0
    pause_reason: str | None = None
    stats: LaneStats = attrs.Factory(LaneStats)
    #: What this app's dead verdicts may remove from the store.
    scope: RemovalScope = attrs.Factory(RemovalScope)

    async def send_many(self, tokens: Sequence[str], push: Any, report: ReportFn) -> None:
        batch_send = getattr(self.sender, "send_many", None)
        if batch_send is None:
            await send_each(self.sender, tokens, push, report)
        else:
            await batch_send(tokens, push, report)


@attrs.define(eq=False)
class _Batch:
    """The results one ``deliver`` call is waiting for."""

    outcomes: list[Outcome | None]
    pending: int
    done: trio.Event = attrs.Factory(trio.Event)
    #: Set when the caller stops waiting; later outcomes are handled in the background.
    closed: bool = False
    #: Whether transient failures are retried in the background (see ``deliver``).
    retry: bool = True


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
        self._dead: list[DeadToken] = []
        self._dead_waiting = trio.Event()
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every app's sender, the retry loop and the dead-token reaper."""
        async with trio.open_nursery() as nursery:
            for lane in self.lanes.values():
                await nursery.start(lane.sender.run)
            nursery.start_soon(self._retry_loop)
            nursery.start_soon(self._reaper)
            self._nursery = nursery
            task_status.started()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for attempts in flight to finish (shutdown)."""
        with trio.move_on_after(grace):
            await self._idle.wait()
        if self._dead:
            await self._remove_dead()
        if self._in_flight:
            log.warning("shutdown: %d deliveries still in flight were abandoned", self._in_flight)
        if self._queue:
            log.warning("shutdown: %d queued retries were dropped", len(self._queue))

    @property
    def queued_retries(self) -> int:
        return len(self._queue)

    # --- the caller's side ------------------------------------------------------------

    async def deliver(
        self, deliveries: Sequence[Delivery], deadline: float | None = None, *, retry: bool = True
    ) -> list[Report]:
        """Attempt every delivery at once; wait until all answered or the deadline passed.

        Dead tokens among the answers are deleted from the store in one transaction
        before this returns, so "removed" in a report is true when the caller reads it.

        ``retry=False`` is for protocols whose caller retries by itself (Rocket.Chat):
        a transient failure is then reported ``failed`` with its RetryLater outcome and
        not retried here too, which would deliver the notification twice.
        """
        if not deliveries:
            return []
        batch = _Batch(outcomes=[None] * len(deliveries), pending=len(deliveries), retry=retry)
        self._start(deliveries, 1, batch)
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
            report, dead_token = self._settle(delivery, outcome, attempt=1, retry=retry)
            reports.append(report)
            if dead_token is not None:
                dead.append(dead_token)
        try:
            await self.store.remove_dead(dead)
        except StoreUnavailable:
            # The answers stand: the sends happened.  The removals wait for the store.
            self._keep_dead(dead)
        return reports

    # --- attempts ---------------------------------------------------------------------

    def _start(self, deliveries: Sequence[Delivery], attempt: int, batch: _Batch | None) -> None:
        """Start one task per (app, push) group of ``deliveries``."""
        if self._nursery is None:
            raise RuntimeError("Dispatcher.run() has not been started")
        groups: dict[tuple[str, int], list[int]] = {}
        for index, delivery in enumerate(deliveries):
            groups.setdefault((delivery.app, id(delivery.push)), []).append(index)
        if self._in_flight == 0:
            self._idle = trio.Event()
        self._in_flight += len(deliveries)
        for (app, _), indices in groups.items():
            group = [deliveries[i] for i in indices]
            self._nursery.start_soon(self._attempt, app, group, indices, attempt, batch)

    async def _attempt(
        self,
        app: str,
        group: list[Delivery],
        indices: list[int],
        attempt: int,
        batch: _Batch | None,
    ) -> None:
        """Send one group through its lane; every delivery is recorded exactly once."""

        def record(position: int, outcome: Outcome) -> None:
            self._record(group[position], outcome, attempt, batch, indices[position])

        lane = self.lanes.get(app)
        if lane is None:
            for position in range(len(group)):
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
            )
            for position in range(len(group)):
                record(position, paused)
            return
        push = group[0].push
        tokens = [delivery.token for delivery in group]
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

        def report(index: int, outcome: Outcome) -> None:
            nonlocal reported
            reported += 1
            lane.budget.give()
            if isinstance(outcome, Failed) and outcome.credential:
                self._pause(lane, outcome.reason)
            record(start + index, outcome)

        try:
            await lane.send_many(tokens[start : start + count], push, report)
        finally:
            lane.budget.give(count - reported)  # only if cancelled part-way (shutdown)

    def _record(
        self,
        delivery: Delivery,
        outcome: Outcome,
        attempt: int,
        batch: _Batch | None,
        index: int,
    ) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
        if batch is not None and not batch.closed:
            batch.outcomes[index] = outcome
            batch.pending -= 1
            if batch.pending == 0:
                batch.done.set()
            return
        # Nobody is waiting any more: act on the outcome here.
        retry = batch.retry if batch is not None else True
        _, dead_token = self._settle(delivery, outcome, attempt, retry=retry)
        if dead_token is not None:
            self._dead.append(dead_token)
            self._dead_waiting.set()

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
        self, delivery: Delivery, outcome: Outcome, attempt: int, *, retry: bool = True
    ) -> tuple[Report, DeadToken | None]:
        """Turn an outcome into a report, scheduling a retry or naming a dead token."""
        lane = self.lanes.get(delivery.app)
        stats = lane.stats if lane is not None else LaneStats()
        if isinstance(outcome, Delivered):
            stats.delivered += 1
            return Report(delivery, "delivered", outcome=outcome), None
        if isinstance(outcome, TokenDead):
            kept = (
                outcome.since is not None
                and delivery.registered_at is not None
                and delivery.registered_at >= outcome.since
            )
            if kept:
                # The device registered this token again after APNs saw it die.
                stats.failed += 1
                reason = f"{outcome.reason} (kept: re-registered)"
                return Report(delivery, "failed", reason, outcome), None
            stats.removed += 1
            log.info(
                "app %s: token %s is dead (%s), removing it",
                delivery.app,
                mask_token(delivery.token),
                outcome.reason,
            )
            scope = None
            if lane is not None and delivery.protocol in STORED_PROTOCOLS:
                scope = lane.scope
            return Report(delivery, "removed", outcome.reason, outcome), DeadToken(
                delivery.app, delivery.token, outcome.since, outcome.reason, delivery.ref, scope
            )
        if isinstance(outcome, RetryLater):
            if not retry:
                stats.failed += 1
                return Report(delivery, "failed", outcome.reason, outcome), None
            if self._schedule(delivery, attempt, outcome):
                stats.retried += 1
                return Report(delivery, "retrying", outcome.reason, outcome), None
            stats.dropped += 1
            return Report(delivery, "failed", f"gave up: {outcome.reason}", outcome), None
        stats.failed += 1
        return Report(delivery, "failed", outcome.reason, outcome), None

    # --- background work --------------------------------------------------------------

    async def _reaper(self) -> None:
        """Delete dead tokens found after their caller stopped waiting, in batches.

        While the store fails, the batch is kept and tried again every
        :data:`DEAD_RETRY_SECONDS` (at most :data:`MAX_PENDING_DEAD` tokens).
        """
        while True:
            await self._dead_waiting.wait()
            self._dead_waiting = trio.Event()
            if not await self._remove_dead():
                await trio.sleep(DEAD_RETRY_SECONDS)
                self._dead_waiting.set()

    async def _remove_dead(self) -> bool:
        """Delete the pending dead tokens; False (and they stay pending) if the store fails."""
        dead, self._dead = self._dead, []
        try:
            await self.store.remove_dead(dead)
        except StoreUnavailable:  # logged by the store, rate-limited
            self._keep_dead(dead)
            return False
        return True

    def _keep_dead(self, dead: Sequence[DeadToken]) -> None:
        """Keep verdicts the store could not take yet; the oldest go first past the cap:
        a token whose removal is lost is found dead again by its next push."""
        self._dead = [*dead, *self._dead][-MAX_PENDING_DEAD:]
        self._dead_waiting.set()

    def _schedule(self, delivery: Delivery, attempt: int, outcome: RetryLater) -> bool:
        """Queue a retry if attempts and expiry allow; False if the delivery is given up."""
        now = self.clock()
        if delivery.push.expiration == 0 or attempt >= self.retry.max_attempts:
            self._give_up(delivery, outcome.reason, "no attempts left")
            return False
        expires_at = delivery.expires_at
        if expires_at is None:
            expiration = delivery.push.expiration
            expires_at = float(expiration) if expiration else now + self.retry.default_ttl
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
            due: list[_Retry] = []
            while self._queue and self._queue[0].due <= now:
                due.append(heapq.heappop(self._queue))
            for item in due:
                self._start([item.delivery], item.attempt, None)
