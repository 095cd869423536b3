"""CPU the APNs client spends per notification, measured in the client's own process.

The simulator runs in a child process (so its CPU is not counted); this process runs one
:class:`~pushd.upstream.apns.client.ApnsClient` with ``--connections`` connections and
``--concurrency`` tasks that send ``--count`` notifications, each to its own token, as
fast as the simulator answers.  With ``--batch N`` each of the ``--concurrency`` tasks
(default 4) sends ``N`` tokens per :meth:`~pushd.upstream.apns.client.ApnsClient.send_many`
call instead, as for one chat message to a user with ``N`` devices.  The reported figure
is this process's CPU time (``time.process_time``: user + system, all threads) over the
timed window divided by the number of notifications.  Setup (TLS handshake, first JWT,
the one-stream warm-up) is done by one untimed send before the window opens.

Run from the repository root::

    .venv/bin/python benchmarks/apns_client.py                   # 20,000 x 200, 1 conn
    .venv/bin/python benchmarks/apns_client.py --repeat 3        # best and median of 3
    .venv/bin/python benchmarks/apns_client.py --profile 25      # + cProfile top 25
    .venv/bin/python benchmarks/apns_client.py --batch 100       # 4 x send_many(100)
    .venv/bin/python benchmarks/apns_client.py --concurrency 400 # same load, per send

The simulator child is a daemon process and is terminated on exit.
"""

from __future__ import annotations

import cProfile
import multiprocessing
import os
import sys
import tempfile
from multiprocessing.queues import Queue
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from client_run import measure, parse_arguments, report_run, summarise
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.model import ApnsPush
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
#: Batches in flight with ``--batch``: 4 x 100 is as many requests in flight as
#: ``--concurrency 400`` without it.
DEFAULT_BATCHES = 4
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
    settings: ApnsSettings,
    count: int,
    concurrency: int,
    batch: int,
    profiler: cProfile.Profile | None,
) -> float:
    """Send ``count`` notifications; return CPU milliseconds per notification.

    ``batch`` 0 runs ``concurrency`` tasks calling ``send``; otherwise ``concurrency``
    tasks each call ``send_many`` with ``batch`` tokens at a time.
    """
    cpu, wall = await measure(
        ApnsClient(settings),
        ApnsPush(PAYLOAD),
        lambda n: f"{n:064x}",
        count=count,
        concurrency=concurrency,
        batch=batch,
        profiler=profiler,
    )
    return report_run(
        "notification",
        count=count,
        batch=batch,
        concurrency=concurrency,
        connections=settings.connections,
        cpu=cpu,
        wall=wall,
    )


def main() -> int:
    args = parse_arguments(
        __doc__.splitlines()[0],
        count=DEFAULT_COUNT,
        concurrency=DEFAULT_CONCURRENCY,
        batches=DEFAULT_BATCHES,
        connections=DEFAULT_CONNECTIONS,
    )
    concurrency = args.concurrency

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
                trio.run(_one_run, settings, args.count, concurrency, args.batch, profiler)
                for _ in range(args.repeat)
            ]
        finally:
            child.terminate()
            child.join()
    summarise(results, profiler, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
