"""The benchmark's report: the table, the goals, the per-upstream figures, Sygnal.

Split from ``run.py``; it only prints :class:`rows.Row` values.
"""

from __future__ import annotations

import itertools
import os
import pstats
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
from common import (
    APNS_SIM,
    DRIVER,
    FANOUT_DEVICES,
    FCM_SIM,
    FLOOR,
    MACHINE,
    MATRIX_DEVICES,
    MATRIX_FANOUT_DEVICES,
    MATTERMOST_DEVICES,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    PUSHD,
    SIMULATOR,
    STEAL,
    UPSTREAMS,
    ZULIP_DEVICES,
)
from load import MODES
from populate import Population
from rows import (
    CONTENDED_OTHER_SHARE,
    HEADER,
    LABEL_WIDTH,
    LABELS,
    PROCESSES,
    Row,
    format_row,
    not_matrix,
    sends_no_fcm,
    verdict,
)

#: The issue's goals.
GOAL_FANOUT_CPU_MS = 0.10
GOAL_OWN_WORK_CPU_MS = 0.15
GOAL_PEAK_RSS_MB = 80.0
#: A process using at least this share of one core is treated as saturated.
SATURATED_CORE_SHARE = 0.90
PROFILE_TOP = 15


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


def print_report(
    rows: list[Row],
    population: Population,
    startup_rss_mb: float,
    quick: bool,
    upstream: str = SIMULATOR,
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
        f" nothing stored.\nLoopback. APNs upstream {UPSTREAMS[upstream]}"
        " through pushd's h2 pool, 2 connections; FCM simulator upstream through"
        " httpx, 2 clients of 1 connection x 100 streams."
    )
    print(
        f"{os.cpu_count()} CPUs shared by pushd, the floor, both simulators and the driver; nothing"
        f" pinned. pushd RSS after start-up: {startup_rss_mb:.1f} MB."
    )
    print()
    print(HEADER)
    print("-" * len(HEADER))
    for row in rows:
        print(format_row(row))
    print()
    print(
        "CPU-ms/n: pushd CPU milliseconds per notification (= CPU seconds per 1,000), the"
        " floor's in floor rows; * = requests/s, CPU per request.\n"
        "xfloor: CPU-ms/n over the floor's CPU-ms per request at the same concurrency (the"
        " mean of the floor rows before and after the round): the figure to compare across"
        " runs.\n"
        "pushd/floor/apnsim/fcmsim/driver: share of one core each process used during the"
        " window (200% = both cores):\npushd, the floor server, the APNs simulator, the FCM"
        " simulator, the load driver;"
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
    FLOOR: "the floor",
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


def print_profile(path: Path, mode: str) -> None:
    print()
    print(
        f"cProfile of pushd during the {LABELS[mode]} runs, top {PROFILE_TOP} by tottime"
        " (profiling slows pushd: the table's CPU numbers above are inflated):"
    )
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(PROFILE_TOP)
