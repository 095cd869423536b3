"""One task that wakes waiters whose time is up, for the dispatcher's first-attempt waits.

Every push's caller waits for its first attempt at most a deadline (``deliver``).  A
trio cancel scope per wait costs about 15 µs (the scope, its deadline in trio's heap,
and the context managers around them), several percent of a one-device push.  Here a
wait is an entry in one heap, and one task sets the waiter's event when its time comes:
entering costs a ``heappush``, leaving marks the entry dead.

The task wakes at most once per :data:`SLACK` (a waiter hears its deadline up to that
much late), not once per waiter: waits of one timeout end in the order they began, and
under load many fall due in every slack window.  Dead entries (the usual case: the
attempt answered first) stay in the heap until they are due or until they outnumber
the live ones, when the heap is rebuilt without them, so the heap holds at most about
twice the waits in progress.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Final

import trio

#: How late a waiter may hear its deadline: the timer's wake-ups are at least this far
#: apart.  Deadlines are seconds (``first_attempt_deadline``, ``answer_within``).
SLACK: Final = 0.02
#: The heap is rebuilt without dead entries once there are more than this many and
#: they outnumber the live ones.
COMPACT_AFTER: Final = 256

#: ``[when, sequence, event]``; ``event`` is None once the wait ended another way.
Entry = list[object]


class Timer:
    """Sets each added event at its time (trio's clock); start :meth:`run` first."""

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._sequence = itertools.count()
        self._dead = 0
        #: When the task will wake next (inf: when something is added).
        self._wakes_at = float("inf")
        self._sooner = trio.Event()
        #: No wait outlasts this (:meth:`cap`: shutdown's deadline); inf until then.
        self._cap = float("inf")

    def __len__(self) -> int:
        """Waits in progress."""
        return len(self._heap) - self._dead

    def add(self, when: float, event: trio.Event) -> Entry:
        """Set ``event`` at ``when`` (or the cap, if sooner), unless :meth:`cancel` is
        called first."""
        when = min(when, self._cap)
        entry: Entry = [when, next(self._sequence), event]
        heapq.heappush(self._heap, entry)
        self._wake_by(when)
        return entry

    def cap(self, when: float) -> None:
        """End every wait, in progress or added later, by ``when`` at the latest.

        Shutdown's deadline: a caller must hear its answer before the server closes
        its connection, so no wait may outlast the drain, whatever deadline it asked.
        """
        self._cap = min(self._cap, when)
        for entry in self._heap:
            if entry[0] > self._cap:  # type: ignore[operator]
                entry[0] = self._cap
        heapq.heapify(self._heap)
        self._wake_by(self._cap)

    def _wake_by(self, when: float) -> None:
        """Make the task wake at ``when`` if it would sleep past it."""
        if when < self._wakes_at:
            self._wakes_at = when
            self._sooner.set()

    def cancel(self, entry: Entry) -> None:
        """The wait of ``entry`` is over; forget it (cheaply: it is only marked)."""
        if entry[2] is None:
            return
        entry[2] = None
        self._dead += 1
        if self._dead > COMPACT_AFTER and self._dead * 2 > len(self._heap):
            self._heap = [item for item in self._heap if item[2] is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Set the events that are due, forever."""
        task_status.started()
        while True:
            now = trio.current_time()
            heap = self._heap
            while heap and heap[0][0] <= now:  # type: ignore[operator]
                entry = heapq.heappop(heap)
                event = entry[2]
                if event is None:
                    self._dead -= 1
                else:
                    entry[2] = None
                    assert isinstance(event, trio.Event)
                    event.set()
            self._sooner = trio.Event()
            first = heap[0][0] if heap else float("inf")
            assert isinstance(first, float)
            self._wakes_at = max(first, now + SLACK)
            with trio.move_on_at(self._wakes_at):
                await self._sooner.wait()  # something sooner was added
