"""Reloading the config on SIGHUP (and ``pushd reload``) without dropping anything.

A reload re-reads pushd.toml and every file it names (.p8 keys, certificates, FCM
service accounts, proxy passwords, the admin token), checks it all as ``check-config``
does, and only then changes anything:

- An app whose upstream inputs (the fields its client is built from, and the bytes of
  the files they name) are unchanged keeps its lane: the same connections, counters,
  circuit and paused state.  Its concurrency and removal scope are updated in place.
- An app that is new, or whose inputs changed (a rotated key, a new service account),
  gets a new lane, started before it is put in place.  The lane it replaces is retired:
  new sends go to the new lane at once, and the old one closes its connections only
  when the sends it already has in flight are answered (or after :data:`RETIRE_GRACE`;
  what is cut then is in the spool and goes again).
- A removed app's lane is retired the same way; its spooled pushes wait (a send that
  raced the reload is spooled with them) until it is back or they expire.
- The API's TLS certificate and key are read again from their files (a renewed
  certificate); new connections get it.
- Frontends are rebuilt from the new config and the router swapped; requests being
  served finish on the old ones.  Rate-limit windows, Matrix dedupe and counters are
  carried over when their settings did not change.

A config that does not pass the checks is refused as a whole: pushd keeps the old one
and logs each problem with its key path.  Settings that only take effect at start
(:data:`pushd.reload_diff.RESTART_ONLY`) are logged as needing a restart and keep their
old values.

Other parts follow a reload through :attr:`Reloader.hooks` (called with the new config
after it is in place) and :attr:`Reloader.failure_hooks` (called with the problems).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from pushd.config import Config, ConfigError, load_checked
from pushd.frontends.status import StatusPage
from pushd.lanes import Lane
from pushd.reload_diff import carry_state, fingerprint, keep_restart_only, setting
from pushd.sdnotify import Notifier
from pushd.store import StoreUnavailable
from pushd.unusable import UnusableSender

if TYPE_CHECKING:
    from pushd.activity import Activity
    from pushd.http11 import HttpServer
    from pushd.server import Services

log = logging.getLogger(__name__)

#: How long a replaced lane may finish its sends in flight before its connections are
#: closed anyway: longer than any upstream request timeout.
RETIRE_GRACE: Final = 60.0
#: How often a retiring lane is looked at to see whether it is idle.
RETIRE_POLL: Final = 0.05

ConfigHook = Callable[[Config], None]
FailureHook = Callable[[list[str]], None]


@attrs.frozen
class Plan:
    """What a reload will do to the lanes, worked out before anything changes."""

    config: Config
    lanes: dict[str, Lane]
    started: list[Lane]
    retired: list[Lane]
    added: list[str]
    changed: list[str]
    removed: list[str]
    fingerprints: dict[str, tuple[Any, ...]]
    #: The API's TLS context, from the certificate and key files as they are now.
    tls: ssl.SSLContext | None = None


class Reloader:
    """Applies a new config to a running pushd; one reload at a time."""

    def __init__(
        self,
        services: Services,
        activity: Activity,
        status: StatusPage,
        http_server: HttpServer,
        *,
        notifier: Notifier | None = None,
        extra_routes: Sequence[Any] = (),
    ) -> None:
        self.services = services
        self.activity = activity
        self.status = status
        self.http_server = http_server
        self.notifier = notifier or Notifier(None)
        self.extra_routes = tuple(extra_routes)
        #: Called with the new config once it is in place (metrics, pages, ...).
        self.hooks: list[ConfigHook] = []
        #: Called with the problems of a refused config.
        self.failure_hooks: list[FailureHook] = []
        #: Reloads applied and refused since start.
        self.applied = 0
        self.refused = 0
        #: Whether the last reload was refused (``systemctl status`` says so).
        self.last_refused = False
        self._lock = trio.Lock()
        self._fingerprints: dict[str, tuple[Any, ...]] = {}

    async def start(self) -> None:
        """Remember what the running lanes were built from (call once, at start)."""
        config = self.services.config
        self._fingerprints = await trio.to_thread.run_sync(
            lambda: {app.name: fingerprint(config, app) for app in config.apps}
        )

    async def listen(self, signals: AsyncIterator[int]) -> None:
        """Reload on every signal from ``signals`` (SIGHUP) until cancelled.

        Signals that arrive during a reload are coalesced by trio into one more reload,
        so a burst of SIGHUPs costs at most two.
        """
        async for _ in signals:
            log.info("received SIGHUP: reloading %s", self.services.config.source)
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the config file and apply it; False (and logged) if refused."""
        async with self._lock:
            self.notifier.reloading()
            started = time.monotonic()
            try:
                plan = await self._plan()
                if isinstance(plan, list):
                    self._refuse(plan)
                    return False
                await self._apply(plan)
            finally:
                self.notifier.ready(status_line(self.services))
            log.info(
                "reloaded %s in %.1f ms: %s",
                self.services.config.source,
                (time.monotonic() - started) * 1000,
                _summary(plan),
            )
            return True

    def _refuse(self, problems: list[str]) -> None:
        self.refused += 1
        self.last_refused = True
        for problem in problems:
            log.error("reload refused, still running on the previous config: %s", problem)
        for hook in self.failure_hooks:
            hook(problems)

    async def _plan(self) -> Plan | list[str]:
        """The new config and the lanes it needs, or the problems that refuse it."""
        from pushd.applanes import StartupError, build_lane
        from pushd.server import server_tls

        old = self.services.config
        if old.source is None:
            return ["no config file to re-read (pushd was started without one)"]
        source = old.source
        try:
            new = await trio.to_thread.run_sync(load_checked, source)
        except ConfigError as error:
            return [p if p.startswith(f"{source}: ") else f"{source}: {p}" for p in error.problems]
        new, restart = keep_restart_only(old, new)
        for key in restart:
            log.warning(
                "reload: %s changed but needs a restart to take effect (still %r)",
                key,
                setting(old, key),
            )
        fingerprints = await trio.to_thread.run_sync(
            lambda: {app.name: fingerprint(new, app) for app in new.apps}
        )
        running = self.services.dispatcher.lanes
        lanes: dict[str, Lane] = {}
        plan = Plan(new, lanes, [], [], [], [], [], fingerprints)
        try:
            # A renewed certificate (certbot's deploy hook: systemctl reload pushd) is
            # read from the same files; new connections get it.
            plan = attrs.evolve(plan, tls=await trio.to_thread.run_sync(server_tls, new))
            for index, app in enumerate(new.apps):
                lane = running.get(app.name)
                if (
                    lane is not None
                    and self._fingerprints.get(app.name) == fingerprints[app.name]
                    and not isinstance(lane.sender, UnusableSender)  # started paused: mended?
                ):
                    lanes[app.name] = lane
                    continue
                # Off the event loop: an FCM client's TLS setup and RSA key take ~0.1 s.
                fresh = await trio.to_thread.run_sync(build_lane, new, index)
                if lane is not None:
                    fresh.stats = lane.stats  # the app's counters go on
                    plan.retired.append(lane)
                    plan.changed.append(app.name)
                else:
                    plan.added.append(app.name)
                plan.started.append(fresh)
                lanes[app.name] = fresh
        except StartupError as error:
            return [f"{source}: {error}"]
        for name, lane in running.items():
            if name not in lanes:
                plan.retired.append(lane)
                plan.removed.append(name)
        return plan

    async def _apply(self, plan: Plan) -> None:
        services, dispatcher, new = self.services, self.services.dispatcher, plan.config
        for lane in plan.started:
            await dispatcher.start_lane(lane)
        for app in new.apps:  # kept lanes take the new limits; new ones were built with them
            lane = plan.lanes[app.name]
            lane.budget.limit = app.concurrency
            lane.scope = new.removal_scope(app)
        dispatcher.retry = new.retry
        dispatcher.spool = new.spool
        dispatcher.first_attempt_deadline = new.server.first_attempt_deadline
        dispatcher.lanes = plan.lanes  # from here on, sends go to the new lanes
        for lane in plan.retired:
            dispatcher.start_soon(retire, lane)
        for name in plan.removed:
            if dispatcher.depth.get(name, 0) > 0:
                log.warning(
                    "reload: removed app %s has %d spooled deliveries: they wait in the "
                    "spool until it is configured again (or `pushd spool purge --app %s`)",
                    name,
                    dispatcher.depth[name],
                    name,
                )
        dispatcher.keys.refresh()
        old_frontends = services.frontends
        services.config = new
        from pushd.server import assemble

        assemble(services, self.activity, self.status, self.extra_routes)
        carry_state(old_frontends, services.frontends)
        self.http_server.router = services.router()
        self.http_server.ssl_context = plan.tls
        logging.getLogger().setLevel(new.log.level.upper())
        self._fingerprints = plan.fingerprints
        self.applied += 1
        self.last_refused = False
        dispatcher.worker.wake()
        for name in plan.changed:
            with contextlib.suppress(StoreUnavailable):  # logged by the store; they wait
                await dispatcher.worker.due_now(name)
        for hook in self.hooks:
            hook(new)


async def retire(lane: Lane, grace: float = RETIRE_GRACE) -> None:
    """Close a replaced lane's connections once its sends in flight are answered."""
    with trio.move_on_after(grace):
        while not lane.idle:  # noqa: ASYNC110 (the budget has no event for "empty")
            await trio.sleep(RETIRE_POLL)
    if not lane.idle:
        log.warning(
            "reload: %s's previous connections closed with sends still in flight; "
            "they are in the spool and go again",
            lane.name,
        )
    lane.stop()


def _summary(plan: Plan | list[str]) -> str:
    if isinstance(plan, list):
        return "refused"
    parts = [
        f"{label} {', '.join(names)}"
        for label, names in (
            ("added", plan.added),
            ("changed", plan.changed),
            ("removed", plan.removed),
        )
        if names
    ]
    kept = len(plan.config.apps) - len(plan.added) - len(plan.changed)
    parts.append(f"{kept} app(s) unchanged")
    return "; ".join(parts)


def status_line(services: Services) -> str:
    """The one-line summary systemd shows (``systemctl status``): apps and their
    states, and the spool's depth."""
    dispatcher = services.dispatcher
    now = dispatcher.clock()
    lanes = list(dispatcher.lanes.values())
    paused = sum(1 for lane in lanes if lane.paused_until > now)
    spooled = sum(dispatcher.depth.get(lane.name, 0) for lane in lanes)
    where = ", ".join(services.urls) or "(not listening yet)"
    state = f", {paused} paused" if paused else ""
    refused = services.reloader is not None and services.reloader.last_refused
    note = "; last reload refused (see the log)" if refused else ""
    return f"serving {len(lanes)} app(s){state} on {where}; spool {spooled}{note}"
