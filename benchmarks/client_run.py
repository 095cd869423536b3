"""The measuring loop shared by ``apns_client.py`` and ``fcm_client.py``.

Both start one upstream client against a simulator in a child process, send a warm-up
message (connection, credentials, stream limit), then time ``count`` messages sent by
``concurrency`` tasks, each calling ``send`` or, with ``batch``, ``send_many``.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import trio

from pushd.lanes import Sender
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


def parse_arguments(
    description: str, *, count: int, concurrency: int, batches: int, connections: int
) -> argparse.Namespace:
    """The options both client benchmarks take; ``concurrency`` resolved for ``--batch``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help=f"sending tasks (default {concurrency}, or {batches} with --batch)",
    )
    parser.add_argument(
        "--batch", type=int, default=0, metavar="N", help="tokens per send_many call (0: send)"
    )
    parser.add_argument("--connections", type=int, default=connections)
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh client")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print cProfile's top N (tottime)"
    )
    args = parser.parse_args()
    if args.concurrency is None:
        args.concurrency = batches if args.batch else concurrency
    return args


def report_run(
    unit: str,
    *,
    count: int,
    batch: int,
    concurrency: int,
    connections: int,
    cpu: float,
    wall: float,
) -> float:
    """Print one run's line; return CPU milliseconds per ``unit``."""
    per_unit = cpu / count * 1e3
    mode = f"batch={batch} batches={concurrency}" if batch else f"concurrency={concurrency}"
    print(
        f"count={count} {mode} connections={connections} "
        f"wall={wall:.2f}s rate={count / wall:,.0f}/s cpu/{unit}={per_unit:.4f} ms",
        flush=True,
    )
    return per_unit


def summarise(results: list[float], profiler: cProfile.Profile | None, top: int) -> None:
    """Best and median over repeated runs, and the profile if one was taken."""
    if len(results) > 1:
        print(f"best={min(results):.4f} ms median={statistics.median(results):.4f} ms")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
