"""The server-wide sections of pushd.toml: ``[server]``, ``[store]``, ``[spool]``,
``[metrics]``, ``[log]``, ``[retry]`` and ``[upstream]``."""

from __future__ import annotations

from typing import Literal

import attrs

from pushd.config.constants import (
    DEFAULT_DEGRADED_AFTER,
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_FIRST_ATTEMPT_DEADLINE,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_METRICS_PORT,
    DEFAULT_POOL_SIZE,
    DEFAULT_PORT,
    LogLevel,
    SqliteSync,
)


@attrs.frozen
class ServerConfig:
    """``[server]``: where the HTTP API listens and how much it accepts."""

    listen: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: How long a caller waits for the first upstream attempt before hearing "retrying".
    first_attempt_deadline: float = DEFAULT_FIRST_ATTEMPT_DEADLINE
    #: On shutdown, how long in-flight deliveries may finish before they are cancelled.
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    #: Reverse proxies (CIDR) whose ``X-Forwarded-For`` or ``Forwarded`` names the
    #: client (for ``allowed_networks``, throttles and logs); from any other peer those
    #: headers are ignored.
    trusted_proxies: tuple[str, ...] = ()
    #: A file holding the admin token: ``Authorization: Bearer <token>`` reads the
    #: detail of /healthz (as a chat server's key does).  None: no admin token.
    admin_token_file: str | None = None
    #: Where chat servers reach pushd (``https://push.example.com``), behind any proxy:
    #: ``check-config`` builds the URL each chat server needs from it.
    public_url: str | None = None
    #: pushd's process id is written here while it runs, for ``pushd reload``.
    pid_file: str | None = None
    #: Processes serving the API port together (``SO_REUSEPORT``), under one
    #: supervisor (:mod:`pushd.supervisor`); 1: pushd is one process, as before.
    workers: int = 1


@attrs.frozen
class StoreConfig:
    """``[store]``: the embedded SQLite database, or PostgreSQL for several instances."""

    path: str = "/var/lib/pushd/pushd.sqlite3"
    #: PostgreSQL instead of SQLite: ``postgresql://user@host/db`` (libpq's URL; its
    #: environment, PGPASSWORD or ~/.pgpass, works too).  ``path`` is then unused.
    url: str | None = None
    #: A file holding the database password, kept out of the URL and this file.
    password_file: str | None = None
    #: PostgreSQL connections per instance (and worker threads using them).
    pool_size: int = DEFAULT_POOL_SIZE
    #: SQLite's ``synchronous``: ``full`` makes every commit (a delivery spooled before
    #: its caller hears "retrying") survive a power loss or kernel crash too; ``normal``
    #: survives a crash of pushd only and saves a WAL flush per commit.
    synchronous: SqliteSync = "full"


@attrs.frozen
class SpoolConfig:
    """``[spool]``: deliveries answered "retrying" wait here, sealed, until final."""

    #: Keys that seal the spooled pushes, one per line (base64 of 32 random bytes); new
    #: rows use the first.  Relative to this file.  Created (0600) on first start for
    #: SQLite; with PostgreSQL every instance must have the same file.
    key_file: str = "spool.key"
    #: An instance that claims a row holds it this long before others may take it over.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: /healthz says "degraded" while an app has a row due longer ago than this.
    degraded_after: float = DEFAULT_DEGRADED_AFTER


@attrs.frozen
class MetricsConfig:
    """``[metrics]``: Prometheus metrics at ``/metrics`` on a listener of their own, so
    the API port need not be reachable by Prometheus, nor the metrics by chat servers."""

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT
    #: A file holding a token that scrapes must send as ``Authorization: Bearer``;
    #: required when ``listen`` is not a loopback address.
    bearer_token_file: str | None = None


@attrs.frozen
class LogConfig:
    """``[log]``."""

    level: LogLevel = "info"
    format: Literal["text", "json"] = "text"


@attrs.frozen
class RetryConfig:
    """``[retry]``: the background retry loop for transient upstream failures."""

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 300.0
    #: Give up on a notification this long after it was first sent if it set no expiry.
    default_ttl: float = 24 * 3600.0
    #: At most this many notifications wait for a retry; beyond it the oldest are dropped.
    max_queued: int = 100_000
    #: How long an app stays paused after a credential error before pushd tries again.
    credential_pause: float = 300.0


@attrs.frozen
class UpstreamConfig:
    """``[upstream]``: how pushd reaches APNs, FCM and Google's token endpoint.

    ``proxy`` sends every app through an HTTP proxy (CONNECT tunnels, see
    :mod:`pushd.upstream.proxy`); an app's own ``proxy`` overrides it, ``""`` for direct.
    """

    #: ``http://[user[:password]@]host:port``; kept out of repr: it may hold a password.
    proxy: str | None = attrs.field(default=None, repr=False)
    #: A file holding the proxy's password, so pushd.toml need not.
    proxy_password_file: str | None = None
    #: Hosts reached without the proxy (``NO_PROXY`` syntax); unset: the ``NO_PROXY``
    #: environment variable.
    no_proxy: tuple[str, ...] | None = None
