"""A database that is not a pushd store is refused, whatever tables it holds.

pushd told one apart only by a table named ``servers``: a PostgreSQL database holding
another application's ``spool`` made serve and copy die on psycopg's DuplicateTable
traceback, another application's SQLite file (``user_version`` 0) got pushd's tables
added beside its own, and one with ``user_version`` 3 failed with "store unavailable:
database_error".  Each is now refused with "holds tables that are not a pushd store",
and left as it was.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from pushd.config import StoreConfig
from pushd.store import StoreError, open_store
from tests.process import run_cli_process

REFUSAL = "holds tables that are not a pushd store"


def foreign_sqlite(path: Path, user_version: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("INSERT INTO notes (body) VALUES ('not pushd data')")
        db.execute(f"PRAGMA user_version = {user_version}")


def sqlite_shape(path: Path) -> tuple[int, list[str]]:
    with sqlite3.connect(path) as db:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = [str(r[0]) for r in db.execute("SELECT name FROM sqlite_master ORDER BY name")]
    return version, tables


@pytest.mark.parametrize("user_version", [0, 3])
async def test_another_applications_sqlite_file_is_refused_and_left_alone(
    tmp_path: Path, user_version: int
) -> None:
    other = tmp_path / "other.db"
    foreign_sqlite(other, user_version)
    with pytest.raises(StoreError, match=REFUSAL):  # serve, init, server add
        await open_store(StoreConfig(path=str(other)))
    with pytest.raises(StoreError, match=REFUSAL):
        await open_store(StoreConfig(path=str(other)), upgrade=True)
    migrated = await run_cli_process("store", "migrate", "--store", str(other))
    assert migrated.returncode == 1
    assert REFUSAL in migrated.stderr.decode(), migrated.stderr.decode()
    assert sqlite_shape(other) == (user_version, ["notes"])


def foreign_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE spool (job TEXT)")


async def test_a_postgres_database_with_another_applications_spool_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    await trio.to_thread.run_sync(foreign_postgres, pg_url)
    with pytest.raises(StoreError, match=REFUSAL):
        await open_store(StoreConfig(url=pg_url, pool_size=1))
    source = tmp_path / "pushd.sqlite3"
    store = await open_store(StoreConfig(path=str(source)))
    await store.close()
    copied = await run_cli_process("store", "copy", "--store", str(source), "--to", pg_url)
    message = copied.stderr.decode()
    assert copied.returncode == 1
    assert REFUSAL in message and "spool" in message, message
    assert "Traceback" not in message


async def test_a_database_sharing_no_table_name_with_pushd_is_used(pg_url: str) -> None:
    """PostgreSQL databases are often shared: a table pushd does not use is no clash."""

    def other_table() -> None:
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE jobs (job TEXT)")

    await trio.to_thread.run_sync(other_table)
    store = await open_store(StoreConfig(url=pg_url, pool_size=1))
    await store.close()
    store = await open_store(StoreConfig(url=pg_url, pool_size=1))  # and again
    await store.close()
