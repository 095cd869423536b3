"""CPU cost of reading the store through ``trio.to_thread`` versus inline.

pushd's SQLite engine (``pushd/store/engine.py``) reads on the event-loop thread and
writes on a worker thread.  Its docstring justifies the split with a number: an indexed point read
costs a few microseconds, a hop to a thread and back far more.  This script measures
both on this machine so the claim can be checked, and re-checked after upgrades:

- inline: ``Store.user_registrations`` (the send path's read) on the SQLite engine;
- hop:    the same query through ``trio.to_thread.run_sync`` (the engine's read_sync);
- bare hop: ``trio.to_thread.run_sync`` around a function that does nothing;
- the same two through :func:`pushd.store.hop.run_on_thread`, the hop the engines use
  (SQLite's writes, every PostgreSQL call).

CPU is ``time.process_time`` (every thread of this process, so the worker thread's
share is counted too); wall time is shown beside it.  The reads go to a store holding
the benchmark's 100,000 registrations.

    .venv/bin/python benchmarks/store_hop.py [--reads N]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from common import SINGLE_USER_PREFIX
from populate import populate

from pushd.config import StoreConfig
from pushd.store import Store, open_store
from pushd.store.engine import Tx
from pushd.store.hop import run_on_thread

REGISTRATIONS = 100_000
FANOUT_USERS = 0
DEFAULT_READS = 20_000
#: Reads before measuring, so caches and the thread pool are warm.
WARMUP_READS = 1_000
MICROSECONDS = 1e6


def nothing() -> None:
    """The work of a bare hop: none."""


async def timed(label: str, reads: int, step: Callable[[int], Awaitable[None]]) -> float:
    """Run ``step`` ``reads`` times; print and return CPU µs per call."""
    for i in range(WARMUP_READS):
        await step(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(reads):
        await step(i)
    cpu_us = (time.process_time() - cpu) / reads * MICROSECONDS
    wall_us = (time.perf_counter() - wall) / reads * MICROSECONDS
    print(f"  {label:<34} {cpu_us:8.1f} µs CPU {wall_us:8.1f} µs wall", flush=True)
    return cpu_us


async def measure(path: str, users: int, reads: int) -> None:
    database = await open_store(StoreConfig(path=path))
    try:
        (server,) = await database.servers()
        await measure_store(database, server.id, users, reads)
    finally:
        await database.close()


async def measure_store(database: Store, server_id: int, users: int, reads: int) -> None:
    def user(i: int) -> str:
        return f"{SINGLE_USER_PREFIX}{(i * 7919) % users}"  # a prime stride: spread reads

    def query(i: int) -> Callable[[Tx], object]:
        return lambda tx: tx.all(
            "SELECT server_id, user_id, token, app, environment, registered_at, kind"
            " FROM registrations WHERE server_id = ? AND user_id = ? ORDER BY id",
            (server_id, user(i)),
        )

    engine = database.engine
    assert engine.dialect == "sqlite"

    async def inline(i: int) -> None:
        await database.user_registrations(server_id, user(i))

    async def hop(i: int) -> None:
        await trio.to_thread.run_sync(engine.read_sync, query(i))  # type: ignore[attr-defined]

    async def bare(_: int) -> None:
        await trio.to_thread.run_sync(nothing)

    limiter = trio.CapacityLimiter(1)

    async def own_hop(i: int) -> None:
        await run_on_thread(functools.partial(engine.read_sync, query(i)), limiter)  # type: ignore[attr-defined]

    async def own_bare(_: int) -> None:
        await run_on_thread(nothing, limiter)

    print(f"{reads:,} reads each, store with {REGISTRATIONS:,} registrations:")
    inline_us = await timed("inline indexed read", reads, inline)
    hop_us = await timed("read via trio.to_thread.run_sync", reads, hop)
    bare_us = await timed("bare trio.to_thread.run_sync hop", reads, bare)
    own_hop_us = await timed("read via pushd's run_on_thread", reads, own_hop)
    own_bare_us = await timed("bare run_on_thread hop", reads, own_bare)
    print(
        f"the hop adds {hop_us - inline_us:.1f} µs of CPU per read"
        f" ({hop_us / inline_us:.0f}x the inline read); a bare hop costs {bare_us:.1f} µs"
        f" through trio.to_thread, {own_bare_us:.1f} through run_on_thread (the store's"
        f" engines' hop; a read through it {own_hop_us:.1f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=DEFAULT_READS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushd-store-hop-") as tmp:
        path = str(Path(tmp) / "pushd.sqlite3")
        population = populate(path, REGISTRATIONS, FANOUT_USERS)
        trio.run(measure, path, population.single_users, args.reads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
