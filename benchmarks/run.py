"""Benchmark pushd's native send API: throughput, latency, CPU per notification, peak RSS.

    /work/venv/bin/python benchmarks/run.py            # the full run, about 2-3 minutes
    /work/venv/bin/python benchmarks/run.py --quick    # a few seconds: does it still work?
    /work/venv/bin/python benchmarks/run.py --profile  # + cProfile of the 100-device runs

Three processes, so that the kernel can tell whose CPU is whose: pushd
(``pushd_under_test.py``), the APNs simulator (``simulator.py``) and the load driver
(``load.py``, started once per scenario).  Nothing is pinned: on a 2-core machine the
three share both cores, which is why the table shows each one's CPU, so a reader can
see whether pushd or its neighbours set the pace.  See README.md for how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from common import FANOUT_DEVICES, KEY_ID, MACHINE, READY_PREFIX, STEAL, status_kib
from populate import Population, populate

from pushd.upstream.apns.jwt import write_p8

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

#: Registrations in the store, as the issue's memory goal states them.
REGISTRATIONS = 100_000
#: Users with 100 devices each; the rest of the registrations are one-device users.
FANOUT_USERS = 500
#: How long a child may take to start serving.
START_TIMEOUT = 30.0
#: How long a child may take to exit after its stdin closes, before it is killed.
STOP_TIMEOUT = 10.0
#: The issue's goals.
GOAL_FANOUT_CPU_MS = 0.10
GOAL_OWN_WORK_CPU_MS = 0.15
GOAL_PEAK_RSS_MB = 80.0
#: A process using at least this share of one core is treated as saturated.
SATURATED_CORE_SHARE = 0.90
#: Other tasks using this much of a core during a window make its numbers suspect: busy
#: neighbours slow pushd down and raise its CPU per request (caches, fewer batched reads).
CONTENDED_OTHER_SHARE = 0.20
PROFILE_TOP = 15
KIB_PER_MB = 1024


@attrs.frozen
class Scenario:
    """One load-driver run: a mode (see ``load.MODES``) at one concurrency."""

    mode: str
    concurrency: int
    requests: int
    warmup: int
    max_seconds: float


@attrs.frozen
class Plan:
    """A whole benchmark: a warm-up scenario, then the measured ones in order."""

    warmup: Scenario
    scenarios: tuple[Scenario, ...]


#: Baselines run next to the sends of the same concurrency, so the machine's state is alike.
FULL = Plan(
    warmup=Scenario("one", 16, 2000, 5, 15.0),
    scenarios=(
        Scenario("empty", 16, 12000, 5, 20.0),
        Scenario("one", 16, 9000, 5, 20.0),
        Scenario("empty", 64, 12000, 5, 20.0),
        Scenario("one", 64, 9000, 5, 20.0),
        Scenario("hundred", 4, 300, 2, 20.0),
        Scenario("hundred", 16, 300, 2, 20.0),
    ),
)
#: Windows well under a second: proves the benchmark works, the numbers mean little.
QUICK = Plan(
    warmup=Scenario("one", 4, 100, 2, 5.0),
    scenarios=(
        Scenario("empty", 16, 500, 2, 5.0),
        Scenario("one", 16, 500, 2, 5.0),
        Scenario("hundred", 4, 20, 1, 5.0),
    ),
)


class BenchmarkError(Exception):
    """Something that makes the numbers worthless; the message says what."""


class Child:
    """A long-lived helper process that prints ``READY <address>`` and stops on stdin EOF."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> str:
        """The address from the child's ``READY`` line; raises if it exits or is slow."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                raise BenchmarkError(f"{self.name} did not start in {START_TIMEOUT} s{self.tail()}")
        line = stdout.readline().decode().strip()
        if not line.startswith(READY_PREFIX):
            raise BenchmarkError(f"{self.name} failed to start: {line!r}{self.tail()}")
        return line[len(READY_PREFIX) :]

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "".join(f"\n  {self.name}: {line}" for line in text)

    def stop(self) -> None:
        """Close stdin (a graceful stop), then terminate, then kill: never leave it running."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.stop()


def write_provider_key(directory: Path) -> Path:
    """A fresh ES256 key in Apple's .p8 format: pushd signs its provider tokens with it."""
    path = directory / f"AuthKey_{KEY_ID}.p8"
    write_p8(path)
    return path


def drive(
    scenario: Scenario, port: int, population: Population, pids: dict[str, int]
) -> dict[str, Any]:
    """Run the load driver once and return its JSON report (raises on any failure)."""
    users = population.fanout_users if scenario.mode == "hundred" else population.single_users
    argv = [
        PYTHON,
        str(HERE / "load.py"),
        f"--port={port}",
        f"--key={population.key}",
        f"--mode={scenario.mode}",
        f"--users={users}",
        f"--concurrency={scenario.concurrency}",
        f"--requests={scenario.requests}",
        f"--warmup={scenario.warmup}",
        f"--max-seconds={scenario.max_seconds}",
        *(f"--watch={role}={pid}" for role, pid in pids.items()),
    ]
    limit = scenario.max_seconds * 2 + START_TIMEOUT
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"load driver failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    if report["failures"]:
        raise BenchmarkError(
            f"{scenario.mode} x{scenario.concurrency}: {report['failures']} failed requests,"
            f" first: {report['first_failure']}"
        )
    if not report["requests"]:
        raise BenchmarkError(f"{scenario.mode} x{scenario.concurrency}: no request completed")
    return report


@attrs.frozen
class Row:
    """One measured scenario, in the units the table shows."""

    scenario: Scenario
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    #: pushd CPU-ms per notification (per request for the empty endpoint).
    pushd_cpu_ms: float
    #: Share of one core each process used during the window.
    cores: dict[str, float]
    peak_rss_mb: float

    @property
    def contended(self) -> bool:
        return self.cores[OTHER] >= CONTENDED_OTHER_SHARE

    @classmethod
    def from_report(cls, scenario: Scenario, report: dict[str, Any], peak_kib: int) -> Row:
        units = report["notifications"] or report["requests"]
        cpu = report["cpu_seconds"]
        elapsed = report["elapsed"]
        return cls(
            scenario=scenario,
            requests=report["requests"],
            per_second=units / elapsed,
            p50_ms=report["p50_ms"],
            p99_ms=report["p99_ms"],
            pushd_cpu_ms=cpu["pushd"] * 1000 / units,
            cores={role: seconds / elapsed for role, seconds in cpu.items()}
            | {
                OTHER: max(0.0, cpu[MACHINE] - cpu["pushd"] - cpu["simulator"] - cpu["driver"])
                / elapsed
            },  # clock ticks can make the difference slightly negative
            peak_rss_mb=peak_kib / KIB_PER_MB,
        )


#: Machine CPU used by anything but the three processes (kernel softirqs, other tasks).
OTHER = "other"
LABELS = {"empty": "empty endpoint", "one": "1 device/request", "hundred": "100 devices/request"}
HEADER = (
    f"{'scenario':<20} {'conc':>4} {'requests':>8} {'notif/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
    f" {'CPU-ms/n':>8} {'pushd':>6} {'sim':>6} {'driver':>6} {'other':>6} {'steal':>6}"
    f" {'RSS MB':>7}"
)


def format_row(row: Row) -> str:
    rate = f"{row.per_second:,.0f}" + ("*" if row.scenario.mode == "empty" else "")
    return (
        f"{LABELS[row.scenario.mode]:<20} {row.scenario.concurrency:>4} {row.requests:>8}"
        f" {rate:>8} {row.p50_ms:>7.1f} {row.p99_ms:>7.1f} {row.pushd_cpu_ms:>8.3f}"
        f" {row.cores['pushd']:>6.0%} {row.cores['simulator']:>6.0%}"
        f" {row.cores['driver']:>6.0%} {row.cores[OTHER]:>6.0%} {row.cores[STEAL]:>6.0%}"
        f" {row.peak_rss_mb:>7.1f}" + ("  !" if row.contended else "")
    )


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def print_report(
    rows: list[Row], population: Population, startup_rss_mb: float, quick: bool
) -> None:
    print()
    if quick:
        print("QUICK RUN: windows too short for the numbers to mean much; use the full run.")
    print(
        f"pushd native API, {population.registrations:,} registrations stored"
        f" ({population.single_users:,} one-device users, {population.fanout_users}"
        f" users x {FANOUT_DEVICES} devices); loopback; APNs simulator upstream, 2 connections."
    )
    print(
        f"{os.cpu_count()} CPUs shared by pushd, simulator and driver; nothing pinned."
        f" pushd RSS after start-up: {startup_rss_mb:.1f} MB."
    )
    print()
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(format_row(row))
    print()
    print(
        "CPU-ms/n: pushd CPU milliseconds per notification (= CPU seconds per 1,000);"
        " * = requests/s, CPU per request.\n"
        "pushd/sim/driver: share of one core each process used during the window (200% = both"
        " cores);\nother: the rest of the machine's busy CPU (kernel, other tasks); steal: CPU"
        " the hypervisor gave to other guests.\n"
        "RSS MB: pushd's peak RSS (VmHWM) so far, a high-water mark over the whole run.\n"
        f"!: other tasks used >= {CONTENDED_OTHER_SHARE:.0%} of a core in this window: the"
        " machine was shared, the row's numbers are suspect; rerun when it is quiet."
    )
    print()
    baselines = {r.scenario.concurrency: r for r in rows if r.scenario.mode == "empty"}

    def suspect(*checked: Row) -> str:
        return " (contended window: suspect)" if any(r.contended for r in checked) else ""

    print("Goals:")
    for row in rows:
        base = baselines.get(row.scenario.concurrency)
        if row.scenario.mode != "one" or base is None:
            continue
        own = row.pushd_cpu_ms - base.pushd_cpu_ms
        print(
            f"  1 device, {row.scenario.concurrency:>2} concurrent: pushd's own work"
            f" {row.pushd_cpu_ms:.3f} - {base.pushd_cpu_ms:.3f} (empty endpoint) ="
            f" {own:.3f} CPU-ms/notification; goal <= {GOAL_OWN_WORK_CPU_MS}:"
            f" {verdict(own <= GOAL_OWN_WORK_CPU_MS)}{suspect(row, base)}"
        )
    for row in rows:
        if row.scenario.mode == "hundred":
            print(
                f"  100 devices, {row.scenario.concurrency:>2} concurrent:"
                f" {row.pushd_cpu_ms:.3f} CPU-ms/notification; goal <= {GOAL_FANOUT_CPU_MS}:"
                f" {verdict(row.pushd_cpu_ms <= GOAL_FANOUT_CPU_MS)}{suspect(row)}"
            )
    peak = max(row.peak_rss_mb for row in rows)
    print(
        f"  peak RSS {peak:.1f} MB with {population.registrations:,} registrations;"
        f" goal < {GOAL_PEAK_RSS_MB:.0f} MB: {verdict(peak < GOAL_PEAK_RSS_MB)}"
    )
    print()
    print("Who set the pace (a process at >= 90% of a core, or the machine >= 90% busy):")
    for row in rows:
        busy = row.cores[MACHINE] + row.cores[STEAL]
        hot = [
            role
            for role in ("pushd", "simulator", "driver")
            if row.cores[role] >= SATURATED_CORE_SHARE
        ]
        if hot:
            limit = " and ".join(hot) + " saturated one core"
        elif busy >= (os.cpu_count() or 1) * SATURATED_CORE_SHARE:
            limit = f"the machine: {busy:.0%} of {os.cpu_count()} cores busy"
        else:
            limit = f"no process saturated ({busy:.0%} of one core busy or stolen): waiting"
        print(f"  {LABELS[row.scenario.mode]:<20} x{row.scenario.concurrency:<3} {limit}")


def print_profile(path: Path) -> None:
    print()
    print(
        f"cProfile of pushd during the 100-device runs, top {PROFILE_TOP} by tottime"
        " (profiling slows pushd: the table's CPU numbers above are inflated):"
    )
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(PROFILE_TOP)


def run(plan: Plan, profile: bool, keep: Path | None = None) -> None:
    """Run ``plan`` and print the report; with ``keep``, work there and leave the logs."""
    with contextlib.ExitStack() as stack:
        if keep is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pushd-bench-")))
        else:
            keep.mkdir(parents=True, exist_ok=False)
            workdir = keep
        started = time.monotonic()
        store = workdir / "pushd.sqlite3"
        population = populate(str(store), REGISTRATIONS, FANOUT_USERS)
        print(
            f"stored {population.registrations:,} registrations in"
            f" {time.monotonic() - started:.1f} s",
            flush=True,
        )
        ca_file = workdir / "simulator-ca.pem"
        simulator = stack.enter_context(
            running(
                Child(
                    "simulator",
                    [PYTHON, str(HERE / "simulator.py"), f"--ca-out={ca_file}"],
                    workdir / "simulator.log",
                )
            )
        )
        upstream_port = int(simulator.wait_ready())
        profile_path = workdir / "pushd.prof"
        pushd = stack.enter_context(
            running(
                Child(
                    "pushd",
                    [
                        PYTHON,
                        str(HERE / "pushd_under_test.py"),
                        f"--upstream-port={upstream_port}",
                        f"--ca-file={ca_file}",
                        f"--key-file={write_provider_key(workdir)}",
                        f"--store={store}",
                        *([f"--profile={profile_path}"] if profile else []),
                    ],
                    workdir / "pushd.log",
                )
            )
        )
        url = pushd.wait_ready()
        port = int(url.rsplit(":", 1)[1])
        startup_rss_mb = status_kib(pushd.pid, "VmRSS") / KIB_PER_MB
        pids = {"pushd": pushd.pid, "simulator": simulator.pid}
        try:
            print(f"pushd at {url}, simulator on port {upstream_port}; warming up", flush=True)
            drive(plan.warmup, port, population, pids)
            rows = []
            for scenario in plan.scenarios:
                print(
                    f"  {LABELS[scenario.mode]} x{scenario.concurrency}:"
                    f" {scenario.requests} requests",
                    flush=True,
                )
                profiling = profile and scenario.mode == "hundred"
                if profiling:
                    os.kill(pushd.pid, signal.SIGUSR1)
                report = drive(scenario, port, population, pids)
                if profiling:
                    os.kill(pushd.pid, signal.SIGUSR2)
                rows.append(Row.from_report(scenario, report, status_kib(pushd.pid, "VmHWM")))
        except BenchmarkError as error:
            raise BenchmarkError(f"{error}{pushd.tail()}{simulator.tail()}") from None
        pushd.stop()
        simulator.stop()
        print_report(rows, population, startup_rss_mb, plan is QUICK)
        print(f"\nwhole run: {time.monotonic() - started:.0f} s")
        if profile:
            print_profile(profile_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run: does it still work?")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile pushd during the 100-device runs"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in this new directory and keep it (store, logs, profile)",
    )
    args = parser.parse_args(argv)
    try:
        run(QUICK if args.quick else FULL, args.profile, args.keep)
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
