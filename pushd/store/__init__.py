"""The store: every piece of state that outlives a request, behind one async interface.

:class:`Store` is one object with one method per query, grouped by concern in the
modules it mixes in (as Synapse's ``DataStore`` is): native servers and registrations
(:mod:`.servers`), Zulip servers, devices and E2EE (:mod:`.zulip`, :mod:`.zulip_devices`,
:mod:`.zulip_e2ee`), the spool (:mod:`.spool`), verdicts, dedupe and rate windows
(:mod:`.verdicts`).  Each query is written once and runs on either engine
(:mod:`.engine`): SQLite, the embedded default, or PostgreSQL (:mod:`.postgres`) for
several instances on one database.  Schema versions live in :mod:`.schema`;
``pushd store copy`` (:mod:`.copy`) moves an SQLite store to PostgreSQL.

No message content is stored in the clear: the spool seals what it keeps.
"""

from __future__ import annotations

import functools
import hmac
from typing import TYPE_CHECKING

import trio

from pushd.store.engine import Engine, SqliteEngine, Tx
from pushd.store.errors import Conflict, StoreError, StoreUnavailable, ValueRefused
from pushd.store.schema import SCHEMA_VERSION, migrate
from pushd.store.servers import (
    DeadToken,
    Registration,
    Server,
    ServerQueries,
    checked_server,
    hash_key,
    new_key,
    user_registrations,
)
from pushd.store.spool import SpoolQueries
from pushd.store.verdicts import LateVerdict, VerdictQueries, count_rate
from pushd.store.zulip import (
    HostnameTaken,
    ZulipPin,
    ZulipServer,
    ZulipServerQueries,
    zulip_server_in,
)
from pushd.store.zulip_devices import ZulipDeviceQueries, ZulipRealm, ZulipRegistration
from pushd.store.zulip_e2ee import ZulipBouncerKey, ZulipE2eeDevice, ZulipE2eeQueries

if TYPE_CHECKING:
    from pushd.config import StoreConfig

__all__ = [
    "SCHEMA_VERSION",
    "Conflict",
    "DeadToken",
    "HostnameTaken",
    "LateVerdict",
    "Registration",
    "Server",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "ValueRefused",
    "ZulipBouncerKey",
    "ZulipE2eeDevice",
    "ZulipPin",
    "ZulipRealm",
    "ZulipRegistration",
    "ZulipServer",
    "hash_key",
    "new_key",
    "open_store",
]

#: A server found by its key's hash and, only if it is active, counted in its rate window:
#: id, name, created_at, active, key_hash and the count (NULL when not counted).
_COUNTED_AUTHENTICATION = (
    "WITH found AS (SELECT id, name, created_at, active, key_hash FROM servers"
    " WHERE key_hash = ?), counted AS (INSERT INTO rate_windows (key, window_start,"
    " count) SELECT ? || name, ?, 1 FROM found WHERE active <> 0"
    " ON CONFLICT (key, window_start) DO UPDATE SET count = rate_windows.count + 1"
    " RETURNING count)"
    " SELECT id, name, created_at, active, key_hash, (SELECT count FROM counted)"
    " FROM found"
)
#: What an operator runs to bring an older store up to date.
MIGRATE_COMMAND = "pushd store migrate --config <your pushd.toml>"


class Store(
    ServerQueries,
    ZulipServerQueries,
    ZulipDeviceQueries,
    ZulipE2eeQueries,
    SpoolQueries,
    VerdictQueries,
):
    """Every query pushd makes, on one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def shared(self) -> bool:
        """Whether other pushd processes may use this database at the same time."""
        return self.engine.shared

    @property
    def unhealthy(self) -> str | None:
        """Why the store is failing (a kind like ``disk_full``, or ``stalled``), or None."""
        return self.engine.failures.reason

    def describe(self) -> str:
        return self.engine.describe()

    async def authenticate_counted(
        self, key: str, rate_prefix: str, window_start: int
    ) -> tuple[Server | None, int]:
        """:meth:`authenticate`, and for an active server :meth:`rate_hit` of
        ``rate_prefix + <its name>``: the server (or None) and the window's count (0
        when nothing was counted).

        On PostgreSQL both are one statement (a data-modifying ``WITH``, repeatable as
        a count is), so a request pays one hop and one round trip for both instead of
        two of each; elsewhere (SQLite workers' shared tables) the two calls.
        """
        server, count, _ = await self.authenticate_counted_for(key, rate_prefix, window_start)
        return server, count

    async def authenticate_counted_for(
        self, key: str, rate_prefix: str, window_start: int, user: str | None = None
    ) -> tuple[Server | None, int, list[Registration] | None]:
        """:meth:`authenticate_counted`, and for an active server ``user``'s
        registrations (:meth:`user_registrations`; None when not read).

        On PostgreSQL in the same hop to a worker thread as the counting statement
        (each store call's hop costs about as much CPU as its round trip), and read only
        once the key checked out: a wrong key reads nothing.
        """
        if self.engine.dialect != "postgres":
            # SQLite workers count in the host's shared tables: the key and the user's
            # registrations in one statement (authenticate_for), then the count.
            server, registrations = await self.authenticate_for(key, user)
            if server is None or not server.active:
                return server, 0, None
            try:
                count = await self.rate_hit(rate_prefix + server.name, window_start)
            except StoreUnavailable:  # a limit is a guard, not a quota: let it through
                count = 0
            return server, count, registrations
        digest = hash_key(key)

        def counted(tx: Tx) -> tuple[Server | None, int, list[Registration] | None]:
            row = tx.one(_COUNTED_AUTHENTICATION, (digest, rate_prefix, window_start))
            server = checked_server(row, digest)
            if server is None or not server.active or row is None:
                return server, 0, None
            count = int(row[5]) if row[5] else 0
            if user is None:
                return server, count, None
            return server, count, user_registrations(tx, server.id, user)

        return await self.engine.write_repeatable(counted)

    async def zulip_server_counted(
        self, uuid: str, key: str, rate_key: str, window_start: int
    ) -> tuple[ZulipServer | None, int | None]:
        """The Zulip server ``uuid`` (None if unknown) and, when ``key`` is its key and
        it is active, :meth:`rate_hit` of ``rate_key`` (None when nothing was counted).

        For a shared store, where every Zulip request is counted: on PostgreSQL the
        read and the count in one store call, one hop to a worker thread instead of two
        (each costs about as much CPU as its round trip); elsewhere (SQLite workers,
        whose counts are in the host's shared tables) the two calls.  The key is
        compared in constant time before anything is counted, so a wrong key or a
        deactivated registration counts nothing.
        """
        digest = hash_key(key)

        def counts(server: ZulipServer | None) -> bool:
            return (
                server is not None
                and not server.deactivated
                and hmac.compare_digest(digest, server.key_hash)
            )

        if self.engine.dialect != "postgres":
            server = await self.zulip_server(uuid)
            if not counts(server):
                return server, None
            try:
                return server, await self.rate_hit(rate_key, window_start)
            except StoreUnavailable:  # a limit is a guard, not a quota: let it through
                return server, 0

        def counted(tx: Tx) -> tuple[ZulipServer | None, int | None]:
            server = zulip_server_in(tx, uuid)
            if not counts(server):
                return server, None
            return server, count_rate(tx, rate_key, window_start)

        return await self.engine.write_repeatable(counted)

    async def close(self) -> None:
        await self.engine.close()


def open_engine_sync(config: StoreConfig, *, operator: bool = False) -> Engine:
    """The engine ``config`` names (blocking: a thread, or the CLI); ``operator``: for
    a CLI command, which waits longer for a lock another session holds."""
    if config.url is not None:
        from pushd.store.pgsession import LOCK_TIMEOUT_MS, OPERATOR_LOCK_TIMEOUT_MS
        from pushd.store.postgres import PostgresEngine

        return PostgresEngine.open_sync(
            config.url,
            pool_size=config.pool_size,
            password_file=config.password_file,
            lock_timeout_ms=OPERATOR_LOCK_TIMEOUT_MS if operator else LOCK_TIMEOUT_MS,
        )
    return SqliteEngine.open_sync(config.path, config.synchronous)


async def open_store(
    config: StoreConfig, *, upgrade: bool = False, operator: bool = False
) -> Store:
    """Open the store ``config`` names, creating a new one at the current schema.

    An existing older schema is migrated only with ``upgrade`` (``pushd store
    migrate``); otherwise StoreError says which command to run.  ``operator``: see
    :func:`open_engine_sync`.
    """
    engine = await trio.to_thread.run_sync(
        functools.partial(open_engine_sync, config, operator=operator)
    )
    try:
        await migrate(engine, upgrade=upgrade, hint=MIGRATE_COMMAND)
    except BaseException:
        await engine.close()
        raise
    return Store(engine)
