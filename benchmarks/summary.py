"""The parts of the report that make a noisy machine's numbers honest.

- **Where each row ran**: which process served it (pushd or the floor), which processes
  the simulators and the driver were (pids, CPUs they may run on, nice value), and how
  much CPU the rest of the machine took in the window: ``/proc/stat``'s busy total
  less every measured process, i.e. other tasks (other agents' tests on a shared
  machine), the kernel's own threads.
- **Across rounds** (``run.py --rounds N``): each scenario's median and range over the
  rounds, for CPU-ms per notification, its ratio to the floor, and p99.  The ratio is
  the figure to compare between runs: the floor is measured in the same invocation, by
  the same driver, at the same concurrency, so what slows the machine down slows both.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from common import FLOOR
from rows import LABEL_WIDTH, LABELS, OTHER, Row, format_ratio


def attach_floor(rows: Sequence[Row], before: Sequence[Row], after: Sequence[Row]) -> list[Row]:
    """``rows`` with their floor: the mean of the floor rows before and after, by concurrency.

    Measuring the floor on both sides of a round brackets it: a machine that got busier
    (or quieter) during the round moves the reference with it.
    """
    floors: dict[int, list[float]] = {}
    for floor in (*before, *after):
        floors.setdefault(floor.scenario.concurrency, []).append(floor.pushd_cpu_ms)
    out = []
    for row in rows:
        found = floors.get(row.scenario.concurrency)
        out.append(row.evolve_floor(statistics.fmean(found)) if found else row)
    return out


def print_where(rows: Sequence[Row], processes: dict[str, str]) -> None:
    """Which processes each row ran in, and what the rest of the machine took meanwhile."""
    print("Where each row ran (every process separate; nothing pinned by the benchmark):")
    for role, where in processes.items():
        print(f"  {role}: {where}")
    print(
        "  per row: the served process, the load driver (a new process each row), and the\n"
        "  CPU that other processes on the machine used in the window (/proc/stat busy total"
        " minus\n  the processes above: other tasks and agents, the kernel's threads):"
    )
    for row in rows:
        served = "the floor" if row.scenario.server == FLOOR else "pushd"
        share = row.cores[OTHER]
        print(
            f"  r{row.round} {LABELS[row.scenario.mode]:<{LABEL_WIDTH}}"
            f" x{row.scenario.concurrency:<3} served by {served}; driver {row.driver};"
            f" others {row.other_seconds:.2f} CPU-s ({share:.0%} of a core)"
        )


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """``median (min-max)``, or the one value."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def print_rounds(rows: Sequence[Row]) -> None:
    """Median and range over the rounds of every scenario (CPU-ms/n, x floor, p99)."""
    rounds = max((row.round for row in rows), default=1)
    groups: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.scenario.mode, row.scenario.concurrency), []).append(row)
    print(
        f"Across {rounds} round{'s' if rounds > 1 else ''}: median (min-max). CPU-ms/n is per"
        " notification (per request for the empty endpoint and the floor); x floor is that\n"
        "over the floor's CPU-ms per request at the same concurrency, measured before and"
        " after each round."
    )
    print(
        f"  {'scenario':<{LABEL_WIDTH}} {'conc':>4}  {'CPU-ms/n':<22} {'x floor':<19}"
        f" {'p99 ms':<20} {'others (cores)'}"
    )
    for (mode, concurrency), group in groups.items():
        ratios = [r.floor_ratio for r in group if r.floor_ratio is not None]
        ratio = "-" if mode == FLOOR or not ratios else _spread(ratios, format_ratio)
        shares = [r.cores[OTHER] for r in group]
        print(
            f"  {LABELS[mode]:<{LABEL_WIDTH}} {concurrency:>4}"
            f"  {_spread([r.pushd_cpu_ms for r in group], lambda v: f'{v:.3f}'):<22}"
            f" {ratio:<19}"
            f" {_spread([r.p99_ms for r in group], lambda v: f'{v:.1f}'):<20}"
            f" {_spread(shares, lambda v: f'{v:.0%}')}"
        )
