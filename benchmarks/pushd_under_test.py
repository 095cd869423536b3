"""pushd as the benchmark runs it: the real server, an APNs and an FCM app, an empty endpoint.

The config is what an operator would write for one iOS app and one Android (FCM) app,
each pointed at its simulator (``upstream_url`` + ``upstream_ca_file``) with two upstream
connections: for APNs, two HTTP/2 connections of pushd's own pool; for FCM, two httpx
clients of one HTTP/2 connection each (httpx never opens a second connection to an
origin, and carries 100 streams on one).  The FCM app's service account is the file the
runner wrote with ``make_service_account``, its ``token_uri`` at the FCM simulator.  The
store is prepared by the runner before this starts (100,000 registrations), so what is
measured is pushd serving, not pushd filling its database.

The ``[zulip]`` section only lifts the per-server rate limit: the benchmark's one Zulip
server sends thousands of ``push/notify`` a minute, which a real one would not.  Zulip's
APNs registrations reach the APNs app through their ``ios_app_id`` (its topic), so no
``fcm_app`` is needed: the Zulip users have APNs devices only.

The ``[mattermost]`` section serves one Mattermost server at its secret path prefix
(``common.MATTERMOST_PATH_SECRET``), and the APNs app serves Mattermost's ``apple_rn``
devices (``mattermost_type``).  Its throttle, per source address as Mattermost's proxy
counts, is lifted far above the benchmark's rate: the driver is one address.

The APNs app also serves Matrix pushers (``[apps.matrix]``): Element iOS's app id
(``common.MATRIX_APP_ID``), pushkeys the base64 of the token (``convert_pushkey_to_hex``),
everything else at its default, and so does ``[matrix]`` (no ``allowed_networks``, as
Sygnal; ``answer_within`` 3 s; ``dedupe_seconds`` 600, which is why every Matrix request
of the benchmark has its own event id); its per-source ``rate_limit`` and the native
API's per-server one are lifted as the Mattermost throttle is.  Only the benchmark's
pushd gets the table: ``zulip_fanout.py`` reuses :func:`apns_app` and serves no Matrix.
The Matrix routes (``/_matrix/push/v1/notify`` a static path, the Matrix 404s
templates listed after the Mattermost ones) do not change how the other scenarios'
paths are routed.

``POST /bench/empty`` is mounted through ``server.serve(extra_routes=...)``: it reads
the body like every route and replies ``{}``, so its CPU cost per request is what the
HTTP stack (``pushd/http11.py`` and the router) costs before pushd does any work.
Subtracting it from a send's cost leaves pushd's own work.

Prints ``READY <url>`` once serving.  Stops gracefully when stdin closes (or on SIGINT/
SIGTERM).  With ``--profile FILE``, SIGUSR1 starts cProfile and SIGUSR2 stops it; the
stats are written to FILE on exit, so the runner can profile just one scenario.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import inside
import trio
from common import (
    APP_NAME,
    EMPTY_PATH,
    FCM_APP_NAME,
    KEY_ID,
    MATRIX_APP_ID,
    MATTERMOST_APPLE_TYPE,
    MATTERMOST_PATH_SECRET,
    MATTERMOST_SERVER_NAME,
    READY_PREFIX,
    TEAM_ID,
    TOPIC,
    wait_for_stdin_eof,
)

from pushd import config, logs, server
from pushd.frontends.http import Reply, Request, Route, json_reply

#: Upstream HTTP/2 connections: more than one, as a production config would have.
UPSTREAM_CONNECTIONS = 2
#: FCM's connections, each one httpx client: 2 x 100 streams in flight, pushd's minimum.
FCM_CONNECTIONS = 2
#: Requests a minute the Zulip server may make: far above what any scenario sends
#: (pushd's default, 1,000, would answer 429 a few hundred milliseconds into a run).
ZULIP_RATE_LIMIT = 10_000_000
#: Mattermost requests a second from one source address: far above what any scenario
#: sends (pushd's default, Mattermost's 300, would answer 429 within the first second).
MATTERMOST_THROTTLE_PER_SECOND = 10_000_000
#: Native sends a minute from the benchmark's one chat server, and Matrix notifies a
#: minute from its one source address: lifted likewise (pushd's default, 18,000 a
#: minute, would answer 429 within seconds of a run).
NATIVE_RATE_LIMIT = 10_000_000
MATRIX_RATE_LIMIT = 10_000_000
#: In-flight deliveries waiting at shutdown get this long; the benchmark has none.
DRAIN_SECONDS = 1.0
#: pushd's default, as an operator runs it.  APNs logs per-connection events only; FCM
#: sends also get httpx's INFO line per request, which pushd does not silence: it is part
#: of what an operator's pushd does (its CPU cost is within the run-to-run noise).
LOG_LEVEL = "info"


async def empty(request: Request) -> Reply:
    """Do nothing and answer ``{}``: the floor under every pushd route."""
    return json_reply(200, {})


EMPTY_ROUTE = Route("POST", EMPTY_PATH, empty, "bench_empty")


def apns_app(key_file: Path, upstream_port: int, ca_file: Path) -> dict[str, Any]:
    """The ``[[apps]]`` table of the benchmark's iOS app, pointed at an APNs simulator."""
    return {
        "name": APP_NAME,
        "provider": "apns",
        "environment": "sandbox",
        "topic": TOPIC,
        "key_file": str(key_file),
        "key_id": KEY_ID,
        "team_id": TEAM_ID,
        "upstream_url": f"https://127.0.0.1:{upstream_port}",
        "upstream_ca_file": str(ca_file),
        "connections": UPSTREAM_CONNECTIONS,
        "mattermost_type": MATTERMOST_APPLE_TYPE,
    }


def build_config(args: argparse.Namespace) -> config.Config:
    """The pushd.toml an operator would write for two apps behind the simulators.

    Plus the Zulip and Mattermost front ends, each with one server, and the Matrix push
    gateway, served by the APNs app.
    """
    data = {
        "server": {"listen": "127.0.0.1", "port": args.port, "drain_seconds": DRAIN_SECONDS},
        "store": {"path": str(args.store)},
        "log": {"level": LOG_LEVEL},
        # Metrics on, as by default, on any free port (9464 may be a real pushd's).
        "metrics": {"port": 0},
        "native": {"rate_limit": NATIVE_RATE_LIMIT},
        "zulip": {"rate_limit": ZULIP_RATE_LIMIT},
        "mattermost": {
            "throttle_per_second": MATTERMOST_THROTTLE_PER_SECOND,
            "servers": [{"name": MATTERMOST_SERVER_NAME, "path_secret": MATTERMOST_PATH_SECRET}],
        },
        "matrix": {"rate_limit": MATRIX_RATE_LIMIT},
        "apps": [
            {
                **apns_app(args.key_file, args.upstream_port, args.ca_file),
                "matrix": {"app_ids": [MATRIX_APP_ID], "convert_pushkey_to_hex": True},
            },
            {
                "name": FCM_APP_NAME,
                "provider": "fcm",
                "service_account_file": str(args.fcm_service_account),
                "upstream_url": f"https://127.0.0.1:{args.fcm_upstream_port}",
                "upstream_ca_file": str(args.fcm_ca_file),
                "connections": FCM_CONNECTIONS,
            },
        ],
    }
    cfg = config.parse(data, base=args.store.parent, source="(benchmark launcher)")
    problems = config.check(cfg)
    if problems:
        raise SystemExit("pushd_under_test: bad config:\n  " + "\n  ".join(problems))
    return cfg


async def _stop_requested() -> None:
    """Return on stdin EOF (the runner's normal stop) or on SIGINT/SIGTERM.

    The launcher listens for the signals itself rather than through pushd's own
    handler, so it does not depend on how ``server`` spells that helper.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    return

            async def first(wait: Callable[[], Awaitable[None]]) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, wait_for_stdin_eof)
            nursery.start_soon(first, on_signal)


async def _toggle_profiler(
    profiler: cProfile.Profile, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGUSR1:
                profiler.enable()
            else:
                profiler.disable()


async def _main(cfg: config.Config, profiler: cProfile.Profile | None) -> None:
    async with trio.open_nursery() as nursery:
        if profiler is not None:
            await nursery.start(_toggle_profiler, profiler)

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await server.serve(
                cfg,
                shutdown_trigger=_stop_requested,
                extra_routes=[EMPTY_ROUTE, inside.TIMINGS_ROUTE],
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # serve() has shut down: end the helper tasks

        urls: list[str] = await nursery.start(serve)
        print(f"{READY_PREFIX}{urls[0]}", flush=True)


#: When set, every garbage collection's generation and pause (ms) is appended to this
#: file, one line each: how much of a row's tail is the collector's.
GC_LOG_ENV = "PUSHD_BENCH_GC_LOG"


def _record_gc(path: Path) -> None:
    started: list[float] = []
    out = path.open("a", buffering=1)

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pause = (time.perf_counter() - started[0]) * 1000
            out.write(f"{time.time():.3f} {info['generation']} {pause:.3f} {info['collected']}\n")

    gc.callbacks.append(callback)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--ca-file", type=Path, required=True, help="the APNs simulator's CA")
    parser.add_argument("--key-file", type=Path, required=True, help="the .p8 provider key")
    parser.add_argument("--fcm-upstream-port", type=int, required=True)
    parser.add_argument("--fcm-ca-file", type=Path, required=True, help="the FCM simulator's CA")
    parser.add_argument(
        "--fcm-service-account", type=Path, required=True, help="service-account JSON"
    )
    parser.add_argument("--store", type=Path, required=True, help="prepared SQLite store")
    parser.add_argument("--profile", type=Path, help="write cProfile stats here on exit")
    args = parser.parse_args()
    cfg = build_config(args)
    logs.setup(cfg.log)
    profiler = cProfile.Profile() if args.profile else None
    gc_log = os.environ.get(GC_LOG_ENV)
    if gc_log:
        _record_gc(Path(gc_log))
    inside.install()
    trio.run(_main, cfg, profiler)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
