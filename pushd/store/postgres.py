"""The PostgreSQL engine: N pushd instances on one database.

psycopg 3's async API runs on asyncio only, so pushd uses its synchronous API on trio
worker threads, through a ``psycopg_pool`` pool sized from the config; a
``trio.CapacityLimiter`` of the same size keeps threads from queueing inside the pool.
Every read and write runs on one pooled connection.

Round trips are the cost (each is about 0.05 CPU-ms of pushd's and a wake-up of a
backend), so a read is its statements alone, in autocommit: at PostgreSQL's default READ
COMMITTED level every statement takes its own snapshot even inside a transaction, so a
``BEGIN`` and ``COMMIT`` around a read would add two round trips and no guarantee.  A
write is ``BEGIN``, its statements, ``COMMIT`` (one transaction, all or nothing), except
a repeatable one (:meth:`PostgresEngine.write_repeatable`: statements each atomic by
itself and harmless to run twice, such as the shared rate count, or reads).

Connection loss is an outage, not a bug: the statement fails, the transaction is rolled
back by the server (nothing half-written), the caller hears 503 ``store_unavailable``,
and the pool replaces the broken connection.  Connections are not checked before use
(a round trip per checkout); a connection that turns out to be dead when first used
(the database restarted, or a failover ended idle backends) is replaced and the work
run once more on another, which is safe only because nothing of it can have happened,
or it may happen twice: a write's ``BEGIN`` failed, a read (which changes nothing)
failed, or a repeatable statement failed.  A write whose connection is lost after
``BEGIN`` is a 503 (it may have run as far as ``COMMIT``).

While the database cannot be reached at all, a request is answered 503 within
:data:`UNREACHABLE_WAIT` rather than after the pool's whole :data:`POOL_TIMEOUT` (a
chat server's request would time out first, and every waiting request holds a worker
thread), and the pool's reconnection backoff is capped (:data:`RECONNECT_TIMEOUT`) so
that pushd notices within seconds that the database is back, not minutes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import trio

from pushd.store.engine import Dialect, Row, Tx
from pushd.store.errors import (
    Conflict,
    FailureLog,
    StoreError,
    StoreUnavailable,
    ValueRefused,
)
from pushd.store.hop import run_on_thread
from pushd.store.pgcall import StoreCall
from pushd.store.pgsession import (
    IDLE_IN_TRANSACTION_MS as IDLE_IN_TRANSACTION_MS,
)
from pushd.store.pgsession import LOCK_TIMEOUT_MS as LOCK_TIMEOUT_MS
from pushd.store.pgsession import OPERATOR_LOCK_TIMEOUT_MS as OPERATOR_LOCK_TIMEOUT_MS
from pushd.store.pgsession import TCP_SETTINGS as TCP_SETTINGS
from pushd.store.pgsession import session_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg
    import psycopg_pool

T = TypeVar("T")

#: How long a request waits for a pooled connection before the store counts as failing.
POOL_TIMEOUT: Final = 10.0
#: How long a request waits for a connection when connecting is failing: then waiting
#: longer only makes the 503 later.
UNREACHABLE_WAIT: Final = 1.0
#: Once connecting is known to fail, a request waits only this long for a connection
#: the pool may have made meanwhile: each waiting request holds one of ``pool_size``
#: worker slots, so at UNREACHABLE_WAIT each the last of 16 concurrent requests on a
#: pool of 4 heard its 503 after 4-5 s.
UNREACHABLE_RECHECK: Final = 0.1
#: psycopg_pool retries a failed connection with a doubling delay for this long, then
#: stops until a request asks again (and a request then makes it try at once): the
#: bound on how long pushd takes to see that the database is back.
RECONNECT_TIMEOUT: Final = 5.0
#: While pushd serves, a store call not done this long after it began (its waits for a
#: thread and a connection included) is given up: its connection is shut
#: (:class:`StoreCall`), the call fails as ``stalled`` (503) and the pool replaces the
#: connection.  A link that stalls with its TCP
#: connection still open and acknowledging (a hung proxy or pooler on the way, a
#: server stuck on its disk) ends no statement, and neither keepalives nor
#: ``tcp_user_timeout`` see it: a request that took a connection waited for as long as
#: the stall lasted.  Not for the CLI and migrations (:attr:`PostgresEngine.give_up_after`):
#: an operator's statement may rightly take longer.
GIVE_UP_AFTER: Final = 10.0
_STALLED_DETAIL: Final = (
    "no answer from the database within {:.0f} s (a hung link, proxy or pooler?): "
    "its connection was closed"
)
#: Runs of one read or write after the first on a connection found dead when first used.
STALE_RETRIES: Final = 1
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
    ("55P03", "lock_wait"),
)
#: Failure kinds that mean the connection, not one statement, is gone.
_CONNECTION_KINDS: Final = frozenset({"connection_lost", "server_shutdown", "unreachable"})


@functools.lru_cache(maxsize=1024)
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


#: SQLSTATE of a number outside its column's range (``bigint out of range``).
NUMERIC_OUT_OF_RANGE: Final = "22003"


def _refused_kind(error: Exception) -> str:
    """:class:`ValueRefused`'s kind for a psycopg DataError: psycopg refuses a NUL in
    text itself, before sending (no SQLSTATE; its fixed message quotes no value)."""
    code = getattr(error, "sqlstate", None) or ""
    if code == NUMERIC_OUT_OF_RANGE:
        return "number out of range"
    if not code and "NUL" in str(error):
        return "NUL character in text"
    return "invalid value"


def _connect_error(url: str, kwargs: dict[str, Any]) -> str | None:
    """Why connecting fails, from one plain attempt: the pool only says it timed out
    ("pool initialization incomplete after 10.0 sec"), not that the server refused
    the connection or the password; None if this attempt connects."""
    import psycopg

    try:
        psycopg.connect(url, **kwargs).close()
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


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
        #: Connecting failed and nothing has succeeded since (read and written by
        #: worker threads; a stale value only changes how long one request waits).
        self._unreachable = False
        #: How long a call may wait for the database's answer before it is given up:
        #: :data:`GIVE_UP_AFTER` once ``serve`` has opened the store and migrated it.
        self.give_up_after = math.inf

    @classmethod
    def open_sync(
        cls,
        url: str,
        *,
        pool_size: int,
        password_file: str | None = None,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    ) -> PostgresEngine:
        try:
            import psycopg_pool
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'pushd[postgres]'") from None
        kwargs = session_settings(url, lock_timeout_ms, password_file)
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min(POOL_MIN, pool_size),
            max_size=pool_size,
            open=False,
            timeout=POOL_TIMEOUT,
            reconnect_timeout=RECONNECT_TIMEOUT,
            name="pushd",
        )
        # The pool logs a warning per failed connection attempt (several a second in
        # an outage); the store's FailureLog says the same once a minute.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        try:
            pool.open(wait=True, timeout=POOL_TIMEOUT)
        except Exception as error:
            pool.close()
            why = _connect_error(url, kwargs) or str(error)
            raise StoreError(f"cannot connect to {redact_url(url)}: {why}") from None
        return cls(url, pool, pool_size)

    def describe(self) -> str:
        return f"PostgreSQL {redact_url(self.url)}"

    def run_sync(
        self, fn: Callable[[Tx], T], *, write: bool = True, call: StoreCall | None = None
    ) -> T:
        """Run ``fn`` on a pooled connection (blocking): a write in one transaction, a
        read (or a repeatable statement, see :meth:`write_repeatable`) in autocommit;
        once more on another connection if this one was dead.  ``call`` records the
        connection in use, for the event loop to give the call up."""
        import psycopg

        call = call or StoreCall()
        for attempt in range(STALE_RETRIES + 1):
            if attempt:  # the last connection was dead: so, likely, its idle neighbours
                self.pool.check()
            # What is left of POOL_TIMEOUT since the call began (waiting for a thread
            # counts), but a short look for an idle connection at least.
            waited = time.monotonic() - call.began
            connection = self._connection(max(POOL_TIMEOUT - waited, UNREACHABLE_RECHECK))
            begun = False
            try:
                if not call.using(connection):
                    raise self._failed("stalled")
                if not write:
                    result = fn(PostgresTx(connection))
                else:
                    with connection.transaction():
                        begun = True  # BEGIN went through: the connection was alive
                        result = fn(PostgresTx(connection))
            except psycopg.IntegrityError as error:
                raise Conflict(error.diag.constraint_name or "constraint") from None
            except psycopg.DataError as error:  # a NUL in text, a number out of range
                raise ValueRefused(_refused_kind(error)) from None
            except (
                psycopg.OperationalError,
                psycopg.InternalError,
                psycopg.InterfaceError,
            ) as error:
                if call.given_up:  # its connection shut by give_up, not lost
                    raise self._failed("stalled") from None
                kind = failure_kind(error)
                if not begun and kind in _CONNECTION_KINDS and attempt < STALE_RETRIES:
                    # Nothing of fn happened: run it on a live connection, after
                    # checking the idle ones (a restart ended them all).
                    continue
                raise self._failed(kind) from None
            finally:
                call.using(None)
                self.pool.putconn(connection)  # a broken one is discarded and replaced
            self._unreachable = False
            return result
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _connection(self, wait: float = POOL_TIMEOUT) -> psycopg.Connection[Any]:
        """A checked connection from the pool within ``wait`` seconds, or
        StoreUnavailable.

        The first :data:`UNREACHABLE_WAIT` tells an unreachable database (the pool's
        connection attempts failed meanwhile, or had failed before) from a busy pool
        (nothing failed: wait on, up to ``wait``).
        """
        import psycopg_pool

        errors = self._connect_errors()
        connection: psycopg.Connection[Any]
        first_wait = min(UNREACHABLE_RECHECK if self._unreachable else UNREACHABLE_WAIT, wait)
        try:
            connection = self.pool.getconn(timeout=first_wait)
            return connection
        except psycopg_pool.PoolTimeout:
            if self._unreachable or self._connect_errors() > errors:
                raise self._failed("unreachable") from None
        if wait <= first_wait:
            raise self._failed("pool_exhausted")
        try:
            connection = self.pool.getconn(timeout=wait - first_wait)
            return connection
        except psycopg_pool.PoolTimeout:
            failing = self._connect_errors() > errors
            raise self._failed("unreachable" if failing else "pool_exhausted") from None

    def _connect_errors(self) -> int:
        return self.pool.get_stats().get("connections_errors", 0)

    def _failed(self, kind: str) -> StoreUnavailable:
        if kind in _CONNECTION_KINDS:
            self._unreachable = True
        detail = _STALLED_DETAIL.format(self.give_up_after) if kind == "stalled" else ""
        return self.failures.failed(kind, detail)

    async def _run(self, fn: Callable[[Tx], T], write: bool) -> T:
        # Not abandoned on cancellation (run_on_thread): a transaction that started is
        # finished, so what the caller hears never disagrees with what was committed.
        call = StoreCall()
        run = functools.partial(self.run_sync, fn, write=write, call=call)
        began = self.failures.began()
        try:
            # Waiting for one of the pool's threads counts against POOL_TIMEOUT, as
            # waiting for a connection does: while every thread waits on the database,
            # the requests queued behind them hear 503 too.
            result = await run_on_thread(
                run,
                self._limiter,
                wait_at_most=POOL_TIMEOUT,
                run_at_most=self.give_up_after,
                on_overrun=call.give_up,
            )
        except trio.TooSlowError:
            raise self._failed("pool_exhausted") from None
        finally:
            self.failures.ended(began)
        self.failures.succeeded()
        return result

    async def read(self, fn: Callable[[Tx], T]) -> T:
        return await self._run(fn, write=False)

    async def write(self, fn: Callable[[Tx], T]) -> T:
        return await self._run(fn, write=True)

    async def write_repeatable(self, fn: Callable[[Tx], T]) -> T:
        # Each statement atomic by itself, so no BEGIN and COMMIT (two round trips
        # fewer); harmless to run twice, so run again like a read when its connection
        # was dead.
        return await self._run(fn, write=False)

    def write_sync(self, fn: Callable[[Tx], T]) -> T:
        return self.run_sync(fn)

    def read_sync(self, fn: Callable[[Tx], T]) -> T:
        return self.run_sync(fn, write=False)

    async def close(self) -> None:
        await trio.to_thread.run_sync(self.close_sync)

    def close_sync(self) -> None:
        self.pool.close()
