"""The ledger: outcomes of spooled deliveries, written to the store in batches.

After an outage thousands of retries answer within a second; a transaction each would
cost more than sending them.  The ledger collects what happened (rows now final, rows
to try again later, counters, dead tokens to remove and verdicts to keep) and writes it
in one transaction per :data:`FLUSH_INTERVAL`.  Until that commit a row keeps its
lease, so no other instance sends it meanwhile; if the process dies first, the lease
expires and the row is sent again (at-least-once: a duplicate only of what was in
flight).  While the store fails, entries wait in memory and the flush is tried again.
"""

from __future__ import annotations

import collections
import logging
from typing import Final

import trio

from pushd.store import DeadToken, Store, StoreUnavailable
from pushd.store.engine import Tx
from pushd.store.servers import remove_dead_tx
from pushd.store.spool import Reschedule

log = logging.getLogger(__name__)

#: Outcomes that arrive within this long share one transaction.
FLUSH_INTERVAL: Final = 0.02
#: After a failed flush, the next try waits this long.
RETRY_FLUSH_AFTER: Final = 2.0


class Ledger:
    """Collects outcomes; :meth:`run` writes them.  ``clock`` is the wall clock."""

    def __init__(self, store: Store, clock: collections.abc.Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self._done: list[int] = []
        self._reschedule: list[Reschedule] = []
        self._events: collections.Counter[tuple[str, str]] = collections.Counter()
        self._dead: list[DeadToken] = []
        self._wake = trio.Event()
        self._flushed = trio.Event()
        #: The instance whose outcomes these are (set by the spool worker); its
        #: reschedules leave rows another instance has claimed since alone.
        self.owner: str | None = None

    # --- recording (synchronous: called from answer callbacks) --------------------------

    def done(self, row_id: int) -> None:
        self._done.append(row_id)
        self._wake.set()

    def again(self, reschedule: Reschedule) -> None:
        self._reschedule.append(reschedule)
        self._wake.set()

    def count(self, app: str, event: str, n: int = 1) -> None:
        self._events[(app, event)] += n
        self._wake.set()

    def dead(self, item: DeadToken) -> None:
        self._dead.append(item)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._done) + len(self._reschedule) + len(self._dead)

    # --- writing ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            await trio.sleep(FLUSH_INTERVAL)
            if not await self.flush():
                await trio.sleep(RETRY_FLUSH_AFTER)

    async def flush(self) -> bool:
        """Write everything collected; False (and it is kept) if the store failed."""
        self._wake = trio.Event()
        done, self._done = self._done, []
        again, self._reschedule = self._reschedule, []
        events, self._events = self._events, collections.Counter()
        dead, self._dead = self._dead, []
        if not (done or again or events or dead):
            return True
        now = self.clock()

        def also(tx: Tx) -> None:
            remove_dead_tx(tx, dead, now)

        try:
            await self.store.spool_settle(
                done,
                again,
                [(app, event, n) for (app, event), n in events.items()],
                also=also if dead else None,
                owner=self.owner,
            )
        except StoreUnavailable:  # logged by the store, rate-limited
            self._done[:0] = done
            self._reschedule[:0] = again
            self._events.update(events)
            self._dead[:0] = dead
            self._wake.set()
            return False
        return True
