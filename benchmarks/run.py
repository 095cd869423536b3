"""Benchmark pushd's native send API: throughput, latency, CPU per notification, peak RSS.

    .venv/bin/python benchmarks/run.py            # the full run, about 3-4 minutes
    .venv/bin/python benchmarks/run.py --quick    # a few seconds: does it still work?
    .venv/bin/python benchmarks/run.py --profile  # + cProfile of the APNs 100-device runs
    .venv/bin/python benchmarks/run.py --profile=fcm-hundred  # ... of another mode's

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
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import attrs
import inside
from children import (
    RSA_PUBLIC_EXPONENT,
    BenchmarkError,
    Child,
    check_apns_count,
    check_zulip_fanout,
    drive,
    running,
    write_provider_key,
    write_public_key,
)
from common import (
    APNS_SIM,
    FCM_CLIENT_EMAIL,
    FCM_PROJECT,
    FCM_SIM,
    FLOOR,
    PUSHD,
    SIMULATOR,
    UPSTREAMS,
    placement,
    status_kib,
)
from cryptography.hazmat.primitives.asymmetric import rsa
from latency import print_latency
from load import MODES
from plans import PLANS, QUICK
from populate import Population, populate
from report import print_profile, print_report
from rows import KIB_PER_MB, LABELS, Plan, Row, Scenario
from summary import attach_floor, print_rounds, print_where

from pushd.simulators.fcm import SERVICE_ACCOUNT_KEY_BITS, make_service_account

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


def measure_round(
    plan: Plan,
    round: int,
    ports: dict[str, int],
    population: Population,
    pids: dict[str, int],
    *,
    profile: str | None,
    capacity: float | None = None,
) -> tuple[list[Row], int]:
    """One round: the floor at each concurrency, ``plan``'s scenarios, the floor again.

    Returns the round's rows (each send row given the mean of its concurrency's two
    floor rows) and the APNs notifications its drivers sent.
    """
    apns_sent = 0

    def one(scenario: Scenario) -> Row:
        nonlocal apns_sent
        rate = "" if scenario.rate is None else f" at {scenario.rate:,.0f}/s (open loop)"
        print(
            f"  r{round} {LABELS[scenario.mode]} x{scenario.concurrency}:"
            f" {scenario.requests} requests{rate}",
            flush=True,
        )
        profiling = scenario.mode == profile
        ours = scenario.server == PUSHD  # its driver starts pushd's timings when warm
        if profiling:
            os.kill(pids[PUSHD], signal.SIGUSR1)
        report = drive(scenario, ports[scenario.server], population, pids)
        apns_sent += report["apns_sent"]
        if profiling:
            os.kill(pids[PUSHD], signal.SIGUSR2)
        row = Row.from_report(scenario, report, status_kib(pids[PUSHD], "VmHWM"), round)
        return attrs.evolve(row, inside=inside.take(ports[PUSHD])) if ours else row

    before = [one(s) for s in plan.floor_scenarios()]
    measured = []
    for scenario in plan.scenarios:
        measured.append(one(scenario))
        found = measured[-1].per_second / max(1, MODES[scenario.mode].devices)
        measured += [one(s) for s in plan.open_loop(scenario, capacity or found)]
    after = [one(s) for s in plan.floor_scenarios()]
    return [*before, *attach_floor(measured, before, after), *after], apns_sent


def run(
    plan: Plan,
    profile: str | None,
    keep: Path | None = None,
    rounds: int = 1,
    upstream: str = SIMULATOR,
    capacity: float | None = None,
) -> None:
    """Run ``plan`` ``rounds`` times against one pushd and print the report; with
    ``keep``, work there and leave the logs; ``upstream`` names the APNs upstream
    (:data:`common.UPSTREAMS`); ``capacity``, when given, is what the open-loop rows
    take shares of, in place of what each closed-loop row measured."""
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
                    [PYTHON, str(HERE / UPSTREAMS[upstream]), f"--ca-out={ca_file}"],
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
        floor = stack.enter_context(
            running(Child("floor", [PYTHON, str(HERE / "floor.py")], workdir / "floor.log"))
        )
        ports = {PUSHD: port, FLOOR: int(floor.wait_ready())}
        pids = {
            PUSHD: pushd.pid,
            FLOOR: floor.pid,
            APNS_SIM: simulator.pid,
            FCM_SIM: fcm_simulator.pid,
        }
        processes = {
            "pushd": f"pushd_under_test.py, {placement(pushd.pid)}",
            "floor": f"floor.py, {placement(floor.pid)}",
            "APNs simulator": f"{UPSTREAMS[upstream]}, {placement(simulator.pid)}",
            "FCM simulator": f"fcm_simulator.py, {placement(fcm_simulator.pid)}",
        }
        try:
            print(
                f"pushd at {url}, floor on port {ports[FLOOR]}, APNs simulator on port"
                f" {upstream_port}, FCM simulator on port {fcm_port}; warming up",
                flush=True,
            )
            apns_sent = 0
            for warmup in plan.warmups:
                apns_sent += drive(warmup, port, population, pids)["apns_sent"]
            rows: list[Row] = []
            for round in range(1, rounds + 1):
                measured, sent = measure_round(
                    plan, round, ports, population, pids, profile=profile, capacity=capacity
                )
                rows += measured
                apns_sent += sent
        except BenchmarkError as error:
            raise BenchmarkError(
                f"{error}{pushd.tail()}{floor.tail()}{simulator.tail()}{fcm_simulator.tail()}"
            ) from None
        floor.stop()
        pushd.stop()
        simulator.stop()
        fcm_simulator.stop()
        apns_count = check_apns_count(simulator.log_path, apns_sent)
        closed = [row for row in rows if row.open_loop is None]
        print_report(closed, population, startup_rss_mb, plan is QUICK, upstream)
        print()
        print_where(rows, processes)
        print()
        print_rounds(closed)
        if len(closed) < len(rows):
            print()
            print_latency(rows)
        print(f"\nOne round of concurrent sends: {fanout}")
        print(f"Count check: {apns_count}")
        print(f"\nwhole run: {time.monotonic() - started:.0f} s")
        if profile:
            print_profile(profile_path, profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run: does it still work?")
    parser.add_argument(
        "--plan",
        choices=sorted(PLANS),
        default="full",
        help="which scenarios: all (full), issue 15's (serving), open-loop p99 (latency),"
        " a tiny check (quick)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the plan this many times (with its floor) and report medians and ranges",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="hundred",
        choices=sorted(MODES),
        metavar="MODE",
        help="cProfile pushd during the runs of MODE (default: hundred, APNs 100 devices)",
    )
    parser.add_argument(
        "--upstream",
        choices=sorted(UPSTREAMS),
        default=SIMULATOR,
        help="the APNs upstream: the simulator (judges every request) or lean_apns.py"
        " (answers 200 for a few CPU-us, so it takes no core from pushd)",
    )
    parser.add_argument(
        "--capacity",
        type=float,
        metavar="N",
        help="open-loop rows offer shares of N requests/s instead of the capacity the"
        " closed-loop row just measured: the same rates in runs to be compared",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in this new directory and keep it (store, logs, profile)",
    )
    args = parser.parse_args(argv)
    try:
        run(
            QUICK if args.quick else PLANS[args.plan],
            args.profile,
            args.keep,
            args.rounds,
            args.upstream,
            args.capacity,
        )
    except BenchmarkError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
