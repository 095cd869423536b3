"""The spool worker: takes due rows, sends them again at each app's pace.

Per app, as many rows as its circuit allows (:mod:`.circuit`) are claimed with a lease
(:meth:`~pushd.store.spool.SpoolQueries.spool_claim`; on PostgreSQL ``FOR UPDATE SKIP
LOCKED``, so instances share a backlog without waiting on each other), opened
(:mod:`.seal`) and sent through the app's lane like fresh deliveries; their outcomes go
to the ledger.  Rows that expired while waiting are dropped and counted, never sent.
Rows whose last attempt may have arrived (``unknown``) are taken only while the circuit
is closed: after an outage they go once, when the upstream answers again, instead of a
storm of duplicates into a slow upstream.

A periodic count of the spool per app feeds ``/healthz``, the metrics and the bound on
its size (``retry.max_queued``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final

import trio

from pushd.model import Delivery, Outcome, mask_token
from pushd.requestid import REQUEST_ID, spool_request_id
from pushd.spool.seal import SealError
from pushd.store import StoreUnavailable
from pushd.store.spool import AppSpool, Reschedule, SpoolRow

if TYPE_CHECKING:
    from pushd.dispatch import Dispatcher
    from pushd.lanes import Lane

log = logging.getLogger("pushd.spool")

#: With nothing known to be due, look again this often (other instances add rows too).
POLL_INTERVAL: Final = 1.0
#: Rows claimed per app in one transaction, at most.
CLAIM_MAX: Final = 200
#: How often the spool is counted per app (health, metrics, the size bound).
STATS_INTERVAL: Final = 2.0
#: Expired dedupe keys, rate windows and old verdicts are dropped this often.
UPKEEP_INTERVAL: Final = 60.0
#: A row whose key is missing here waits this long for the key file to catch up.
SEAL_RETRY: Final = 300.0
#: An app whose rows need a key this process lacks is reported so (``/healthz``, the
#: metrics) this long after its last such row: each try of one renews it.
KEY_MISSING_FOR: Final = 2 * SEAL_RETRY


class SpoolWorker:
    """Runs in the dispatcher's nursery; see the module docstring."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        dispatcher.ledger.owner = dispatcher.owner
        #: The last count, per app (for health and metrics).
        self.snapshot: dict[str, AppSpool] = {}
        self.expired_unsent = 0
        self._stopped = False
        self._wake = trio.Event()
        self._nothing_due: dict[str, float] = {}
        #: Lease owners (name prefixes) to release at start: a supervisor's worker that
        #: died, whose rows this one, its replacement, sends again at once.
        self.release_on_start: tuple[str, ...] = ()
        #: Per app, the key ids its rows were sealed with that did not open here, and
        #: when last met: see :meth:`missing_key`.
        self._unopened: dict[str, dict[str, float]] = {}

    def wake(self) -> None:
        self._wake.set()

    async def due_now(self, app: str) -> None:
        """Send ``app``'s spooled rows at once (a reload changed its credentials: rows
        waited out a pause the old ones earned, up to ``credential_pause``)."""
        moved = await self.store.spool_due_now(app, self.dispatcher.clock())
        if moved:
            log.info("spool: %d deliveries of %s go now, on its new settings", moved, app)
        self._nothing_due.pop(app, None)
        self._wake.set()

    def stop(self) -> None:
        """Take no more rows (shutdown); attempts in flight finish."""
        self._stopped = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.store.shared:
            # One process per SQLite file: leases left behind are a dead process's.
            released = await self.store.spool_release(None)
            if released:
                log.info("spool: %d deliveries in flight before a restart go again now", released)
        for prefix in self.release_on_start:
            with contextlib.suppress(StoreUnavailable):  # then the leases run out instead
                released = await self.store.spool_release_prefix(prefix)
                if released:
                    log.info(
                        "spool: %d deliveries in flight in a worker that died go again now",
                        released,
                    )
        await self._check_keys()
        await self.count()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._count_loop)
            task_status.started()
            await self._drain_loop()
            nursery.cancel_scope.cancel()

    async def _check_keys(self) -> None:
        """Say at start if rows are sealed with keys the key file does not hold (a key
        file lost or replaced): they cannot be sent until it is put back."""
        keys = self.dispatcher.keys
        try:
            missing = sorted(set(await self.store.spool_key_ids()) - set(keys.ids))
        except StoreUnavailable:
            return
        if missing:
            log.error(
                "spool: rows are sealed with key(s) %s, which %s does not hold: they wait "
                "(until they expire) for a key file that holds them",
                ", ".join(missing),
                keys.path,
            )

    def missing_key(self, app: str, now: float) -> str | None:
        """A key the app's spooled rows need and this process lacks, if any: ``/healthz``
        says so, and it clears once the key file holds it again."""
        seen = self._unopened.get(app)
        if not seen:
            return None
        known = set(self.dispatcher.keys.ids)
        for key, at in seen.items():
            if key not in known and now - at < KEY_MISSING_FOR:
                return key
        return None

    # --- counting -----------------------------------------------------------------------

    async def count(self) -> None:
        now = self.dispatcher.clock()
        try:
            stats = await self.store.spool_stats(now)
        except StoreUnavailable:
            return
        self.snapshot = {item.app: item for item in stats}
        self.dispatcher.depth = {item.app: item.depth for item in stats}

    async def _count_loop(self) -> None:
        upkeep = 0.0
        while True:
            await trio.sleep(STATS_INTERVAL)
            await self.count()
            self.dispatcher.retry_log.flush()
            self.dispatcher.keys.refresh()
            upkeep += STATS_INTERVAL
            if upkeep >= UPKEEP_INTERVAL and self.store.shared:
                upkeep = 0.0
                window = int(self.dispatcher.clock()) - int(UPKEEP_INTERVAL) * 2
                with contextlib.suppress(StoreUnavailable):  # logged by the store
                    await self.store.expire_shared_state(window)

    def oldest_due_age(self, app: str, now: float) -> float:
        """How long the app's oldest row has been due, as of the last count; 0 once
        this process has seen its spool empty since (the count may be 2 s old)."""
        item = self.snapshot.get(app)
        if item is None or item.oldest_due is None or self.dispatcher.depth.get(app, 0) <= 0:
            return 0.0
        return max(0.0, now - item.oldest_due)

    # --- draining -----------------------------------------------------------------------

    async def _drain_loop(self) -> None:
        dispatcher = self.dispatcher
        while not self._stopped:
            self._wake = trio.Event()
            claimed = 0
            for lane in list(dispatcher.lanes.values()):
                try:
                    claimed += await self._claim(lane)
                except StoreUnavailable:
                    break
            if self._stopped:
                return
            if claimed:
                await trio.lowlevel.checkpoint()  # let the attempts start; claim more
                continue
            with trio.move_on_after(POLL_INTERVAL):
                await self._wake.wait()

    async def _claim(self, lane: Lane) -> int:
        dispatcher = self.dispatcher
        now = dispatcher.clock()
        if lane.paused_until > now or lane.probing:
            return 0
        if not self.store.shared and dispatcher.depth.get(lane.name, 0) <= 0:
            return 0
        if self._nothing_due.get(lane.name, 0.0) > now and not self._wake.is_set():
            return 0
        room = lane.circuit.allowance(now) - lane.retries_in_flight
        if room <= 0:
            return 0
        wanted = min(room, CLAIM_MAX)
        rows = await self.store.spool_claim(
            lane.name,
            dispatcher.owner,
            now,
            now + dispatcher.spool.lease_seconds,
            wanted,
            unknown=lane.circuit.resends_unknown,
        )
        if len(rows) < wanted:
            self._nothing_due[lane.name] = now + POLL_INTERVAL
        left = now + dispatcher.spool.lease_seconds - dispatcher.clock()
        if rows and left < lane.request_timeout:
            # The claim waited for the store (a slow or queued database) until its
            # lease could run out under the attempt, and another instance would claim
            # and send the row too.  Sent by whoever claims it after the lease.
            log.warning(
                "spool: a claim of %d rows of app %s took %.1f s: too little of the lease "
                "left to send them; they go after it (the store is slow)",
                len(rows),
                lane.name,
                dispatcher.spool.lease_seconds - left,
            )
            return 0
        for row in rows:
            self._start(lane, row, now)
        return len(rows)

    def _start(self, lane: Lane, row: SpoolRow, now: float) -> None:
        dispatcher = self.dispatcher
        if row.expires_at <= now:
            self._expire(lane, row)
            return
        try:
            push = dispatcher.keys.open(row.key_id, row.sealed, row.app, row.token)
        except SealError as error:
            log.error("spool: cannot open a row of app %s: %s; trying later", row.app, error)
            self._unopened.setdefault(row.app, {})[row.key_id] = now
            dispatcher.ledger.again(
                Reschedule(row.id, row.attempt, now + SEAL_RETRY, row.unknown, "sealed: no key")
            )
            return
        delivery = Delivery(
            app=row.app,
            token=row.token,
            push=push,
            registered_at=row.registered_at,
            expires_at=row.expires_at,
            ref=row.ref,
            caller=row.caller,
            protocol=row.protocol,  # type: ignore[arg-type]
        )
        lane.retries_in_flight += 1
        dispatcher._begin(1)
        # Its log lines carry the row's id, which the retry decision line named.
        current = REQUEST_ID.set(spool_request_id(row.id))
        try:
            dispatcher.start_soon(self._send, lane, row, delivery)
        finally:
            REQUEST_ID.reset(current)

    async def _send(self, lane: Lane, row: SpoolRow, delivery: Delivery) -> None:
        dispatcher = self.dispatcher

        def record(_: int, outcome: Outcome) -> None:
            dispatcher._end()
            dispatcher._settle_row(delivery, row.id, row.attempt + 1, outcome)

        try:
            await dispatcher.attempt(lane.name, [row.token], delivery.push, record)
        finally:
            lane.retries_in_flight -= 1
            self._wake.set()

    def _expire(self, lane: Lane, row: SpoolRow) -> None:
        dispatcher = self.dispatcher
        dispatcher.ledger.done(row.id)
        dispatcher.ledger.count(row.app, "expired")
        dispatcher.depth[row.app] = max(0, dispatcher.depth.get(row.app, 0) - 1)
        lane.stats.expired += 1
        self.expired_unsent += 1
        if dispatcher.tally is not None:
            dispatcher.tally.outcome(row.app, row.protocol, "failed", "expired")
        log.info(
            "app %s: a spooled notification to %s expired after %d attempts; dropped unsent",
            row.app,
            mask_token(row.token),
            row.attempt,
        )
