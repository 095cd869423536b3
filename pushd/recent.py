"""What each app did in the last few minutes, for the status page.

The dispatcher already counts every outcome per app (:class:`~pushd.lanes.LaneStats`,
cumulative since start).  Rather than add a second count to the delivery path, a
sampler copies those totals every :data:`BUCKET_SECONDS` into a ring of
:data:`BUCKETS` snapshots; what happened in a bucket is the difference between two
snapshots, and the live bucket is the totals now minus the last snapshot, so a
delivery shows on the page at once, not ten seconds later.  That costs the hot path
nothing and keeps only ``BUCKETS`` small tuples per app in memory.

A total that goes down (an app's lane replaced by a reload) is read as a counter reset,
as Prometheus reads one: the new value is what happened since.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Final

import attrs
import trio

#: Seconds one bucket covers.
BUCKET_SECONDS: Final = 10.0
#: Buckets kept, the live one included: the page's window is about five minutes.
BUCKETS: Final = 30


@attrs.frozen
class Counts:
    """Outcomes of one app, as the status page groups them."""

    delivered: int = 0
    removed: int = 0
    failed: int = 0
    retrying: int = 0

    @property
    def final(self) -> int:
        """Deliveries that ended (a retry decision is not an end)."""
        return self.delivered + self.removed + self.failed

    def since(self, earlier: Counts) -> Counts:
        """What was counted between ``earlier`` and this; a field that went down was
        reset, so all of its value is new."""

        def step(now: int, then: int) -> int:
            return now - then if now >= then else now

        return Counts(
            step(self.delivered, earlier.delivered),
            step(self.removed, earlier.removed),
            step(self.failed, earlier.failed),
            step(self.retrying, earlier.retrying),
        )

    def plus(self, other: Counts) -> Counts:
        return Counts(
            self.delivered + other.delivered,
            self.removed + other.removed,
            self.failed + other.failed,
            self.retrying + other.retrying,
        )


@attrs.frozen
class Window:
    """One app's outcomes over the window: the sum, the seconds it covers (less than the
    full window just after start), and one :class:`Counts` per bucket, oldest first,
    the live bucket last."""

    total: Counts
    seconds: float
    buckets: tuple[Counts, ...]


Totals = Mapping[str, Counts]


class Recent:
    """A ring of snapshots of every app's cumulative :class:`Counts`."""

    def __init__(self, buckets: int = BUCKETS, bucket_seconds: float = BUCKET_SECONDS) -> None:
        if buckets < 2:
            raise ValueError("at least two buckets: one closed, one live")
        self.bucket_seconds = bucket_seconds
        #: ``buckets - 1`` closed buckets need ``buckets`` snapshots at their edges,
        #: the newest of which also starts the live bucket.
        self._snapshots: collections.deque[tuple[float, dict[str, Counts]]] = collections.deque(
            maxlen=buckets
        )

    def sample(self, now: float, totals: Totals) -> None:
        """Close the live bucket at ``now``."""
        self._snapshots.append((now, dict(totals)))

    def window(self, now: float, totals: Totals) -> dict[str, Window]:
        """Each app of ``totals`` over the window ending ``now``.  An app missing from a
        snapshot (added since) counts from zero there."""
        if not self._snapshots:
            self.sample(now, {})  # nothing sampled yet: everything so far is live
        start = self._snapshots[0][0]
        result = {}
        for app, current in totals.items():
            edges = [snapshot.get(app, Counts()) for _, snapshot in self._snapshots]
            edges.append(current)
            buckets = tuple(later.since(earlier) for earlier, later in itertools.pairwise(edges))
            total = Counts()
            for bucket in buckets:
                total = total.plus(bucket)
            result[app] = Window(total, max(0.0, now - start), buckets)
        return result

    async def run(
        self,
        totals: Callable[[], Totals],
        clock: Callable[[], float] = time.time,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample ``totals()`` every bucket, from now until cancelled."""
        self.sample(clock(), totals())
        task_status.started()
        while True:
            await trio.sleep(self.bucket_seconds)
            self.sample(clock(), totals())
