"""What the same Python work costs right after the process slept: the machine's share of
a lightly loaded gateway's CPU per notification.

Why: ``run.py --plan latency`` finds pushd spending 2-3 times the CPU per notification at
a quarter of its capacity that it spends saturated, and the floor (a server that does
nothing) rising alike, even with pushd pinned to a core of its own.  A saturated process
never sleeps; a lightly loaded one sleeps between requests, and on a virtual machine a
sleeping vCPU may give its core (and its caches) to other work.  This measures that alone,
with no sockets and no pushd: a fixed piece of work (JSON in and out, a sort, a dict: a
request's kind of Python, about 50 CPU-us) run back to back, then with a sleep between
pieces, CPU time per piece from ``time.process_time``.

Run it pinned, as the runner is not: ``taskset -c 0 python benchmarks/idle_gap.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Final

#: The sleeps between pieces (seconds): none, then a gateway's gaps at 2,000 and 500/s.
GAPS: Final = (0.0, 0.0005, 0.002)
#: Pieces per measurement, and measurements per gap (interleaved, for a median).
PIECES: Final = 2000
REPEATS: Final = 3
#: JSON round trips per piece: about 50 CPU-us on a 2026 cloud core.
ROUND_TRIPS: Final = 4
_DOCUMENT: Final = {
    "aps": {"alert": {"title": "Town Square", "body": "Hello"}, "badge": 1},
    "ids": list(range(50)),
}


def piece() -> None:
    """One request's worth of ordinary Python work."""
    for _ in range(ROUND_TRIPS):
        decoded = json.loads(json.dumps(_DOCUMENT))
        ordered = sorted(decoded["ids"], reverse=True)
        _ = {str(i): i for i in ordered[:20]}


def cpu_us_per_piece(gap: float, pieces: int, work: bool = True) -> float:
    """CPU microseconds per piece with ``gap`` seconds of sleep after each (with ``work``
    false, what the sleep alone costs: the syscall and the switches, to subtract)."""
    started = time.process_time()
    for _ in range(pieces):
        if work:
            piece()
        if gap:
            time.sleep(gap)
    return (time.process_time() - started) / pieces * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pieces", type=int, default=PIECES)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args()
    results: dict[float, list[float]] = {gap: [] for gap in GAPS}
    sleeps: dict[float, list[float]] = {gap: [] for gap in GAPS if gap}
    for _ in range(args.repeats):
        for gap in GAPS:
            results[gap].append(cpu_us_per_piece(gap, args.pieces))
            if gap:
                sleeps[gap].append(cpu_us_per_piece(gap, args.pieces, work=False))
    busy = statistics.median(results[0.0])
    for gap, values in results.items():
        alone = statistics.median(sleeps[gap]) if gap else 0.0
        net = statistics.median(values) - alone
        print(
            f"sleep {gap * 1000:.1f} ms between pieces: {statistics.median(values):.0f}"
            f" ({min(values):.0f}-{max(values):.0f}) CPU-us per piece, of which the sleep"
            f" alone {alone:.0f}; the work x{net / busy:.2f} its back-to-back cost"
        )


if __name__ == "__main__":
    main()
