"""``pushd store copy``: an SQLite store filled by a running pushd, moved to PostgreSQL.

The store is filled the way production fills it (native and Zulip registrations over
HTTP, a Zulip server registering itself, deliveries spooled while the upstream is
down), copied by the real command, and served by a new pushd on the PostgreSQL URL:
the copied keys authenticate, the copied registrations are pushed to, and the copied
spool rows, still sealed, are delivered.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import trio

from pushd.config import StoreConfig
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.spool.seal import create_key_file
from tests.conftest import TOPIC, app_entry, token
from tests.process import PushdProcess, run_cli_process, start_pushd_process, write_config
from tests.storefixtures import add_server
from tests.zulip_client import ZulipServer, realm

APNS = 1


def sqlite_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0])


async def test_a_copied_store_serves_its_registrations_and_delivers_its_spool(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    pg_url: str,
) -> None:
    database = tmp_path / "pushd.sqlite3"
    native_key = await trio.to_thread.run_sync(add_server, str(database), "chat")
    spool_key = tmp_path / "spool.key"
    create_key_file(spool_key)
    upstream = f"https://127.0.0.1:{simulator.port}"
    sections: dict[str, Any] = {
        "server": {"port": 0},
        "store": {"path": str(database)},
        "spool": {"key_file": str(spool_key)},
        "retry": {"base_delay": 0.5, "max_delay": 1.0, "max_attempts": 100},
        "zulip": {"registration": "open"},
        "apps": [app_entry("chat", TOPIC, upstream, key_file, ca_file)],
    }
    on_sqlite = write_config(tmp_path / "sqlite.toml", sections)
    auth = {"authorization": f"Bearer {native_key}"}
    zulip_body = {"user_id": 10, "apns_payload": {"alert": {"title": "A", "body": "hi"}}}

    # 1. One pushd on SQLite: registrations of both protocols, and a spooled delivery.
    first = await start_pushd_process(nursery, on_sqlite)
    async with httpx.AsyncClient(timeout=30) as client:
        for user, n in (("u1", 1), ("u2", 2)):
            device = {"user": user, "token": token(n), "app": "chat"}
            registered = await client.post(first.url + "/v1/devices", json=device, headers=auth)
            assert registered.is_success, registered.text
        zulip = ZulipServer(client=client, services_url=first.url)
        assert (await zulip.register_server()).status_code == 200
        assert (await zulip.upload_analytics([realm(1)])).status_code == 200
        done = await zulip.register_device(token(3), APNS, user_id=10, ios_app_id=TOPIC)
        assert done.status_code == 200, done.text
        simulator.set_default(SimReply(status=503, reason="ServiceUnavailable"))
        sent = await client.post(
            first.url + "/v1/notifications", json={"user": "u2", "alert": "x"}, headers=auth
        )
        assert sent.json()["results"][0]["status"] == "retrying", sent.text
    first.signal(signal.SIGTERM)
    assert await first.wait() == 0, first.log
    assert sqlite_count(database, "spool") == 1
    simulator.set_default(SimReply(status=200))
    simulator.received.clear()

    # 2. Copy, and say what was copied; a second copy is refused (the target has rows).
    copied = await run_cli_process("store", "copy", "--config", str(on_sqlite), "--to", pg_url)
    out = copied.stdout.decode()
    assert copied.returncode == 0, copied.stderr.decode()
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.endswith(" rows")}
    assert rows["servers"] == "1" and rows["registrations"] == "2", out
    assert rows["zulip_servers"] == "1" and rows["zulip_registrations"] == "1", out
    assert rows["spool"] == "1", out
    assert "password" not in out
    again = await run_cli_process("store", "copy", "--config", str(on_sqlite), "--to", pg_url)
    assert again.returncode == 1
    assert "the target database is not empty: servers (1 rows)" in again.stderr.decode()

    # 3. pushd on PostgreSQL: the spooled row is delivered, the copied keys and
    # registrations serve pushes, and new rows get new ids (the sequences moved on).
    on_postgres = write_config(
        tmp_path / "postgres.toml", {**sections, "store": {"url": pg_url, "pool_size": 2}}
    )
    second = await start_pushd_process(nursery, on_postgres)
    with trio.fail_after(15):
        while token(2) not in {r.token for r in simulator.received if r.status == 200}:
            await simulator.wait_for(len(simulator.received) + 1)
    async with httpx.AsyncClient(timeout=30) as client:
        sent = await client.post(
            second.url + "/v1/notifications", json={"user": "u1", "alert": "x"}, headers=auth
        )
        assert sent.json()["results"][0]["status"] == "delivered", sent.text
        zulip_b = ZulipServer(
            client=client, services_url=second.url, org_id=zulip.org_id, org_key=zulip.org_key
        )
        notified = await zulip_b.json("push/notify", zulip_body)
        assert notified.status_code == 200, notified.text
        assert notified.json()["total_apple_devices"] == 1
        device = {"user": "u4", "token": token(4), "app": "chat"}
        registered = await client.post(second.url + "/v1/devices", json=device, headers=auth)
        assert registered.is_success, registered.text
    delivered = {r.token for r in simulator.received if r.status == 200}
    assert {token(1), token(2), token(3)} <= delivered
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0, second.log
    assert "Traceback" not in second.log, second.log


async def test_copy_refuses_what_it_cannot_copy(tmp_path: Path, pg_url: str) -> None:
    missing = await run_cli_process(
        "store", "copy", "--store", str(tmp_path / "none"), "--to", pg_url
    )
    assert missing.returncode == 1
    assert "no SQLite store at" in missing.stderr.decode()
    database = tmp_path / "pushd.sqlite3"
    await trio.to_thread.run_sync(add_server, StoreConfig(path=str(database)), "chat")
    not_pg = await run_cli_process("store", "copy", "--store", str(database), "--to", "/tmp/x.db")
    assert not_pg.returncode == 1
    assert "--to must be a PostgreSQL URL" in not_pg.stderr.decode()


async def serving(nursery: trio.Nursery, tmp_path: Path, database: Path) -> PushdProcess:
    """A pushd serving ``database`` (no apps needed to hold its claim)."""
    sections: dict[str, Any] = {"server": {"port": 0}, "store": {"path": str(database)}}
    return await start_pushd_process(nursery, write_config(tmp_path / "serving.toml", sections))


def pg_tables(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_copy_is_refused_while_a_pushd_serves_the_store(
    nursery: trio.Nursery, tmp_path: Path, pg_url: str
) -> None:
    """A copy taken beside a running pushd exited 0: both then sent the same pushes,
    and what was spooled after the snapshot never reached PostgreSQL.  Now it takes the
    claim ``serve`` takes, by the file, whatever path it is given."""
    database = tmp_path / "pushd.sqlite3"
    await trio.to_thread.run_sync(add_server, StoreConfig(path=str(database)), "chat")
    link = tmp_path / "other" / "link.sqlite3"
    await trio.Path(link.parent).mkdir()
    await trio.to_thread.run_sync(os.link, database, link)
    running = await serving(nursery, tmp_path, database)
    for source in (database, link):
        copied = await run_cli_process("store", "copy", "--store", str(source), "--to", pg_url)
        assert copied.returncode == 1, copied.stdout.decode()
        message = copied.stderr.decode()
        assert f"another pushd has store {source} already" in message, message
        assert "stop it before `pushd store copy`" in message
    assert await trio.to_thread.run_sync(pg_tables, pg_url) == 0  # not even the schema
    running.signal(signal.SIGTERM)
    assert await running.wait() == 0, running.log
    copied = await run_cli_process("store", "copy", "--store", str(database), "--to", pg_url)
    assert copied.returncode == 0, copied.stderr.decode()


async def test_migrate_is_refused_while_a_pushd_serves_the_store(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    database = tmp_path / "pushd.sqlite3"
    await trio.to_thread.run_sync(add_server, StoreConfig(path=str(database)), "chat")
    running = await serving(nursery, tmp_path, database)
    migrated = await run_cli_process("store", "migrate", "--store", str(database))
    assert migrated.returncode == 1
    assert "stop it before `pushd store migrate`" in migrated.stderr.decode()
    running.signal(signal.SIGTERM)
    assert await running.wait() == 0, running.log
    migrated = await run_cli_process("store", "migrate", "--store", str(database))
    assert migrated.returncode == 0, migrated.stderr.decode()


async def test_a_nul_in_text_names_its_table_and_row_not_its_value(
    tmp_path: Path, pg_url: str
) -> None:
    """SQLite holds a NUL in text (a native user id older pushd accepted), PostgreSQL
    cannot: the copy failed with "NUL character in text" and no table or row."""
    database = tmp_path / "pushd.sqlite3"
    await trio.to_thread.run_sync(add_server, StoreConfig(path=str(database)), "chat")
    with sqlite3.connect(database) as db:
        db.execute(
            "INSERT INTO registrations (server_id, user_id, token, app, environment,"
            " registered_at) VALUES (1, 'okuser', ?, 'chat', 'production', 0),"
            " (1, ?, ?, 'chat', 'production', 0)",
            (token(1), "secret\x00user", token(2)),
        )
    copied = await run_cli_process("store", "copy", "--store", str(database), "--to", pg_url)
    message = copied.stderr.decode()
    assert copied.returncode == 1, copied.stdout.decode()
    assert "table registrations, row id 2: column user_id holds a NUL" in message, message
    assert "DELETE FROM registrations WHERE id = 2" in message
    assert "secret" not in message and "Traceback" not in message

    def target_rows() -> int:
        import psycopg

        with psycopg.connect(pg_url) as conn:
            row = conn.execute("SELECT count(*) FROM registrations").fetchone()
        assert row is not None
        return int(row[0])

    assert await trio.to_thread.run_sync(target_rows) == 0
