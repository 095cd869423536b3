"""The C load driver for ``workers.py``: nghttp2's ``h2load --h1``, keep-alive HTTP/1.1.

Why: ``load.py`` is lean for Python, but on a 2-core machine its ~0.08 CPU-ms per
request is a third of what pushd itself spends, on the cores pushd's workers need.
``h2load`` (Debian's ``nghttp2-client``) spends a few microseconds a request.  It is
optional: :func:`find_h2load` returns None when it is not installed and the caller
falls back to ``load.py``, saying so.

What differs from ``load.py``, and how the run is still checked:

- ``h2load -d FILE`` posts one body, so every request names the same stored user (one
  APNs device).  pushd's work per request is the same (the user is looked up in the
  store either way; no cache keeps it); ``workers.py`` reports pushd's CPU-ms per
  notification under both drivers so that this can be seen.
- h2load reads no response body.  Each request is checked instead by its status (every
  one must be 2xx: ``--log-file`` has one line per request with its status and
  latency) and by the APNs upstream's count, which the caller checks: exactly one 200
  there per request sent here, warm-ups included, proves each send was delivered once.
- The warm-up is a separate, unmeasured h2load run with the same connection count (new
  connections, so pushd's workers warm up as the measured run's will find them).
- h2load gives each connection an equal share of the requests (``load.py`` shares one
  pool).  With two workers, ``SO_REUSEPORT`` rarely splits 128 connections exactly
  64/64, so the worker with fewer connections finishes its share first and the rest of
  the run has one worker busy: a tail that is the driver's, not pushd's.  The rate is
  therefore also taken over the steady window (:data:`STEADY`, from each request's
  completion time in the log), while every connection is still sending; both rates
  are reported.

CPU: pushd's processes and the upstream's are read from /proc before and after the
measured run (:class:`common.CpuSnapshot`); h2load's own from ``RUSAGE_CHILDREN``,
which grows only by the children reaped in between (h2load alone).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import DRIVER, CpuSnapshot

#: h2load's default name; ``PATH`` decides which one.
H2LOAD = "h2load"
#: h2load runs as one thread: a C client needs no second core, and a second thread
#: would take CPU from pushd on a 2-core machine.
THREADS = 1
#: A run that takes longer has gone wrong (the caller's requests take ~10 s).
RUN_TIMEOUT = 300.0
#: When the caller's ``during`` is called: every connection is open by then.
SAMPLE_AFTER = 1.0
#: The steady window: from the 10th to the 75th percentile of completion times.  A
#: 2-worker split of 128 connections ends its even phase past 80% unless it is more
#: uneven than 76/52 (2 standard deviations of a fair hash).
STEADY = (0.10, 0.75)
_STATUS_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_FINISHED = re.compile(r"finished in ([\d.]+)(ms|s)")


class H2loadError(Exception):
    """A run that does not count: a non-2xx answer, an error, or unreadable output."""


def find_h2load() -> str | None:
    """h2load's path, or None if it is not installed (``apt-get install nghttp2-client``)."""
    return shutil.which(H2LOAD)


def write_body(directory: Path, user: str, alert: Any) -> Path:
    """The native send ``load.py`` posts in its ``one`` mode, for one stored user."""
    path = directory / "h2load-body.json"
    path.write_text(json.dumps({"user": user, "alert": alert}, separators=(",", ":")))
    return path


def _argv(
    binary: str,
    url: str,
    body: Path,
    key: str,
    concurrency: int,
    requests: int,
    log: Path,
) -> list[str]:
    return [
        binary, "--h1", f"--clients={concurrency}", f"--threads={THREADS}",
        f"--requests={requests}", f"--data={body}", f"--header=authorization: Bearer {key}",
        "--header=content-type: application/json", f"--log-file={log}", url,
    ]  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def parse_log(log: Path) -> tuple[list[int], list[float], list[float]]:
    """Statuses, latencies and completion times (seconds) of every request in an h2load
    ``--log-file``: lines of start time, status and duration in microseconds."""
    statuses: list[int] = []
    latencies: list[float] = []
    ends: list[float] = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            statuses.append(int(fields[1]))
            latencies.append(int(fields[2]) / 1e6)
            ends.append((int(fields[0]) + int(fields[2])) / 1e6)
    return statuses, latencies, ends


def steady_rate(ends: list[float]) -> float:
    """Requests a second between the :data:`STEADY` percentiles of completion times."""
    ordered = sorted(ends)
    first, last = (min(len(ordered) - 1, int(q * len(ordered))) for q in STEADY)
    span = ordered[last] - ordered[first]
    return (last - first) / span if span > 0 else 0.0


def run_once(
    binary: str,
    url: str,
    body: Path,
    key: str,
    concurrency: int,
    requests: int,
    log: Path,
    during: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """One h2load run; raises H2loadError unless every request was answered 2xx.
    ``during`` is called once while it runs, its result returned as ``during``."""
    log.unlink(missing_ok=True)  # h2load appends to it
    argv = _argv(binary, url, body, key, concurrency, requests, log)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampled = None
    try:
        if during is not None:
            time.sleep(SAMPLE_AFTER)
            sampled = during()
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    counts, codes, finished = (
        _REQUESTS.search(out),
        _STATUS_CODES.search(out),
        _FINISHED.search(out),
    )
    if process.returncode != 0 or counts is None or codes is None or finished is None:
        raise H2loadError(f"h2load failed ({process.returncode}):\n{out[-2000:]}{err[-2000:]}")
    total, _, completed, succeeded, failed, errored, timeouts = map(int, counts.groups())
    two_xx = int(codes.group(1))
    statuses, latencies, ends = parse_log(log)
    if not (total == completed == succeeded == two_xx == requests == len(statuses)):
        raise H2loadError(
            f"h2load: {requests} asked, {completed} done, {two_xx} 2xx, {failed} failed, "
            f"{errored} errored, {timeouts} timed out, {len(statuses)} logged:\n{out[-2000:]}"
        )
    if any(status // 100 != 2 for status in statuses):
        raise H2loadError(f"h2load logged non-2xx statuses: {sorted(set(statuses))}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    return {
        "elapsed": seconds,
        "latencies": sorted(latencies),
        "steady": steady_rate(ends),
        "during": sampled,
    }


def drive(
    port: int,
    key: str,
    body: Path,
    concurrency: int,
    requests: int,
    warmup: int,
    watched: dict[str, int],
    directory: Path,
    during: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Warm up, then the measured run; a report shaped like ``load.py``'s (one device a
    request), with ``driver`` CPU being h2load's."""
    binary = find_h2load()
    if binary is None:
        raise H2loadError("h2load is not installed")
    url = f"http://127.0.0.1:{port}/v1/notifications"
    log = directory / "h2load-requests.log"
    warmups = warmup * concurrency
    run_once(binary, url, body, key, concurrency, warmups, log)
    before, driver_before, started = (
        CpuSnapshot.take(watched),
        _children_cpu(),
        time.monotonic(),
    )
    measured = run_once(binary, url, body, key, concurrency, requests, log, during)
    wall = time.monotonic() - started
    cpu = CpuSnapshot.take(watched).since(before)
    cpu[DRIVER] = _children_cpu() - driver_before
    latencies = measured["latencies"]
    return {
        "requests": requests,
        "notifications": requests,
        "apns_sent": requests + warmups,
        "failures": 0,
        "first_failure": None,
        # h2load's own clock (first connect to last answer); the CPU window is ``wall``,
        # a few ms longer (h2load's start and exit), so CPU per notification errs high.
        "elapsed": measured["elapsed"],
        "wall": wall,
        "steady_rate": measured["steady"],
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
        "cpu_seconds": cpu,
        "during": measured["during"],
    }
