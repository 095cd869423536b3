"""From pushd's state to Prometheus samples, at scrape time.

Nothing here runs on the delivery path: :meth:`PushdCollector.collect` reads the
tallies (:mod:`.tally`), each app's lane (in flight, paused, circuit), the spool
counts the worker refreshes every few seconds and the registration counts
:class:`~pushd.metrics.Metrics` refreshes every minute.  A scrape therefore costs a
walk over a few dicts per app, never a query.

Names follow Prometheus' conventions: a ``pushd_`` prefix, base units (seconds, a
UNIX timestamp in seconds), ``_total`` on counters, and labels from bounded sets only.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pushd import __version__
from pushd.frontends import ratelimit
from pushd.metrics.tally import RELOADS, Histogram

if TYPE_CHECKING:
    from pushd.metrics import Metrics

#: Circuit states, one gauge each (exactly one is 1 per app).
CIRCUIT_STATES: Final = ("closed", "open", "probing")
#: What a pause reason becomes as a label: the upstream's reason code (``BadCertificate``,
#: ``SENDER_ID_MISMATCH``), an HTTP status (``http_403``), or ``other``.
_REASON_CODE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
_HTTP_STATUS: Final = re.compile(r"HTTP (\d{3})\b")


def reason_label(reason: str | None) -> str:
    """A bounded label for an upstream's free-text reason (see :data:`_REASON_CODE`)."""
    if not reason:
        return ""
    status = _HTTP_STATUS.match(reason)
    if status:
        return f"http_{status.group(1)}"
    code = _REASON_CODE.match(reason)
    return code.group(0) if code else "other"


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.total)


class PushdCollector(Collector):
    """Yields every ``pushd_`` metric of one running pushd (see :mod:`pushd.metrics`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._info()
        yield from self._deliveries()
        yield from self._apps()
        yield from self._http()
        yield from self._config()

    def _info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pushd_build_info",
            "pushd's version and Python's; always 1",
            labels=["version", "python_version"],
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        store = GaugeMetricFamily(
            "pushd_store_healthy", "1 while the store answers, 0 while it is failing"
        )
        store.add_metric([], 0 if self.metrics.store.unhealthy else 1)
        yield store

    def _deliveries(self) -> Iterator[Metric]:
        metrics = self.metrics
        tally = metrics.delivery
        provider = metrics.provider
        notifications = CounterMetricFamily(
            "pushd_notifications",
            "Outcomes of deliveries (one per attempt that decided something): delivered, "
            "removed (dead token), retrying (with why) or failed (with a reason class)",
            labels=["app", "provider", "protocol", "outcome", "reason"],
        )
        for (app, protocol, outcome, reason), count in list(tally.notifications.items()):
            notifications.add_metric([app, provider(app), protocol, outcome, reason], count)
        yield notifications
        durations = HistogramMetricFamily(
            "pushd_upstream_request_duration_seconds",
            "Time from handing a notification to the app's APNs or FCM client to its answer",
            labels=["app", "provider"],
        )
        for app, histogram in list(tally.upstream_seconds.items()):
            _histogram(durations, [app, provider(app)], histogram)
        yield durations
        errors = CounterMetricFamily(
            "pushd_upstream_errors",
            "Upstream answers that were not a success or a dead token, by class",
            labels=["app", "provider", "reason"],
        )
        for (app, reason), count in list(tally.upstream_errors.items()):
            errors.add_metric([app, provider(app), reason], count)
        yield errors

    def _apps(self) -> Iterator[Metric]:
        metrics = self.metrics
        dispatcher = metrics.dispatcher
        now = dispatcher.clock()
        in_flight = GaugeMetricFamily(
            "pushd_upstream_in_flight", "Notifications in flight to the upstream", labels=["app"]
        )
        depth = GaugeMetricFamily(
            "pushd_spool_depth",
            "Deliveries waiting in the spool (shared by every instance on one PostgreSQL)",
            labels=["app"],
        )
        oldest = GaugeMetricFamily(
            "pushd_spool_oldest_due_age_seconds",
            "How long the app's oldest spooled delivery has been due (0: none is due)",
            labels=["app"],
        )
        paused = GaugeMetricFamily(
            "pushd_app_paused",
            "1 while the app is paused after a credential error (reason: the upstream's code)",
            labels=["app", "reason"],
        )
        mismatch = GaugeMetricFamily(
            "pushd_app_mismatch_alarm",
            "1 while the app's tokens keep answering a mismatch (BadDeviceToken, "
            "DeviceTokenNotForTopic, SENDER_ID_MISMATCH) and nothing was delivered since "
            "start or its config changed: likely a wrong environment, topic or project "
            "(the tokens are kept; reason: the last upstream code)",
            labels=["app", "reason"],
        )
        key_missing = GaugeMetricFamily(
            "pushd_spool_key_missing",
            "1 while spooled deliveries of the app are sealed with a spool key this "
            "process does not have (they wait for the key file)",
            labels=["app"],
        )
        circuit = GaugeMetricFamily(
            "pushd_circuit_state",
            "The app's circuit (paces retries from the spool): 1 for its current state",
            labels=["app", "state"],
        )
        expiry = GaugeMetricFamily(
            "pushd_credential_expiry_timestamp_seconds",
            "When the app's credential expires (APNs certificate notAfter); absent if never "
            "or unknown",
            labels=["app"],
        )
        registrations = GaugeMetricFamily(
            "pushd_registrations",
            "Stored device registrations (native API and Zulip), counted every minute",
            labels=["app", "protocol"],
        )
        for lane in list(dispatcher.lanes.values()):
            name = lane.name
            in_flight.add_metric([name], lane.budget.used)
            depth.add_metric([name], dispatcher.depth.get(name, 0))
            oldest.add_metric([name], dispatcher.worker.oldest_due_age(name, now))
            is_paused = lane.paused_until > now
            reason = reason_label(lane.pause_reason) if is_paused else ""
            paused.add_metric([name, reason], 1 if is_paused else 0)
            suspect = lane.proof.alarm_reason
            mismatch.add_metric([name, reason_label(suspect)], 1 if suspect else 0)
            missing = dispatcher.worker.missing_key(name, now) is not None
            key_missing.add_metric([name], 1 if missing else 0)
            for state in CIRCUIT_STATES:
                circuit.add_metric([name, state], 1 if lane.circuit.state == state else 0)
            expires = metrics.credential_expiry.get(name)
            if expires is not None:
                expiry.add_metric([name], expires)
        for name in sorted(set(dispatcher.depth) - set(dispatcher.lanes)):
            # An app no longer configured whose deliveries still wait in the spool (until
            # it is configured again, they expire, or an operator purges them).
            depth.add_metric([name], dispatcher.depth[name])
            oldest.add_metric([name], dispatcher.worker.oldest_due_age(name, now))
        for (app, protocol), count in sorted(metrics.registrations.items()):
            registrations.add_metric([app, protocol], count)
        yield from (in_flight, depth, oldest, paused, mismatch, key_missing, circuit, expiry)
        yield registrations

    def _http(self) -> Iterator[Metric]:
        tally = self.metrics.http
        requests = CounterMetricFamily(
            "pushd_http_requests",
            "HTTP requests answered, by route pattern (never the path: some hold secrets)",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in list(tally.requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            "pushd_http_request_duration_seconds",
            "Time from a request's head to its answer",
            labels=["route", "method"],
        )
        for (route, method), histogram in list(tally.seconds.items()):
            _histogram(durations, [route, method], histogram)
        yield durations
        limited = CounterMetricFamily(
            "pushd_rate_limited_requests",
            "Requests refused by a rate limit, by protocol (this process)",
            labels=["protocol"],
        )
        for protocol, count in sorted(ratelimit.REFUSED.items()):
            limited.add_metric([protocol], count)
        yield limited
        if self.metrics.open_connections is not None:
            yield GaugeMetricFamily(
                "pushd_http_open_connections",
                "Connections open on the API port, idle kept-alive ones included",
                value=self.metrics.open_connections(),
            )

    def _config(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "pushd_config_reloads", "Configuration reloads attempted (SIGHUP, pushd reload)"
        )
        reloads.add_metric([], RELOADS.attempts)
        yield reloads
        failures = CounterMetricFamily(
            "pushd_config_reload_failures",
            "Reloads refused (the new file did not pass check-config); the old one runs on",
        )
        failures.add_metric([], RELOADS.failures)
        yield failures
        last = GaugeMetricFamily(
            "pushd_config_last_reload_successful", "0 after a refused reload, until one works"
        )
        last.add_metric([], 1 if RELOADS.last_ok else 0)
        yield last
