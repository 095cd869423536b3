"""The admin's status page: ``GET /status`` (one HTML document) and ``GET /status.json``.

The page is static: it holds no data, so anyone may load it, and it asks for the
credential that the detailed ``/healthz`` takes (:mod:`pushd.frontends.admin`), keeps
it in ``sessionStorage`` (gone with the tab, never in a URL, a log or a Referer) and
sends it as a bearer token to ``/status.json``, which it reads again every few seconds
and renders in place.  ``/status.json`` without it is a 401 in JSON.

The document is assembled once from three files of package data (``assets/``): the
HTML, its style and its script, inlined, so the page is one request with nothing from
elsewhere.  Its Content-Security-Policy allows exactly those two inline blocks, by
their SHA-256, and nothing else: no other script or style, no images, frames or
fonts, fetches only to pushd itself, no form submission (so even with scripts off the
token cannot leave in a URL), and Trusted Types so no string ever becomes HTML.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import trio

from pushd import __version__
from pushd.activity import Activity
from pushd.config import Config
from pushd.dispatch import Dispatcher
from pushd.frontends.admin import AccessDenied, AdminAccess, Viewer
from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.frontends.status import report
from pushd.frontends.status.report import CertificateDates, ChatServer
from pushd.recent import BUCKET_SECONDS, BUCKETS, Recent, Totals
from pushd.store import Store

PAGE_PATH: Final = "/status"
JSON_PATH: Final = "/status.json"
#: Where the page's text blocks go in ``assets/page.html``.
STYLE_MARK: Final = "/*STYLE*/"
SCRIPT_MARK: Final = "/*SCRIPT*/"
#: Headers on every answer of the status page: nothing is cached (the JSON is live
#: and private), nothing sniffed, no Referer leaves.
COMMON_HEADERS: Final = (
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
NO_CREDENTIAL: Final = "send Authorization: Bearer <admin token or server key>"


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@attrs.frozen
class Page:
    """The assembled document and the policy that lets exactly its blocks run."""

    html: bytes
    policy: str

    @classmethod
    def load(cls) -> Page:
        assets = importlib.resources.files(__package__) / "assets"
        html = (assets / "page.html").read_text("utf-8")
        style = (assets / "page.css").read_text("utf-8")
        script = (assets / "page.js").read_text("utf-8")
        if html.count(STYLE_MARK) != 1 or html.count(SCRIPT_MARK) != 1:
            raise ValueError("page.html must hold each block mark once")
        html = html.replace(STYLE_MARK, style).replace(SCRIPT_MARK, script)
        policy = "; ".join(
            (
                "default-src 'none'",
                f"script-src {_digest(script)}",
                f"style-src {_digest(style)}",
                "connect-src 'self'",
                "img-src 'none'",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
                "require-trusted-types-for 'script'",
                "trusted-types 'none'",
            )
        )
        return cls(html.encode(), policy)


class StatusPage:
    """Serves the page and its data.  ``health`` is the per-app state ``/healthz``
    shows (:func:`pushd.server.app_health`), so the two never disagree."""

    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        access: AdminAccess,
        *,
        health: Callable[[], Mapping[str, Any]],
        activity: Activity,
        recent: Recent,
        matrix_enabled: bool,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self.access = access
        self.health = health
        self.activity = activity
        self.recent = recent
        self.matrix_enabled = matrix_enabled
        self.dates = CertificateDates()
        self.page = Page.load()

    def routes(self) -> list[Route]:
        return [
            Route("GET", PAGE_PATH, self.serve_page, "status_page"),
            Route("GET", JSON_PATH, self.serve_json, "status_json"),
        ]

    def totals(self) -> Totals:
        """Every running app's cumulative outcomes, for :class:`Recent` to sample."""
        return {name: report.counts(lane.stats) for name, lane in self.dispatcher.lanes.items()}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample the outcome totals every bucket (in the server's nursery)."""
        await self.recent.run(self.totals, self.dispatcher.clock, task_status=task_status)

    async def serve_page(self, request: Request) -> Reply:
        headers = (("content-security-policy", self.page.policy), *COMMON_HEADERS)
        return Reply(200, self.page.html, "text/html; charset=utf-8", headers)

    async def serve_json(self, request: Request) -> Reply:
        try:
            viewer = await self.access.viewer(request)
        except AccessDenied as denied:
            return _private(denied.reply())
        if viewer is None:
            return _private(AccessDenied(NO_CREDENTIAL).reply())
        return _private(json_reply(200, await self.snapshot(viewer)))

    async def snapshot(self, viewer: Viewer) -> dict[str, Any]:
        """Everything the page shows, for ``viewer``: the admin sees every chat server, a
        chat server (its native key) only itself, not who else uses this pushd."""
        now = self.dispatcher.clock()
        health = self.health()
        windows = self.recent.window(now, self.totals())

        def visible(server: ChatServer) -> bool:
            return viewer.admin or (server.protocol == "native" and server.name == viewer.server)

        servers, missing = await report.servers(
            self.store,
            self.config,
            self.activity,
            matrix_enabled=self.matrix_enabled,
            visible=visible,
            now=now,
        )
        store_failing = self.store.unhealthy
        degraded = store_failing is not None or any(a["state"] != "ok" for a in health.values())
        return {
            "status": "degraded" if degraded else "ok",
            "version": __version__,
            "generated_at": now,
            "viewer": "admin" if viewer.admin else "server",
            "bucket_seconds": BUCKET_SECONDS,
            "buckets": BUCKETS,
            "store": {"state": "ok"}
            if store_failing is None
            else {"state": "failing", "reason": store_failing},
            "apps": report.apps(self.config, health, windows, self.dates),
            "servers": servers,
            "servers_missing": missing,
        }


def _private(reply: Reply) -> Reply:
    return attrs.evolve(reply, headers=(*reply.headers, *COMMON_HEADERS))
