"""CPU per notification of pushd's own pipeline, without the HTTP server in front.

Calls the native API's send handler directly, in this process, for a user with
``--devices`` devices (or, with ``--api matrix``, the Matrix gateway's notify with
``--devices`` pushers, each request a new event as Synapse sends it), and measures this
process's CPU time per notification.  With
``--upstream simulator`` the real APNs client sends to the APNs simulator in a child
process (so only pushd's side is counted); with ``--upstream none`` a sender that answers
at once shows what the frontend and the dispatcher cost on their own.

    python benchmarks/pipeline.py --devices 100 --requests 300 --concurrency 4
    python benchmarks/pipeline.py --devices 1 --requests 4000 --concurrency 16
    python benchmarks/pipeline.py --devices 1 --upstream none --profile 25
    python benchmarks/pipeline.py --api matrix --devices 4 --requests 4000 --upstream none

Subtracting ``run.py``'s numbers from these shows what the HTTP layer costs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import apns_client
from common import MATRIX_APP_ID
from load_bodies import matrix_notify_body

from pushd import config
from pushd.dispatch import Dispatcher
from pushd.frontends.http import Reply, Request
from pushd.frontends.matrix.gateway import MatrixGateway
from pushd.frontends.native import NativeApi
from pushd.frontends.openapi import OPENAPI
from pushd.lanes import Budget, Lane, Sender
from pushd.model import Delivered, Outcome
from pushd.spool.seal import SpoolKeys
from pushd.store import open_store
from pushd.upstream.apns.client import ApnsClient
from pushd.upstream.apns.jwt import write_p8

WARM_UP_REQUESTS = 20
BODY = {"alert": {"title": "New message", "body": "hello there, this is a message"}}


class InstantSender:
    """Answers every notification Delivered at once: the cost of everything but upstream."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def send(self, token: str, push: Any) -> Outcome:
        await trio.lowlevel.checkpoint()
        return Delivered()

    async def send_many(
        self, tokens: Sequence[str], push: Any, report: Callable[[int, Outcome], None]
    ) -> None:
        await trio.lowlevel.checkpoint()
        for index in range(len(tokens)):
            report(index, Delivered())

    async def send_mixed(
        self,
        groups: Sequence[tuple[Sequence[str], Any]],
        report: Callable[[int, Outcome], None],
    ) -> None:
        """Concurrent requests' pushes in one call, as the APNs and FCM clients take
        them (without it the lane would spawn a task per push, which pushd never does)."""
        await trio.lowlevel.checkpoint()
        for index in range(sum(len(tokens) for tokens, _ in groups)):
            report(index, Delivered())


def _config(directory: Path, upstream_port: int, ca_file: str) -> config.Config:
    write_p8(directory / "AuthKey.p8")
    return config.parse(
        {
            "store": {"path": "pushd.sqlite3"},
            # One chat server (or homeserver) sends far more than a real one would: lift
            # the limits, or the measured run would count cheap 429s as notifications.
            "native": {"rate_limit": 10_000_000},
            "matrix": {"rate_limit": 10_000_000},
            "apps": [
                {
                    "name": "bench",
                    "provider": "apns",
                    "topic": apns_client.TOPIC,
                    "key_file": "AuthKey.p8",
                    "key_id": apns_client.KEY_ID,
                    "team_id": apns_client.TEAM_ID,
                    "upstream_url": f"https://127.0.0.1:{upstream_port}",
                    "upstream_ca_file": ca_file,
                    "connections": 2,
                    "matrix": {"app_ids": [MATRIX_APP_ID], "convert_pushkey_to_hex": True},
                }
            ],
        },
        base=directory,
    )


async def _measure(args: argparse.Namespace, cfg: config.Config) -> None:
    store = await open_store(cfg.store)
    server, key = await store.add_server("bench")
    for n in range(args.devices):
        await store.register(server.id, "bench-user", f"{n:064x}", "bench", "production")
    sender: Sender[Any] = (
        InstantSender()
        if args.upstream == "none"
        else ApnsClient(config.apns_settings(cfg.apps[0], cfg.upstream))
    )
    dispatcher = Dispatcher(
        [Lane("bench", sender, Budget(1000))],
        store,
        cfg.retry,
        keys=SpoolKeys.load(cfg.spool.key_file, create=True),
        spool=cfg.spool,
        first_attempt_deadline=10,
    )
    body = json.dumps({"user": "bench-user", **BODY}).encode()
    native = Request("POST", "/v1/notifications", {"authorization": f"Bearer {key}"}, body)
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        send: Callable[[Request], Awaitable[Reply]]
        if args.api == "matrix":
            send = MatrixGateway(cfg, store, dispatcher).notify
            devices = range(args.devices)
            # A new event id each: the gateway's dedupe would not send a repeat.
            requests = [
                Request(
                    "POST", "/_matrix/push/v1/notify", {}, matrix_notify_body(devices, k, f"$e{k}")
                )
                for k in range(WARM_UP_REQUESTS + args.requests)
            ]
            for request in requests[:WARM_UP_REQUESTS]:
                reply = await send(request)
            assert json.loads(reply.body) == {"rejected": []}, reply.body
        else:
            api = NativeApi(cfg, store, dispatcher, openapi=OPENAPI)
            send = next(route.handler for route in api.routes() if route.name == "native_send")
            requests = [native] * (WARM_UP_REQUESTS + args.requests)
            for _ in range(WARM_UP_REQUESTS):
                reply = await send(native)
            summary = json.loads(reply.body)["summary"]
            assert summary["delivered"] == args.devices, summary
        remaining = args.requests
        refused: list[Reply] = []

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                reply = await send(requests[WARM_UP_REQUESTS + remaining])
                if reply.status != 200:
                    refused.append(reply)

        profile = cProfile.Profile() if args.profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        async with trio.open_nursery() as workers:
            for _ in range(args.concurrency):
                workers.start_soon(worker)
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if refused:  # a figure for requests pushd did not serve would mean nothing
            raise SystemExit(f"{len(refused)} requests not served, first: {refused[0]}")
        notifications = args.requests * args.devices
        print(
            f"api={args.api} devices={args.devices} requests={args.requests} "
            f"concurrency={args.concurrency} "
            f"upstream={args.upstream}: {cpu * 1000 / notifications:.4f} CPU-ms/notification, "
            f"{cpu * 1e6 / args.requests:.0f} CPU-us/request, {notifications / wall:,.0f} notif/s"
        )
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
        nursery.cancel_scope.cancel()
    await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", choices=("native", "matrix"), default="native")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--upstream", choices=("simulator", "none"), default="simulator")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pushd-pipeline-") as tmp:
        directory = Path(tmp)
        ca_file = str(directory / "ca.pem")
        port = 1  # unused with --upstream none
        child = None
        if args.upstream == "simulator":
            ready: multiprocessing.Queue[Any] = multiprocessing.Queue()
            child = multiprocessing.Process(
                target=apns_client._simulator, args=(ready, ca_file), daemon=True
            )
            child.start()
            port = ready.get(timeout=30)
        try:
            cfg = _config(directory, port, ca_file)
            trio.run(_measure, args, cfg)
        finally:
            if child is not None:
                child.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
