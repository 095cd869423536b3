"""The delivery engine: fresh attempts inline, everything unfinished in the spool.

A frontend hands :meth:`Dispatcher.deliver` a batch of :class:`~pushd.model.Delivery`
values and gets one :class:`Report` per delivery back.  Deliveries that share an app and
a push (a user's devices of one app) go to the upstream client together, and the
outbox (:mod:`pushd.outbox`) sends those of concurrent requests together too: one task
and one ``send_many``-style batch per app and scheduler tick, not per request.  The
caller's wait for the first attempt ends at its deadline through one shared timer
(:mod:`pushd.timer`), not a cancel scope per call.

Every attempt runs in the dispatcher's own nursery, not the caller's: when the caller's
deadline passes the attempt is not cancelled (that could send a notification twice), it
goes on in the background.  Before the caller hears ``retrying``, every delivery that is
not final is written to the spool (sealed): still in flight (leased to this instance,
so nobody else sends it meanwhile), or failed transiently (due after a backoff).  That
row is the promise (:mod:`pushd.dispatch_spool` writes it); :mod:`pushd.spool.worker`
keeps it.  Outcomes that arrive after the
answer settle their rows through the ledger (:mod:`pushd.spool.ledger`).

Decisions are the same for a fresh attempt and a retry (:mod:`pushd.decisions`): a
push that asked for one attempt (APNs expiration 0), ran out of attempts, or would be
due after it expires is not tried again; an expired one is never sent late.  Sending
through an app's lane (pause, budget, circuit) is :mod:`pushd.attempts`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from pushd.attempts import Attempts, Send
from pushd.config import RetryConfig, SpoolConfig
from pushd.config.constants import FLUSH_SECONDS
from pushd.decisions import Decisions, Report, Retry, Status
from pushd.dispatch_spool import CallerBatch, spool
from pushd.lanes import Lane
from pushd.metrics.tally import RETRY_KIND_CLASS, DeliveryTally, failed_class
from pushd.model import (
    STORED_PROTOCOLS,
    Delivery,
    Failed,
    Outcome,
    RetryLater,
    TokenDead,
)
from pushd.outbox import Outbox
from pushd.requestid import REQUEST_ID
from pushd.spool.ledger import Ledger
from pushd.spool.retrylog import RetryLog
from pushd.spool.seal import SpoolKeys
from pushd.spool.worker import SpoolWorker
from pushd.store import DeadToken, Store, StoreUnavailable
from pushd.store.spool import Reschedule
from pushd.timer import Timer
from pushd.verdictcache import VerdictCache

log = logging.getLogger(__name__)

#: Report and Retry live in :mod:`pushd.decisions`; frontends import them from here.
__all__ = ["Dispatcher", "Report", "Retry", "Status", "instance_name"]

#: Protocols whose dead verdicts are kept even when told in the answer (see
#: ``Dispatcher._dead_token``).
KEEP_ANSWERED_VERDICTS: Final = frozenset({"matrix"})


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
        self._lanes = {lane.name: lane for lane in lanes}
        self.store = store
        self.retry = retry
        self.decisions = Decisions(self._lanes, retry)
        self.attempts = Attempts(self._lanes, retry, clock)
        self.keys = keys
        self.spool = spool or SpoolConfig()
        self.first_attempt_deadline = first_attempt_deadline
        self.clock = clock
        self.owner = instance_name()
        self.ledger = Ledger(store, clock)
        self.retry_log = RetryLog()
        self.worker = SpoolWorker(self)
        #: Which devices may have a kept verdict: frontends read the store only for those.
        self.verdicts = VerdictCache(store)
        #: Rows per app in the spool, as last counted plus what this process added.
        self.depth: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        #: Ends callers' first-attempt waits at their deadline (no cancel scope each).
        self._timer = Timer()
        #: Fresh sends of concurrent requests leave together, one attempt per app.
        self._outbox = Outbox(self.attempts, self.start_soon)
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    @property
    def lanes(self) -> dict[str, Lane]:
        """Each app's lane by name."""
        return self._lanes

    @lanes.setter
    def lanes(self, lanes: dict[str, Lane]) -> None:
        """A reload's new set: decisions and attempts use it from now on."""
        self._lanes = self.decisions.lanes = self.attempts.lanes = lanes

    @property
    def tally(self) -> DeliveryTally | None:
        """Counts for the metrics (:mod:`pushd.metrics`); None when they are off."""
        return self.attempts.tally

    @tally.setter
    def tally(self, tally: DeliveryTally | None) -> None:
        self.attempts.tally = tally

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every app's sender, the ledger and the spool worker."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.verdicts.load()
            await nursery.start(self._timer.run)
            await nursery.start(self._outbox.run)
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

    def end_waits_at(self, deadline: float) -> None:
        """Shutdown has begun: take no more spool rows, and end every caller's wait for
        its first attempts by ``deadline`` (trio's clock), whatever deadline it asked.

        The HTTP server calls this as it starts draining, with its own deadline: each
        waiting :meth:`deliver` then spools what is not final and returns in time for
        its handler to answer before the server closes the connection.  Cancelling the
        handlers instead would skip the spool write and leave the caller without an
        answer, its deliveries dropped silently (or sent twice when it resends).
        """
        self.worker.stop()
        self._timer.cap(deadline)

    async def drain(self, deadline: float) -> None:
        """Shutdown: stop taking spool rows, let attempts in flight finish until
        ``deadline`` (trio's clock: the one :meth:`end_waits_at` was told, not a new
        window), then write their outcomes and give back this instance's leases within
        :data:`FLUSH_SECONDS`, so that what is left goes out at once after a restart (or
        from another instance).  Nothing is dropped: what did not finish stays in the
        spool."""
        self.worker.stop()
        with trio.move_on_at(deadline):
            await self._idle.wait()
        left = None
        with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_SECONDS):
            await self.ledger.flush()
            with contextlib.suppress(StoreUnavailable):  # logged by the store
                await self.store.spool_release(self.owner)
                left = sum(app.depth for app in await self.store.spool_stats(self.clock()))
        if self._in_flight:
            log.warning(
                "shutdown: %d attempts still in flight; they stay in the spool and go "
                "again after the restart (a device may get one twice)",
                self._in_flight,
            )
        if left:
            log.info(
                "shutdown: %d spooled deliveries left for the next start (nothing dropped)",
                left,
            )

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
        batch = CallerBatch(outcomes=[None] * len(deliveries), pending=len(deliveries))
        self._start(deliveries, batch)
        timeout = self.first_attempt_deadline if deadline is None else deadline
        if batch.pending:
            wait = self._timer.add(trio.current_time() + timeout, batch.done)
            try:
                await batch.done.wait()
            finally:
                self._timer.cancel(wait)
        batch.closed = True
        now = self.clock()
        reports: list[Report | None] = [None] * len(deliveries)
        spooled: dict[int, Retry] = {}
        dead: list[DeadToken] = []
        for index, (delivery, outcome) in enumerate(zip(deliveries, batch.outcomes, strict=True)):
            if outcome is None:
                spooled[index] = Retry(now, True, "upstream has not answered yet", 1)
                continue
            decided = self.decide(delivery, outcome, 1, now)
            if isinstance(decided, Retry):
                spooled[index] = decided
                continue
            reports[index] = decided
            if decided.status == "removed":
                dead.append(self._dead_token(delivery, outcome, late=False))
            elif decided.counter is not None:
                self.ledger.count(delivery.app, decided.counter)
        if spooled:
            await spool(self, deliveries, batch, spooled, reports, now)
        if dead:
            try:
                await self.store.remove_dead(dead)
            except StoreUnavailable:  # the answers stand; the removals wait for the store
                for item in dead:
                    self.ledger.dead(item)
        return [report for report in reports if report is not None]

    # --- decisions ---------------------------------------------------------------------

    def expires_at(self, delivery: Delivery, now: float) -> float:
        return self.decisions.expires_at(delivery, now)

    def decide(
        self,
        delivery: Delivery,
        outcome: Outcome,
        attempt: int,
        now: float,
        *,
        spooled: bool = False,
    ) -> Report | Retry:
        """What ``outcome`` of attempt number ``attempt`` means (see
        :meth:`pushd.decisions.Decisions.decide`), counted in the metrics too."""
        decided = self.decisions.decide(delivery, outcome, attempt, now, spooled=spooled)
        if isinstance(decided, Retry):
            if spooled:  # its row is there: rescheduling it keeps the promise
                self.count_retry(delivery, outcome)
            return decided  # a fresh one counts once its row is written (dispatch_spool)
        tally = self.tally
        if tally is not None:
            if decided.status == "failed":
                reason = failed_class(outcome, decided.reason)
                tally.outcome(delivery.app, delivery.protocol, "failed", reason)
            else:
                tally.outcome(delivery.app, delivery.protocol, decided.status)
        return decided

    def count_retry(self, delivery: Delivery, outcome: Outcome) -> None:
        """Count a decision to try ``delivery`` again whose spool row exists: counted
        before the row was written, a failed write (the caller hears 503) would show as
        ``retrying`` what nothing will retry."""
        self.decisions.stats(delivery.app).retried += 1
        tally = self.tally
        if tally is not None:
            kind = outcome.kind if isinstance(outcome, RetryLater) else "server"
            if isinstance(outcome, Failed):  # a credential failure of a spooled one
                kind = "paused"
            tally.outcome(delivery.app, delivery.protocol, "retrying", RETRY_KIND_CLASS[kind])

    def _dead_token(self, delivery: Delivery, outcome: Outcome, *, late: bool) -> DeadToken:
        """The removal a dead verdict calls for, and the verdict to keep for the caller:
        always when found after its answer; in an answer only for protocols that may
        miss one and can tell a re-registered device apart (Matrix's pushkey_ts)."""
        assert isinstance(outcome, TokenDead)
        lane = self.lanes.get(delivery.app)
        scope = None
        if lane is not None and delivery.protocol in STORED_PROTOCOLS:
            scope = lane.scope
        ref = delivery.ref if late or delivery.protocol in KEEP_ANSWERED_VERDICTS else None
        if ref is not None:
            self.verdicts.add(ref)
        return DeadToken(
            delivery.app, delivery.token, outcome.since, outcome.reason, ref, scope, delivery.caller
        )

    # --- outcomes after the answer ------------------------------------------------------

    def _settle_row(self, delivery: Delivery, row_id: int, attempt: int, outcome: Outcome) -> None:
        """Act on the outcome of attempt ``attempt`` of a spooled delivery."""
        now = self.clock()
        decided = self.decide(delivery, outcome, attempt, now, spooled=True)
        if isinstance(decided, Retry):
            self.ledger.again(
                Reschedule(row_id, decided.attempts, decided.due, decided.unknown, decided.reason)
            )
            self.retry_log.decision(delivery, attempt, decided, now, row_id)
            return
        self.ledger.done(row_id)
        self.depth[delivery.app] = max(0, self.depth.get(delivery.app, 0) - 1)
        if decided.status == "removed":
            self.ledger.dead(self._dead_token(delivery, outcome, late=True))
        elif decided.counter is not None:
            self.ledger.count(delivery.app, decided.counter)

    # --- attempts ---------------------------------------------------------------------

    def _start(self, deliveries: Sequence[Delivery], batch: CallerBatch) -> None:
        """Queue one send per (app, push) group of ``deliveries`` in the outbox."""
        if self._nursery is None:
            raise RuntimeError("Dispatcher.run() has not been started")
        groups: dict[tuple[str, int], list[int]] = {}
        for index, delivery in enumerate(deliveries):
            groups.setdefault((delivery.app, id(delivery.push)), []).append(index)
        self._begin(len(deliveries))
        request_id = REQUEST_ID.get()
        for (app, _), indices in groups.items():
            group = [deliveries[i] for i in indices]
            record = self._recorder(group, indices, batch)
            self._outbox.put(app, Send([d.token for d in group], group[0].push, record, request_id))

    def _recorder(
        self, group: list[Delivery], indices: list[int], batch: CallerBatch
    ) -> Callable[[int, Outcome], None]:
        def record(position: int, outcome: Outcome) -> None:
            self._end()
            self._record(group[position], outcome, batch, indices[position])

        return record

    def _begin(self, count: int) -> None:
        if self._in_flight == 0:
            self._idle = trio.Event()
        self._in_flight += count

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def attempt(
        self, app: str, tokens: list[str], push: Any, record: Callable[[int, Outcome], None]
    ) -> None:
        """Send ``push`` to ``tokens`` through the app's lane; each is recorded once."""
        await self.attempts.attempt(app, tokens, push, record)

    def _record(self, delivery: Delivery, outcome: Outcome, batch: CallerBatch, index: int) -> None:
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
