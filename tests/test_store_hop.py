"""The store's hop to a worker thread (``pushd.store.hop``): results and errors come
back, a started call is never abandoned by a cancelled caller, the limiter bounds the
threads, and the caller's context (the request id of log lines) goes along."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest
import trio

from pushd.store.hop import run_on_thread

REQUEST = contextvars.ContextVar("REQUEST", default="none")
#: How long a call in these tests blocks its thread.
BLOCK_SECONDS = 0.2


async def test_the_result_and_the_exception_of_the_call_come_back() -> None:
    limiter = trio.CapacityLimiter(1)
    main = threading.get_ident()
    assert await run_on_thread(threading.get_ident, limiter) != main
    with pytest.raises(ZeroDivisionError):
        await run_on_thread(lambda: 1 // 0, limiter)
    assert limiter.borrowed_tokens == 0


async def test_a_cancelled_caller_still_waits_for_the_call_it_started() -> None:
    limiter = trio.CapacityLimiter(1)
    finished: list[float] = []

    def slow() -> None:
        time.sleep(BLOCK_SECONDS)
        finished.append(time.monotonic())

    returned = False
    with trio.CancelScope() as scope:
        scope.deadline = trio.current_time() + BLOCK_SECONDS / 4
        await run_on_thread(slow, limiter)
        returned = True  # the answer came back, though the deadline had passed
        await trio.lowlevel.checkpoint()  # where the cancel takes effect
    assert returned and scope.cancelled_caught
    assert len(finished) == 1
    assert limiter.borrowed_tokens == 0


async def test_waiting_for_the_limiter_is_cancellable_unless_shielded() -> None:
    limiter = trio.CapacityLimiter(1)
    ran: list[str] = []

    async def hold() -> None:
        await run_on_thread(lambda: time.sleep(BLOCK_SECONDS), limiter)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await trio.sleep(BLOCK_SECONDS / 4)  # the holder has the one token
        with trio.move_on_after(BLOCK_SECONDS / 4):
            await run_on_thread(lambda: ran.append("waiter"), limiter)
        assert ran == []  # gave up before it began
        with trio.CancelScope() as scope:
            scope.cancel()
            await run_on_thread(lambda: ran.append("shielded"), limiter, shield_wait=True)
        assert ran == ["shielded"]  # waited its turn, then ran, then heard the cancel


async def test_the_limiter_bounds_the_calls_running_at_once() -> None:
    limiter = trio.CapacityLimiter(2)
    running, peak = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(BLOCK_SECONDS / 4)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(run_on_thread, work, limiter)
    assert peak == 2


async def test_the_call_sees_the_callers_context() -> None:
    REQUEST.set("req-42")
    assert await run_on_thread(REQUEST.get, trio.CapacityLimiter(1)) == "req-42"
