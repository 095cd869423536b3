"""Assembly: config → store, upstream clients, dispatcher, frontends → the HTTP server.

Frontends give a list of :class:`~pushd.frontends.http.Route`; a
:class:`~pushd.routing.Router` finds them and :class:`~pushd.http11.HttpServer` (llhttp on
trio; see there why not hypercorn or Quart-trio) serves them.

Lifecycle (all inside one nursery): open the store, start every app's upstream client
and the retry loop, serve HTTP until SIGINT/SIGTERM, stop accepting requests, let
deliveries in flight finish until ``server.drain_seconds`` after the signal, answer
every caller still waiting then (spooling first), and close everything within
``SHUTDOWN_MARGIN`` more: one deadline for the HTTP server and the dispatcher, not one
window after the other.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from pushd import __version__
from pushd.activity import Activity
from pushd.applanes import StartupError, build_lanes
from pushd.config import Config, read_admin_token
from pushd.dispatch import Dispatcher
from pushd.frontends.admin import AdminAccess
from pushd.frontends.http import Route, parse_networks
from pushd.frontends.matrix import MatrixGateway
from pushd.frontends.mattermost import MattermostProxy
from pushd.frontends.native import NativeApi
from pushd.frontends.openapi import OPENAPI
from pushd.frontends.rocketchat import RocketChatGateway
from pushd.frontends.status import StatusPage
from pushd.frontends.zulip import ZulipBouncer
from pushd.frontends.zulip.bouncer_keys import seal_plain_bouncer_keys
from pushd.health import all_routes, app_health
from pushd.hostshared import HostSharedStore
from pushd.http11 import HttpServer, HttpSettings, ListenError
from pushd.lanes import Lane
from pushd.metrics import Metrics, record_reload
from pushd.pidfile import PidFile
from pushd.recent import Recent
from pushd.reload import Reloader, status_line
from pushd.reuseport import ReusePortHttpServer
from pushd.routing import Router
from pushd.sdnotify import Notifier
from pushd.spool.seal import SealError, SpoolKeys
from pushd.store import Store, open_store
from pushd.store.postgres import GIVE_UP_AFTER, PostgresEngine
from pushd.tls import server_context
from pushd.upstream import resolver
from pushd.workers import METRICS_FIELD, WorkerRole, first_of, orphaned

log = logging.getLogger(__name__)

#: A client that stalls mid-request for this long is disconnected (slow-loris guard).
READ_TIMEOUT = 30.0
#: Chat servers keep pooled connections open: close one only after this long idle.
KEEP_ALIVE_TIMEOUT = 75.0


@attrs.define
class Services:
    """What the HTTP layer serves: built once at start, shared by every request."""

    config: Config
    store: Store
    dispatcher: Dispatcher
    #: pushd's own API (documented by its OpenAPI document) and /healthz.
    routes: list[Route]
    #: Other protocols' routes (Zulip's ``/api/v1/remotes/``): their documentation is
    #: the protocol's own, so they are kept apart from ``routes``.
    protocol_routes: list[Route] = attrs.Factory(list)
    #: Per-protocol counters for /healthz, by protocol name.
    protocol_stats: dict[str, Callable[[], dict[str, int]]] = attrs.Factory(dict)
    #: Who may read operational detail (/healthz's, and any later page's).
    access: AdminAccess | None = None
    #: The frontend objects behind the routes, so a reload can carry their state over.
    frontends: list[Any] = attrs.Factory(list)
    #: The URLs the HTTP server is bound to, once it is.
    urls: list[str] = attrs.Factory(list)
    #: Re-reads the config on SIGHUP; its ``hooks`` follow each reload (set once bound).
    reloader: Reloader | None = None

    def router(self) -> Router:
        """A router over every route, with the config's body limit."""
        return Router([*self.routes, *self.protocol_routes], self.config.server.max_body_bytes)

    #: The Prometheus metrics (None: ``[metrics] enabled = false``).
    metrics: Metrics | None = None
    #: This process's place among a supervisor's workers (None: pushd runs alone).
    worker: WorkerRole | None = None

    def worker_info(self) -> dict[str, int]:
        """Which worker answers (``/healthz``): each keeps its own counters."""
        return {"index": self.worker.index, "pid": os.getpid()} if self.worker else {}


def assemble(
    services: Services, activity: Activity, status: StatusPage, extra_routes: Sequence[Route] = ()
) -> None:
    """Build every frontend for ``services.config`` and put their routes in ``services``.

    Called at start and again by a reload (:mod:`pushd.reload`) with the new config:
    frontends are cheap to build and hold the config they were built from, so a reload
    builds new ones and swaps the router, while requests in progress finish on the old.
    The status page lives on (its history matters) and is told the new config here.
    """
    config, store, dispatcher = services.config, services.store, services.dispatcher
    native = NativeApi(config, store, dispatcher, openapi=OPENAPI, activity=activity)
    access = AdminAccess(store, read_admin_token(config.server.admin_token_file))
    services.access = access
    matrix = MatrixGateway(config, store, dispatcher, activity=activity)
    zulip = ZulipBouncer(config, store, dispatcher, activity=activity)
    mattermost = MattermostProxy(config, store, dispatcher, activity=activity)
    rocketchat = RocketChatGateway(config, store, dispatcher, activity=activity)
    status.config, status.access, status.matrix_enabled = config, access, matrix.enabled
    services.frontends = [native, zulip, mattermost, rocketchat, matrix]
    services.routes = [*all_routes(services, native, access), *status.routes(), *extra_routes]
    services.protocol_routes = [
        *zulip.routes(),
        *mattermost.routes(),
        *rocketchat.routes(),
        *matrix.routes(),
    ]
    services.protocol_stats.pop("matrix", None)
    if matrix.enabled:
        services.protocol_stats["matrix"] = lambda: attrs.asdict(matrix.stats)


def server_tls(config: Config) -> ssl.SSLContext | None:
    """The TLS context for ``[server] tls_cert``/``tls_key``, or None for plain HTTP."""
    if not (config.server.tls_cert and config.server.tls_key):
        return None
    try:
        return server_context(config.server.tls_cert, config.server.tls_key)
    except ValueError as error:
        raise StartupError(f"server.{error}") from None


def follow_reloads(reloader: Reloader, metrics: Metrics | None) -> None:
    """Let the metrics count each reload and take the new config's apps."""

    def applied(config: Config) -> None:
        record_reload(ok=True)
        if metrics is not None:
            metrics.apply(config)

    reloader.hooks.append(applied)
    reloader.failure_hooks.append(lambda _problems: record_reload(ok=False))


async def start_metrics(metrics: Metrics | None, nursery: trio.Nursery) -> None:
    """The ``[metrics]`` listener, started in ``nursery`` once the API listens."""
    if metrics is None:
        return
    try:
        urls: list[str] = await nursery.start(metrics.run)
    except ListenError as error:
        raise StartupError(f"metrics: {error}") from None
    log.info("metrics on %s", ", ".join(urls))


#: SIGINTs and SIGTERMs a worker got before :func:`signal_trigger` listened (see
#: :func:`remember_early_stop`).
_EARLY_STOPS: list[int] = []


def remember_early_stop(signum: int, _frame: object) -> None:
    """A worker's SIGINT/SIGTERM handler until :func:`signal_trigger` listens, and again
    after it: kept, not acted on.  A supervisor that stops while a worker still starts
    (imports take seconds on a loaded machine) sends SIGTERM then; ignored, it was lost,
    and the worker served until the drain deadline had it killed.  A signal after the
    drain (the supervisor forwarding one the process group already got) still does not
    kill a worker that has drained."""
    _EARLY_STOPS.append(signum)


@contextlib.contextmanager
def signal_trigger() -> Iterator[Callable[[], Awaitable[None]]]:
    """A shutdown trigger for SIGINT/SIGTERM, listening from the moment it is entered.

    Entered before the server binds, so a SIGTERM that arrives right after start-up is
    a graceful shutdown, not the default action (instant death); one a worker kept
    before (:func:`remember_early_stop`) shuts it down as soon as it serves.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def wait() -> None:
            if _EARLY_STOPS:
                signum = _EARLY_STOPS.pop()
                _EARLY_STOPS.clear()
                log.info("received %s while starting: shutting down", signal.Signals(signum).name)
                return
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                return

        yield wait


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    lanes: list[Lane] | None = None,
    extra_routes: Sequence[Route] = (),
    on_ready: Callable[[Services, list[str]], None] | None = None,
    hangups: AsyncIterator[int] | None = None,
    worker: WorkerRole | None = None,
    unusable: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run pushd until ``shutdown_trigger`` returns (default: SIGINT or SIGTERM).

    ``task_status`` gets the bound URLs.  Each item of ``hangups`` (default with the
    signal trigger: SIGHUP) reloads the config (:mod:`pushd.reload`).  Under systemd,
    readiness, status, the watchdog and stopping are notified (:mod:`pushd.sdnotify`).

    ``lanes`` replaces the upstream clients built from the config and ``extra_routes``
    adds routes (the benchmarks' empty endpoint); both are for tests and benchmarks.
    ``worker``: this process is one of a supervisor's (:mod:`pushd.workers` says what
    differs).  ``unusable``: apps whose credential files have a problem, which start
    paused rather than stop the start (:func:`pushd.config.load_serving`); None refuses
    to start with any app whose client cannot be built.
    """
    if shutdown_trigger is None:
        # SIGHUP's default action kills: catch it from the start, like SIGTERM.
        with signal_trigger() as on_signal, trio.open_signal_receiver(signal.SIGHUP) as hups:
            await serve(
                config,
                shutdown_trigger=on_signal,
                lanes=lanes,
                extra_routes=extra_routes,
                on_ready=on_ready,
                hangups=hups,
                worker=worker,
                unusable=unusable,
                task_status=task_status,
            )
        return
    if worker is not None:
        config = worker.apply(config)
    # One app's hanging DNS must not take the lookup threads of the others.
    resolver.install()
    tls = server_tls(config)  # what the admin may have got wrong first: nothing to undo
    pid_file = PidFile(None if worker else config.server.pid_file)  # the supervisor's
    lanes = build_lanes(config, unusable) if lanes is None else lanes
    store = await open_store(config.store)
    if isinstance(store.engine, PostgresEngine):
        # Serving, a call the database does not answer is given up (a stalled link):
        # not while migrating, nor in the CLI, whose statements may rightly take long.
        store.engine.give_up_after = GIVE_UP_AFTER
    if getattr(store.engine, "created", False):
        # A store is made on purpose by `pushd init` or `server add`: one made by
        # serve may mean the real one was moved or deleted (every chat server's key
        # would then be refused, and the spool is gone), so the admin is told.
        log.warning(
            "created a new, empty store at %s: no file was there; if pushd had a store "
            "before, stop it and put that file back",
            store.describe(),
        )
    if worker is not None:
        # N processes on one store share rate windows and dedupe keys, and release only
        # their own leases: as instances on one PostgreSQL do (pushd.workers).
        if not store.shared and worker.shared_dir is not None:
            store = HostSharedStore(store.engine, Path(worker.shared_dir))
        store.engine.shared = True
    notifier = Notifier.from_environment()
    stop_requested = shutdown_trigger
    if worker is not None:
        stop_requested = functools.partial(first_of, shutdown_trigger, orphaned)

    async def stopping() -> None:
        await stop_requested()
        notifier.stopping()

    try:
        try:
            keys = SpoolKeys.load(config.spool.key_file, create=not store.shared)
        except (SealError, OSError) as error:
            raise StartupError(f"spool.key_file: {error}") from None
        await seal_plain_bouncer_keys(store, keys)
        dispatcher = Dispatcher(
            lanes,
            store,
            config.retry,
            keys=keys,
            spool=config.spool,
            first_attempt_deadline=config.server.first_attempt_deadline,
        )
        if worker is not None:
            dispatcher.worker.release_on_start = worker.release
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            services = Services(
                config=config, store=store, dispatcher=dispatcher, routes=[], worker=worker
            )
            if config.metrics.enabled:
                services.metrics = Metrics(
                    worker.metrics_config(config) if worker else config, dispatcher, store
                )
            activity = Activity()  # each frontend records its servers' requests
            status = StatusPage(
                config,
                store,
                dispatcher,
                AdminAccess(store, None),  # replaced by assemble()
                health=lambda: app_health(services),
                activity=activity,
                recent=Recent(),
                matrix_enabled=False,
            )
            await nursery.start(status.run)
            assemble(services, activity, status, extra_routes)
            http_server = (HttpServer if worker is None else ReusePortHttpServer)(
                services.router(),
                HttpSettings(
                    read_timeout=READ_TIMEOUT,
                    keep_alive_timeout=KEEP_ALIVE_TIMEOUT,
                    drain_seconds=config.server.drain_seconds,
                    trusted_proxies=parse_networks(config.server.trusted_proxies),
                ),
                tls,
                observe=services.metrics.http.observe if services.metrics else None,
                on_drain=dispatcher.end_waits_at,
            )
            if services.metrics is not None:
                services.metrics.open_connections = lambda: http_server.open_connections
            http_done = trio.Event()

            async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                try:
                    await http_server.serve(
                        config.server.listen,
                        config.server.port,
                        stopping,
                        task_status=task_status,
                    )
                except ListenError as error:
                    raise StartupError(str(error)) from None
                finally:
                    http_done.set()

            urls: list[str] = await nursery.start(http)
            services.urls = urls
            await start_metrics(services.metrics, nursery)
            reloader = Reloader(
                services,
                activity,
                status,
                http_server,
                notifier=notifier,
                extra_routes=extra_routes,
            )
            await reloader.start()
            services.reloader = reloader
            follow_reloads(reloader, services.metrics)
            if hangups is not None:
                nursery.start_soon(reloader.listen, hangups)
            pid_file.write()
            await nursery.start(notifier.run, lambda: status_line(services))
            if worker is not None and services.metrics is not None:
                notifier.send(**{METRICS_FIELD: services.metrics.urls[0]})
            notifier.ready(status_line(services))
            if worker is None:
                log.info(
                    "pushd %s listening on %s with %d app(s)",
                    __version__,
                    ", ".join(urls),
                    len(config.apps),
                )
            else:
                log.info("worker %d (pid %d) serving %s", worker.index, os.getpid(), urls[0])
            if on_ready is not None:
                on_ready(services, urls)
            task_status.started(urls)
            await http_done.wait()
            deadline = http_server.drain_deadline
            if deadline is None:  # the server stopped without draining
                deadline = trio.current_time()
            await dispatcher.drain(deadline)
            nursery.cancel_scope.cancel()
    finally:
        pid_file.remove()
        notifier.close()
        with trio.CancelScope(shield=True):
            await store.close()
