"""The delivery engine: fresh attempts inline, everything unfinished in the spool.

A frontend hands :meth:`Dispatcher.deliver` a batch of :class:`~pushd.model.Delivery`
values and gets one :class:`Report` per delivery back.  Deliveries that share an app and
a push (a user's devices of one app) go to the upstream client together, as one
``send_many`` call: one task per group, not per device.

Every attempt runs in the dispatcher's own nursery, not the caller's: when the caller's
deadline passes the attempt is not cancelled (that could send a notification twice), it
goes on in the background.  Before the caller hears ``retrying``, every delivery that is
not final is written to the spool (sealed): still in flight (leased to this instance,
so nobody else sends it meanwhile), or failed transiently (due after a backoff).  That
row is the promise; :mod:`pushd.spool.worker` keeps it.  Outcomes that arrive after the
answer settle their rows through the ledger (:mod:`pushd.spool.ledger`).

Decisions are the same for a fresh attempt and a retry (:meth:`Dispatcher.decide`): a
push that asked for one attempt (APNs expiration 0), ran out of attempts, or would be
due after it expires is not tried again; an expired one is never sent late.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import attrs
import trio

from pushd.config import RetryConfig, SpoolConfig
from pushd.lanes import Lane, LaneStats, backoff
from pushd.metrics.tally import RETRY_KIND_CLASS, DeliveryTally, failed_class
from pushd.model import (
    STORED_PROTOCOLS,
    Delivered,
    Delivery,
    Failed,
    Outcome,
    RetryLater,
    TokenDead,
    mask_token,
)
from pushd.requestid import REQUEST_ID
from pushd.spool.ledger import Ledger
from pushd.spool.retrylog import RetryLog
from pushd.spool.seal import SpoolKeys
from pushd.spool.worker import SpoolWorker
from pushd.store import DeadToken, Store, StoreUnavailable
from pushd.store.spool import Reschedule, SpoolEntry

log = logging.getLogger(__name__)

Status = Literal["delivered", "removed", "retrying", "failed"]

#: Protocols whose dead verdicts are kept even when told in the answer (see
#: ``Dispatcher._dead_token``).
KEEP_ANSWERED_VERDICTS: Final = frozenset({"matrix"})
#: How long an attempt still in flight at the answer may take before its row is
#: another instance's to send: the upstream's request timeout ends it long before.
IN_FLIGHT_LEASE: Final = 60.0


@attrs.frozen
class Report:
    """What happened to one delivery, as far as the caller is told."""

    delivery: Delivery
    status: Status
    reason: str | None = None
    #: The upstream's verdict (None: no answer before the deadline), for frontends whose
    #: protocol needs more than the status, e.g. a Retry-After to pass on.
    outcome: Outcome | None = None


@attrs.frozen
class Retry:
    """The decision to try again: when, and whether the last try may have arrived."""

    due: float
    unknown: bool
    reason: str


@attrs.define(eq=False)
class _Batch:
    """The results one ``deliver`` call is waiting for."""

    outcomes: list[Outcome | None]
    pending: int
    done: trio.Event = attrs.Factory(trio.Event)
    #: Set when the caller stops waiting; later outcomes settle spool rows instead.
    closed: bool = False
    #: Spool row id per index, once written; outcomes that arrive before that wait here.
    rows: dict[int, int] = attrs.Factory(dict)
    early: dict[int, Outcome] = attrs.Factory(dict)
    spooling: bool = False


def instance_name() -> str:
    """This process's name in spool leases: host, pid and a random part (a restarted
    process with the same pid must not inherit a dead one's leases)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Dispatcher:
    """Runs every delivery of every app.  Start :meth:`run` in a nursery first."""

    def __init__(
        self,
        lanes: Sequence[Lane],
        store: Store,
        retry: RetryConfig,
        *,
        keys: SpoolKeys,
        spool: SpoolConfig | None = None,
        first_attempt_deadline: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lanes = {lane.name: lane for lane in lanes}
        self.store = store
        self.retry = retry
        self.keys = keys
        self.spool = spool or SpoolConfig()
        self.first_attempt_deadline = first_attempt_deadline
        self.clock = clock
        self.owner = instance_name()
        self.ledger = Ledger(store, clock)
        self.retry_log = RetryLog()
        self.worker = SpoolWorker(self)
        #: Counts for the metrics (:mod:`pushd.metrics`); None when they are off.
        self.tally: DeliveryTally | None = None
        #: Rows per app in the spool, as last counted plus what this process added.
        self.depth: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every app's sender, the ledger and the spool worker."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for lane in self.lanes.values():
                await nursery.start(lane.run)
            await nursery.start(self.ledger.run)
            await nursery.start(self.worker.run)
            task_status.started()

    async def start_lane(self, lane: Lane) -> None:
        """Start a lane added after :meth:`run` (a reload); put it in :attr:`lanes` after."""
        if self._nursery is None:
            raise RuntimeError("Dispatcher.run() has not been started")
        await self._nursery.start(lane.run)

    def start_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError("Dispatcher.run() has not been started")
        self._nursery.start_soon(fn, *args)

    async def drain(self, grace: float) -> None:
        """Shutdown: stop taking spool rows, let attempts in flight finish for up to
        ``grace`` seconds, write their outcomes, and give back this instance's leases,
        so that what is left goes out at once after a restart (or from another
        instance).  Nothing is dropped: what did not finish stays in the spool."""
        self.worker.stop()
        with trio.move_on_after(grace):
            await self._idle.wait()
        with trio.CancelScope(shield=True), trio.move_on_after(grace):
            await self.ledger.flush()
            try:
                released = await self.store.spool_release(self.owner)
            except StoreUnavailable:
                released = 0
        if self._in_flight:
            log.warning(
                "shutdown: %d attempts still in flight; they stay in the spool and go "
                "again after the restart (a device may get one twice)",
                self._in_flight,
            )
        elif released:
            log.info("shutdown: %d spooled deliveries left for the next start", released)

    # --- the caller's side ------------------------------------------------------------

    async def deliver(
        self, deliveries: Sequence[Delivery], deadline: float | None = None
    ) -> list[Report]:
        """Attempt every delivery at once; wait until all answered or the deadline passed.

        What is not final by then is spooled before this returns (``retrying``), and
        dead tokens are deleted from the store first, so "removed" in a report is true
        when the caller reads it.  StoreUnavailable if the spool cannot be written: the
        caller must hear an error, not a promise pushd cannot keep.
        """
        if not deliveries:
            return []
        batch = _Batch(outcomes=[None] * len(deliveries), pending=len(deliveries))
        self._start(deliveries, batch)
        timeout = self.first_attempt_deadline if deadline is None else deadline
        with trio.move_on_after(timeout):
            await batch.done.wait()
        batch.closed = True
        now = self.clock()
        reports: list[Report | None] = [None] * len(deliveries)
        spooled: dict[int, Retry] = {}
        dead: list[DeadToken] = []
        for index, (delivery, outcome) in enumerate(zip(deliveries, batch.outcomes, strict=True)):
            if outcome is None:
                spooled[index] = Retry(now, True, "upstream has not answered yet")
                continue
            decided = self.decide(delivery, outcome, 1, now)
            if isinstance(decided, Retry):
                spooled[index] = decided
                continue
            reports[index] = decided
            if decided.status == "removed":
                dead.append(self._dead_token(delivery, outcome, late=False))
        if spooled:
            await self._spool(deliveries, batch, spooled, reports, now)
        if dead:
            try:
                await self.store.remove_dead(dead)
            except StoreUnavailable:  # the answers stand; the removals wait for the store
                for item in dead:
                    self.ledger.dead(item)
        return [report for report in reports if report is not None]

    async def _spool(
        self,
        deliveries: Sequence[Delivery],
        batch: _Batch,
        spooled: dict[int, Retry],
        reports: list[Report | None],
        now: float,
    ) -> None:
        """Write the rows of ``spooled`` (refusing what does not fit) and report them."""
        entries: list[SpoolEntry] = []
        indices: list[int] = []
        for index, retry in spooled.items():
            delivery = deliveries[index]
            in_flight = batch.outcomes[index] is None
            if self.depth.get(delivery.app, 0) >= self.retry.max_queued:
                reports[index] = self._refuse_full(delivery, in_flight)
                continue
            self.depth[delivery.app] = self.depth.get(delivery.app, 0) + 1
            entries.append(self._entry(delivery, retry, now, in_flight=in_flight))
            indices.append(index)
            reason = None if in_flight else retry.reason
            reports[index] = Report(delivery, "retrying", reason, batch.outcomes[index])
        batch.spooling = True
        try:
            ids = await self.store.spool_add(entries)
        except StoreUnavailable:
            for index in indices:
                self.depth[deliveries[index].app] -= 1
            batch.spooling = False
            raise
        batch.spooling = False
        for index, row_id in zip(indices, ids, strict=True):
            batch.rows[index] = row_id
            early = batch.early.pop(index, None)
            if early is not None:
                self._settle_row(deliveries[index], row_id, 1, early)
            elif batch.outcomes[index] is not None:
                self.retry_log.decision(deliveries[index], 1, spooled[index], now, row_id)
        self.worker.wake()

    def _entry(
        self, delivery: Delivery, retry: Retry, now: float, *, in_flight: bool
    ) -> SpoolEntry:
        key, sealed = self.keys.seal(delivery.app, delivery.token, delivery.push)
        return SpoolEntry(
            app=delivery.app,
            token=delivery.token,
            protocol=delivery.protocol,
            ref=delivery.ref,
            caller=delivery.caller,
            registered_at=delivery.registered_at,
            key_id=key,
            sealed=sealed,
            attempt=1,
            due_at=retry.due,
            expires_at=self.expires_at(delivery, now),
            created_at=now,
            unknown=retry.unknown,
            last_reason=retry.reason,
            lease_owner=self.owner if in_flight else None,
            lease_until=now + IN_FLIGHT_LEASE if in_flight else None,
        )

    def _refuse_full(self, delivery: Delivery, in_flight: bool) -> Report:
        self._stats(delivery.app).dropped += 1
        if self.tally is not None:
            self.tally.outcome(delivery.app, delivery.protocol, "failed", "spool_full")
        self.ledger.count(delivery.app, "spool_full")
        log.warning(
            "app %s: the spool holds %d deliveries (retry.max_queued); refusing one to %s%s",
            delivery.app,
            self.retry.max_queued,
            mask_token(delivery.token),
            " (its attempt is still in flight and may yet arrive)" if in_flight else "",
        )
        return Report(delivery, "failed", "spool_full")

    # --- decisions ----------------------------------------------------------------------

    def expires_at(self, delivery: Delivery, now: float) -> float:
        """When trying again becomes pointless: the push's own expiry, or the default."""
        if delivery.expires_at is not None:
            return delivery.expires_at
        expiration = delivery.push.expiration
        return float(expiration) if expiration else now + self.retry.default_ttl

    def decide(
        self, delivery: Delivery, outcome: Outcome, attempt: int, now: float
    ) -> Report | Retry:
        """What ``outcome`` of attempt number ``attempt`` means: a final report, or when
        to try again.  Counted in the app's stats and the metrics."""
        decided = self._decide(delivery, outcome, attempt, now)
        tally = self.tally
        if tally is not None:
            if isinstance(decided, Retry):
                kind = outcome.kind if isinstance(outcome, RetryLater) else "server"
                tally.outcome(delivery.app, delivery.protocol, "retrying", RETRY_KIND_CLASS[kind])
            elif decided.status == "failed":
                reason = failed_class(outcome, decided.reason)
                tally.outcome(delivery.app, delivery.protocol, "failed", reason)
            else:
                tally.outcome(delivery.app, delivery.protocol, decided.status)
        return decided

    def _decide(
        self, delivery: Delivery, outcome: Outcome, attempt: int, now: float
    ) -> Report | Retry:
        stats = self._stats(delivery.app)
        if isinstance(outcome, Delivered):
            stats.delivered += 1
            return Report(delivery, "delivered", outcome=outcome)
        if isinstance(outcome, TokenDead):
            kept = (
                outcome.since is not None
                and delivery.registered_at is not None
                and delivery.registered_at >= outcome.since
            )
            if kept:  # the device registered this token again after APNs saw it die
                stats.failed += 1
                return Report(
                    delivery, "failed", f"{outcome.reason} (kept: re-registered)", outcome
                )
            stats.removed += 1
            log.info(
                "app %s: token %s is dead (%s), removing it",
                delivery.app,
                mask_token(delivery.token),
                outcome.reason,
            )
            return Report(delivery, "removed", outcome.reason, outcome)
        if isinstance(outcome, Failed):
            stats.failed += 1
            return Report(delivery, "failed", outcome.reason, outcome)
        return self._retry_or_give_up(delivery, outcome, attempt, now, stats)

    def _retry_or_give_up(
        self, delivery: Delivery, outcome: RetryLater, attempt: int, now: float, stats: LaneStats
    ) -> Report | Retry:
        why = None
        if delivery.push.expiration == 0:
            why = "the push asked for one attempt (expiration 0)"
        elif attempt >= self.retry.max_attempts:
            why = f"{attempt} attempts"
        else:
            delay = max(backoff(attempt, self.retry), outcome.after or 0.0)
            if outcome.kind == "unreachable" and not outcome.after:
                delay = min(delay, self.retry.base_delay)  # never sent: go again soon
            due = now + delay
            if due < self.expires_at(delivery, now):
                stats.retried += 1
                return Retry(due, outcome.maybe_delivered, outcome.reason)
            why = "it expires before the next attempt"
        stats.dropped += 1
        log.warning(
            "app %s: giving up on a notification to %s after %s: %s",
            delivery.app,
            mask_token(delivery.token),
            outcome.reason,
            why,
        )
        return Report(delivery, "failed", f"gave up: {outcome.reason} ({why})", outcome)

    def _stats(self, app: str) -> LaneStats:
        lane = self.lanes.get(app)
        return lane.stats if lane is not None else LaneStats()

    def _dead_token(self, delivery: Delivery, outcome: Outcome, *, late: bool) -> DeadToken:
        """The removal a dead verdict calls for, and the verdict to keep for the caller:
        always when found after its answer; in an answer only for protocols that may
        miss one and can tell a re-registered device apart (Matrix's pushkey_ts)."""
        assert isinstance(outcome, TokenDead)
        lane = self.lanes.get(delivery.app)
        scope = None
        if lane is not None and delivery.protocol in STORED_PROTOCOLS:
            scope = lane.scope
        return DeadToken(
            delivery.app,
            delivery.token,
            outcome.since,
            outcome.reason,
            delivery.ref if late or delivery.protocol in KEEP_ANSWERED_VERDICTS else None,
            scope,
            delivery.caller,
        )

    # --- outcomes after the answer ------------------------------------------------------

    def _settle_row(self, delivery: Delivery, row_id: int, attempt: int, outcome: Outcome) -> None:
        """Act on the outcome of attempt ``attempt`` of a spooled delivery."""
        now = self.clock()
        decided = self.decide(delivery, outcome, attempt, now)
        if isinstance(decided, Retry):
            self.ledger.again(
                Reschedule(row_id, attempt, decided.due, decided.unknown, decided.reason)
            )
            self.retry_log.decision(delivery, attempt, decided, now, row_id)
            return
        self.ledger.done(row_id)
        self.depth[delivery.app] = max(0, self.depth.get(delivery.app, 0) - 1)
        if decided.status == "removed":
            self.ledger.dead(self._dead_token(delivery, outcome, late=True))
        elif decided.status == "failed" and decided.reason and decided.reason.startswith("gave up"):
            self.ledger.count(delivery.app, "dropped")

    # --- attempts ---------------------------------------------------------------------

    def _start(self, deliveries: Sequence[Delivery], batch: _Batch) -> None:
        """Start one task per (app, push) group of ``deliveries``."""
        groups: dict[tuple[str, int], list[int]] = {}
        for index, delivery in enumerate(deliveries):
            groups.setdefault((delivery.app, id(delivery.push)), []).append(index)
        self._begin(len(deliveries))
        for (app, _), indices in groups.items():
            group = [deliveries[i] for i in indices]
            self.start_soon(self._attempt_group, app, group, indices, batch)

    def _begin(self, count: int) -> None:
        if self._in_flight == 0:
            self._idle = trio.Event()
        self._in_flight += count

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def _attempt_group(
        self, app: str, group: list[Delivery], indices: list[int], batch: _Batch
    ) -> None:
        def record(position: int, outcome: Outcome) -> None:
            self._end()
            self._record(group[position], outcome, batch, indices[position])

        await self.attempt(app, [d.token for d in group], group[0].push, record)

    async def attempt(
        self, app: str, tokens: list[str], push: Any, record: Callable[[int, Outcome], None]
    ) -> None:
        """Send ``push`` to ``tokens`` through the app's lane; each is recorded once."""
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

    def _record(self, delivery: Delivery, outcome: Outcome, batch: _Batch, index: int) -> None:
        if not batch.closed:
            batch.outcomes[index] = outcome
            batch.pending -= 1
            if batch.pending == 0:
                batch.done.set()
            return
        row_id = batch.rows.get(index)
        if row_id is not None:
            self._settle_row(delivery, row_id, 1, outcome)
        elif batch.spooling:
            batch.early[index] = outcome
        # else: never spooled (full, or the store failed and the caller heard 503)

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
