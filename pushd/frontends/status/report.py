"""``/status.json``: what the status page shows, built from what pushd has in memory.

Per app: its state as ``/healthz`` tells it (ok, paused with the reason, backlog),
its circuit, its spool, what it did over the last minutes (:mod:`pushd.recent`) and
when its credential expires where that is known.  Per chat server: when it last made
an authenticated request (:mod:`pushd.activity`).

No content and no token ever: the counts are numbers, the names are the admin's own
(app and server names, Zulip hostnames), reasons are upstream error codes.  The store
is read for the list of servers only (two small tables), never for registrations.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from pushd.activity import MATRIX_HOMESERVERS, Activity, Protocol
from pushd.config import AppConfig, Config
from pushd.lanes import LaneStats
from pushd.recent import BUCKET_SECONDS, Counts, Window
from pushd.store import Store, StoreUnavailable
from pushd.upstream.apns.certificate import not_after

log = logging.getLogger(__name__)

#: Seconds in a minute, for rates per minute.
MINUTE: Final = 60.0
#: The shortest span a rate is taken over: one bucket.  Just after start (or a quiet
#: window's first push) a rate over two seconds would read as a burst.
MIN_RATE_MINUTES: Final = BUCKET_SECONDS / MINUTE
#: Decimal places of rates and ages: the page shows whole numbers and one decimal.
ROUNDING: Final = 3


def counts(stats: LaneStats) -> Counts:
    """An app's cumulative :class:`LaneStats` grouped as the page shows them: a push
    given up on, refused by a full spool, or expired unsent has failed."""
    return Counts(
        delivered=stats.delivered,
        removed=stats.removed,
        failed=stats.failed + stats.dropped + stats.expired,
        retrying=stats.retried,
    )


def recent(window: Window | None) -> dict[str, Any]:
    """An app's window as the page reads it: sums, rates, and the buckets for a chart."""
    if window is None:
        return {
            "seconds": 0.0,
            **attrs.asdict(Counts()),
            "per_minute": 0.0,
            "error_rate": None,
            "buckets": [],
        }
    total = window.total
    minutes = window.seconds / MINUTE
    return {
        "seconds": round(window.seconds, ROUNDING),
        **attrs.asdict(total),
        # Ended deliveries per minute.
        "per_minute": round(total.final / max(minutes, MIN_RATE_MINUTES), ROUNDING),
        # Of the deliveries that ended, the share that failed; None when none ended.
        "error_rate": round(total.failed / total.final, ROUNDING) if total.final else None,
        "buckets": [[b.delivered, b.removed, b.failed, b.retrying] for b in window.buckets],
    }


class CertificateDates:
    """APNs certificates' notAfter, read again only when the file changes (a rotated
    certificate shows its new date without a restart)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[int, float | None]] = {}

    def expires_at(self, app: AppConfig) -> float | None:
        if app.cert_file is None:
            return None
        try:
            changed = os.stat(app.cert_file).st_mtime_ns
            cached = self._cache.get(app.cert_file)
            if cached is not None and cached[0] == changed:
                return cached[1]
            password = None
            if app.cert_password_file is not None:
                password = Path(app.cert_password_file).read_bytes().strip()
            date = not_after(Path(app.cert_file).read_bytes(), password)
        except OSError as error:
            log.warning("status: cannot read %s: %s", app.cert_file, error.strerror)
            return None
        self._cache[app.cert_file] = (changed, date)
        return date


def credential(app: AppConfig, dates: CertificateDates) -> dict[str, Any]:
    """What an app authenticates with, and when that expires (None: never or unknown)."""
    if app.provider == "fcm":
        return {"kind": "service account", "expires_at": None}
    if app.cert_file is not None:
        return {"kind": "certificate", "expires_at": dates.expires_at(app)}
    return {"kind": "token key", "expires_at": None}


def apps(
    config: Config,
    health: Mapping[str, Any],
    windows: Mapping[str, Window],
    dates: CertificateDates,
) -> list[dict[str, Any]]:
    """One row per configured app, in the config's order."""
    rows = []
    for app in config.apps:
        state = health.get(app.name)
        if state is None:  # configured but not running (a reload in progress)
            continue
        rows.append(
            {
                "name": app.name,
                "provider": app.provider,
                "environment": app.environment if app.provider == "apns" else None,
                "state": state["state"],
                "reason": state.get("reason"),
                "circuit": state["circuit"],
                "spool": {
                    "depth": state["spool"]["depth"],
                    "oldest_due_age": state["spool"]["oldest_due_age"],
                },
                "recent": recent(windows.get(app.name)),
                "credential": credential(app, dates),
            }
        )
    return rows


@attrs.frozen
class ChatServer:
    """One chat server as the page lists it."""

    protocol: Protocol
    name: str
    active: bool
    #: What :class:`Activity` knows it by (a Zulip server's uuid, which is never shown).
    key: str

    def row(self, activity: Activity, now: float) -> dict[str, Any]:
        last = activity.last(self.protocol, self.key)
        return {
            "protocol": self.protocol,
            "name": self.name,
            "state": "active" if self.active else "deactivated",
            "last_request_at": last,
            "last_request_age": None if last is None else round(now - last, ROUNDING),
        }


def configured_servers(config: Config, matrix_enabled: bool) -> Iterable[ChatServer]:
    """Servers the config names: Mattermost, Rocket.Chat, and Matrix homeservers."""
    for mattermost in config.mattermost.servers:
        yield ChatServer("mattermost", mattermost.name, True, mattermost.name)
    for rocketchat in config.rocketchat.servers:
        yield ChatServer("rocketchat", rocketchat.name, True, rocketchat.name)
    if matrix_enabled:
        yield ChatServer("matrix", MATRIX_HOMESERVERS, True, MATRIX_HOMESERVERS)


async def stored_servers(store: Store) -> list[ChatServer]:
    """Servers registered in the store: native API keys and Zulip servers.  Raises
    :class:`StoreUnavailable` when the store is failing."""
    native = [ChatServer("native", s.name, s.active, s.name) for s in await store.servers()]
    zulip = [
        ChatServer("zulip", z.hostname, not z.deactivated, z.uuid)
        for z in await store.zulip_servers()
    ]
    return [*native, *zulip]


async def servers(
    store: Store,
    config: Config,
    activity: Activity,
    *,
    matrix_enabled: bool,
    visible: Callable[[ChatServer], bool],
    now: float,
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows for the servers ``visible`` allows, and why the store's part is missing (None
    when it is not): a failing store must not take the page with it."""
    missing = None
    try:
        found = await stored_servers(store)
    except StoreUnavailable as error:
        found, missing = [], f"the store is failing ({error.kind})"
    found += configured_servers(config, matrix_enabled)
    return [server.row(activity, now) for server in found if visible(server)], missing
