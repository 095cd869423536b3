"""CPU the APNs client spends per notification, measured in the client's own process.

The simulator runs in a child process (so its CPU is not counted); this process runs one
:class:`~pushd.upstream.apns.client.ApnsClient` with ``--connections`` connections and
``--concurrency`` tasks that send ``--count`` notifications, each to its own token, as
fast as the simulator answers.  The reported figure is this process's CPU time
(``time.process_time``: user + system, all threads) over the timed window divided by the
number of notifications.  Setup (TLS handshake, first JWT, the one-stream warm-up) is
done by one untimed send before the window opens.

Run from the repository root::

    /work/venv/bin/python benchmarks/apns_client.py                   # 20,000 x 200, 1 conn
    /work/venv/bin/python benchmarks/apns_client.py --repeat 3        # best and median of 3
    /work/venv/bin/python benchmarks/apns_client.py --profile 25      # + cProfile top 25

The simulator child is a daemon process and is terminated on exit.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import statistics
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives.asymmetric import ec

from pushd.model import ApnsPush, Delivered
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.certs import make_self_signed
from pushd.upstream.apns.client import ApnsClient
from pushd.upstream.apns.jwt import p8_pem
from pushd.upstream.apns.settings import ApnsSettings, TokenAuth

TOPIC = "org.example.pushd.bench"
KEY_ID = "BENCHKEY01"
TEAM_ID = "BENCHTEAM1"
PAYLOAD = b'{"aps":{"alert":{"title":"New message","body":"hello there, this is a message"}}}'
#: Defaults: the figures quoted in the engineering notes use these.
DEFAULT_COUNT = 20_000
DEFAULT_CONCURRENCY = 200
DEFAULT_CONNECTIONS = 1
#: Seconds the simulator child waits for its parent before it gives up on its own.
SIMULATOR_MAX_SECONDS = 600.0


def _simulator(ready: Queue[Any], ca_path: str) -> None:
    """Child process: a quiet simulator that trusts any key and keeps no records."""
    tls = make_self_signed()
    tls.write_ca(ca_path)

    async def main() -> None:
        sim = ApnsSimulator(accept_any_key=True, record=False, topics=frozenset({TOPIC}))
        with trio.move_on_after(SIMULATOR_MAX_SECONDS):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(sim.serve, tls.server_context(), "127.0.0.1", 0)
                ready.put(port)

    trio.run(main)


def _settings(port: int, ca_path: str, connections: int) -> ApnsSettings:
    key_pem = p8_pem(ec.generate_private_key(ec.SECP256R1()))
    return ApnsSettings(
        name="bench",
        base_url=f"https://127.0.0.1:{port}",
        topic=TOPIC,
        auth=TokenAuth(key_pem, KEY_ID, TEAM_ID),
        connections=connections,
        ca_file=ca_path,
        request_timeout=30.0,
    )


async def _one_run(
    settings: ApnsSettings, count: int, concurrency: int, profiler: cProfile.Profile | None
) -> float:
    """Send ``count`` notifications; return CPU milliseconds per notification."""
    client = ApnsClient(settings)
    push = ApnsPush(PAYLOAD)
    delivered = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        warm = await client.send("ab" * 32, push)  # connect, JWT, stream limit raised
        if not isinstance(warm, Delivered):
            raise SystemExit(f"warm-up send failed: {warm!r}")
        tokens = iter(range(count))

        async def worker() -> None:
            nonlocal delivered
            for n in tokens:
                outcome = await client.send(f"{n:064x}", push)
                delivered += isinstance(outcome, Delivered)

        if profiler is not None:
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as workers:
            for _ in range(concurrency):
                workers.start_soon(worker)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.disable()
        nursery.cancel_scope.cancel()
    if delivered != count:
        raise SystemExit(f"only {delivered} of {count} delivered")
    per_notification = (cpu1 - cpu0) / count * 1e3
    print(
        f"count={count} concurrency={concurrency} connections={settings.connections} "
        f"wall={wall1 - wall0:.2f}s rate={count / (wall1 - wall0):,.0f}/s "
        f"cpu/notification={per_notification:.4f} ms",
        flush=True,
    )
    return per_notification


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh client")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="print cProfile's top N (tottime)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pushd-apns-bench-") as tmp:
        ca_path = os.path.join(tmp, "ca.pem")
        ready: Queue[Any] = multiprocessing.Queue()
        child = multiprocessing.Process(target=_simulator, args=(ready, ca_path), daemon=True)
        child.start()
        try:
            port = ready.get(timeout=30)
            settings = _settings(port, ca_path, args.connections)
            profiler = cProfile.Profile() if args.profile else None
            results = [
                trio.run(_one_run, settings, args.count, args.concurrency, profiler)
                for _ in range(args.repeat)
            ]
        finally:
            child.terminate()
            child.join()
    if args.repeat > 1:
        print(f"best={min(results):.4f} ms median={statistics.median(results):.4f} ms")
    if profiler is not None:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
