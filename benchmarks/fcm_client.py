"""CPU the FCM client spends per send, measured in the client's own process.

The FCM simulator runs in a child process (so its CPU, hypercorn's in particular, is not
counted); this process runs one :class:`~pushd.upstream.fcm.client.FcmClient` with
``--connections`` connections and ``--concurrency`` tasks that send ``--count`` messages,
each to its own token, as fast as the simulator answers.  With ``--batch N`` each of the
``--concurrency`` tasks (default 4) sends ``N`` tokens per ``send_many`` call instead, as
for one chat message to a user with ``N`` devices; a client without ``send_many`` gets
the delivery engine's fallback (one task per token, :func:`pushd.dispatch.send_each`), so
the same command measures a before and an after.  The reported figure is this process's
CPU time (``time.process_time``) over the timed window divided by the number of sends.
Setup (TLS handshakes, the access token) is done by one untimed send first.

The simulator checks credentials for real: the child makes the RSA key pair and writes
the service-account file (``make_service_account``, ``token_uri`` pointing at itself)
before it reports its port.

Run from the repository root::

    .venv/bin/python benchmarks/fcm_client.py                   # 20,000 x 200, per send
    .venv/bin/python benchmarks/fcm_client.py --batch 100       # 4 x send_many(100)
    .venv/bin/python benchmarks/fcm_client.py --repeat 3        # best and median of 3
    .venv/bin/python benchmarks/fcm_client.py --profile 25      # + cProfile top 25

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

from pushd.simulators.certs import make_self_signed
from pushd.simulators.fcm import FcmSimulator, configure_alpn, make_service_account
from pushd.upstream.fcm.client import FcmClient
from pushd.upstream.fcm.message import AndroidOptions, Notification, build_push
from pushd.upstream.fcm.service_account import load_service_account
from pushd.upstream.fcm.settings import FcmSettings

PROJECT = "pushd-bench"
CLIENT_EMAIL = f"pushd-bench@{PROJECT}.iam.gserviceaccount.com"
PUSH = build_push(
    data={"room": "!abc:example.org", "event": "$event-id-123"},
    notification=Notification(title="New message", body="hello there, this is a message"),
    android=AndroidOptions(priority="high", ttl=3600),
)
#: Defaults, as in benchmarks/apns_client.py.
DEFAULT_COUNT = 20_000
DEFAULT_CONCURRENCY = 200
DEFAULT_CONNECTIONS = 2
#: Batches in flight with ``--batch``: 4 x 100 is as many requests in flight as
#: ``--concurrency 400`` without it.
DEFAULT_BATCHES = 4
#: Seconds the simulator child waits for its parent before it gives up on its own.
SIMULATOR_MAX_SECONDS = 600.0


def token(n: int) -> str:
    """A distinct registration token of FCM's shape."""
    return f"d{n:07d}xYz:APA91b" + "Qx-_" * 30


def _simulator(ready: Queue[Any], ca_path: str, account_path: str) -> None:
    """Child process: a quiet simulator that keeps no records, and the account file."""
    tls = make_self_signed()
    tls.write_ca(ca_path)

    async def main() -> None:
        sim = FcmSimulator(record=False)
        with trio.move_on_after(SIMULATOR_MAX_SECONDS):
            async with trio.open_nursery() as nursery:
                context = configure_alpn(tls.server_context())
                port = await nursery.start(sim.serve, context, "127.0.0.1", 0)
                key = make_service_account(account_path, PROJECT, sim.token_url, CLIENT_EMAIL)
                sim.add_account(CLIENT_EMAIL, key.public_key(), PROJECT)
                ready.put(port)

    trio.run(main)


def _settings(port: int, ca_path: str, account_path: str, connections: int) -> FcmSettings:
    with open(account_path, "rb") as f:
        account = load_service_account(f.read())
    return FcmSettings(
        name="bench",
        account=account,
        project_id=PROJECT,
        base_url=f"https://127.0.0.1:{port}",
        ca_file=ca_path,
        connections=connections,
        request_timeout=30.0,
    )


async def _one_run(
    settings: FcmSettings,
    count: int,
    concurrency: int,
    batch: int,
    profiler: cProfile.Profile | None,
) -> float:
    """Send ``count`` messages; return CPU milliseconds per send."""
    cpu, wall = await measure(
        FcmClient(settings),
        PUSH,
        token,
        count=count,
        concurrency=concurrency,
        batch=batch,
        profiler=profiler,
    )
    return report_run(
        "send",
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

    with tempfile.TemporaryDirectory(prefix="pushd-fcm-bench-") as tmp:
        ca_path = os.path.join(tmp, "ca.pem")
        account_path = os.path.join(tmp, "service-account.json")
        ready: Queue[Any] = multiprocessing.Queue()
        child = multiprocessing.Process(
            target=_simulator, args=(ready, ca_path, account_path), daemon=True
        )
        child.start()
        try:
            port = ready.get(timeout=60)
            settings = _settings(port, ca_path, account_path, args.connections)
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
