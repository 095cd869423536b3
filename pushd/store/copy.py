"""``pushd store copy``: move an SQLite store into an empty PostgreSQL database.

The way from one pushd to several: stop pushd, copy, point every instance's ``[store]
url`` at the new database.  What is copied, and how:

- every table of the schema, the spool included, in migration order (a table is created
  after the tables it references, so rows are inserted after the rows they name);
- rows as they are: sealed spool rows stay sealed (the instances need the same
  ``[spool] key_file``), key hashes stay hashes, ids keep their values, and each
  identity column's sequence is moved past the largest id copied;
- from one snapshot of the SQLite file (one read transaction), into PostgreSQL in one
  transaction: a failure leaves the target as it was, never half-copied.

The target must be empty: a database without tables (its schema is created at this
pushd's version) or a migrated pushd database without rows.  A target holding rows is
refused, so a copy cannot merge two stores or run twice.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Final

import attrs

from pushd.store.engine import Tx, connect_sqlite
from pushd.store.errors import StoreError
from pushd.store.schema import SCHEMA_VERSION, schema_tables

if TYPE_CHECKING:
    from pushd.store.postgres import PostgresEngine

#: Rows read from SQLite and sent to PostgreSQL per batch: bounds memory for a large
#: spool while keeping the round trips few.
BATCH_ROWS: Final = 1000


def copied_tables() -> tuple[str, ...]:
    """Every table of the schema, in the order the migrations create them."""
    return schema_tables()


@attrs.frozen
class CopyReport:
    """What :func:`copy_sqlite_to` copied: rows per table, in copy order."""

    rows: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(count for _, count in self.rows)


class NotEmpty(StoreError):
    """The target database already holds rows."""


def _columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in source.execute(f"PRAGMA table_info({table})")]


def _target_columns(tx: Tx, table: str) -> set[str]:
    rows = tx.all(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ?",
        (table,),
    )
    return {str(row[0]) for row in rows}


def _refuse_unless_empty(tx: Tx, tables: tuple[str, ...]) -> None:
    holding = []
    for table in tables:
        row = tx.one(f"SELECT count(*) FROM {table}")
        if row is not None and int(row[0]):
            holding.append(f"{table} ({int(row[0])} rows)")
    if holding:
        raise NotEmpty(
            "the target database is not empty: "
            + ", ".join(holding)
            + "; copy only into a new database (or one made by `pushd store migrate` "
            "and never served)"
        )


def _copy_table(source: sqlite3.Connection, tx: Tx, table: str) -> int:
    columns = _columns(source, table)
    missing = set(columns) - _target_columns(tx, table)
    if missing:
        raise StoreError(f"the target's table {table} lacks columns {sorted(missing)}")
    names = ", ".join(columns)
    insert = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    cursor = source.execute(f"SELECT rowid, {names} FROM {table} ORDER BY rowid")
    copied = 0
    while batch := cursor.fetchmany(BATCH_ROWS):
        rows = [row[1:] for row in batch]
        _refuse_nul(table, columns, batch)
        tx.executemany(insert, rows)
        copied += len(rows)
    return copied


def _refuse_nul(table: str, columns: list[str], batch: list[tuple[object, ...]]) -> None:
    """Name the first row of ``batch`` (rowid first) holding text PostgreSQL cannot.

    SQLite keeps a NUL character in text (older pushd accepted one in a native user
    id; a Zulip ``user_uuid`` may carry one); PostgreSQL refuses it, and the whole
    copy failed saying only "NUL character in text".  The admin needs the table and
    the row to fix or delete it; the value itself is never printed."""
    key = "id" if "id" in columns else "rowid"
    for row in batch:
        for column, value in zip(columns, row[1:], strict=True):
            if isinstance(value, str) and "\0" in value:
                raise StoreError(
                    f"table {table}, row {key} {row[0]}: column {column} holds a NUL "
                    "character, which PostgreSQL cannot store; nothing was copied: fix "
                    f"or delete that row with sqlite3 (`DELETE FROM {table} WHERE "
                    f"{key} = {row[0]}`, pushd stopped), then copy again"
                )


def _advance_identities(tx: Tx) -> None:
    """Move each identity sequence past the largest copied id, so the next row
    PostgreSQL numbers does not collide with a copied one."""
    rows = tx.all(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    )
    for table, column in rows:
        tx.execute(
            f"SELECT setval(pg_get_serial_sequence(?, ?), max({column})) FROM {table}"
            f" HAVING max({column}) IS NOT NULL",
            (str(table), str(column)),
        )


def copy_tx(source: sqlite3.Connection, tx: Tx) -> CopyReport:
    """Copy every table of ``source`` (one SQLite snapshot) into ``tx`` (PostgreSQL)."""
    if tx.dialect != "postgres":
        raise StoreError("the target must be a PostgreSQL database (postgresql://...)")
    row = source.execute("PRAGMA user_version").fetchone()
    version = int(row[0]) if row else 0
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"the SQLite store has schema {version}, this pushd copies schema "
            f"{SCHEMA_VERSION}: run `pushd store migrate` on it first"
        )
    tables = copied_tables()
    _refuse_unless_empty(tx, tables)
    source.execute("BEGIN")  # one snapshot of every table
    try:
        counts = tuple((table, _copy_table(source, tx, table)) for table in tables)
    finally:
        source.execute("COMMIT")
    _advance_identities(tx)
    return CopyReport(counts)


def copy_sqlite_to(path: str, target: PostgresEngine) -> CopyReport:
    """Open the SQLite file at ``path`` read-only and copy it into ``target`` in one
    transaction (blocking: a worker thread, or the CLI)."""
    source = connect_sqlite(path, readonly=True)
    try:
        return target.write_sync(lambda tx: copy_tx(source, tx))
    except sqlite3.Error as error:
        raise StoreError(f"cannot read {path}: {error}") from None
    finally:
        source.close()
