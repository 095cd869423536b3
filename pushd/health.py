"""``/healthz`` and ``/health``: what pushd says about itself over HTTP.

Under ``[server] workers = N`` each answer is the worker's that took the connection:
the spool depth and the store's state are the store's (the same in every worker), the
per-app counters and circuits are that worker's own.  The merged metrics
(:mod:`pushd.metrics.merge`) are the view over all workers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from pushd import __version__
from pushd.frontends.admin import AccessDenied, AdminAccess
from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.frontends.native import NativeApi
from pushd.store import StoreUnavailable

if TYPE_CHECKING:
    from pushd.server import Services


def health(services: Services, access: AdminAccess) -> Callable[[Request], Awaitable[Reply]]:
    """``GET /healthz``: ``{"status": "ok" | "degraded"}`` for anyone; the detail (apps,
    their counters, queues, version) only with a credential (:mod:`.frontends.admin`)."""

    async def handler(request: Request) -> Reply:
        try:
            detailed = await access.authorized(request)
        except AccessDenied as denied:
            return denied.reply()
        except StoreUnavailable:
            # A server key is checked in the store, which fails: the answer everyone
            # gets (503, degraded) still says so, where an error body would not.
            detailed = False
        apps = app_health(services)
        store_failing = services.store.unhealthy
        degraded = store_failing is not None or any(app["state"] != "ok" for app in apps.values())
        store = (
            {"state": "ok"}
            if store_failing is None
            else {
                "state": "failing",
                "reason": store_failing,
            }
        )
        # 503 while the store fails, when every request that needs it hears 503 too: a
        # load balancer or uptime check reading only the status code takes this
        # instance out.  An app's trouble (a pause, a backlog) is "degraded" with 200:
        # the others serve, and another instance would have the same credentials.
        code = 200 if store_failing is None else 503
        if not detailed:
            return json_reply(code, {"status": "degraded" if degraded else "ok"})
        # Spooled deliveries of apps a reload removed: they wait, unsent, until the app is
        # configured again, they expire or an operator purges them.
        depth = services.dispatcher.depth
        unconfigured = {app: n for app, n in depth.items() if app not in apps and n > 0}
        return json_reply(
            code,
            {
                "status": "degraded" if degraded else "ok",
                "version": __version__,
                **({"worker": services.worker_info()} if services.worker else {}),
                "store": store,
                "apps": apps,
                "spooled": sum(depth.values()),
                **({"unconfigured_spool": unconfigured} if unconfigured else {}),
                **{name: stats() for name, stats in services.protocol_stats.items()},
            },
        )

    return handler


def app_health(services: Services) -> dict[str, Any]:
    """Each app's state for ``/healthz``: ``paused`` (a credential error),
    ``key_missing`` (spooled deliveries sealed with a key this process does not have),
    ``backlog`` (its oldest spooled delivery has been due longer than
    ``spool.degraded_after``), or ``ok``; with its counters, spool depth and circuit."""
    dispatcher = services.dispatcher
    now = dispatcher.clock()
    worker = dispatcher.worker
    apps: dict[str, Any] = {}
    for lane in dispatcher.lanes.values():
        spooled = worker.snapshot.get(lane.name)
        age = worker.oldest_due_age(lane.name, now)
        state = "ok"
        reason = None
        missing = worker.missing_key(lane.name, now)
        if lane.paused_until > now:
            state, reason = "paused", lane.pause_reason
        elif missing is not None:
            state = "key_missing"
            reason = (
                f"spooled deliveries are sealed with spool key {missing}, which "
                f"{dispatcher.keys.path} does not hold: put back a key file that does"
            )
        elif age > services.config.spool.degraded_after:
            state, reason = "backlog", f"a spooled delivery has been due for {age:.0f} s"
        apps[lane.name] = {
            "state": state,
            **({"reason": reason} if reason else {}),
            "circuit": lane.circuit.state,
            "spool": {
                "depth": dispatcher.depth.get(lane.name, 0),
                "oldest_due_age": round(age, 3),
                "unknown_outcome": spooled.unknown if spooled else 0,
            },
            **attrs.asdict(lane.stats),
        }
    return apps


async def liveness(_: Request) -> Reply:
    """``GET /health``: 200 with an empty body, as Sygnal's (container health checks)."""
    return Reply(200, b"", content_type="text/plain")


def all_routes(services: Services, native: NativeApi, access: AdminAccess) -> list[Route]:
    return [
        *native.routes(),
        Route("GET", "/healthz", health(services, access), "healthz"),
        # Uptime checks and load balancers often ask with HEAD: the status, no body.
        Route("HEAD", "/healthz", health(services, access), "healthz_head"),
        Route("GET", "/health", liveness, "health"),
    ]
