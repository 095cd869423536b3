"""``[server] workers = N``: notifications a second at 1 and 2 workers (issue 15).

The real ``pushd serve --config`` (a lone process at 1 worker; a supervisor and two
``SO_REUSEPORT`` workers at 2), the native API with one APNs device per request, the
bundled APNs simulator (``simulator.py``), and the benchmark's lean driver (``load.py``:
hand-written HTTP/1.1 bytes, one trio process) at 64 kept-alive connections.  The store
holds 20,000 registrations; rate limits are on, lifted far above the run's rate (with 2
workers they are counted in the host's shared tables, :mod:`pushd.hostshared`, one
locked update per request, as an operator's pushd does).  Rounds interleave 1 and 2
workers against the same simulator; each row is a fresh pushd.  Medians and ranges
over ``--rounds`` (at least 3).

What a figure means on a 2-core machine: the driver and the simulator need CPU too,
and they run on the same two cores, so two workers cannot have two cores to
themselves.  Each row therefore also reports pushd's CPU-ms per notification (all of
its processes), the driver's and the simulator's CPU, and the machine's busy CPU: the
ratio of notifications a second at 2 and 1 workers is what this machine gives, and
the CPU-ms figure says what two workers would give on cores of their own (the same
CPU-ms per notification means the work splits without overhead).

Also measured: the merged ``/metrics`` scrape (the supervisor fetching both workers'
expositions and labelling them) against one pushd's own scrape.

    nice -n 10 .venv/bin/python benchmarks/workers.py --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
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

from children import HERE, PYTHON, Child, apns_answers, running, write_provider_key
from common import MACHINE, SINGLE_USER_PREFIX, STEAL, placement
from populate import populate
from pushd_under_test import NATIVE_RATE_LIMIT, apns_app

REGISTRATIONS = 20_000
CONCURRENCY = 64
REQUESTS = 20_000
WARMUP = 20
MAX_SECONDS = 25.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SCRAPES = 30
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
        "server": {"listen": "127.0.0.1", "port": 0, "workers": workers, "drain_seconds": 1.0},
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
            [PYTHON, "-m", "pushd", "serve", "--config", str(config)], stderr=out, env=env
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


def drive(
    port: int, key: str, users: int, pids: dict[str, int], sim: int, concurrency: int
) -> dict[str, Any]:
    argv = [
        PYTHON, str(HERE / "load.py"), f"--port={port}", f"--key={key}", "--mode=one",
        f"--users={users}", f"--concurrency={concurrency}", f"--requests={REQUESTS}",
        f"--warmup={WARMUP}", f"--max-seconds={MAX_SECONDS}", f"--watch=sim={sim}",
        *(f"--watch={role}={pid}" for role, pid in pids.items()),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"driver failed:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
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
    ours = pushd_cpu + cpu["sim"] + cpu["driver"]
    return {
        "workers": workers,
        "rate": notifications / report["elapsed"],
        "pushd_cpu_ms": pushd_cpu / notifications * 1000,
        "per_process_cpu_s": {role: round(cpu[role], 2) for role in pids},
        "driver_cpu_s": round(cpu["driver"], 2),
        "sim_cpu_s": round(cpu["sim"], 2),
        "others_cpu_s": round(cpu[MACHINE] - ours, 2),
        "steal_s": round(cpu[STEAL], 2),
        "elapsed_s": round(report["elapsed"], 2),
        "p99_ms": round(report["p99_ms"], 1),
    }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="keep logs and store in this directory")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="1, 2 or both")
    args = parser.parse_args()
    directory = Path(args.keep or tempfile.mkdtemp(prefix="pushd-workers-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    p8 = write_provider_key(directory)
    ca = directory / "sim-ca.pem"
    sim_argv = [PYTHON, str(HERE / "simulator.py"), f"--ca-out={ca}", "--max-seconds=3600"]
    rows: list[dict[str, Any]] = []
    scrapes: dict[int, list[float]] = {1: [], 2: []}
    population = populate(str(directory / "pushd.sqlite3"), REGISTRATIONS, 0)
    users = population.users(SINGLE_USER_PREFIX)
    with running(Child("simulator", sim_argv, directory / "simulator.log")) as sim:
        sim_port = int(sim.wait_ready())
        for round_number in range(args.rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)
            for workers in [w for w in order if w in args.workers]:
                config = write_config(directory, workers, sim_port, ca, p8)
                log = directory / f"pushd-{workers}-{round_number}.log"
                with pushd(config, log) as started:
                    report = drive(started["port"], population.key, users, started["pids"],
                                   sim.pid, args.concurrency)  # fmt: skip
                    scrapes[workers].append(scrape_ms(started["metrics"]))
                result = row(workers, report, started["pids"])
                result["round"] = round_number + 1
                rows.append(result)
                print(json.dumps(result), flush=True)
    answers = apns_answers(directory / "simulator.log")
    print(f"APNs simulator answers: {answers}")
    print(f"driver: {placement(os.getpid())} (children inherit); {os.cpu_count()} CPUs")
    medians: dict[int, float] = {}
    capacity: dict[int, float] = {}
    for workers in args.workers:
        mine = [r for r in rows if r["workers"] == workers]
        rates = [r["rate"] for r in mine]
        medians[workers] = statistics.median(rates)
        # Each worker on a core of its own: what pushd's CPU per notification allows.
        capacity[workers] = workers / statistics.median(r["pushd_cpu_ms"] for r in mine) * 1000
        print(
            f"workers={workers}: {spread(rates)} notifications/s; pushd "
            f"{spread([r['pushd_cpu_ms'] * 1000 for r in mine])} CPU-us/notification; "
            f"driver {spread([r['driver_cpu_s'] for r in mine])} s, simulator "
            f"{spread([r['sim_cpu_s'] for r in mine])} s, others "
            f"{spread([r['others_cpu_s'] for r in mine])} s of CPU per row; p99 "
            f"{spread([r['p99_ms'] for r in mine])} ms; /metrics scrape "
            f"{spread(scrapes[workers])} ms"
        )
    if len(medians) == 2:
        print(f"ratio of medians, 2 workers / 1: {medians[2] / medians[1]:.2f} (this machine)")
        print(
            f"with a core per worker (workers / pushd CPU-s per notification): "
            f"{capacity[1]:.0f}/s and {capacity[2]:.0f}/s, ratio {capacity[2] / capacity[1]:.2f}"
        )
    if not args.keep:
        print(f"(logs in {directory})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
