"""The measuring loop shared by ``apns_client.py`` and ``fcm_client.py``.

Both start one upstream client against a simulator in a child process, send a warm-up
message (connection, credentials, stream limit), then time ``count`` messages sent by
``concurrency`` tasks, each calling ``send`` or, with ``batch``, ``send_many``.
"""

from __future__ import annotations

import cProfile
import itertools
import time
from collections.abc import Callable
from typing import Any

import trio

from pushd.dispatch import Sender
from pushd.model import Delivered, Outcome


async def measure(
    client: Sender[Any],
    push: Any,
    token: Callable[[int], str],
    *,
    count: int,
    concurrency: int,
    batch: int,
    profiler: cProfile.Profile | None,
) -> tuple[float, float]:
    """Send ``count`` messages to ``token(0..count-1)``; return (CPU s, wall s).

    Raises SystemExit if the warm-up fails or not every message was delivered: a
    benchmark of failures measures nothing.
    """
    delivered = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        warm = await client.send(token(count + 1), push)
        if not isinstance(warm, Delivered):
            raise SystemExit(f"warm-up send failed: {warm!r}")
        numbers = iter(range(count))

        def report(_index: int, outcome: Outcome) -> None:
            nonlocal delivered
            delivered += isinstance(outcome, Delivered)

        async def worker() -> None:
            for n in numbers:
                report(n, await client.send(token(n), push))

        async def batch_worker() -> None:
            send_many = getattr(client, "send_many")  # noqa: B009 - not in Sender
            while group := [token(n) for n in itertools.islice(numbers, batch)]:
                await send_many(group, push, report)

        if profiler is not None:
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as workers:
            for _ in range(concurrency):
                workers.start_soon(batch_worker if batch else worker)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.disable()
        nursery.cancel_scope.cancel()
    if delivered != count:
        raise SystemExit(f"only {delivered} of {count} delivered")
    return cpu1 - cpu0, wall1 - wall0
