"""The store, on SQLite and on PostgreSQL: schema, servers and keys, registrations, dead
tokens, Zulip tables, verdicts and dedupe; all-or-nothing writes under SIGKILL.

Every test taking ``store`` or ``store_config`` runs once per backend
(``tests/storefixtures.py``); the spool has its own module (``test_store_spool.py``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from pushd.config import StoreConfig
from pushd.model import RemovalScope
from pushd.store import (
    SCHEMA_VERSION,
    DeadToken,
    HostnameTaken,
    LateVerdict,
    Store,
    StoreError,
    ValueRefused,
    ZulipRealm,
    hash_key,
    open_store,
)
from pushd.store.engine import Engine, Tx
from pushd.store.schema import schema_version, statements
from pushd.store.zulip_devices import _identity_clause
from tests.conftest import token
from tests.process import ROOT, write_config

SCOPE = RemovalScope(environment="production")
SERVER_A = "00000000-0000-4000-8000-00000000000a"
SERVER_B = "00000000-0000-4000-8000-00000000000b"
REALM = "00000000-0000-4000-8000-0000000000aa"


# --- schema -----------------------------------------------------------------------------


async def test_a_new_store_is_at_the_current_schema(store: Store) -> None:
    assert await schema_version(store.engine) == SCHEMA_VERSION


def test_a_sqlite_store_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "pushd.sqlite3"
    trio.run(_open_and_close, StoreConfig(path=str(path)))
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
def test_sqlite_commits_are_flushed_as_store_synchronous_says(
    tmp_path: Path, setting: str, pragma: int
) -> None:
    """The writer's ``PRAGMA synchronous``: FULL (2) by default, so an acknowledged
    delivery survives a power loss; NORMAL (1) on request."""
    config = StoreConfig(path=str(tmp_path / "pushd.sqlite3"), synchronous=setting)  # type: ignore[arg-type]

    async def check() -> int:
        store = await open_store(config)
        try:
            engine = store.engine
            value = engine._writer_db.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore[attr-defined]
        finally:
            await store.close()
        return int(value)

    assert trio.run(check) == pragma
    assert StoreConfig().synchronous == "full"


async def _open_and_close(config: StoreConfig) -> None:
    await (await open_store(config)).close()


def set_version(tx: Tx, version: int) -> None:
    if tx.dialect == "sqlite":
        tx.execute(f"PRAGMA user_version = {int(version)}")
    else:
        tx.execute("UPDATE pushd_schema SET version = ?", (version,))


def make_old_store(engine: Engine, version: int) -> None:
    """Apply migrations 1..``version`` only, as an older pushd left its store."""

    def tx(tx: Tx) -> None:
        if tx.dialect == "postgres":
            tx.execute("CREATE TABLE pushd_schema (version INTEGER NOT NULL)")
            tx.execute("INSERT INTO pushd_schema (version) VALUES (0)")
        for number in range(1, version + 1):
            for statement in statements(number, tx.dialect):
                tx.execute(statement)
        set_version(tx, version)

    engine.write_sync(tx)  # type: ignore[attr-defined]


async def test_a_newer_schema_is_refused(store_config: StoreConfig) -> None:
    store = await open_store(store_config)
    await store.engine.write(lambda tx: set_version(tx, SCHEMA_VERSION + 1))
    await store.close()
    with pytest.raises(StoreError, match="newer than this pushd"):
        await open_store(store_config)


async def test_an_older_schema_names_the_command_and_migrate_keeps_its_data(
    store_config: StoreConfig,
) -> None:
    from pushd.store import open_engine_sync

    engine = await trio.to_thread.run_sync(open_engine_sync, store_config)
    try:
        await trio.to_thread.run_sync(make_old_store, engine, SCHEMA_VERSION - 1)
        await engine.write(
            lambda tx: tx.execute(
                "INSERT INTO servers (name, key_hash, created_at) VALUES ('old', ?, 0)",
                (hash_key("old-key"),),
            )
        )
    finally:
        await engine.close()
    with pytest.raises(StoreError, match=r"schema \d+, this pushd needs .*pushd store migrate"):
        await open_store(store_config)
    store = await open_store(store_config, upgrade=True)
    try:
        assert await schema_version(store.engine) == SCHEMA_VERSION
        old = await store.authenticate("old-key")
        assert old is not None and old.name == "old"
        # What the last migration made is there and works.
        assert await store.dedupe_seen(["k"], 60) == [False]
    finally:
        await store.close()


def pushd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


def test_serve_refuses_an_old_schema_and_store_migrate_upgrades_it(
    store_config: StoreConfig, store_sections: dict[str, Any], tmp_path: Path
) -> None:
    from pushd.store import open_engine_sync

    engine = open_engine_sync(store_config)
    try:
        make_old_store(engine, SCHEMA_VERSION - 2)
    finally:
        engine.close_sync()  # type: ignore[attr-defined]
    config = write_config(tmp_path / "pushd.toml", {"server": {"port": 0}, **store_sections})
    refused = pushd_cli("serve", "--config", str(config))
    assert refused.returncode == 1, refused.stderr
    assert "pushd store migrate" in refused.stderr
    assert f"this pushd needs {SCHEMA_VERSION}" in refused.stderr
    assert "Traceback" not in refused.stderr
    migrated = pushd_cli("store", "migrate", "--config", str(config))
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema {SCHEMA_VERSION}, up to date" in migrated.stdout
    assert "password" not in migrated.stdout
    # Twice is harmless.
    assert pushd_cli("store", "migrate", "--config", str(config)).returncode == 0

    async def version() -> int:
        store = await open_store(store_config)
        try:
            return await schema_version(store.engine)
        finally:
            await store.close()

    assert trio.run(version) == SCHEMA_VERSION


async def test_a_database_of_something_else_is_not_taken_over(store_config: StoreConfig) -> None:
    from pushd.store import open_engine_sync

    engine = await trio.to_thread.run_sync(open_engine_sync, store_config)
    try:
        await engine.write(lambda tx: tx.execute("CREATE TABLE servers (x INTEGER)"))
    finally:
        await engine.close()
    with pytest.raises(StoreError, match="not a pushd store"):
        await open_store(store_config)


async def test_reopening_keeps_data_and_does_not_migrate_twice(store_config: StoreConfig) -> None:
    first = await open_store(store_config)
    server, key = await first.add_server("s")
    await first.register(server.id, "u", token(1), "chat", "production")
    await first.close()
    second = await open_store(store_config)
    try:
        assert await second.authenticate(key) == server
        assert [r.token for r in await second.user_registrations(server.id, "u")] == [token(1)]
        assert await schema_version(second.engine) == SCHEMA_VERSION
    finally:
        await second.close()


# --- servers and keys -------------------------------------------------------------------


async def test_keys_are_stored_only_as_their_hash(store: Store, store_config: StoreConfig) -> None:
    server, key = await store.add_server("s")
    rows = await store.engine.read(lambda tx: tx.all("SELECT * FROM servers"))
    assert key not in json.dumps([[str(value) for value in row] for row in rows])
    (stored,) = await store.engine.read(lambda tx: tx.all("SELECT key_hash FROM servers"))
    assert stored[0] == hash_key(key)
    if store_config.url is None:  # nor anywhere in the file or its WAL
        path = trio.Path(store_config.path)
        raw = await path.read_bytes() + await trio.Path(str(path) + "-wal").read_bytes()
        assert key.encode() not in raw
    assert await store.authenticate(key) == server


@pytest.mark.parametrize("wrong", ["", "x", "{key}x", "{key_upper}", "{key_prefix}", "{hash}"])
async def test_only_the_exact_key_authenticates(store: Store, wrong: str) -> None:
    """The lookup is by the key's SHA-256 (and compared again with compare_digest): no
    prefix, case variant, or the stored hash itself gets in."""
    _, key = await store.add_server("s")
    attempt = wrong.format(key=key, key_upper=key.upper(), key_prefix=key[:-1], hash=hash_key(key))
    assert await store.authenticate(attempt) is None


async def test_rotate_deactivate_and_duplicate_servers(store: Store) -> None:
    server, old = await store.add_server("s")
    with pytest.raises(StoreError, match="exists already"):
        await store.add_server("s")
    new = await store.rotate_key("s")
    assert await store.authenticate(old) is None
    assert await store.authenticate(new) == server
    await store.set_active("s", False)
    inactive = await store.authenticate(new)
    assert inactive is not None and not inactive.active
    with pytest.raises(StoreError, match="no server named"):
        await store.rotate_key("nobody")
    with pytest.raises(StoreError, match="no server named"):
        await store.set_active("nobody", True)
    assert [s.name for s in await store.servers()] == ["s"]


# --- registrations and dead tokens ------------------------------------------------------


async def test_register_is_idempotent_and_moves_the_token(store: Store) -> None:
    server, _ = await store.add_server("s")
    _, new = await store.register(server.id, "u1", token(1), "chat", "production")
    assert new
    _, new = await store.register(server.id, "u2", token(1), "chat", "production")
    assert not new
    assert await store.user_registrations(server.id, "u1") == []
    assert [r.user_id for r in await store.user_registrations(server.id, "u2")] == ["u2"]
    assert await store.count_registrations() == 1


async def test_concurrent_registrations_of_one_token_make_one_row_and_one_is_new(
    store: Store, store_config: StoreConfig
) -> None:
    """Two instances registering the same device at once: one row, and exactly one of
    them says it was new."""
    server, _ = await store.add_server("s")
    other = await open_store(store_config)
    news: list[bool] = []
    try:
        for n in range(20):

            async def register(into: Store, user: str, n: int = n) -> None:
                _, new = await into.register(server.id, user, token(n), "chat", "production")
                news.append(new)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(register, store, "a")
                nursery.start_soon(register, other, "b")
    finally:
        await other.close()
    assert news.count(True) == 20
    assert await store.count_registrations() == 20


async def test_unregister_and_lookups(store: Store) -> None:
    server, _ = await store.add_server("s")
    other, _ = await store.add_server("t")
    await store.register(server.id, "u", token(1), "chat", "production")
    await store.register(server.id, "u", token(1), "other", "production")
    await store.register(server.id, "u", token(2), "chat", "production", kind="apns")
    await store.register(other.id, "v", token(1), "chat", "production")
    assert await store.registrations_by_app() == {"chat": 3, "other": 1}
    found = await store.token_registrations(server.id, [token(1), token(9)])
    assert sorted(r.app for r in found) == ["chat", "other"]
    assert await store.unregister(server.id, [token(1)], app="other") == 1
    assert await store.unregister(server.id, [token(1).upper(), token(1)]) == 1
    assert await store.unregister_user(server.id, "u") == 1
    assert await store.user_registrations(server.id, "u") == []
    # The other chat server's registration of the same token is its own.
    assert len(await store.user_registrations(other.id, "v")) == 1


async def test_410_rule_deletes_only_registrations_older_than_the_timestamp(
    store: Store,
) -> None:
    server, _ = await store.add_server("s")
    other, _ = await store.add_server("t")
    await store.register(server.id, "u", token(1), "chat", "production")
    await trio.sleep(0.01)
    newer, _ = await store.register(other.id, "v", token(1), "chat", "production")
    dead = DeadToken("chat", token(1), since=newer.registered_at, scope=SCOPE)
    assert await store.remove_dead([dead]) == 1
    assert await store.user_registrations(server.id, "u") == []
    assert len(await store.user_registrations(other.id, "v")) == 1
    assert await store.remove_dead([DeadToken("chat", token(1), scope=SCOPE)]) == 1
    assert await store.count_registrations() == 0


async def test_a_dead_token_goes_only_where_the_same_app_and_environment_serve_it(
    store: Store,
) -> None:
    server, _ = await store.add_server("s")
    beta, _ = await store.add_server("beta")  # a chat server of the sandbox builds
    await store.register(server.id, "u", token(1), "chat", "production")
    await store.register(beta.id, "u", token(1), "chat", "sandbox")  # another env
    await store.register(server.id, "u", token(1), "other", "production")  # another app
    await store.zulip_add_server(SERVER_A, "k" * 64, "z.example")
    await store.zulip_register(SERVER_A, 1, token(1), "org.example.chat", 7, None, None)
    await store.zulip_register(SERVER_A, 1, token(1), "org.example.other", 8, None, None)
    await store.zulip_register(SERVER_A, 2, token(1), None, 7, None, None)  # FCM kind
    scope = RemovalScope("production", zulip_kind=1, zulip_ios_app_id="org.example.chat")
    assert await store.remove_dead([DeadToken("chat", token(1), scope=scope)]) == 2
    left = [
        *await store.user_registrations(server.id, "u"),
        *await store.user_registrations(beta.id, "u"),
    ]
    assert sorted((r.app, r.environment) for r in left) == [
        ("chat", "sandbox"),
        ("other", "production"),
    ]
    zulip = [
        *await store.zulip_user_registrations(SERVER_A, 7, None),
        *await store.zulip_user_registrations(SERVER_A, 8, None),
    ]
    assert sorted((r.kind, r.ios_app_id or "") for r in zulip) == [
        (1, "org.example.other"),
        (2, ""),
    ]
    # No scope (a protocol naming its tokens per request): nothing stored goes, and a
    # verdict with a ref is kept for the caller.
    kept = DeadToken("chat", token(1), since=5.0, reason="Unregistered", ref="r1", caller="c")
    assert await store.remove_dead([kept]) == 0
    assert len(await store.user_registrations(server.id, "u")) == 1
    (verdict,) = (await store.late_verdicts(["r1", "r2"])).values()
    assert (verdict.ref, verdict.reason, verdict.since) == ("r1", "Unregistered", 5.0)


KILL_SCRIPT = textwrap.dedent(
    """
    import json, sys, trio
    from pushd.config import StoreConfig
    from pushd.model import RemovalScope
    from pushd.store import DeadToken, open_store

    async def main():
        store = await open_store(StoreConfig(**json.loads(sys.argv[1])))
        scope = RemovalScope()
        dead = [DeadToken("chat", f"{n:064x}", scope=scope) for n in range(int(sys.argv[2]))]
        print("start", flush=True)
        while True:
            await store.remove_dead(dead)

    trio.run(main)
    """
)


async def test_sigkill_during_a_write_leaves_all_or_nothing(
    store: Store, store_config: StoreConfig
) -> None:
    count = 20_000
    server, _ = await store.add_server("s")
    await store.engine.write(
        lambda tx: tx.executemany(
            "INSERT INTO registrations (server_id, user_id, token, app, environment,"
            " registered_at) VALUES (?, 'u', ?, 'chat', 'production', 0)",
            [(server.id, f"{n:064x}") for n in range(count)],
        )
    )
    where = {"path": store_config.path, "url": store_config.url, "pool_size": 1}
    child = subprocess.Popen(  # noqa: ASYNC220 (only killed; its line is read on a thread)
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(where), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert child.stdout is not None
    assert (await trio.to_thread.run_sync(child.stdout.readline)).strip() == "start"
    await trio.sleep(0.05)  # inside the delete transaction (it takes far longer)
    child.send_signal(signal.SIGKILL)
    await trio.to_thread.run_sync(child.wait, 10)
    child.stdout.close()
    with trio.fail_after(10):  # PostgreSQL notices the closed connection and rolls back
        while True:
            remaining = await store.count_registrations()
            if remaining in (0, count):
                break
            await trio.sleep(0.05)
    if store_config.url is None:
        raw = sqlite3.connect(store_config.path)
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw.close()


# --- Zulip ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user_id", "user_uuid"), [(7, None), (None, "2b9b3a0a-0000-4000-8000-000000000001"), (7, "u")]
)
async def test_a_zulip_user_lookup_uses_an_index(
    store: Store, user_id: int | None, user_uuid: str | None
) -> None:
    clause, params = _identity_clause(user_id, user_uuid)
    query = f"SELECT * FROM zulip_registrations WHERE server_uuid = ? AND {clause} ORDER BY id"

    def plan(tx: Tx) -> str:
        if tx.dialect == "sqlite":
            rows = tx.all("EXPLAIN QUERY PLAN " + query, ("s", *params))
            return " ".join(str(row[-1]) for row in rows)
        # On an empty table the planner rightly prefers a scan; ask what it would use
        # when scanning is not an option, as on a table of a million rows.
        tx.execute("SET LOCAL enable_seqscan = off")
        return " ".join(str(row[0]) for row in tx.all("EXPLAIN " + query, ("s", *params)))

    details = await store.engine.read(plan)
    assert "zulip_registrations_by_" in details, details


async def test_zulip_legacy_registrations(store: Store) -> None:
    await store.zulip_add_server(SERVER_A, "k" * 64, "z.example")
    user_uuid = "2b9b3a0a-0000-4000-8000-000000000001"
    await store.zulip_register(SERVER_A, 1, token(1), "org.example.chat", 7, None, None)
    await store.zulip_register(SERVER_A, 1, token(1), "org.example.chat", 7, None, None)
    (row,) = await store.zulip_user_registrations(SERVER_A, 7, None)
    # With both ids, Zulip keeps only the uuid row.
    await store.zulip_register(SERVER_A, 1, token(1), "org.example.chat", 7, user_uuid, REALM)
    (row,) = await store.zulip_user_registrations(SERVER_A, 7, user_uuid)
    assert (row.user_id, row.user_uuid, row.realm_uuid) == (None, user_uuid, REALM)
    await store.zulip_register(SERVER_A, 2, token(2), None, 8, None, None)
    await store.zulip_register(SERVER_A, 2, token(3), None, 8, None, None)
    assert await store.zulip_unregister(SERVER_A, 2, token(2), 8, None) == 1
    assert await store.zulip_unregister(SERVER_A, 2, token(2), 8, None) == 0
    assert await store.zulip_unregister_all(SERVER_A, 8, None) == 1
    ids = [r.id for r in await store.zulip_user_registrations(SERVER_A, None, user_uuid)]
    assert await store.zulip_delete_registrations(ids) == 1
    assert await store.zulip_user_registrations(SERVER_A, 7, user_uuid) == []


async def test_zulip_analytics_marks_only_rise_and_realms_stay_with_their_server(
    store: Store,
) -> None:
    await store.zulip_add_server(SERVER_A, "k" * 64, "a.example")
    await store.zulip_add_server(SERVER_B, "k" * 64, "b.example")
    await store.zulip_record_analytics(SERVER_A, [ZulipRealm(REALM, SERVER_A, "a", "A")], (5, 6, 7))
    await store.zulip_record_analytics(
        SERVER_A, [ZulipRealm(REALM, SERVER_A, "a2", "A2")], (4, 9, 1)
    )
    server = await store.zulip_server(SERVER_A)
    assert server is not None
    marks = (server.last_realm_count_id, server.last_installation_count_id)
    assert (*marks, server.last_realmauditlog_id) == (5, 9, 7)
    # Another server's upload does not move the realm.
    await store.zulip_record_analytics(SERVER_B, [ZulipRealm(REALM, SERVER_B, "b", "B")], (0, 0, 0))
    realm = await store.zulip_realm(REALM)
    assert realm is not None and (realm.server_uuid, realm.host) == (SERVER_A, "a2")


async def test_zulip_bouncer_keys_and_e2ee_devices(store: Store) -> None:
    first = await store.zulip_add_bouncer_key("pub1", "priv1", key_id=None)
    second = await store.zulip_add_bouncer_key("pub2", "sealed2", key_id="k2")
    with pytest.raises(StoreError, match="exists already"):
        await store.zulip_add_bouncer_key("pub1", "other", key_id=None)
    assert "priv1" not in repr(first)
    assert await store.zulip_bouncer_key("pub2") == second
    assert await store.zulip_remove_bouncer_key(str(first.id)) == 1
    assert await store.zulip_remove_bouncer_key("pub2") == 1
    assert await store.zulip_bouncer_keys() == []

    await store.zulip_add_server(SERVER_A, "k" * 64, "z.example")
    await store.zulip_record_analytics(SERVER_A, [ZulipRealm(REALM, SERVER_A, "z", "Z")], (0, 0, 0))
    with pytest.raises(ValueError, match="exactly one"):
        await store.zulip_e2ee_register(SERVER_A, REALM, "fcm", "t", None)
    legacy = await store.zulip_e2ee_register(SERVER_A, REALM, "fcm", "t1", None, push_account_id=3)
    again = await store.zulip_e2ee_register(SERVER_A, REALM, "fcm", "t1", None, push_account_id=3)
    modern = await store.zulip_e2ee_register(SERVER_A, REALM, "fcm", "t2", None, token_id=-5)
    moved = await store.zulip_e2ee_register(SERVER_A, REALM, "fcm", "t3", None, token_id=-5)
    assert legacy == again and modern == moved and legacy != modern
    devices = await store.zulip_e2ee_devices(REALM, token_ids=[-5], device_ids=[legacy, 999])
    assert sorted((d.token, d.token_id, d.push_account_id) for d in devices) == [
        ("t1", None, 3),
        ("t3", -5, None),
    ]


async def test_migration_7_normalises_zulip_hostnames_and_keeps_servers_working(
    store_config: StoreConfig,
) -> None:
    """A store written before pins: its servers keep working, under their one name."""
    from pushd.store import open_engine_sync

    rows = [
        ("00000000-0000-4000-8000-000000000001", "CHAT.Example.com.:443", 0),
        ("00000000-0000-4000-8000-000000000002", "other.example.com:8443", 1),
        ("00000000-0000-4000-8000-000000000003", "not a hostname", 0),
        ("00000000-0000-4000-8000-000000000004", "chat.example.com", 0),
    ]
    engine = await trio.to_thread.run_sync(open_engine_sync, store_config)
    try:
        await trio.to_thread.run_sync(make_old_store, engine, 6)
        await engine.write(
            lambda tx: tx.executemany(
                "INSERT INTO zulip_servers (uuid, key_hash, hostname, created_at, deactivated)"
                " VALUES (?, ?, ?, ?, ?)",
                [(u, hash_key("k" * 64), h, n, d) for n, (u, h, d) in enumerate(rows)],
            )
        )
    finally:
        await engine.close()

    db = await open_store(store_config, upgrade=True)
    try:
        assert [(s.uuid[-1], s.hostname, s.released_at) for s in await db.zulip_servers()] == [
            ("1", "chat.example.com", None),
            ("2", "other.example.com:8443", None),
            ("3", "not a hostname", None),  # left as it was: it can only fail to match
            ("4", "chat.example.com", None),
        ]
        holder = await db.zulip_hostname_holder("chat.example.com:443")
        assert holder is not None and holder.uuid.endswith("1")
        # The deactivated server keeps its hostname (it did not before migration 7).
        held = await db.zulip_hostname_holder("OTHER.example.com:8443")
        assert held is not None and held.uuid.endswith("2")
        # Two servers the migration found sharing a name both keep working: the later
        # one re-registers under it, but no third server can take it.
        await db.zulip_update_server(rows[3][0], "Chat.example.com", "", None)
        with pytest.raises(HostnameTaken, match=r"held by Zulip server .*0001"):
            await db.zulip_add_server(
                "00000000-0000-4000-8000-000000000005", "k" * 64, "chat.example.com"
            )
        assert await db.zulip_pins() == []
    finally:
        await db.close()


async def test_zulip_hostnames_have_one_holder_until_released(store: Store) -> None:
    first, second = SERVER_A, SERVER_B
    await store.zulip_add_server(first, "k" * 64, "Chat.Example.com.")
    with pytest.raises(HostnameTaken, match=f"held by Zulip server {first}"):
        await store.zulip_add_server(second, "k" * 64, "chat.example.com:443")
    with pytest.raises(StoreError, match="deactivate it first"):
        await store.zulip_release_hostname("chat.example.com")
    await store.zulip_set_deactivated(first, True)
    with pytest.raises(HostnameTaken):
        await store.zulip_add_server(second, "k" * 64, "chat.example.com")
    assert await store.zulip_release_hostname("CHAT.example.com") == [first]
    assert await store.zulip_release_hostname("chat.example.com") == []
    await store.zulip_add_server(second, "k" * 64, "chat.example.com")
    with pytest.raises(HostnameTaken, match=f"held by Zulip server {second}"):
        await store.zulip_set_deactivated(first, False)
    # A released server may come back once nobody else holds its name.
    await store.zulip_update_server(second, "new.example.com", "", None)
    await store.zulip_set_deactivated(first, False)
    restored = await store.zulip_server(first)
    assert restored is not None and not restored.deactivated and restored.released_at is None


async def test_racing_zulip_registrations_give_a_hostname_one_holder(
    store: Store, store_config: StoreConfig
) -> None:
    """Instances registering servers for one hostname at once: exactly one wins, on
    PostgreSQL too, where two transactions do not wait for each other's reads."""
    others = [await open_store(store_config) for _ in range(3)]
    try:
        for round_ in range(15):
            winners: list[str] = []

            async def add(
                into: Store, n: int, round_: int = round_, winners: list[str] = winners
            ) -> None:
                uuid = f"00000000-0000-4000-8000-{round_:06d}{n:06d}"
                try:
                    await into.zulip_add_server(uuid, "k" * 64, f"race{round_}.example")
                except HostnameTaken:
                    return
                winners.append(uuid)

            async with trio.open_nursery() as nursery:
                for n, into in enumerate([store, *others]):
                    nursery.start_soon(add, into, n)
            assert len(winners) == 1, (round_, winners)
    finally:
        for other in others:
            await other.close()


async def test_racing_pins_never_lose_one_silently(store: Store, store_config: StoreConfig) -> None:
    """Two operators pinning one hostname to different orgs at once: one pin is made,
    the other is refused (never both told they pinned it)."""
    other = await open_store(store_config)
    try:
        for round_ in range(15):
            outcomes: list[str] = []

            async def pin(
                into: Store, org: str, round_: int = round_, outcomes: list[str] = outcomes
            ) -> None:
                try:
                    await into.zulip_add_pin(f"pin{round_}.example", org)
                except StoreError:
                    outcomes.append("refused")
                    return
                outcomes.append(org)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pin, store, "00000000-0000-4000-8000-00000000000a")
                nursery.start_soon(pin, other, "00000000-0000-4000-8000-00000000000b")
            assert sorted(outcomes)[-1] == "refused", outcomes
            stored = await store.zulip_pin(f"pin{round_}.example")
            assert stored is not None and stored.org_id in outcomes
    finally:
        await other.close()


async def test_zulip_pins(store: Store) -> None:
    org = "00000000-0000-4000-8000-00000000000A"
    assert await store.zulip_add_pin("CHAT.example.com.", org) is None
    again = await store.zulip_add_pin("chat.example.com:443", org.lower())
    assert again is not None and again.org_id == org.lower()
    with pytest.raises(StoreError, match="add --replace"):
        await store.zulip_add_pin("chat.example.com", "00000000-0000-4000-8000-00000000000b")
    moved = await store.zulip_add_pin(
        "chat.example.com", "00000000-0000-4000-8000-00000000000b", replace=True
    )
    assert moved is not None and moved.org_id == org.lower()
    pin = await store.zulip_pin("Chat.example.com")
    assert pin is not None and pin.org_id.endswith("b") and pin.hostname == "chat.example.com"
    assert await store.zulip_remove_pin("chat.example.com.")
    assert not await store.zulip_remove_pin("chat.example.com")
    with pytest.raises(StoreError, match="not a hostname"):
        await store.zulip_add_pin("chat example", org)


# --- verdicts, dedupe, rate windows -----------------------------------------------------


async def test_verdicts_and_dedupe_records_only_the_keys_let_through(store: Store) -> None:
    """A Matrix notify's store call on a shared store: the kept verdicts, then the
    dedupe of the keys the caller's rule (given those verdicts) lets go ahead."""
    dead = [DeadToken("chat", token(1), since=None, reason="Unregistered", ref="r1")]
    await store.remove_dead(dead)
    asked: list[set[str]] = []

    def rejected(verdicts: Mapping[str, LateVerdict]) -> list[bool]:
        asked.append(set(verdicts))
        return ["r1" in verdicts, False, False]

    verdicts, seen = await store.verdicts_and_dedupe(
        ["r1", "r2", "r3"], ["k1", "k2", "k2"], 60.0, rejected
    )
    assert set(verdicts) == {"r1"} and verdicts["r1"].reason == "Unregistered"
    assert asked == [{"r1"}]
    assert seen == [False, False, True]  # k1 rejected; k2 new, then its repeat
    assert await store.dedupe_seen(["k1", "k2"], 60.0) == [False, True]  # k1: only now
    verdicts, seen = await store.verdicts_and_dedupe([], ["k1", "k3"], 60.0, lambda v: [False] * 2)
    assert (verdicts, seen) == ({}, [True, False])
    verdicts, seen = await store.verdicts_and_dedupe(["r1"], ["k9"], 60.0, lambda v: [True])
    assert (set(verdicts), seen) == ({"r1"}, [False])
    assert await store.dedupe_seen(["k9"], 60.0) == [False]  # not recorded before


async def test_late_verdicts_are_kept_per_caller_until_forgotten(store: Store) -> None:
    dead = [
        DeadToken("chat", token(n), since=None, reason="BadDeviceToken", ref=f"r{n}", caller=c)
        for n, c in ((1, "zulip:a"), (2, "zulip:a"), (3, "zulip:b"))
    ]
    await store.remove_dead(dead)
    assert [v.ref for v in await store.caller_verdicts("zulip:a")] == ["r1", "r2"]
    assert set(await store.late_verdicts(["r1", "r3", "r9"])) == {"r1", "r3"}
    await store.forget_late_verdicts(["r1", "r3"])
    assert set(await store.late_verdicts(["r1", "r2", "r3"])) == {"r2"}
    # Upkeep drops verdicts older than the keep time, and nothing younger.
    await store.engine.write(
        lambda tx: tx.execute("UPDATE late_verdicts SET found_at = 0 WHERE ref = 'r2'")
    )
    await store.remove_dead([DeadToken("chat", token(4), reason="x", ref="r4", caller="c")])
    await store.expire_shared_state(0)
    assert set(await store.late_verdicts(["r2", "r4"])) == {"r4"}


async def test_dedupe_sees_a_key_once_within_its_window(store: Store) -> None:
    assert await store.dedupe_seen(["a", "b"], 60) == [False, False]
    assert await store.dedupe_seen(["a", "c"], 60) == [True, False]
    # An expired key is new again (and recorded anew).
    assert await store.dedupe_seen(["x"], -1) == [False]
    assert await store.dedupe_seen(["x"], 60) == [False]
    assert await store.dedupe_seen(["x"], 60) == [True]


async def test_concurrent_dedupe_lets_exactly_one_instance_send(
    store: Store, store_config: StoreConfig
) -> None:
    others = [await open_store(store_config) for _ in range(2)]
    try:
        for n in range(20):
            seen: list[bool] = []

            async def check(into: Store, n: int = n, seen: list[bool] = seen) -> None:
                seen.extend(await into.dedupe_seen([f"event{n}"], 60))

            async with trio.open_nursery() as nursery:
                for into in (store, *others):
                    nursery.start_soon(check, into)
            assert sorted(seen) == [False, True, True], (n, seen)
    finally:
        for other in others:
            await other.close()


async def test_rate_windows_count_across_instances_and_expire(
    store: Store, store_config: StoreConfig
) -> None:
    other = await open_store(store_config)
    try:
        counts: list[int] = []

        async def hit(into: Store) -> None:
            counts.append(await into.rate_hit("server:1", 1000))

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(hit, store if n % 2 else other)
        assert sorted(counts) == list(range(1, 11))
        assert await store.rate_hit("server:1", 1060) == 1
        await store.expire_shared_state(1060)
        assert await store.rate_hit("server:1", 1000) == 1  # that window was dropped
        assert await store.rate_hit("server:1", 1060) == 2
    finally:
        await other.close()


async def test_authenticate_counted_counts_active_servers_only_in_one_window(
    store: Store, store_config: StoreConfig
) -> None:
    """What the native API's guard asks on a shared store: the server and its window's
    count, in one statement on PostgreSQL; nothing counted for a wrong key or a
    deactivated server, and the count is the one :meth:`Store.rate_hit` keeps."""
    server, key = await store.add_server("chat-a")
    other = await open_store(store_config)  # another instance on the same database
    try:
        assert await store.authenticate_counted(key, "native:server ", 1000) == (server, 1)
        assert await other.authenticate_counted(key, "native:server ", 1000) == (server, 2)
        assert await store.rate_hit("native:server chat-a", 1000) == 3  # the same row
        assert await store.authenticate_counted(key, "native:server ", 1060) == (server, 1)
        assert await store.authenticate_counted("pushd_" + "x" * 40, "native:", 1000) == (
            None,
            0,
        )
        await store.set_active("chat-a", False)
        found, count = await other.authenticate_counted(key, "native:server ", 1000)
        assert found is not None and not found.active and count == 0
        assert await store.rate_hit("native:server chat-a", 1000) == 4  # not counted
    finally:
        await other.close()


async def test_authenticate_counted_for_reads_the_users_registrations_after_the_key(
    store: Store,
) -> None:
    """The native send's store call on a shared store: the count as
    :meth:`Store.authenticate_counted` keeps it, and the user's registrations only for
    the right key of an active server."""
    server, key = await store.add_server("chat-a")
    elsewhere, _ = await store.add_server("chat-b")
    await store.register(server.id, "alice", "aa" * 32, "chat", "production")
    await store.register(server.id, "alice", "bb" * 32, "chat", "production")
    await store.register(elsewhere.id, "alice", "cc" * 32, "chat", "production")
    found, count, registrations = await store.authenticate_counted_for(
        key, "native:server ", 1000, "alice"
    )
    assert (found, count) == (server, 1)
    assert registrations == await store.user_registrations(server.id, "alice")
    assert [r.token for r in registrations or []] == ["aa" * 32, "bb" * 32]
    assert await store.authenticate_counted_for(key, "native:server ", 1000, "bob") == (
        server,
        2,
        [],
    )
    assert await store.authenticate_counted_for(key, "native:server ", 1000) == (server, 3, None)
    wrong = "pushd_" + "x" * 40
    assert await store.authenticate_counted_for(wrong, "native:", 1000, "alice") == (None, 0, None)
    await store.set_active("chat-a", False)
    found, count, registrations = await store.authenticate_counted_for(
        key, "native:server ", 1000, "alice"
    )
    assert found is not None and not found.active and (count, registrations) == (0, None)
    assert await store.rate_hit("native:server chat-a", 1000) == 4  # 3 counted above


async def test_zulip_server_counted_counts_only_for_its_key_of_an_active_server(
    store: Store,
) -> None:
    """The Zulip bouncer's store call on a shared store: the server, and a count only
    once the key checked out for an active server."""
    key = "k" * 64
    await store.zulip_add_server(SERVER_A, key, "z.example")
    rate = "zulip:server " + SERVER_A
    found, count = await store.zulip_server_counted(SERVER_A, key, rate, 1000)
    assert (found, count) == (await store.zulip_server(SERVER_A), 1)
    assert (await store.zulip_server_counted(SERVER_A, key, rate, 1000))[1] == 2
    assert (await store.zulip_server_counted(SERVER_A, key, rate, 1060))[1] == 1  # next window
    assert await store.zulip_server_counted(SERVER_B, key, rate, 1000) == (None, None)
    found, count = await store.zulip_server_counted(SERVER_A, "x" * 64, rate, 1000)
    assert found is not None and count is None  # a wrong key: found, not counted
    await store.zulip_set_deactivated(SERVER_A, True)
    found, count = await store.zulip_server_counted(SERVER_A, key, rate, 1000)
    assert found is not None and found.deactivated and count is None
    assert await store.rate_hit(rate, 1000) == 3  # two counted above, this one


async def test_zulip_realm_and_registrations_is_both_reads_in_one(store: Store) -> None:
    await store.zulip_add_server(SERVER_A, "k" * 64, "z.example")
    await store.zulip_add_server(SERVER_B, "k" * 64, "y.example")
    realm = ZulipRealm(REALM, SERVER_A, "z", "Z")
    await store.zulip_record_analytics(SERVER_A, [realm], (0, 0, 0))
    user_uuid = "00000000-0000-4000-8000-0000000000cc"
    await store.zulip_register(SERVER_A, 1, token(1), "org.example.chat", 7, None, None)
    await store.zulip_register(SERVER_A, 2, token(2), None, None, user_uuid, REALM)
    await store.zulip_register(SERVER_B, 1, token(3), "org.example.chat", 7, None, None)
    for user_id, uuid in ((7, None), (None, user_uuid), (7, user_uuid), (8, None)):
        rows = await store.zulip_user_registrations(SERVER_A, user_id, uuid)
        both = await store.zulip_realm_and_registrations(REALM, SERVER_A, user_id, uuid)
        assert both == (await store.zulip_realm(REALM), rows)
        assert await store.zulip_realm_and_registrations(None, SERVER_A, user_id, uuid) == (
            None,
            rows,
        )
    # The realm is read whoever owns it: the caller refuses another server's.
    other = await store.zulip_realm_and_registrations(REALM, SERVER_B, 7, None)
    assert other[0] == realm and [r.token for r in other[1]] == [token(3)]


async def test_racing_e2ee_registrations_of_one_device_make_one_row(
    store: Store, store_config: StoreConfig
) -> None:
    await store.zulip_add_server(SERVER_A, "k" * 64, "z.example")
    await store.zulip_record_analytics(SERVER_A, [ZulipRealm(REALM, SERVER_A, "z", "Z")], (0, 0, 0))
    other = await open_store(store_config)
    try:
        for n in range(15):
            ids: list[int] = []

            async def register(into: Store, n: int = n, ids: list[int] = ids) -> None:
                ids.append(
                    await into.zulip_e2ee_register(SERVER_A, REALM, "fcm", "t", None, token_id=n)
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(register, store)
                nursery.start_soon(register, other)
            assert ids[0] == ids[1], (n, ids)
    finally:
        await other.close()


async def test_instances_starting_together_on_a_new_database_migrate_it_once(
    store_config: StoreConfig,
) -> None:
    """Three instances opening one empty database at once: one creates the schema,
    the others find it made (PostgreSQL: under an advisory lock)."""
    opened: list[Store] = []

    async def start() -> None:
        opened.append(await open_store(store_config))

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(start)
        assert len(opened) == 3
        assert await schema_version(opened[0].engine) == SCHEMA_VERSION
        await opened[1].add_server("s")
        assert [s.name for s in await opened[2].servers()] == ["s"]
    finally:
        for store in opened:
            await store.close()


async def test_unregistering_no_tokens_removes_nothing(store: Store) -> None:
    server, _ = await store.add_server("s")
    await store.register(server.id, "u", token(1), "chat", "production")
    assert await store.unregister(server.id, []) == 0
    assert await store.count_registrations() == 1


def test_a_store_call_that_hangs_makes_the_store_count_as_failing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that hangs instead of failing (a middlebox swallowing its packets)
    raises nothing: the store counts as ``stalled`` while a call has run longer than
    STALL_AFTER, and healthy again once it ends (health and pushd_store_healthy read
    this); a failure's kind wins while it lasts.  The stall is logged once, however
    often it is read, and so is its end (it was never logged at all)."""
    from pushd.store.errors import STALL_AFTER, FailureLog

    caplog.set_level(logging.INFO, logger="pushd.store")

    now = [100.0]
    log = FailureLog(clock=lambda: now[0])
    quick = log.began()
    log.ended(quick)
    slow = log.began()
    now[0] += STALL_AFTER / 2
    other = log.began()
    assert log.reason is None
    now[0] += STALL_AFTER
    assert log.reason == "stalled"  # the oldest call in flight counts
    assert log.reason == "stalled"
    log.ended(slow)
    assert log.reason is None  # the other began STALL_AFTER ago exactly
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if m.startswith("store stalled")]) == 1, messages
    assert [m for m in messages if "complete again" in m] == [
        "store calls complete again (the longest took 15 s)"
    ]
    log.failed("unreachable")
    assert log.reason == "unreachable"
    log.ended(other)
    log.succeeded()
    assert log.reason is None


async def test_authenticate_for_reads_the_key_and_the_users_registrations_at_once(
    store: Store,
) -> None:
    """The native send to a user on an unshared store: one statement answers both, and
    gives the registrations only of the key's own server, only when it is active."""
    server, key = await store.add_server("chat-a")
    elsewhere, _ = await store.add_server("chat-b")
    await store.register(server.id, "alice", "bb" * 32, "chat", "production")
    await store.register(server.id, "alice", "aa" * 32, "chat", "sandbox")
    await store.register(server.id, "bob", "dd" * 32, "chat", "production")
    await store.register(elsewhere.id, "alice", "cc" * 32, "chat", "production")
    found, registrations = await store.authenticate_for(key, "alice")
    assert found == server
    assert registrations == await store.user_registrations(server.id, "alice")
    assert [(r.token, r.environment) for r in registrations or []] == [
        ("bb" * 32, "production"),
        ("aa" * 32, "sandbox"),
    ]
    assert await store.authenticate_for(key, "carol") == (server, [])
    assert await store.authenticate_for(key, None) == (server, None)
    assert await store.authenticate_for("pushd_" + "x" * 40, "alice") == (None, None)
    await store.set_active("chat-a", False)
    found, registrations = await store.authenticate_for(key, "alice")
    assert found is not None and not found.active and registrations is None


async def test_a_value_the_database_cannot_hold_is_refused_and_nothing_written(
    store: Store,
) -> None:
    """A NUL in text (PostgreSQL) or an integer beyond 64 bits (both) is the request's
    fault, :class:`ValueRefused` (a 400 in the route's protocol), not an outage or a
    500; the transaction is rolled back."""
    server, _ = await store.add_server("chat-a")
    if store.engine.dialect == "postgres":
        with pytest.raises(ValueRefused, match="NUL character"):
            await store.register(server.id, "al\x00ice", "aa" * 32, "chat", "production")
    with pytest.raises(ValueRefused, match="number out of range"):
        await store.register(2**64, "alice", "aa" * 32, "chat", "production")
    if store.engine.dialect == "postgres":  # compared as a wider number: none match
        assert await store.user_registrations(2**64, "alice") == []
    else:  # sqlite3 cannot even bind it
        with pytest.raises(ValueRefused, match="number out of range"):
            await store.user_registrations(2**64, "alice")
    assert await store.count_registrations() == 0
    assert store.engine.failures.failing is None  # not counted as the store failing


def test_a_database_that_refuses_connections_is_named_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool said only "pool initialization incomplete after 10.0 sec": the admin
    now reads the server's own reason (here: nobody listens on the port)."""
    from pushd.store import postgres

    monkeypatch.setattr(postgres, "POOL_TIMEOUT", 1.0)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://pushd@127.0.0.1:{port}/pushd"
    with pytest.raises(StoreError, match="Connection refused"):
        postgres.PostgresEngine.open_sync(url, pool_size=2)
