"""The open-loop part of the report (``run.py --plan latency``): latency at an offered load.

A closed-loop row at 64 connections measures capacity; its latency is mostly the queue
the driver builds itself at saturation (Little's law: mean latency = 64 / rate), so it
says little about what one request meets in a gateway that is not saturated.  The
open-loop rows offer a fixed rate, a share of the closed-loop capacity measured just
before them, and time every request from when it was due (see ``load.py``): these are
the figures to judge a gateway's tail by.  The floor is offered the native rows' rates,
so the part of the tail that the machine (driver, simulator, scheduler) adds at that
rate shows beside pushd's.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from common import APNS_SIM, DRIVER, FLOOR, PUSHD
from rows import LABEL_WIDTH, LABELS, OTHER, Row

#: Issue 15's target for one device a request at 64 concurrent requests.
GOAL_P99_MS = 20.0


def load_label(row: Row) -> str:
    """``closed`` for a capacity row, else the share of capacity offered (``50%``)."""
    fraction = row.scenario.load_fraction
    return "closed" if fraction is None else f"{fraction:.0%}"


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``median (min-max)``, or the one value."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _inside(row: Row) -> str:
    """pushd's own p99 of handler and upstream time, ``-`` where it has none."""
    inside = row.inside
    values = (None, None) if inside is None else (inside.handler_p99_ms, inside.upstream_p99_ms)
    return " ".join(f"{'-' if value is None else f'{value:.1f}':>6}" for value in values)


def print_latency(rows: Sequence[Row]) -> None:
    """Every row of a latency plan, then each scenario's medians over the rounds."""
    print(
        "Latency at an offered load (open loop, 64 connections, never more in flight;\n"
        "latency from each request's due time, so a wait for a free connection counts):"
    )
    print(
        f"  {'rnd':<3} {'scenario':<{LABEL_WIDTH}} {'load':>6} {'offered':>7} {'got/s':>7}"
        f" {'late':>5} {'p50':>6} {'p90':>6} {'p99':>6} {'p99.9':>6} {'max':>6}"
        f" {'CPU-ms/n':>8} {'server':>6} {'apnsim':>6} {'driver':>6} {'other':>6}"
        f" {'rq srv':>6} {'rq drv':>6} {'in p99':>6} {'up p99':>6}"
    )
    for row in rows:
        loop = row.open_loop
        server = FLOOR if row.scenario.server == FLOOR else PUSHD
        served = row.cores[server]
        wait = " ".join(
            f"{'-' if row.run_queue.get(role) is None else f'{row.run_queue[role]:.0%}':>6}"
            for role in (server, DRIVER)
        )
        if loop is None:
            rates = f"{'-':>7} {row.per_second:>7,.0f} {'-':>5}"
            tail = f"{row.p50_ms:>6.1f} {'-':>6} {row.p99_ms:>6.1f} {'-':>6} {'-':>6}"
        else:
            rates = f"{loop.rate:>7,.0f} {loop.achieved_rate:>7,.0f} {loop.late:>5}"
            tail = (
                f"{row.p50_ms:>6.1f} {loop.p90_ms:>6.1f} {row.p99_ms:>6.1f}"
                f" {loop.p999_ms:>6.1f} {loop.max_ms:>6.1f}"
            )
        print(
            f"  r{row.round:<2} {LABELS[row.scenario.mode]:<{LABEL_WIDTH}} {load_label(row):>6}"
            f" {rates} {tail} {row.pushd_cpu_ms:>8.3f} {served:>6.0%}"
            f" {row.cores[APNS_SIM]:>6.0%} {row.cores[DRIVER]:>6.0%} {row.cores[OTHER]:>6.0%}"
            f" {wait} {_inside(row)}"
        )
    print(
        "  load: closed = closed loop (the capacity, its latency is the driver's own queue),"
        " else the share of that\n  round's capacity offered; offered, got/s: requests/s"
        " offered and answered; late: requests that left > 1 ms\n  after their due time;"
        " latencies in ms; server/apnsim/driver/other: share of one core in the window;\n"
        "  rq srv, rq drv: share of the window the server's (pushd's or the floor's) and the"
        " driver's threads were\n  runnable but waited for a CPU (/proc/<pid>/task/*/schedstat):"
        " the machine's share of the latency;\n  in p99: p99 of pushd's own handler time"
        " (parsed request to answer ready), up p99: of its\n  upstream sends (hand-over to"
        " answer), both as pushd recorded them (benchmarks/inside.py)."
    )
    print()
    print_latency_rounds(rows)


def print_latency_rounds(rows: Sequence[Row]) -> None:
    """Median (min-max) over the rounds of each scenario at each load."""
    rounds = max((row.round for row in rows), default=1)
    groups: dict[tuple[str, float | None], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.scenario.mode, row.scenario.load_fraction), []).append(row)
    print(f"Latency across {rounds} round{'s' if rounds > 1 else ''}: median (min-max), ms.")
    print(
        f"  {'scenario':<{LABEL_WIDTH}} {'load':>6}  {'req/s':<20} {'p50':<17}"
        f" {'p99':<19} {'p99.9':<19} {'CPU-ms/n':<22} {'pushd p99 (handler)'}"
    )
    for (mode, _), group in groups.items():
        opened = [row.open_loop for row in group if row.open_loop is not None]
        rates = [loop.rate for loop in opened] or [row.per_second for row in group]
        p999 = _spread([loop.p999_ms for loop in opened], _ms) if opened else "-"
        handler = [
            row.inside.handler_p99_ms
            for row in group
            if row.inside is not None and row.inside.handler_p99_ms is not None
        ]
        print(
            f"  {LABELS[mode]:<{LABEL_WIDTH}} {load_label(group[0]):>6}"
            f"  {_spread(rates, lambda v: f'{v:,.0f}'):<20}"
            f" {_spread([row.p50_ms for row in group], _ms):<17}"
            f" {_spread([row.p99_ms for row in group], _ms):<19} {p999:<19}"
            f" {_spread([row.pushd_cpu_ms for row in group], lambda v: f'{v:.3f}'):<22}"
            f" {_spread(handler, _ms) if handler else '-'}"
        )
    print(
        f"  Issue 15's target: p99 under {GOAL_P99_MS:.0f} ms at 64 concurrent requests, one"
        " device a request; the floor rows\n  are the same driver against a server that does"
        " nothing, offered the native rows' rates: the machine's share;\n  pushd p99 (handler):"
        " the same requests' p99 as pushd timed them, from parsed request to answer ready."
    )
