"""Whose is the tail? Lay open-loop request traces beside pushd's garbage collections.

    PUSHD_BENCH_GC_LOG=/tmp/t/gc.log PUSHD_BENCH_TRACE_DIR=/tmp/t \\
        nice -n 10 .venv/bin/python benchmarks/run.py --plan latency
    .venv/bin/python benchmarks/tail_causes.py --gc-log /tmp/t/gc.log /tmp/t/*.trace

For each trace (one open-loop driver run, ``load.py --trace``): its p50/p99, then the
requests slower than the issue's 20 ms and the slowest 1 %, how many of those were in
flight while pushd was in a collection of at least ``--min-pause`` ms, beside the share
of *all* requests that were (the base rate: a cause must hit the slow requests far more
often than the rest), and how much of their latency passed before they left the driver
(a wait for a free connection, or the driver waiting for a CPU).  Also the collections
in the trace's window by generation, their total and longest pause.  The floor's traces
have no collections of pushd's to meet, so the same figures for them say what the rest
of the machine does.
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
from pathlib import Path

import attrs

#: Issue 15's p99 target: a request slower than this is "slow" whatever the percentile.
SLOW_MS = 20.0
#: Only collections pausing at least this long count as a cause.
DEFAULT_MIN_PAUSE_MS = 1.0
MS = 1000.0


@attrs.frozen
class Pause:
    """One collection: when it started and ended (wall clock, s), its generation."""

    start: float
    end: float
    generation: int


def read_pauses(path: Path) -> list[Pause]:
    """``PUSHD_BENCH_GC_LOG`` lines: end time, generation, pause ms, objects collected."""
    pauses = []
    for line in path.read_text().splitlines():
        end, generation, pause, _ = line.split()
        pauses.append(Pause(float(end) - float(pause) / MS, float(end), int(generation)))
    return sorted(pauses, key=lambda p: p.start)


def read_trace(path: Path) -> list[tuple[float, float, float]]:
    """(due time s, latency ms, lateness ms) of each request of one trace."""
    out = []
    for line in path.read_text().splitlines():
        due, latency, lateness = line.split()
        out.append((float(due), float(latency), float(lateness)))
    return out


def overlaps(pauses: list[Pause], starts: list[float], begin: float, end: float) -> bool:
    """Whether any pause overlaps [begin, end] (pauses sorted by start; they never overlap)."""
    at = bisect.bisect_right(starts, end)
    return at > 0 and pauses[at - 1].end > begin


def describe(path: Path, pauses: list[Pause], min_pause_ms: float) -> str:
    trace = read_trace(path)
    if not trace:
        return f"{path.name}: empty"
    begin = min(due for due, _, _ in trace)
    end = max(due + latency / MS for due, latency, _ in trace)
    window = [p for p in pauses if p.end > begin and p.start < end]
    long = [p for p in window if (p.end - p.start) * MS >= min_pause_ms]
    starts = [p.start for p in long]
    latencies = sorted(latency for _, latency, _ in trace)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]

    def hit_share(selected: list[tuple[float, float, float]]) -> str:
        if not selected:
            return "none"
        hits = sum(overlaps(long, starts, due, due + lat / MS) for due, lat, _ in selected)
        left_late = statistics.median(late / lat for _, lat, late in selected if lat > 0)
        return (
            f"{len(selected)}, {hits / len(selected):.0%} during a pause,"
            f" median {left_late:.0%} of the latency spent before leaving the driver"
        )

    by_generation = {
        g: [(p.end - p.start) * MS for p in window if p.generation == g]
        for g in sorted({p.generation for p in window})
    }
    collections = "; ".join(
        f"gen{g}: {len(v)}, total {sum(v):.0f} ms, longest {max(v):.1f} ms"
        for g, v in by_generation.items()
    )
    return (
        f"{path.name}: {len(trace)} requests over {end - begin:.1f} s,"
        f" p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms\n"
        f"    all: {hit_share(trace)}\n"
        f"    slowest 1% (>= {p99:.1f} ms): {hit_share([t for t in trace if t[1] >= p99])}\n"
        f"    over {SLOW_MS:.0f} ms: {hit_share([t for t in trace if t[1] > SLOW_MS])}\n"
        f"    collections in the window: {collections or 'none'}"
        f" (pauses >= {min_pause_ms:g} ms counted as causes: {len(long)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gc-log", type=Path, required=True, help="PUSHD_BENCH_GC_LOG's file")
    parser.add_argument("--min-pause", type=float, default=DEFAULT_MIN_PAUSE_MS, metavar="MS")
    parser.add_argument("traces", type=Path, nargs="+", help="load.py --trace files")
    args = parser.parse_args()
    pauses = read_pauses(args.gc_log)
    for path in args.traces:
        print(describe(path, pauses, args.min_pause))
    return 0


if __name__ == "__main__":
    sys.exit(main())
