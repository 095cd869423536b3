"""pushd's own view of a row's latency: how long its handlers and its upstream took.

Why: the driver times a request from when it was due to its answer, so its p99 holds
everything on the way: the driver's own wait for a CPU, the kernel, pushd's wait to be
scheduled, parsing, the handler, the upstream's answer.  To say how much of a row's tail
is pushd's code, pushd itself records, for every request in the row's window, the time
its handler took (from the parsed request to the answer ready to write: the figure
``pushd_http_request_duration_seconds`` counts) and, for every upstream send, the time
from hand-over to the answer (``pushd_upstream_request_duration_seconds``).  The
histograms' buckets (5, 10, 25 ms) are too coarse to tell 15 ms from 24, so the
benchmark's pushd keeps the exact values instead.

How: :func:`install` wraps the two metrics hooks in the benchmark's pushd process (the
real ones still run), and :data:`TIMINGS_ROUTE` hands over, and forgets, what was
recorded since its last call.  The runner calls it before a row (to start the window)
and after it (:func:`take`).  Only durations: no paths, tokens or payloads.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Final

import attrs

from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.metrics.tally import DeliveryTally, HttpTally
from pushd.model import Outcome

#: Where the benchmark's pushd answers with its recorded timings.
TIMINGS_PATH: Final = "/bench/timings"
#: How long the runner waits for that answer.
TAKE_TIMEOUT: Final = 10.0
#: The percentiles reported, as fractions.
PERCENTILES: Final = {"p50_ms": 0.50, "p99_ms": 0.99, "p999_ms": 0.999}

_handler_seconds: list[float] = []
_upstream_seconds: list[float] = []


def install() -> None:
    """Record every handler's and every upstream send's duration from now on (in the
    benchmark's pushd process, before it starts serving)."""
    observe = HttpTally.observe
    answered = DeliveryTally.answered

    def observing(self: HttpTally, route: str, method: str, status: int, seconds: float) -> None:
        if route != TIMINGS_PATH:
            _handler_seconds.append(seconds)
        observe(self, route, method, status, seconds)

    def answering(self: DeliveryTally, app: str, outcome: Outcome, seconds: float) -> None:
        _upstream_seconds.append(seconds)
        answered(self, app, outcome, seconds)

    HttpTally.observe = observing  # type: ignore[method-assign]
    DeliveryTally.answered = answering  # type: ignore[method-assign]


def _summary(seconds: list[float]) -> dict[str, float | int]:
    ordered = sorted(seconds)
    summary: dict[str, float | int] = {"count": len(ordered)}
    for name, fraction in PERCENTILES.items():
        if ordered:
            summary[name] = ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000
    return summary


async def _timings(request: Request) -> Reply:
    """Percentiles of what was recorded since the last call, then forget it."""
    handler, upstream = _summary(_handler_seconds), _summary(_upstream_seconds)
    _handler_seconds.clear()
    _upstream_seconds.clear()
    return json_reply(200, {"handler": handler, "upstream": upstream})


TIMINGS_ROUTE = Route("POST", TIMINGS_PATH, _timings, "bench_timings")


@attrs.frozen
class Inside:
    """A row's latency as pushd saw it, in ms (None: nothing of that kind happened)."""

    handler_p50_ms: float | None
    handler_p99_ms: float | None
    upstream_p99_ms: float | None

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> Inside:
        handler, upstream = answer["handler"], answer["upstream"]
        return cls(handler.get("p50_ms"), handler.get("p99_ms"), upstream.get("p99_ms"))


def take(port: int) -> Inside:
    """What pushd on ``port`` recorded since the last call (and start a new window)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{TIMINGS_PATH}", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=TAKE_TIMEOUT) as response:
        return Inside.from_answer(json.loads(response.read()))
