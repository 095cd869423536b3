"""The SQLite file deleted or replaced under a running pushd: the store fails, loudly.

The file stays open (and writable) through pushd's descriptors after ``rm`` or ``mv``,
so pushd went on answering "retrying" for deliveries spooled into a file nobody would
open again, ``/healthz`` said ok, and the next start made a new, empty store without a
word (or, after ``mv backup.sqlite3 pushd.sqlite3``, replayed the old WAL onto the
backup).  Now the path is checked against the file opened: a send or a registration is
answered 503 ``store_unavailable``, ``/healthz`` is degraded with the reason
``store_file_replaced``, one ERROR line says what happened and that pushd must be
restarted, and a ``serve`` that creates a new store file says so.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pushd.config import StoreConfig
from pushd.store import open_store
from tests.conftest import TOPIC, app_entry, token
from tests.process import start_pushd_process, write_config

#: An APNs that is not there: every first attempt fails, so sends are spooled (written).
DOWN_UPSTREAM = "https://127.0.0.1:9"
KIND = "store_file_replaced"
ADMIN_TOKEN = "admin-token-0123456789abcdef"


async def seed_store(path: Path) -> str:
    store = await open_store(StoreConfig(path=str(path)))
    try:
        _, key = await store.add_server("chat-server")
    finally:
        await store.close()
    return key


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def swap(database: Path, backup: Path, how: str) -> None:
    """What an admin does under a running pushd: ``rm pushd.sqlite3*``, or
    ``mv backup.sqlite3 pushd.sqlite3``."""
    if how == "deleted":
        for side in ("", "-wal", "-shm"):
            Path(f"{database}{side}").unlink(missing_ok=True)
    else:
        backup.rename(database)


def wal_bytes(database: Path) -> int:
    wal = Path(f"{database}-wal")
    return wal.stat().st_size if wal.exists() else 0


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_store_file_deleted_or_replaced_under_pushd_fails_the_store(
    nursery: trio.Nursery, key_file: Path, ca_file: Path, tmp_path: Path, how: str
) -> None:
    database = tmp_path / "pushd.sqlite3"
    key = await seed_store(database)
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(database) as source, sqlite3.connect(backup) as target:
        source.backup(target)  # taken before any device: what an admin restores
    admin_token = tmp_path / "admin.token"
    admin_token.write_text(ADMIN_TOKEN + "\n")
    sections: dict[str, Any] = {
        "server": {
            "port": 0,
            "first_attempt_deadline": 0.3,
            "drain_seconds": 1.0,
            "admin_token_file": str(admin_token),
        },
        "store": {"path": str(database)},
        "apps": [app_entry("chat", TOPIC, DOWN_UPSTREAM, key_file, ca_file)],
    }
    config = write_config(tmp_path / "pushd.toml", sections)
    process = await start_pushd_process(nursery, config)
    auth = {"authorization": f"Bearer {key}"}
    notification = {"user": "alice", "alert": "hi"}
    async with httpx.AsyncClient(timeout=10, base_url=process.url, headers=auth) as client:
        device = {"user": "alice", "token": token(1), "app": "chat"}
        assert (await client.post("/v1/devices", json=device)).status_code == 201
        sent = await client.post("/v1/notifications", json=notification)
        assert sent.json()["results"][0]["status"] == "retrying", sent.text

        swap(database, backup, how)

        # Health sees it before any request writes (the admin token needs no store; the
        # spooled push's retry may write first, or not).
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        health = await client.get("/healthz", headers=admin)
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert health.json()["store"] == {"state": "failing", "reason": KIND}
        # A server key cannot be checked in the failed store: it gets what anyone gets,
        # which still says degraded, not an error body.
        keyed = await client.get("/healthz")
        assert (keyed.status_code, keyed.json()) == (503, {"status": "degraded"})

        refused = await client.post("/v1/notifications", json=notification)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert KIND in refused.json()["error"]["message"]
        device = {"user": "bob", "token": token(2), "app": "chat"}
        assert (await client.post("/v1/devices", json=device)).status_code == 503
        if how == "replaced":  # the old WAL, emptied at the next store call
            with trio.fail_after(5):
                while wal_bytes(database):
                    await client.post("/v1/notifications", json=notification)
                    await trio.sleep(0.05)

    process.signal(signal.SIGTERM)
    await process.wait()
    assert "Traceback" not in process.log, process.log
    errors = [line for line in process.lines if f"store unavailable: {KIND}" in line]
    assert len(errors) == 1, process.log
    assert f"{database} was {how}" in errors[0] or "replaced by another file" in errors[0]
    assert "restart pushd" in errors[0]

    if how == "replaced":  # the backup is intact, without the old run's rows
        assert count(database, "servers") == 1
        assert count(database, "registrations") == 0
        assert count(database, "spool") == 0
    else:  # the next start makes a new store, and says so
        again = await start_pushd_process(nursery, config)
        line = await again.wait_for_line("created a new, empty store")
        assert str(database) in line and "WARNING" in line
        again.signal(signal.SIGTERM)
        await again.wait()


async def test_serve_on_an_existing_store_does_not_warn(
    nursery: trio.Nursery, key_file: Path, ca_file: Path, tmp_path: Path
) -> None:
    database = tmp_path / "pushd.sqlite3"
    await seed_store(database)
    sections: dict[str, Any] = {
        "server": {"port": 0},
        "store": {"path": str(database)},
        "apps": [app_entry("chat", TOPIC, DOWN_UPSTREAM, key_file, ca_file)],
    }
    process = await start_pushd_process(nursery, write_config(tmp_path / "pushd.toml", sections))
    process.signal(signal.SIGTERM)
    await process.wait()
    assert "created a new" not in process.log, process.log
