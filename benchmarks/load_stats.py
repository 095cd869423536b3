"""What the load driver reports beyond CPU: percentiles, run-queue waits, a request trace.

Split from ``load.py``.  Three things say whose a latency tail is:

- the **percentiles** of an open-loop run (p50 to p99.9 and the maximum), timed from
  each request's due time;
- each watched process's **run-queue wait** in the window: the time its threads were
  ready to run but another task had the CPU (``/proc/<pid>/task/*/schedstat``, second
  field, in ns; kept by the kernel with ``CONFIG_SCHED_INFO``, on in common kernels).
  A server waiting for a CPU a large share of the window is a machine too busy, not
  slow code;
- with ``--trace FILE``, one line per open-loop request (wall-clock due time, latency
  and lateness in ms), to be laid beside pushd's garbage collections
  (``PUSHD_BENCH_GC_LOG``) by ``tail_causes.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

#: The percentiles an open-loop report gives, by key.
PERCENTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p99_ms": 0.99, "p999_ms": 0.999}
NS_PER_SECOND = 1e9


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 if there are none)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run_queue_wait(pid: int) -> float:
    """Seconds all of ``pid``'s threads have waited for a CPU while runnable, so far.

    0.0 where the kernel does not keep the figure (or the process is gone): the report
    then shows no wait rather than failing the run.
    """
    total = 0
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(task.path, "schedstat").read_text().split()[1])
    return total / NS_PER_SECOND


def run_queue_waits(pids: dict[str, int]) -> dict[str, float]:
    return {role: run_queue_wait(pid) for role, pid in pids.items()}


def write_trace(path: Path, entries: Iterable[tuple[float, float, float]]) -> None:
    """One line per request: wall-clock due time (s), latency (ms), lateness (ms)."""
    with path.open("w") as out:
        for due, latency, lateness in entries:
            out.write(f"{due:.6f} {latency * 1000:.3f} {lateness * 1000:.3f}\n")
