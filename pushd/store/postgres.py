"""The PostgreSQL engine: N pushd instances on one database.

psycopg 3's async API runs on asyncio only, so pushd uses its synchronous API on trio
worker threads, through a ``psycopg_pool`` pool sized from the config; a
``trio.CapacityLimiter`` of the same size keeps threads from queueing inside the pool.
Every read and write is one transaction on one pooled connection.

Connection loss is an outage, not a bug: the statement fails, the transaction is rolled
back by the server (nothing half-written), the caller hears 503 ``store_unavailable``,
and the pool replaces the broken connection; connections are checked before use, so a
database restart costs each stale connection one cheap check, not one failed request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import trio

from pushd.store.engine import Dialect, Row, Tx
from pushd.store.errors import Conflict, FailureLog, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg
    import psycopg_pool

T = TypeVar("T")

#: How long a request waits for a pooled connection before the store counts as failing.
POOL_TIMEOUT: Final = 10.0
#: Connections kept open while idle: one, so the first request after a quiet night
#: does not pay a connection's setup.
POOL_MIN: Final = 1
#: SQLSTATE classes and codes that mean the database, not the request, is in trouble.
_FAILURE_KINDS: Final = (
    ("53100", "disk_full"),
    ("53", "resources"),
    ("57P", "server_shutdown"),
    ("08", "connection_lost"),
    ("25006", "read_only"),
    ("40", "conflict_retry"),
)


@lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    """``?`` to psycopg's ``%s`` (and a literal ``%`` doubled), once per statement text."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresTx:
    """:class:`~pushd.store.engine.Tx` over one psycopg connection in a transaction."""

    dialect: Dialect = "postgres"

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        cursor = self.connection.execute(_placeholders(sql), params)
        return cursor.rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(_placeholders(sql), list(rows))

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row: Row | None = self.connection.execute(_placeholders(sql), params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self.connection.execute(_placeholders(sql), params).fetchall()


def failure_kind(error: Exception) -> str:
    """A few words for what went wrong, from the SQLSTATE (never the message, which
    may quote a value)."""
    code = getattr(error, "sqlstate", None) or ""
    for prefix, kind in _FAILURE_KINDS:
        if code.startswith(prefix):
            return kind
    return "connection_lost" if not code else "database_error"


def redact_url(url: str) -> str:
    """``url`` without its password, for log lines and check-config."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))


class PostgresEngine:
    """Open with :meth:`open` (blocking: call it on a thread, or from the CLI)."""

    dialect: Dialect = "postgres"
    shared = True

    def __init__(self, url: str, pool: psycopg_pool.ConnectionPool[Any], size: int) -> None:
        self.url = url
        self.pool = pool
        self._limiter = trio.CapacityLimiter(size)
        self.failures = FailureLog()

    @classmethod
    def open_sync(
        cls, url: str, *, pool_size: int, password_file: str | None = None
    ) -> PostgresEngine:
        try:
            import psycopg_pool
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'pushd[postgres]'") from None
        kwargs: dict[str, Any] = {"autocommit": False}
        if password_file is not None:
            try:
                kwargs["password"] = Path(password_file).read_text().strip()
            except OSError as error:
                raise StoreError(f"cannot read {password_file}: {error.strerror}") from None
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min(POOL_MIN, pool_size),
            max_size=pool_size,
            open=False,
            timeout=POOL_TIMEOUT,
            check=psycopg_pool.ConnectionPool.check_connection,
            name="pushd",
        )
        try:
            pool.open(wait=True, timeout=POOL_TIMEOUT)
        except Exception as error:
            pool.close()
            raise StoreError(f"cannot connect to {redact_url(url)}: {error}") from None
        return cls(url, pool, pool_size)

    def describe(self) -> str:
        return f"PostgreSQL {redact_url(self.url)}"

    def run_sync(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` in one transaction on a pooled connection (blocking)."""
        import psycopg
        import psycopg_pool

        try:
            with self.pool.connection() as connection, connection.transaction():
                return fn(PostgresTx(connection))
        except psycopg.IntegrityError as error:
            raise Conflict(error.diag.constraint_name or "constraint") from None
        except (psycopg.OperationalError, psycopg.InternalError, psycopg.InterfaceError) as error:
            raise self.failures.failed(failure_kind(error)) from None
        except psycopg_pool.PoolTimeout:
            raise self.failures.failed("pool_exhausted") from None

    async def _run(self, fn: Callable[[Tx], T]) -> T:
        # Not abandoned on cancellation (trio's default): a transaction that started is
        # finished, so what the caller hears never disagrees with what was committed.
        result = await trio.to_thread.run_sync(self.run_sync, fn, limiter=self._limiter)
        self.failures.succeeded()
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self._run(fn)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        return await self._run(fn)

    def write_sync(self, fn: Callable[[Tx], T]) -> T:
        return self.run_sync(fn)

    def read_sync(self, fn: Callable[[Tx], T]) -> T:
        return self.run_sync(fn)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.close_sync)

    def close_sync(self) -> None:
        self.pool.close()
