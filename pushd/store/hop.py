"""One call on a worker thread, waited for without being abandoned: the store's hop.

The store's engines hand blocking work to a thread (SQLite's writes, every PostgreSQL
read and write) and wait for it; a started transaction is always waited for, however
the caller is cancelled, so what a caller hears never disagrees with what was
committed.  ``trio.to_thread.run_sync`` does that and more than the store needs: a
checkpoint before taking the limiter even when it is free (a scheduler turn), support
for ``trio.from_thread`` in the worker, and an abandon-on-cancel path.  Measured here
(``benchmarks/store_hop.py``), a bare hop cost 128-137 µs of CPU through it and 98-119
through what this module does with trio's own lower-level parts
(``trio.lowlevel.start_thread_soon``, the same thread cache, and
``wait_task_rescheduled``); a PostgreSQL store call 0.296 CPU-ms against 0.249, and a
native send to a user on PostgreSQL makes one (its authentication, rate count and the
user's registrations: ``Store.authenticate_counted_for``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    import outcome  # trio's own dependency: the thread cache hands results as these

T = TypeVar("T")


async def run_on_thread(
    fn: Callable[[], T],
    limiter: trio.CapacityLimiter,
    *,
    shield_wait: bool = False,
    wait_at_most: float = math.inf,
    run_at_most: float = math.inf,
    on_overrun: Callable[[], object] | None = None,
) -> T:
    """``fn()`` on a worker thread, at most ``limiter``'s total at once; its result or
    exception.  Not cancellable once started (see the module docstring): a cancel that
    arrives meanwhile takes effect at the caller's next checkpoint.  Waiting for the
    limiter, before anything started, is cancellable unless ``shield_wait``, and ends
    with :class:`trio.TooSlowError` after ``wait_at_most`` seconds (nothing ran).

    ``on_overrun`` is called (on the event loop) ``run_at_most`` seconds after this
    call (its wait for the limiter included) if ``fn`` is still running: it is how the
    caller makes ``fn`` end (the store shuts a hung connection); ``fn`` is still waited
    for, so its outcome is what the caller gets."""
    overrun_at = trio.current_time() + run_at_most
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        with trio.CancelScope(shield=shield_wait) as waiting:
            waiting.deadline = trio.current_time() + wait_at_most
            await limiter.acquire()
        if waiting.cancelled_caught:
            raise trio.TooSlowError from None
    try:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        context = contextvars.copy_context()  # log lines keep the request id

        def deliver(result: outcome.Outcome[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the run ended meanwhile
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        def work() -> T:
            return context.run(fn)

        # The thread cache captures fn's outcome and hands it to deliver on that thread.
        trio.lowlevel.start_thread_soon(work, deliver)
        if on_overrun is None or run_at_most == math.inf:
            value: T = await trio.lowlevel.wait_task_rescheduled(_never_abort)
            return value

        def overrun(_: object) -> trio.lowlevel.Abort:
            on_overrun()
            return trio.lowlevel.Abort.FAILED  # fn's own outcome ends the wait

        # Shielded: only this deadline, never the caller's cancellation, calls it.
        with trio.CancelScope(shield=True) as running:
            running.deadline = overrun_at
            value = await trio.lowlevel.wait_task_rescheduled(overrun)
        return value
    finally:
        limiter.release()


def _never_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
