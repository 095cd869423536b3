"""The counting done on the hot path: plain dict increments, turned into Prometheus
samples only when scraped.

``prometheus_client``'s own ``Counter.labels(...).inc()`` and ``Histogram.observe()``
take a lock and walk every bucket, several microseconds per call (measured in
``benchmarks/metrics_cost.py``); pushd runs every delivery on one trio thread, so a
dict keyed by the label values and a bisect into the bucket bounds do the same for a
fraction of that.  :mod:`.collect` hands these to ``prometheus_client``, which writes
the exposition format.

Label values here are bounded by construction: app names and protocols come from the
config and the code, statuses and reason classes from the small sets below, never from
a token, a user or upstream text.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Final

import attrs

from pushd.model import Delivered, Failed, Outcome, RetryLater, TokenDead

#: Upstream request durations (seconds): APNs answers in 10-100 ms, FCM in 50-300 ms,
#: a slow upstream up to the request timeout (10 s).
UPSTREAM_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: HTTP request durations (seconds): most answers take a millisecond; a push waits for
#: its first attempt, up to ``first_attempt_deadline`` (10 s).
HTTP_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Why an upstream attempt did not succeed, by :class:`~pushd.model.RetryLater` kind.
RETRY_KIND_CLASS: Final = {
    "unreachable": "unreachable",
    "unknown": "no_answer",
    "server": "server_error",
    "throttled": "throttled",
    "device": "device_throttled",
    "paused": "paused",
}
#: The reason class of a delivery to spool that the store could not write (503).
STORE_UNAVAILABLE: Final = "store_unavailable"
#: Every reason class a label may carry (the tests hold the scrape to these).
FAILED_REASONS: Final = frozenset(
    {"rejected", "credential", "gave_up", "expired", "spool_full", "reregistered", "unproven"}
    | {STORE_UNAVAILABLE}
)
UPSTREAM_ERRORS: Final = frozenset({*RETRY_KIND_CLASS.values(), "credential", "rejected"}) - {
    "paused"
}


class Histogram:
    """Fixed buckets; ``counts[i]`` holds observations in bucket ``i`` (not cumulative:
    one increment per observation), the last one past every bound."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus writes them, ``+Inf`` last."""
        pairs: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            pairs.append((repr(float(bound)), running))
        pairs.append(("+Inf", running + self.counts[-1]))
        return pairs


def failed_class(outcome: Outcome | None, reason: str | None) -> str:
    """The bounded class of a ``failed`` report."""
    if isinstance(outcome, Failed):
        return "credential" if outcome.credential else "rejected"
    if isinstance(outcome, TokenDead):
        # Dead, but kept: a mismatch before the app proved itself (pushd.proof), or
        # the device registered the token again since.
        return "unproven" if outcome.mismatch else "reregistered"
    if reason == "spool_full":
        return "spool_full"
    if isinstance(outcome, RetryLater) or (reason or "").startswith("gave up"):
        return "gave_up"
    return "rejected"


def upstream_error(outcome: Outcome) -> str | None:
    """The error class of an upstream answer, or None for an answer that is not one
    (delivered, or a dead token: the upstream did its job)."""
    if isinstance(outcome, Delivered | TokenDead):
        return None
    if isinstance(outcome, Failed):
        return "credential" if outcome.credential else "rejected"
    return RETRY_KIND_CLASS.get(outcome.kind, "server_error")


@attrs.define
class DeliveryTally:
    """What the dispatcher counts per outcome and per upstream answer."""

    #: (app, protocol, outcome, reason class) -> count.
    notifications: dict[tuple[str, str, str, str], int] = attrs.Factory(dict)
    #: (app, error class) -> count.
    upstream_errors: dict[tuple[str, str], int] = attrs.Factory(dict)
    #: app -> durations of upstream requests, from hand-over to the app's client to
    #: the answer (waiting for a stream slot included: it is what a delivery waits).
    upstream_seconds: dict[str, Histogram] = attrs.Factory(dict)

    def outcome(self, app: str, protocol: str, status: str, reason: str = "") -> None:
        key = (app, protocol, status, reason)
        self.notifications[key] = self.notifications.get(key, 0) + 1

    def answered(self, app: str, outcome: Outcome, seconds: float) -> None:
        histogram = self.upstream_seconds.get(app)
        if histogram is None:
            histogram = self.upstream_seconds[app] = Histogram(UPSTREAM_BUCKETS)
        histogram.observe(seconds)
        error = upstream_error(outcome)
        if error is not None:
            key = (app, error)
            self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1


@attrs.define
class HttpTally:
    """What the HTTP server counts per answered request."""

    #: (route pattern, method, status) -> count.
    requests: dict[tuple[str, str, int], int] = attrs.Factory(dict)
    #: (route pattern, method) -> durations.
    seconds: dict[tuple[str, str], Histogram] = attrs.Factory(dict)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.seconds.get((route, method))
        if histogram is None:
            histogram = self.seconds[(route, method)] = Histogram(HTTP_BUCKETS)
        histogram.observe(seconds)


@attrs.define
class ReloadCounts:
    """Configuration reloads of this process (:func:`pushd.metrics.record_reload`)."""

    attempts: int = 0
    failures: int = 0
    last_ok: bool = True


#: This process's reloads: a reload is the process's, whichever pushd it replaces.
RELOADS: Final = ReloadCounts()
