"""The thin engine layer: one set of queries, two databases.

As in Synapse's storage layer, every query is written once, with ``?`` placeholders, in
the SQL both SQLite and PostgreSQL understand (``ON CONFLICT``, ``RETURNING``,
``coalesce``); an engine runs it.  A query function takes a :class:`Tx` and runs inside
one transaction: :meth:`Engine.write` commits it or rolls it back as a whole, so a
process killed at any moment leaves the database as it was before or after.

The SQLite engine (here) writes on one worker thread, one transaction at a time, and
reads on the event loop: an indexed read costs a few microseconds, a hop to a worker
thread and back about 100-140 (``benchmarks/store_hop.py``, :mod:`pushd.store.hop`),
and WAL mode lets a read see every committed write, never a half-written one.  The
PostgreSQL engine (:mod:`pushd.store.postgres`) runs both on worker threads: its reads
cross a network.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol, TypeVar

import trio

from pushd.files import private_file
from pushd.store.errors import (
    Conflict,
    FailureLog,
    StoreError,
    StoreUnavailable,
    ValueRefused,
)
from pushd.store.hop import run_on_thread
from pushd.store.identity import FileIdentity, file_change, file_identity

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]
Row = tuple[Any, ...]

#: How long a SQLite writer waits for a lock held by another process (the CLI).
BUSY_TIMEOUT_MS: Final = 5000
#: First pause between tries of switching a new file to WAL while another process holds
#: it (doubled each try, within ``BUSY_TIMEOUT_MS``).
WAL_SWITCH_FIRST_PAUSE: Final = 0.005


class Tx(Protocol):
    """One transaction: statements with ``?`` placeholders."""

    dialect: Dialect

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None: ...

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None: ...

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...


class Engine(Protocol):
    """Runs query functions; see the module docstring."""

    dialect: Dialect
    #: Several pushd processes share this database (PostgreSQL): state that a single
    #: process could keep in memory (Matrix dedupe, rate windows) must live here.
    shared: bool
    failures: FailureLog

    async def read(self, fn: Callable[[Tx], T]) -> T: ...

    async def write(self, fn: Callable[[Tx], T]) -> T: ...

    async def write_repeatable(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn``, whose statements each are atomic by themselves and harmless to
        run twice (a counter's increment: at worst one request counted twice) or only
        read: not one transaction.

        PostgreSQL runs them without ``BEGIN`` and ``COMMIT``, two round trips fewer;
        and when the connection dies under them, their outcome is unknown, so ``fn``
        may run again on another.  SQLite runs ``fn`` as a write.
        """
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the data is, for log lines (never a password)."""
        ...


class SqliteTx:
    """:class:`Tx` over one ``sqlite3`` connection."""

    dialect: Dialect = "sqlite"

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return self.db.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[object]]) -> None:
        self.db.executemany(sql, rows)

    def one(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        row: Row | None = self.db.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return self.db.execute(sql, params).fetchall()


_SQLITE_FAILURES: Final = (
    ("SQLITE_FULL", "disk_full"),
    ("SQLITE_IOERR", "io_error"),
    ("SQLITE_READONLY", "read_only"),
    ("SQLITE_BUSY", "busy"),
    ("SQLITE_LOCKED", "busy"),
    ("SQLITE_CANTOPEN", "cannot_open"),
    ("SQLITE_CORRUPT", "corrupt"),
    ("SQLITE_NOTADB", "corrupt"),
)


def sqlite_failure(error: sqlite3.Error) -> str:
    """A few words for what went wrong, from SQLite's error name (never its message,
    which may quote a value)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    for prefix, kind in _SQLITE_FAILURES:
        if name.startswith(prefix):
            return kind
    return "database_error"


def connect_sqlite(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with a busy timeout.

    The file is created 0600 first (SQLite gives its side files the same mode).
    """
    try:
        if not readonly:
            private_file(Path(path))
        uri = Path(path).resolve().as_uri() + ("?mode=ro" if readonly else "")
        db = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
    except (OSError, sqlite3.Error) as error:
        reason = error.strerror if isinstance(error, OSError) else error
        raise StoreError(f"cannot open {path}: {reason}") from None
    return db


#: :class:`ValueRefused`'s kind for the OverflowError ``sqlite3`` raises for a Python
#: integer beyond SQLite's 64 bits (before running the statement).
SQLITE_OVERFLOW: Final = "number out of range"


def run_sqlite_tx(db: sqlite3.Connection, fn: Callable[[Tx], T], *, immediate: bool) -> T:
    """Run ``fn`` in one transaction on ``db``: committed, or rolled back on any error."""
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        result = fn(SqliteTx(db))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, tried again while another process holds the file.

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once, without its busy handler, when instances open one new file together
    and another is creating the schema; so this waits as the busy timeout would.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = WAL_SWITCH_FIRST_PAUSE
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # on a worker thread: open_sync runs off the event loop
        pause *= 2


#: The failure kind once the SQLite file pushd opened is no longer the one at its path.
FILE_REPLACED: Final = "store_file_replaced"
#: ``[store] synchronous`` -> SQLite's value (a fixed table: never text from a file).
SYNCHRONOUS: Final = {"full": "FULL", "normal": "NORMAL"}


class SqliteEngine:
    """The embedded default: one file, one process.  Open with :meth:`open_sync`.

    The file is known by its identity, ``(st_dev, st_ino)``, taken at open: a file
    deleted or replaced (``mv backup.sqlite3 pushd.sqlite3``) under a running pushd
    stays open and writable through its descriptors, so without a look at the path
    pushd would go on answering "retrying" for deliveries spooled into a file nobody
    will ever open again.  Before each write transaction (an ``os.stat`` on the
    writer thread: 5-8 us measured on a 2-vCPU VM, beside 60-110 us for a one-row
    transaction at ``synchronous = normal`` and about 2 ms at ``full``, the default)
    and whenever health is read, the path is checked; once it
    names another file or none, the store fails for good (:data:`FILE_REPLACED`: 503s,
    ``/healthz`` degraded) until pushd is restarted on whatever is there now.
    """

    dialect: Dialect = "sqlite"
    shared = False

    def __init__(
        self,
        path: str,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        identity: FileIdentity | None = None,
        *,
        created: bool = False,
    ) -> None:
        self.path = path
        self._writer_db = writer
        self._reader_db = reader
        self._writer = trio.CapacityLimiter(1)
        self._identity = identity
        #: What became of the file (:func:`file_change`), once seen; never cleared.
        self._lost: str | None = None
        self._wal_emptied = False
        self._checking = threading.Lock()
        #: Whether opening made a new file where there was none (``serve`` says so).
        self.created = created
        self.failures = FailureLog(probe=self.check_file)

    @classmethod
    def open_sync(cls, path: str, synchronous: str = "full") -> SqliteEngine:
        created = not os.path.lexists(path)
        writer = connect_sqlite(path)
        try:
            _switch_to_wal(writer)
            # FULL flushes the WAL at every commit: what pushd acknowledged survives an
            # OS crash or power loss too.  NORMAL is durable across crashes of pushd
            # only (an OS crash may lose the last commits, never corrupt the file).
            writer.execute(f"PRAGMA synchronous = {SYNCHRONOUS[synchronous]}")
            reader = connect_sqlite(path, readonly=True)
            reader.execute("PRAGMA query_only = ON")
        except sqlite3.DatabaseError as error:
            writer.close()
            raise StoreError(f"{path}: {error}") from None
        return cls(path, writer, reader, file_identity(path), created=created)

    def check_file(self) -> StoreUnavailable | None:
        """The error to raise if the file opened is no longer the one at the path
        (recorded as the store's failure, logged once a minute), else None."""
        with self._checking:  # the writer thread and the event loop: one log line
            return self._check_file()

    def _check_file(self) -> StoreUnavailable | None:
        if self._lost is None and self._identity is not None:
            self._lost = file_change(self.path, self._identity)
        if self._lost is None:
            return None
        return self.failures.failed(
            FILE_REPLACED,
            f"{self.path} {self._lost} while pushd ran; nothing more is written to the "
            "file pushd opened, which nobody would read: restart pushd to serve the "
            "store now at that path, or put the right file back first",
        )

    def _empty_wal(self) -> None:
        """Checkpoint the lost file's WAL into it and truncate the WAL to nothing.

        The ``-wal`` file beside the path is still this connection's: left with frames
        in it, the next pushd would replay them onto whatever file is at the path now
        (a restored backup).  Emptied, it has nothing to replay.  Until it succeeds,
        by whoever has the writer connection: a write, a read finding it free, close."""
        if self._wal_emptied:
            return
        with contextlib.suppress(sqlite3.Error):
            row = self._writer_db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self._wal_emptied = row is not None and row[0] == 0  # 1: busy, try again

    def describe(self) -> str:
        return f"SQLite {self.path}"

    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run ``fn`` on the event loop (see the module docstring); no transaction is
        needed for one statement, and WAL gives each a consistent snapshot."""
        if self._lost is not None:  # no stat here: reads are the hot path
            lost = self.check_file()
            assert lost is not None
            try:  # a write running now empties the WAL itself, at its check
                self._writer.acquire_nowait()
            except trio.WouldBlock:
                raise lost from None
            try:
                self._empty_wal()
            finally:
                self._writer.release()
            raise lost
        try:
            return fn(SqliteTx(self._reader_db))
        except OverflowError:
            raise ValueRefused(SQLITE_OVERFLOW) from None
        except sqlite3.Error as error:
            raise self.failures.failed(sqlite_failure(error)) from None

    async def write(self, fn: Callable[[Tx], T]) -> T:
        # Never dropped for a cancelled caller, not even while it waits its turn: what
        # the caller hears never disagrees with what was committed, and a write asked
        # for (a spool row on the way to an answer) is done or failed.
        write = functools.partial(self.write_sync, fn)
        call = self.failures.began()
        try:
            result = await run_on_thread(write, self._writer, shield_wait=True)
        finally:
            self.failures.ended(call)
        self.failures.succeeded()
        return result

    async def write_repeatable(self, fn: Callable[[Tx], T]) -> T:
        return await self.write(fn)

    def write_sync(self, fn: Callable[[Tx], T]) -> T:
        """:meth:`write` for a thread that is not the event loop's (migrations)."""
        lost = self.check_file()
        if lost is not None:
            self._empty_wal()
            raise lost
        try:
            return run_sqlite_tx(self._writer_db, fn, immediate=True)
        except sqlite3.IntegrityError as error:
            raise Conflict(str(error)) from None
        except OverflowError:  # rolled back, as any error
            raise ValueRefused(SQLITE_OVERFLOW) from None
        except sqlite3.Error as error:
            raise self.failures.failed(sqlite_failure(error)) from None

    def read_sync(self, fn: Callable[[Tx], T]) -> T:
        return fn(SqliteTx(self._reader_db))

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.close_sync, limiter=self._writer)

    def close_sync(self) -> None:
        if self._lost is not None:
            self._empty_wal()
        self._reader_db.close()
        self._writer_db.close()


def serialize(tx: Tx, namespace: str, key: str) -> None:
    """Make transactions that check a name and then write it take turns, per name.

    A query that reads ("is this hostname free?") and then writes on what it read is
    only correct if no other transaction can do the same in between.  SQLite gives that
    for free: every write transaction begins IMMEDIATE and holds the one write lock.
    PostgreSQL's READ COMMITTED does not (two transactions both see the name free and
    both take it), so there this takes a transaction-scoped advisory lock on the name,
    released at commit or rollback; other names are not held up.
    """
    if tx.dialect != "postgres":
        return
    digest = hashlib.blake2b(f"{namespace}\0{key}".encode(), digest_size=8).digest()
    tx.execute("SELECT pg_advisory_xact_lock(?)", (int.from_bytes(digest, "big", signed=True),))


def raise_unless(ok: bool, message: str) -> None:
    """Raise :class:`StoreError` with ``message`` unless ``ok`` (a row was found)."""
    if not ok:
        raise StoreError(message)


__all__ = [
    "Conflict",
    "Dialect",
    "Engine",
    "Row",
    "SqliteEngine",
    "StoreError",
    "StoreUnavailable",
    "Tx",
    "serialize",
]
