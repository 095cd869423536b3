"""``[server] workers = N``: notifications a second at 1 and 2 workers (issue 15).

The real ``pushd serve --config`` (a lone process at 1 worker; a supervisor and two
``SO_REUSEPORT`` workers at 2), the native API with one APNs device per request, an
APNs upstream over TLS + HTTP/2 and a load driver at 64 kept-alive connections.

Driver (``--driver``): ``h2load --h1`` (C, ~0.03 CPU-ms a request,
``h2load_driver.py``) when installed, else the benchmark's Python driver (``load.py``:
hand-written HTTP/1.1 bytes, one trio process, ~0.08 CPU-ms a request), said so in
the output.  Upstream (``--upstream``): ``lean`` (``lean_apns.py``: answers every
request 200 as the simulator does on the wire, parsing only frame headers, ~0.02
CPU-ms a notification) or ``simulator`` (``simulator.py``: the bundled APNs simulator,
which judges every request, ~0.18 CPU-ms).  Either way every answer must be 2xx and
the upstream must have answered exactly one 200 per notification sent, warm-ups
included.  The store holds 20,000 registrations; rate limits are on, lifted far above
the run's rate (with 2 workers they are counted in the host's shared tables,
:mod:`pushd.hostshared`, one locked update per request, as an operator's pushd does).
Rounds interleave 1 and 2 workers against the same upstream; each row is a fresh
pushd.  Medians and ranges
over ``--rounds`` (at least 3).

What a figure means on a 2-core machine: the driver and the upstream need CPU too,
and they run on the same two cores, so two workers cannot have two cores to
themselves.  Each row therefore also reports pushd's CPU-ms per notification P (all
of its processes), the driver's and the upstream's D, and the machine's busy CPU.
With 2 cores, the best 2-worker rate is 2000/(P+D) notifications a second, the best
1-worker rate min(1000/P, 2000/(P+D)); their ratio is the most this machine can show
(printed as "ceiling"), and the measured ratio is read against it.  The CPU-ms figure
also says what two workers would give on cores of their own (the same CPU-ms per
notification means the work splits without overhead).

Also measured: the merged ``/metrics`` scrape (the supervisor fetching both workers'
expositions and labelling them) against one pushd's own scrape.

    nice -n 10 .venv/bin/python benchmarks/workers.py --rounds 3 --concurrency 128
    ... --driver load.py --upstream simulator   # the Python driver and simulator
    ... --workers 1 --upstream simulator        # pushd's CPU against the simulator
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2load_driver
from children import HERE, PYTHON, Child, apns_answers, running, write_provider_key
from common import DRIVER, LEAN, MACHINE, SINGLE_USER_PREFIX, STEAL, UPSTREAMS, placement
from load_bodies import ALERT
from populate import populate
from pushd_under_test import NATIVE_RATE_LIMIT, apns_app
from sockets_by_process import connections_by_process

REGISTRATIONS = 20_000
CONCURRENCY = 64
#: Measured requests a row: about 6-9 s at 1 worker.  Rows of 20,000 (2.5-3.5 s) put
#: one worker anywhere between 4,146 and 7,064/s on one quiet machine, the same code.
REQUESTS = 60_000
WARMUP = 20
MAX_SECONDS = 25.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SCRAPES = 30
#: When the connections per worker are counted during a load.py run (after its warm-up
#: has opened them all).
SAMPLE_AFTER = 2.0
#: The upstream's role in the CPU readings.
UPSTREAM = "sim"
H2LOAD, LOAD_PY = "h2load", "load.py"
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")
_WORKER = re.compile(r"worker (\d+) started \(pid (\d+)\)")
_METRICS = re.compile(r"(?:merged, on|metrics on) (http://\S+/metrics)")


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def write_config(directory: Path, workers: int, sim_port: int, ca: Path, p8: Path) -> Path:
    sections: dict[str, dict[str, Any]] = {
        "server": {
            "listen": "127.0.0.1",
            "port": 0,
            "workers": workers,
            "drain_seconds": 1.0,
        },
        "store": {"path": str(directory / "pushd.sqlite3")},
        "spool": {"key_file": str(directory / "spool.key")},
        "log": {"level": "info"},
        "metrics": {"port": 0},
        "native": {"rate_limit": NATIVE_RATE_LIMIT},
    }
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml(value)}" for key, value in table.items()]
    app = apns_app(p8, sim_port, ca)
    lines.append("[[apps]]")
    lines += [f"{key} = {toml(value)}" for key, value in app.items()]
    path = directory / f"pushd-{workers}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def pushd(config: Path, log: Path) -> Iterator[dict[str, Any]]:
    """``pushd serve``; yields its port, pids by role and metrics URL; SIGTERM on exit."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "pushd", "serve", "--config", str(config)],
            stderr=out,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = log.read_text(errors="replace")
            port = _LISTENING.search(text)
            if port and _METRICS.search(text):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pushd did not start:\n{text[-3000:]}")
            time.sleep(0.05)
        workers = {f"w{i}": int(pid) for i, pid in _WORKER.findall(text)}
        pids = {"sup": process.pid, **workers} if workers else {"w0": process.pid}
        metrics = _METRICS.findall(text)[0]
        yield {"port": int(port.group(1)), "pids": pids, "metrics": metrics}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def drive_load_py(
    port: int, key: str, users: int, pids: dict[str, int], sim: int, concurrency: int,
    requests: int,
) -> dict[str, Any]:  # fmt: skip
    """load.py's report, plus the connections each pushd process held in the run."""
    argv = [
        PYTHON, str(HERE / "load.py"), f"--port={port}", f"--key={key}", "--mode=one",
        f"--users={users}", f"--concurrency={concurrency}", f"--requests={requests}",
        f"--warmup={WARMUP}", f"--max-seconds={MAX_SECONDS}", f"--watch={UPSTREAM}={sim}",
        *(f"--watch={role}={pid}" for role, pid in pids.items()),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(SAMPLE_AFTER)
        held = connections_by_process(port, pids)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"driver failed:\n{err[-3000:]}")
    report: dict[str, Any] = json.loads(out)
    report["during"] = held
    if report["failures"]:
        raise RuntimeError(f"{report['failures']} failures, first: {report['first_failure']}")
    return report


def scrape_ms(url: str) -> float:
    times = []
    for _ in range(SCRAPES):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def row(workers: int, report: dict[str, Any], pids: dict[str, int]) -> dict[str, Any]:
    cpu = report["cpu_seconds"]
    notifications = report["notifications"]
    pushd_cpu = sum(cpu[role] for role in pids)
    ours = pushd_cpu + cpu[UPSTREAM] + cpu[DRIVER]
    per = 1000 / notifications
    return {
        "workers": workers,
        # h2load: the steady window's rate (see h2load_driver.py); load.py: the run's.
        "rate": report.get("steady_rate", notifications / report["elapsed"]),
        "run_rate": notifications / report["elapsed"],
        "pushd_cpu_ms": pushd_cpu * per,
        "driver_cpu_ms": cpu[DRIVER] * per,
        "sim_cpu_ms": cpu[UPSTREAM] * per,
        "others_cpu_ms": (cpu[MACHINE] - ours) * per,
        "per_process_cpu_s": {role: round(cpu[role], 2) for role in pids},
        "driver_cpu_s": round(cpu[DRIVER], 2),
        "sim_cpu_s": round(cpu[UPSTREAM], 2),
        "others_cpu_s": round(cpu[MACHINE] - ours, 2),
        "steal_s": round(cpu[STEAL], 2),
        "elapsed_s": round(report["elapsed"], 2),
        "p99_ms": round(report["p99_ms"], 1),
        "connections": report.get("during"),
    }


def spread(values: list[float], digits: int = 1) -> str:
    low, mid, high = (
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )
    return f"{mid} ({low}-{high})"


def ceilings(pushd_ms: float, others_ms: float) -> tuple[float, float]:
    """The best rates 2 cores allow at 1 and 2 workers, when pushd needs ``pushd_ms``
    CPU-ms per notification and the driver and upstream together ``others_ms``."""
    both = 2000 / (pushd_ms + others_ms)
    return min(1000 / pushd_ms, both), both


def choose(args: argparse.Namespace) -> str:
    """The driver, from the flag and what is installed; says why."""
    driver: str = args.driver
    if driver == "auto":
        driver = H2LOAD if h2load_driver.find_h2load() else LOAD_PY
        if driver == LOAD_PY:
            print("h2load is not installed (apt-get install nghttp2-client): driving with "
                  "load.py, whose CPU takes a share of the cores pushd's workers need")  # fmt: skip
    if driver == H2LOAD and not h2load_driver.find_h2load():
        raise SystemExit("--driver h2load: h2load is not installed (nghttp2-client)")
    return driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="keep logs and store in this directory")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--requests", type=int, default=REQUESTS, help="measured, per row")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="1, 2 or both")
    parser.add_argument("--driver", choices=["auto", H2LOAD, LOAD_PY], default="auto")
    parser.add_argument("--upstream", choices=sorted(UPSTREAMS), default=LEAN)
    args = parser.parse_args()
    driver, upstream = choose(args), args.upstream
    print(f"driver: {driver}; APNs upstream: {upstream}; concurrency {args.concurrency}")
    directory = Path(args.keep or tempfile.mkdtemp(prefix="pushd-workers-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    p8 = write_provider_key(directory)
    ca = directory / "sim-ca.pem"
    sim_argv = [PYTHON, str(HERE / UPSTREAMS[upstream]), f"--ca-out={ca}", "--max-seconds=3600"]
    sim_log = directory / "upstream.log"
    rows: list[dict[str, Any]] = []
    scrapes: dict[int, list[float]] = {1: [], 2: []}
    population = populate(str(directory / "pushd.sqlite3"), REGISTRATIONS, 0)
    users = population.users(SINGLE_USER_PREFIX)
    body = h2load_driver.write_body(directory, f"{SINGLE_USER_PREFIX}0", ALERT)
    sent = 0
    with running(Child(upstream, sim_argv, sim_log)) as sim:
        sim_port, sim_pid = int(sim.wait_ready()), sim.pid
        for round_number in range(args.rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)
            for workers in [w for w in order if w in args.workers]:
                config = write_config(directory, workers, sim_port, ca, p8)
                log = directory / f"pushd-{workers}-{round_number}.log"
                with pushd(config, log) as started:
                    port, pids = started["port"], started["pids"]
                    if driver == H2LOAD:
                        watched = {**pids, UPSTREAM: sim_pid}
                        held = functools.partial(connections_by_process, port, pids)
                        report = h2load_driver.drive(
                            port, population.key, body, args.concurrency, args.requests, WARMUP,
                            watched, directory, held,
                        )  # fmt: skip
                    else:
                        report = drive_load_py(
                            port, population.key, users, pids, sim_pid, args.concurrency,
                            args.requests,
                        )  # fmt: skip
                    sent += report["apns_sent"]
                    scrapes[workers].append(scrape_ms(started["metrics"]))
                result = row(workers, report, pids)
                result["round"] = round_number + 1
                rows.append(result)
                print(json.dumps(result), flush=True)
    answers = apns_answers(sim_log)
    if answers != {"200": sent}:
        raise RuntimeError(f"the APNs upstream answered {answers}, the driver sent {sent}")
    print(f"APNs upstream answered {sent:,} notifications, all 200, as the driver sent")
    print(f"runner: {placement(os.getpid())} (children inherit); {os.cpu_count()} CPUs")
    summarize(rows, args.workers, scrapes)
    if not args.keep:
        print(f"(logs in {directory})")
    return 0


def summarize(
    rows: list[dict[str, Any]], counts: list[int], scrapes: dict[int, list[float]]
) -> None:
    medians: dict[int, float] = {}
    capacity: dict[int, float] = {}
    bounds: dict[int, float] = {}
    for workers in counts:
        mine = [r for r in rows if r["workers"] == workers]
        rates = [r["rate"] for r in mine]
        medians[workers] = statistics.median(rates)
        pushd_ms = statistics.median(r["pushd_cpu_ms"] for r in mine)
        rest_ms = statistics.median(r["driver_cpu_ms"] + r["sim_cpu_ms"] for r in mine)
        # Each worker on a core of its own: what pushd's CPU per notification allows.
        capacity[workers] = workers / pushd_ms * 1000
        bounds[workers] = ceilings(pushd_ms, rest_ms)[workers - 1]
        print(
            f"workers={workers}: {spread(rates)} notifications/s; CPU-us per notification: "
            f"pushd {spread([r['pushd_cpu_ms'] * 1000 for r in mine])}, driver "
            f"{spread([r['driver_cpu_ms'] * 1000 for r in mine])}, upstream "
            f"{spread([r['sim_cpu_ms'] * 1000 for r in mine])}, others "
            f"{spread([r['others_cpu_ms'] * 1000 for r in mine])}; p99 "
            f"{spread([r['p99_ms'] for r in mine])} ms; /metrics scrape "
            f"{spread(scrapes[workers])} ms; 2 cores allow {bounds[workers]:.0f}/s"
        )
        if workers == 2:
            shares = [min(r["per_process_cpu_s"]["w0"], r["per_process_cpu_s"]["w1"])
                      / max(r["per_process_cpu_s"]["w0"], r["per_process_cpu_s"]["w1"])
                      for r in mine]  # fmt: skip
            print(f"workers=2: CPU of the less busy worker / the busier: {spread(shares, 2)}")
            splits = ", ".join(
                "/".join(str(n) for role, n in sorted(r["connections"].items()) if role != "sup")
                for r in mine
                if r["connections"]
            )
            print(f"workers=2: connections held by w0/w1 in each row: {splits}")
    if len(medians) == 2:
        print(
            f"ratio of medians, 2 workers / 1: {medians[2] / medians[1]:.2f} (this machine); "
            f"ceiling on this machine {bounds[2] / bounds[1]:.2f}"
        )
        print(
            f"with a core per worker (workers / pushd CPU-s per notification): "
            f"{capacity[1]:.0f}/s and {capacity[2]:.0f}/s, ratio {capacity[2] / capacity[1]:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
