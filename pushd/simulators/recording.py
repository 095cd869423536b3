"""What both simulators keep of what they answered, and waiting for it without polling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Recording(Generic[T]):
    """Base of the simulators' bookkeeping: :attr:`received`, :attr:`answered`, waiters.

    Tests wait for the *n*-th answer with :meth:`wait_for`, which wakes when it is
    recorded: no sleeping loops, no flaky timing.
    """

    def __init__(self, *, record: bool, on_received: Callable[[T], None] | None) -> None:
        #: Keep every answered request in :attr:`received` (off for long runs).
        self.record = record
        #: Called with every answered request (e.g. the CLI's one line per notification).
        self.on_received = on_received
        #: Every request that got an answer, in answer order (if ``record``).
        self.received: list[T] = []
        #: Requests answered since start, recorded or not.
        self.answered = 0
        self._waiters: list[tuple[int, trio.Event]] = []

    def _note(self, item: T) -> None:
        """Record an answered request and wake whoever waits for that many."""
        self.answered += 1
        if self.record:
            self.received.append(item)
        if self.on_received is not None:
            self.on_received(item)
        if self._waiters:
            count = len(self.received)
            still = []
            for wanted, event in self._waiters:
                if count >= wanted:
                    event.set()
                else:
                    still.append((wanted, event))
            self._waiters = still

    async def wait_for(self, count: int) -> list[T]:
        """Wait until :attr:`received` holds at least ``count`` answers; return it.

        Needs ``record=True``.  Wakes on answers, never polls.
        """
        if len(self.received) < count:
            event = trio.Event()
            self._waiters.append((count, event))
            await event.wait()
        return self.received
