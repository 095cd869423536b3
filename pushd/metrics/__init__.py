"""Prometheus metrics at ``/metrics``, on a listener of their own (``[metrics]``).

Why ``prometheus-client``: it writes the exposition format Prometheus, VictoriaMetrics
and Grafana Agent read (escaping, histogram series, ``# HELP``/``# TYPE``), is the
Prometheus project's own Python client and well kept, and brings the standard
``process_*`` metrics.  pushd uses it for the format and the process collector; the
counting on the delivery path is pushd's own (:mod:`.tally`: a dict increment instead
of a lock per sample), read by a custom collector (:mod:`.collect`) at scrape time.

Why a listener of its own (``127.0.0.1:9464`` by default): the API port faces chat
servers, often through a reverse proxy; metrics name every app and route, which is an
inventory for the admin, not for the Internet.  Off loopback a bearer token is
required (``bearer_token_file``, compared in constant time).

One :class:`Metrics` per running pushd; the periodic work (registration counts, APNs
certificate dates) runs in :meth:`Metrics.run`, never in a scrape.  Two hooks for the
reload (``SIGHUP``): :func:`reload` with the new config, and :func:`record_reload`
with its result.
"""

from __future__ import annotations

import hmac
import logging
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from pushd.config import Config, read_admin_token
from pushd.frontends.http import Reply, Request, Route
from pushd.http11 import HttpServer, HttpSettings, ListenError
from pushd.metrics.collect import PushdCollector
from pushd.metrics.tally import RELOADS, DeliveryTally, HttpTally
from pushd.routing import Router
from pushd.store import StoreUnavailable
from pushd.upstream.apns.certificate import not_after

if TYPE_CHECKING:
    from pushd.dispatch import Dispatcher
    from pushd.store import Store

__all__ = ["METRICS_PATH", "Metrics", "record_reload", "reload", "unauthorized"]

log = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
#: The classic text format (0.0.4): what every Prometheus version reads; pushd's names
#: are plain ASCII, so the newer 1.0.0 would add nothing but a version some cannot read.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Registrations and certificate dates are counted again this often: a registration
#: count is a table scan, so it is never done per scrape.
REFRESH_INTERVAL: Final = 60.0
#: A scrape is a GET without a body.
MAX_BODY_BYTES: Final = 1024
#: Timeouts of the metrics listener: a scraper that stalls is dropped sooner than a
#: chat server, and Prometheus keeps its connection between scrapes (15 s to 1 min).
READ_TIMEOUT: Final = 10.0
KEEP_ALIVE_TIMEOUT: Final = 120.0

#: Every running :class:`Metrics` of this process, for :func:`reload`.
_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()


class Metrics:
    """The metrics of one running pushd: tallies, refreshed counts and the listener."""

    def __init__(self, config: Config, dispatcher: Dispatcher, store: Store) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.delivery = DeliveryTally()
        self.http = HttpTally()
        #: (app, protocol) -> stored registrations, as last counted.
        self.registrations: dict[tuple[str, str], int] = {}
        #: app -> its credential's expiry (UNIX seconds), where known.
        self.credential_expiry: dict[str, float] = {}
        #: The API listener's open connections, read at scrape time; set once it exists.
        self.open_connections: Callable[[], int] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PushdCollector(self))
        ProcessCollector(registry=self.registry)
        #: Where ``/metrics`` is served, once :meth:`run` listens.
        self.urls: list[str] = []
        self._providers: dict[str, str] = {}
        self._token: str | None = None
        self.config = config
        self.apply(config)
        dispatcher.tally = self.delivery
        _LIVE.add(self)

    # --- configuration ------------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """Take ``config`` (at start, and on a reload): providers, the bearer token and
        certificate dates.  The listener's address needs a restart to change."""
        self.config = config
        # Merged, not replaced: an app a reload removed keeps its counters, and their
        # ``provider`` label must not turn empty under them (a series would break).
        self._providers = {
            **self._providers,
            **{app.name: app.provider for app in config.apps},
        }
        self._token = read_admin_token(config.metrics.bearer_token_file)
        self._read_certificates()

    def provider(self, app: str) -> str:
        return self._providers.get(app, "")

    def _read_certificates(self) -> None:
        dates: dict[str, float] = {}
        for app in self.config.apps:
            if app.provider != "apns" or app.cert_file is None:
                continue
            try:
                password = None
                if app.cert_password_file is not None:
                    password = Path(app.cert_password_file).read_bytes().strip()
                date = not_after(Path(app.cert_file).read_bytes(), password)
            except OSError as error:
                log.warning("metrics: cannot read %s: %s", app.cert_file, error.strerror)
                continue
            if date is not None:
                dates[app.name] = date
        self.credential_expiry = dates

    # --- periodic counts ----------------------------------------------------------------

    async def refresh(self) -> None:
        """Count registrations per app (native and Zulip) and re-read certificates."""
        try:
            native = await self.store.registrations_by_app()
            zulip = await self.store.zulip_registrations_by_kind()
        except StoreUnavailable:
            return  # the last counts stand; pushd_store_healthy says why
        counts: dict[tuple[str, str], int] = {}
        for app, count in native.items():
            counts[(app, "native")] = count
        for (kind, ios_app_id), count in zulip.items():
            served = self.config.zulip_app(kind, ios_app_id)
            if served is not None:
                key = (served.name, "zulip")
                counts[key] = counts.get(key, 0) + count
        self.registrations = counts
        self._read_certificates()

    # --- serving ------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)

    async def scrape(self, request: Request) -> Reply:
        """``GET /metrics``; with a token configured, only with that bearer token."""
        refused = unauthorized(request, self._token)
        if refused is not None:
            return refused
        return Reply(200, self.exposition(), content_type=CONTENT_TYPE)

    async def run(
        self,
        shutdown_trigger: trio.Event | None = None,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``[metrics]`` and refresh counts until cancelled (or until
        ``shutdown_trigger`` is set).  ``task_status`` gets the ``/metrics`` URLs;
        :class:`~pushd.http11.ListenError` if the address is busy."""
        router = Router([Route("GET", METRICS_PATH, self.scrape, "metrics")], MAX_BODY_BYTES)
        server = HttpServer(
            router,
            HttpSettings(
                read_timeout=READ_TIMEOUT, keep_alive_timeout=KEEP_ALIVE_TIMEOUT, drain_seconds=1.0
            ),
        )
        stop = shutdown_trigger or trio.Event()
        settings = self.config.metrics
        try:
            async with trio.open_nursery() as nursery:
                urls: list[str] = await nursery.start(
                    server.serve, settings.listen, settings.port, stop.wait
                )
                nursery.start_soon(self._refresh_loop)
                self.urls = [url + METRICS_PATH for url in urls]
                task_status.started(self.urls)
                await stop.wait()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the nursery wraps a busy port: unwrap it
            matched, rest = group.split(ListenError)
            if matched is None or rest is not None:
                raise
            error: BaseException = matched
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            raise error from None

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh()
            await trio.sleep(REFRESH_INTERVAL)


def unauthorized(request: Request, token: str | None) -> Reply | None:
    """The 401 for a scrape without ``token`` (compared in constant time); None if it
    may read (or no token is configured)."""
    if token is None:
        return None
    given = request.headers.get("authorization", "")
    scheme, _, credential = given.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    ):
        return None
    return Reply(
        401,
        b"send Authorization: Bearer <the token in metrics.bearer_token_file>\n",
        content_type="text/plain; charset=utf-8",
        headers=(("www-authenticate", 'Bearer realm="pushd metrics"'),),
    )


def reload(config: Config) -> None:
    """Hook for a configuration reload: every running :class:`Metrics` of this process
    takes the new config (apps' providers, the bearer token, certificate dates).  A new
    ``[metrics]`` address takes effect at the next restart."""
    for metrics in list(_LIVE):
        metrics.apply(config)


def record_reload(ok: bool) -> None:
    """Hook for a configuration reload: count it (``pushd_config_reloads_total``) and,
    if refused, its failure (``pushd_config_reload_failures_total``)."""
    RELOADS.attempts += 1
    if not ok:
        RELOADS.failures += 1
    RELOADS.last_ok = ok
