"""What a reload compares: the old config and the new one, old frontends and new ones.

Split from :mod:`pushd.reload` because these are pure functions of configs (and of the
bytes of the files they name), with no lanes, tasks or servers: which settings only a
restart applies (:data:`RESTART_ONLY`), what an app's upstream client was built from
(:func:`fingerprint`: equal fingerprints keep the lane and its connections), and which
frontend state carries over (:func:`carry_state`).  They change when the config grows a
field; :mod:`pushd.reload` changes when the way a reload is applied does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from pushd.config import AppConfig, Config
from pushd.config.checks import APP_FILES

#: Settings read once at start: a change is logged as needing a restart and ignored.
RESTART_ONLY: Final = (
    "server.listen",
    "server.port",
    "server.tls_cert",
    "server.tls_key",
    "server.trusted_proxies",
    "server.drain_seconds",
    "server.pid_file",
    "server.workers",
    "store",
    "spool.key_file",
    "log.format",
    # [metrics] (where present): its listener is bound once, at start.
    "metrics.enabled",
    "metrics.listen",
    "metrics.port",
)

#: The fields an app's upstream client is built from (see ``config.apns_settings`` and
#: ``config.fcm_settings``): a change in any of them, or in the files they name, needs
#: new connections.  Everything else about an app is read by the frontends per request.
SENDER_FIELDS: Final = (
    "provider",
    "topic",
    "environment",
    "key_file",
    "key_id",
    "team_id",
    "cert_file",
    "cert_password_file",
    "service_account_file",
    "project_id",
    "upstream_url",
    "upstream_ca_file",
    "connections",
    "request_timeout",
    "proxy",
    "proxy_password_file",
)
#: Frontend attributes that hold state worth keeping across a reload.
_CARRIED: Final = ("rate_limit", "limiter", "throttle", "dedupe", "stats", "rejected")


def _digest(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as error:
        return f"unreadable: {error.strerror}"


def fingerprint(config: Config, app: AppConfig) -> tuple[Any, ...]:
    """What an app's upstream client depends on, file contents included (reads files)."""
    return (
        tuple(getattr(app, field) for field in SENDER_FIELDS),
        config.upstream,
        tuple(_digest(getattr(app, name)) for name in APP_FILES),
        _digest(config.upstream.proxy_password_file),
    )


_ABSENT: Final = object()


def setting(config: Config, path: str) -> Any:
    """The value of the dotted setting ``path`` (``server.port``) in ``config``; a
    sentinel for a section this build does not have."""
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part, _ABSENT)
    return value


def _put(config: Config, path: str, value: Any) -> Config:
    section, _, field = path.partition(".")
    if not field:
        return attrs.evolve(config, **{section: value})
    changed = attrs.evolve(getattr(config, section), **{field: value})
    return attrs.evolve(config, **{section: changed})


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with :data:`RESTART_ONLY` settings put back to ``old``'s; what differed.

    Keys of sections this build does not have are skipped.
    """
    changed = []
    for key in RESTART_ONLY:
        before, after = setting(old, key), setting(new, key)
        if before is _ABSENT or before == after:
            continue
        changed.append(key)
        new = _put(new, key, before)
    return new, changed


def carry_state(old: Sequence[Any], new: Sequence[Any]) -> None:
    """Give each new frontend its predecessor's counters, windows and dedupe memory
    where their settings are the same (a changed limit starts afresh)."""
    for before, after in zip(old, new, strict=False):
        if type(before) is not type(after):
            continue
        for name in _CARRIED:
            kept, fresh = getattr(before, name, None), getattr(after, name, None)
            if kept is None or fresh is None or type(kept) is not type(fresh):
                continue
            # A rate limit or dedupe window that changed starts afresh.
            settings = ("limit", "window")
            if any(getattr(kept, k, None) != getattr(fresh, k, None) for k in settings):
                continue
            setattr(after, name, kept)
