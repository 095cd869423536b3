"""Benchmark pushd's native send API: throughput, latency, CPU per notification, peak RSS.

    /work/venv/bin/python benchmarks/run.py            # the full run, about 3-4 minutes
    /work/venv/bin/python benchmarks/run.py --quick    # a few seconds: does it still work?
    /work/venv/bin/python benchmarks/run.py --profile  # + cProfile of the APNs 100-device runs

Four processes, so that the kernel can tell whose CPU is whose: pushd
(``pushd_under_test.py``), the APNs simulator (``simulator.py``), the FCM simulator
(``fcm_simulator.py``) and the load driver (``load.py``, started once per scenario).
Nothing is pinned: on a 2-core machine they share both cores, which is why the table
shows each one's CPU, so a reader can see whether pushd or its neighbours set the pace.
The scenarios send to APNs devices, to FCM devices, to users with both, and, as a
Zulip server through pushd's Zulip bouncer (``push/notify``), to users with 10 APNs
devices, as a Mattermost server through pushd's Mattermost push proxy
(``send_push``), to one APNs device per request, and, as a Matrix homeserver through
pushd's Matrix push gateway (``notify``), to one and to four APNs devices per request,
the requests of Sygnal's benchmark (compared at the end of the report).  Before them,
``zulip_fanout.py``
checks that a Zulip notify costs one upstream round trip, not ten; after them, that
the APNs simulator answered exactly the notifications the drivers sent.  See README.md
for how to read the table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pstats
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from common import (
    ANSWERS_PREFIX,
    APNS_SIM,
    DRIVER,
    FANOUT_DEVICES,
    FCM_CLIENT_EMAIL,
    FCM_PROJECT,
    FCM_SIM,
    KEY_ID,
    MACHINE,
    MATRIX_DEVICES,
    MATRIX_FANOUT_DEVICES,
    MATTERMOST_DEVICES,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    PUSHD,
    READY_PREFIX,
    STEAL,
    ZULIP_DEVICES,
    status_kib,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from load import MODES
from populate import Population, populate

from pushd.simulators.fcm import SERVICE_ACCOUNT_KEY_BITS, make_service_account
from pushd.upstream.apns.jwt import write_p8

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable

#: Registrations in the store, as the issue's memory goal states them.
REGISTRATIONS = 100_000
#: APNs users with 100 devices each.
FANOUT_USERS = 500
#: FCM users with one device, FCM users with 100, users with 50 APNs + 50 FCM devices:
#: 10,000 registrations (8,500 FCM tokens), more users than any FCM scenario sends to.
FCM_SINGLE_USERS = 5_000
FCM_FANOUT_USERS = 20
MIXED_USERS = 30
#: Users of the one Zulip server, 10 legacy APNs registrations each: 10,000 rows of
#: ``zulip_registrations``, counted in the 100,000.  APNs users with one device fill the
#: rest (30,000).
ZULIP_USERS = 1_000
#: The one-round check of a Zulip notify to 10 devices (``zulip_fanout.py``) ends by
#: itself within 60 s; this is the runner's backstop.
FANOUT_CHECK_TIMEOUT = 90.0
#: How long a child may take to start serving.
START_TIMEOUT = 30.0
#: How long a child may take to exit after its stdin closes, before it is killed.
STOP_TIMEOUT = 10.0
#: The RSA exponent every service-account key has.
RSA_PUBLIC_EXPONENT = 65537
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
HTTP_OK = 200
KIB_PER_MB = 1024


@attrs.frozen
class PeerFigure:
    """A figure from the protocol notes, for comparison; not measured by this benchmark."""

    per_second: float
    concurrency: int | None
    p50_ms: float
    p99_ms: float | None
    cpu_ms: float | None


#: Sygnal 0.17.0 on a 2-core machine like ours, against a Node HTTP/2 APNs look-alike on
#: loopback (``/work/shared/protocols/apns-fcm-and-peers.md`` §3.8), by devices per
#: request.  The notes give no p99 and no CPU for 4 devices, and do not say the 4-device
#: concurrency (the 1-device figures are at 64).
SYGNAL = {
    1: PeerFigure(per_second=1_500, concurrency=64, p50_ms=40, p99_ms=67, cpu_ms=0.66),
    MATRIX_FANOUT_DEVICES: PeerFigure(
        per_second=2_100, concurrency=None, p50_ms=117, p99_ms=None, cpu_ms=None
    ),
}
SYGNAL_SOURCE = "/work/shared/protocols/apns-fcm-and-peers.md section 3.8"
#: The Matrix rows' concurrency that Sygnal's figures are given at.
SYGNAL_CONCURRENCY = 64


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
    """A whole benchmark: unmeasured warm-ups, then the measured scenarios in order."""

    warmups: tuple[Scenario, ...]
    scenarios: tuple[Scenario, ...]


#: Baselines run next to the sends of the same concurrency, so the machine's state is alike;
#: so do the Mattermost sends, which are compared with both (one APNs device a request).
#: FCM costs about 50 times more CPU per notification than APNs, in pushd (httpx) and in
#: the simulator (hypercorn) alike, so its runs send far fewer notifications: a few
#: thousand each, enough for a steady window of several seconds.  Every FCM scenario has
#: at most 400 sends in flight (4 x 100), so pushd's two httpx connections (200 streams)
#: are busy and no send waits anywhere near pushd's 10 s first-attempt deadline.
#: The Matrix runs come last, as one block: RSS is a high-water mark, and theirs rises
#: far more than the other rows' (the 256-concurrency runs: 256 connections and up to
#: 1,024 deliveries in flight, about 20-25 MB that pushd's allocator keeps; and the
#: dedupe of every event sent within ``[matrix] dedupe_seconds``, about 5-7 MB after
#: 60,000), so any row after them would show that memory too.  Their requests give
#: windows of several seconds at
#: about 800 (1 device) and 1,800 (4 devices) notifications/s; at 256 there are more, so
#: that connection set-up and the last requests' drain weigh less on the window.
MATRIX_REQUESTS = 6000
MATRIX_4_REQUESTS = 3000
MATRIX_256_REQUESTS = 10000
MATRIX_4_256_REQUESTS = 5000
FULL = Plan(
    warmups=(Scenario("one", 16, 2000, 5, 15.0), Scenario("fcm-one", 16, 300, 5, 15.0)),
    scenarios=(
        Scenario("empty", 16, 12000, 5, 20.0),
        Scenario("one", 16, 9000, 5, 20.0),
        Scenario("mattermost", 16, 9000, 5, 20.0),
        Scenario("empty", 64, 12000, 5, 20.0),
        Scenario("one", 64, 9000, 5, 20.0),
        Scenario("mattermost", 64, 9000, 5, 20.0),
        Scenario("hundred", 4, 300, 2, 20.0),
        Scenario("hundred", 16, 300, 2, 20.0),
        Scenario("fcm-one", 16, 3000, 5, 20.0),
        Scenario("fcm-hundred", 4, 50, 1, 20.0),
        Scenario("mixed", 4, 100, 1, 20.0),
        Scenario("zulip", 4, 2000, 2, 20.0),
        Scenario("zulip", 16, 2000, 2, 20.0),
        Scenario("matrix", 16, MATRIX_REQUESTS, 5, 20.0),
        Scenario("matrix-4", 16, MATRIX_4_REQUESTS, 5, 20.0),
        Scenario("matrix", 64, MATRIX_REQUESTS, 5, 20.0),
        Scenario("matrix-4", 64, MATRIX_4_REQUESTS, 5, 20.0),
        Scenario("matrix", 256, MATRIX_256_REQUESTS, 3, 20.0),
        Scenario("matrix-4", 256, MATRIX_4_256_REQUESTS, 3, 20.0),
    ),
)
#: Windows well under a second: proves the benchmark works, the numbers mean little.
QUICK = Plan(
    warmups=(Scenario("one", 4, 100, 2, 5.0), Scenario("fcm-one", 4, 20, 2, 5.0)),
    scenarios=(
        Scenario("empty", 16, 500, 2, 5.0),
        Scenario("one", 16, 500, 2, 5.0),
        Scenario("mattermost", 16, 500, 2, 5.0),
        Scenario("hundred", 4, 20, 1, 5.0),
        Scenario("fcm-one", 16, 100, 1, 5.0),
        Scenario("fcm-hundred", 2, 4, 1, 5.0),
        Scenario("mixed", 2, 4, 1, 5.0),
        Scenario("zulip", 4, 40, 1, 5.0),
        Scenario("matrix", 16, 500, 2, 5.0),
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


def write_public_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    """The public half of the service-account key, for the FCM simulator to trust."""
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def check_zulip_fanout() -> str:
    """Run ``zulip_fanout.py``: one notify to 10 delayed devices must take one delay.

    It needs an APNs simulator scripted in its own process, so it is not a load-driver
    scenario; a failure stops the benchmark, because the Zulip rows would then measure
    a pushd that sends a user's devices one by one.
    """
    argv = [PYTHON, str(HERE / "zulip_fanout.py")]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=FANOUT_CHECK_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise BenchmarkError(
            f"Zulip fan-out check failed ({done.returncode}):\n{done.stdout}{done.stderr[-3000:]}"
        )
    return done.stdout.strip()


def apns_answers(log_path: Path) -> dict[str, int]:
    """The APNs simulator's answers by status, from the line it logs as it exits."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith(ANSWERS_PREFIX):
            answers: dict[str, int] = json.loads(line[len(ANSWERS_PREFIX) :])
            return answers
    raise BenchmarkError(f"the APNs simulator logged no answers line in {log_path}")


def check_apns_count(log_path: Path, sent: int) -> str:
    """The simulator must have answered exactly the drivers' APNs notifications, all 200.

    A notify's answer cannot show every delivery (a Zulip notify counts the user's
    devices before sending), so this is what proves that every notification of every
    run, warm-ups included, reached the APNs simulator once: no fewer (a device
    skipped), no more (a retry, or a device sent twice), and no error status.
    """
    answers = apns_answers(log_path)
    if answers != {str(HTTP_OK): sent}:
        raise BenchmarkError(
            f"the APNs simulator answered {answers}, the drivers sent {sent} APNs notifications"
        )
    return f"the APNs simulator answered {sent:,} notifications, all 200, as the drivers sent"


def drive(
    scenario: Scenario, port: int, population: Population, pids: dict[str, int]
) -> dict[str, Any]:
    """Run the load driver once and return its JSON report (raises on any failure)."""
    mode = MODES[scenario.mode]
    # Nothing stored (Mattermost, Matrix): the driver cycles through its own devices.
    if mode.user_prefix is not None:
        users = population.users(mode.user_prefix)
    else:
        users = MATRIX_DEVICES if mode.matrix else MATTERMOST_DEVICES
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
    #: The FCM simulator's CPU-ms per FCM send; None when the scenario sends to no FCM device.
    fcm_sim_cpu_ms: float | None
    #: Share of one core each process used during the window.
    cores: dict[str, float]
    peak_rss_mb: float

    @property
    def contended(self) -> bool:
        return self.cores[OTHER] >= CONTENDED_OTHER_SHARE

    @classmethod
    def from_report(cls, scenario: Scenario, report: dict[str, Any], peak_kib: int) -> Row:
        units = report["notifications"] or report["requests"]
        fcm_sends = report["fcm_notifications"]
        cpu = report["cpu_seconds"]
        elapsed = report["elapsed"]
        ours = sum(cpu[role] for role in PROCESSES)
        return cls(
            scenario=scenario,
            requests=report["requests"],
            per_second=units / elapsed,
            p50_ms=report["p50_ms"],
            p99_ms=report["p99_ms"],
            pushd_cpu_ms=cpu[PUSHD] * 1000 / units,
            fcm_sim_cpu_ms=cpu[FCM_SIM] * 1000 / fcm_sends if fcm_sends else None,
            cores={role: seconds / elapsed for role, seconds in cpu.items()}
            # clock ticks can make the difference slightly negative
            | {OTHER: max(0.0, cpu[MACHINE] - ours) / elapsed},
            peak_rss_mb=peak_kib / KIB_PER_MB,
        )


#: The processes whose CPU the table shows, in its column order.
PROCESSES = (PUSHD, APNS_SIM, FCM_SIM, DRIVER)
#: Machine CPU used by anything but those processes (kernel softirqs, other tasks).
OTHER = "other"
LABELS = {
    "empty": "empty endpoint",
    "one": "APNs 1 device/request",
    "hundred": "APNs 100 devices/req",
    "fcm-one": "FCM 1 device/request",
    "fcm-hundred": "FCM 100 devices/req",
    "mixed": f"mixed {MIXED_APNS_DEVICES} APNs+{MIXED_FCM_DEVICES} FCM",
    "zulip": f"Zulip notify, {ZULIP_DEVICES} devices",
    "mattermost": "Mattermost send_push, 1 device",
    "matrix": "Matrix notify, 1 device",
    "matrix-4": f"Matrix notify, {MATRIX_FANOUT_DEVICES} devices",
}
LABEL_WIDTH = max(len(label) for label in LABELS.values())
COLUMN_TITLES = {PUSHD: "pushd", APNS_SIM: "apnsim", FCM_SIM: "fcmsim", DRIVER: "driver"}
HEADER = (
    f"{'scenario':<{LABEL_WIDTH}} {'conc':>4} {'requests':>8} {'notif/s':>8} {'p50 ms':>7}"
    f" {'p99 ms':>7} {'CPU-ms/n':>8}"
    + "".join(f" {COLUMN_TITLES[role]:>6}" for role in PROCESSES)
    + f" {'other':>6} {'steal':>6} {'RSS MB':>7}"
)


def format_row(row: Row) -> str:
    rate = f"{row.per_second:,.0f}" + ("*" if row.scenario.mode == "empty" else "")
    return (
        f"{LABELS[row.scenario.mode]:<{LABEL_WIDTH}} {row.scenario.concurrency:>4}"
        f" {row.requests:>8} {rate:>8} {row.p50_ms:>7.1f} {row.p99_ms:>7.1f}"
        f" {row.pushd_cpu_ms:>8.3f}"
        + "".join(f" {row.cores[role]:>6.0%}" for role in PROCESSES)
        + f" {row.cores[OTHER]:>6.0%} {row.cores[STEAL]:>6.0%}"
        f" {row.peak_rss_mb:>7.1f}" + ("  !" if row.contended else "")
    )


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def sends_no_fcm(row: Row) -> bool:
    return row.fcm_sim_cpu_ms is None


def not_matrix(row: Row) -> bool:
    return not MODES[row.scenario.mode].matrix


def print_report(
    rows: list[Row], population: Population, startup_rss_mb: float, quick: bool
) -> None:
    print()
    if quick:
        print("QUICK RUN: windows too short for the numbers to mean much; use the full run.")
    print(
        f"pushd native API, Zulip bouncer, Mattermost push proxy and Matrix push gateway,"
        f" {population.registrations:,} registrations"
        f" stored: APNs {population.single_users:,} one-device users, {population.fanout_users}"
        f" users x {FANOUT_DEVICES} devices;\nFCM {population.fcm_single_users:,} one-device"
        f" users, {population.fcm_fanout_users} users x {FANOUT_DEVICES} devices;"
        f" {population.mixed_users} users x ({MIXED_APNS_DEVICES} APNs + {MIXED_FCM_DEVICES}"
        f" FCM devices);\nZulip: 1 server, {population.zulip_users:,} users x {ZULIP_DEVICES}"
        " legacy APNs registrations (push/notify, HTTP Basic);\nMattermost: 1 server"
        f" (secret path), send_push to {MATTERMOST_DEVICES:,} APNs tokens in turn, nothing"
        f" stored;\nMatrix: notify as Synapse sends it, to {MATRIX_DEVICES:,} APNs pushers in"
        f" turn (1 or {MATRIX_FANOUT_DEVICES} per request), a fresh event_id per request,"
        " nothing stored.\nLoopback. APNs simulator"
        " upstream through pushd's h2 pool, 2 connections; FCM simulator upstream through"
        " httpx, 2 clients of 1 connection x 100 streams."
    )
    print(
        f"{os.cpu_count()} CPUs shared by pushd, both simulators and the driver; nothing"
        f" pinned. pushd RSS after start-up: {startup_rss_mb:.1f} MB."
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
        "pushd/apnsim/fcmsim/driver: share of one core each process used during the window"
        " (200% = both cores):\npushd, the APNs simulator, the FCM simulator, the load driver;"
        " other: the rest of the machine's busy CPU (kernel, other tasks); steal: CPU"
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
    # The column is a high-water mark, so the last row before any FCM send shows what the
    # APNs-only part of the run reached; FCM's sends in flight (httpx) add to that.
    before_fcm = [row.peak_rss_mb for row in itertools.takewhile(sends_no_fcm, rows)]
    apns_only = f", {before_fcm[-1]:.1f} MB before the first FCM row" if before_fcm else ""
    # The Matrix rows come last; their dedupe memory is part of the peak, shown apart.
    before_matrix = [row.peak_rss_mb for row in itertools.takewhile(not_matrix, rows)]
    if before_matrix and len(before_matrix) < len(rows):
        apns_only += f", {before_matrix[-1]:.1f} MB before the first Matrix row"
    print(
        f"  peak RSS {peak:.1f} MB{apns_only}; {population.registrations:,} registrations"
        f" ({population.fcm_registrations:,} of them FCM);"
        f" goal < {GOAL_PEAK_RSS_MB:.0f} MB: {verdict(peak < GOAL_PEAK_RSS_MB)}"
    )
    print()
    print_by_upstream(rows, suspect)
    print()
    print_matrix_vs_sygnal(rows, suspect)
    print()
    print("Who set the pace (a process at >= 90% of a core, or the machine >= 90% busy):")
    for row in rows:
        busy = row.cores[MACHINE] + row.cores[STEAL]
        hot = [ROLE_NAMES[role] for role in PROCESSES if row.cores[role] >= SATURATED_CORE_SHARE]
        if hot:
            limit = " and ".join(hot) + " saturated one core"
        elif busy >= (os.cpu_count() or 1) * SATURATED_CORE_SHARE:
            limit = f"the machine: {busy:.0%} of {os.cpu_count()} cores busy"
        else:
            limit = f"no process saturated ({busy:.0%} of one core busy or stolen): waiting"
        print(
            f"  {LABELS[row.scenario.mode]:<{LABEL_WIDTH}} x{row.scenario.concurrency:<3} {limit}"
        )


#: How the pace report names each process.
ROLE_NAMES = {
    PUSHD: "pushd",
    APNS_SIM: "the APNs simulator",
    FCM_SIM: "the FCM simulator",
    DRIVER: "the driver",
}
#: Send scenarios in the order the per-upstream summary lists them.
UPSTREAM_MODES = (
    "one",
    "mattermost",
    "matrix",
    "matrix-4",
    "hundred",
    "zulip",
    "fcm-one",
    "fcm-hundred",
    "mixed",
)


def print_by_upstream(rows: list[Row], suspect: Callable[..., str]) -> None:
    """pushd's CPU per notification for each upstream, and what a mixed send adds.

    The FCM rows also give the FCM simulator's CPU per send: it is the largest CPU user
    in those rows, which is why they cannot reach APNs-like rates on this machine.  A
    mixed send is compared with the blend of the single-upstream 100-device rows at the
    same concurrency: if pushd handled both kinds in one request no worse than apart, the
    mixed row costs what the blend predicts.
    """
    print("CPU-ms per notification by upstream (pushd's; FCM rows add the FCM simulator's):")
    by_key = {(r.scenario.mode, r.scenario.concurrency): r for r in rows}
    ordered = sorted(
        (r for r in rows if r.scenario.mode in UPSTREAM_MODES),
        key=lambda r: UPSTREAM_MODES.index(r.scenario.mode),
    )
    for row in ordered:
        extra = ""
        if row.fcm_sim_cpu_ms is not None:
            extra = f"; FCM simulator {row.fcm_sim_cpu_ms:.3f} CPU-ms per FCM send"
        print(
            f"  {LABELS[row.scenario.mode]:<{LABEL_WIDTH}} x{row.scenario.concurrency:<3}"
            f" pushd {row.pushd_cpu_ms:.3f}{extra}{suspect(row)}"
        )
        if row.scenario.mode in ("mattermost", "matrix", "matrix-4"):
            print_front_end_comparison(row, by_key, suspect)
        if row.scenario.mode != "mixed":
            continue
        apns = by_key.get(("hundred", row.scenario.concurrency))
        fcm = by_key.get(("fcm-hundred", row.scenario.concurrency))
        if apns is None or fcm is None:
            continue
        blend = (
            apns.pushd_cpu_ms * MIXED_APNS_DEVICES + fcm.pushd_cpu_ms * MIXED_FCM_DEVICES
        ) / FANOUT_DEVICES
        print(
            f"    {MIXED_APNS_DEVICES} x APNs 100-device + {MIXED_FCM_DEVICES} x FCM 100-device"
            f" rows at x{row.scenario.concurrency} predict {blend:.3f}: mixing in one request"
            f" costs {row.pushd_cpu_ms - blend:+.3f} CPU-ms/notification{suspect(row, apns, fcm)}"
        )


def print_front_end_comparison(
    row: Row, by_key: dict[tuple[str, int], Row], suspect: Callable[..., str]
) -> None:
    """A chat front end's send against the empty endpoint and the native 1-device send.

    A Mattermost send and a 1-device Matrix notify carry one APNs notification per
    request, as the native 1-device send at the same concurrency does, so the difference
    is what that front end costs over the native one (for Mattermost its body parse,
    secret check, throttle, payload build and per-push log line; for Matrix its body
    parse, app match, late-verdict lookup, dedupe and Sygnal-compatible payload), and
    the difference to the empty endpoint is pushd's own work, as in the goals.  A
    4-device notify is one request for 4 notifications: the empty endpoint's cost per
    request is shared among them, and the native send is not comparable.
    """
    concurrency = row.scenario.concurrency
    devices = MODES[row.scenario.mode].devices
    base = by_key.get(("empty", concurrency))
    native = by_key.get(("one", concurrency)) if devices == 1 else None
    if base is not None:
        share = base.pushd_cpu_ms / devices
        per = "" if devices == 1 else f" / {devices} devices = {share:.3f}"
        print(
            f"    minus the empty endpoint at x{concurrency} ({base.pushd_cpu_ms:.3f}{per}):"
            f" pushd's own work {row.pushd_cpu_ms - share:.3f}"
            f" CPU-ms/notification{suspect(row, base)}"
        )
    if native is not None:
        print(
            f"    against the native APNs 1-device send at x{concurrency}"
            f" ({native.pushd_cpu_ms:.3f}): {row.pushd_cpu_ms - native.pushd_cpu_ms:+.3f}"
            f" CPU-ms/notification{suspect(row, native)}"
        )


def print_matrix_vs_sygnal(rows: list[Row], suspect: Callable[..., str]) -> None:
    """pushd's Matrix rows beside Sygnal's figures from the protocol notes.

    Sygnal's numbers are quoted, not measured here: they come from the notes (Sygnal
    0.17.0 on a similar 2-core machine, against a Node APNs look-alike), so only large
    differences mean anything.  The request is the same: a Synapse notify to 1 or 4
    APNs devices.
    """
    matrix = [r for r in rows if MODES[r.scenario.mode].matrix]
    if not matrix:
        return
    print(
        f"Matrix vs Sygnal (Sygnal's figures are quoted from {SYGNAL_SOURCE},"
        " NOT measured here;\nSygnal 0.17.0 on a similar 2-core machine against a Node HTTP/2"
        " APNs look-alike; pushd's are this run's rows):"
    )
    for devices in sorted({MODES[r.scenario.mode].devices for r in matrix}):
        ours = sorted(
            (r for r in matrix if MODES[r.scenario.mode].devices == devices),
            key=lambda r: r.scenario.concurrency,
        )
        peer = SYGNAL.get(devices)
        noun = "device" if devices == 1 else "devices"
        print(f"  {devices} {noun} per request:")
        if peer is not None:
            at = f"x{peer.concurrency}" if peer.concurrency else "concurrency not stated"
            p99 = f"{peer.p99_ms:.0f}" if peer.p99_ms is not None else "n/a"
            cpu = f"{peer.cpu_ms:.2f}" if peer.cpu_ms is not None else "n/a"
            print(
                f"    Sygnal (notes), {at:<22} {peer.per_second:>6,.0f} notif/s"
                f"  p50 {peer.p50_ms:>5.0f} ms  p99 {p99:>5} ms  CPU-ms/n {cpu}"
            )
        for row in ours:
            vs = ""
            if peer is not None and row.scenario.concurrency == SYGNAL_CONCURRENCY:
                ratios = [f"{row.per_second / peer.per_second:.1f}x the notif/s"]
                ratios.append(f"{row.p50_ms / peer.p50_ms:.2f}x the p50")
                if peer.p99_ms is not None:
                    ratios.append(f"{row.p99_ms / peer.p99_ms:.2f}x the p99")
                if peer.cpu_ms is not None:
                    ratios.append(f"{row.pushd_cpu_ms / peer.cpu_ms:.2f}x the CPU-ms/n")
                vs = f"\n      = {', '.join(ratios)} of Sygnal's"
            print(
                f"    pushd (measured), x{row.scenario.concurrency:<20} {row.per_second:>6,.0f}"
                f" notif/s  p50 {row.p50_ms:>5.1f} ms  p99 {row.p99_ms:>5.1f} ms"
                f"  CPU-ms/n {row.pushd_cpu_ms:.3f}{suspect(row)}{vs}"
            )
    before = [row.peak_rss_mb for row in itertools.takewhile(not_matrix, rows)]
    start = f" from {before[-1]:.1f} MB before the first Matrix row" if before else ""
    print(
        f"  pushd peak RSS{start} to {matrix[-1].peak_rss_mb:.1f} MB after the last"
        " (a high-water mark; it includes the dedupe's remembered event ids).\n"
        "  The notes give no RSS for Sygnal."
    )


def print_profile(path: Path) -> None:
    print()
    print(
        f"cProfile of pushd during the APNs 100-device runs, top {PROFILE_TOP} by tottime"
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
        fanout = check_zulip_fanout()
        print(fanout, flush=True)
        store = workdir / "pushd.sqlite3"
        population = populate(
            str(store),
            REGISTRATIONS,
            FANOUT_USERS,
            fcm_single_users=FCM_SINGLE_USERS,
            fcm_fanout_users=FCM_FANOUT_USERS,
            mixed_users=MIXED_USERS,
            zulip_users=ZULIP_USERS,
        )
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
        # The simulator trusts the key before it starts; the service account can only be
        # written once it listens, because its token_uri names the simulator's port.
        account_key = rsa.generate_private_key(
            public_exponent=RSA_PUBLIC_EXPONENT, key_size=SERVICE_ACCOUNT_KEY_BITS
        )
        fcm_ca_file = workdir / "fcm-simulator-ca.pem"
        fcm_simulator = stack.enter_context(
            running(
                Child(
                    "fcm simulator",
                    [
                        PYTHON,
                        str(HERE / "fcm_simulator.py"),
                        f"--ca-out={fcm_ca_file}",
                        f"--public-key={write_public_key(account_key, workdir / 'fcm-key.pub')}",
                    ],
                    workdir / "fcm-simulator.log",
                )
            )
        )
        fcm_port = int(fcm_simulator.wait_ready())
        service_account = workdir / "fcm-service-account.json"
        make_service_account(
            service_account,
            FCM_PROJECT,
            f"https://127.0.0.1:{fcm_port}/token",
            FCM_CLIENT_EMAIL,
            key=account_key,
        )
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
                        f"--fcm-upstream-port={fcm_port}",
                        f"--fcm-ca-file={fcm_ca_file}",
                        f"--fcm-service-account={service_account}",
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
        pids = {PUSHD: pushd.pid, APNS_SIM: simulator.pid, FCM_SIM: fcm_simulator.pid}
        try:
            print(
                f"pushd at {url}, APNs simulator on port {upstream_port}, FCM simulator on"
                f" port {fcm_port}; warming up",
                flush=True,
            )
            apns_sent = 0
            for warmup in plan.warmups:
                apns_sent += drive(warmup, port, population, pids)["apns_sent"]
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
                apns_sent += report["apns_sent"]
                if profiling:
                    os.kill(pushd.pid, signal.SIGUSR2)
                rows.append(Row.from_report(scenario, report, status_kib(pushd.pid, "VmHWM")))
        except BenchmarkError as error:
            raise BenchmarkError(
                f"{error}{pushd.tail()}{simulator.tail()}{fcm_simulator.tail()}"
            ) from None
        pushd.stop()
        simulator.stop()
        fcm_simulator.stop()
        apns_count = check_apns_count(simulator.log_path, apns_sent)
        print_report(rows, population, startup_rss_mb, plan is QUICK)
        print(f"\nOne round of concurrent sends: {fanout}")
        print(f"Count check: {apns_count}")
        print(f"\nwhole run: {time.monotonic() - started:.0f} s")
        if profile:
            print_profile(profile_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run: does it still work?")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile pushd during the APNs 100-device runs"
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
