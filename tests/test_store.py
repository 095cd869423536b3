"""The SQLite store: migrations, the 410 rule, and all-or-nothing writes under SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pushd.model import RemovalScope
from pushd.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Database,
    DeadToken,
    HostnameTaken,
    StoreError,
    hash_key,
)
from tests.conftest import token

SCOPE = RemovalScope(environment="production")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(str(tmp_path / "pushd.sqlite3"))
    yield database
    database.close()


def test_fresh_database_is_migrated_in_wal_mode(db: Database, tmp_path: Path) -> None:
    assert db.schema_version == SCHEMA_VERSION
    raw = sqlite3.connect(tmp_path / "pushd.sqlite3")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer than this pushd"):
        Database(str(path))


def test_reopening_keeps_data_and_does_not_migrate_twice(tmp_path: Path) -> None:
    path = str(tmp_path / "pushd.sqlite3")
    first = Database(path)
    server, key = first.add_server("s")
    first.register(server.id, "u", token(1), "chat", "production")
    first.close()
    second = Database(path)
    assert second.authenticate(key) == server
    assert [r.token for r in second.user_registrations(server.id, "u")] == [token(1)]
    second.close()


def test_keys_are_stored_hashed(db: Database, tmp_path: Path) -> None:
    _, key = db.add_server("s")
    raw = (tmp_path / "pushd.sqlite3").read_bytes() + (tmp_path / "pushd.sqlite3-wal").read_bytes()
    assert key.encode() not in raw
    assert db.authenticate(key + "x") is None


def test_register_is_idempotent_and_moves_the_token(db: Database) -> None:
    server, _ = db.add_server("s")
    _, new = db.register(server.id, "u1", token(1), "chat", "production")
    assert new
    _, new = db.register(server.id, "u2", token(1), "chat", "production")
    assert not new
    assert db.user_registrations(server.id, "u1") == []
    assert [r.user_id for r in db.user_registrations(server.id, "u2")] == ["u2"]


def test_410_rule_deletes_only_registrations_older_than_the_timestamp(db: Database) -> None:
    server, _ = db.add_server("s")
    other, _ = db.add_server("t")
    db.register(server.id, "u", token(1), "chat", "production")
    time.sleep(0.01)
    (newer, _) = db.register(other.id, "v", token(1), "chat", "production")
    removed = db.remove_dead([DeadToken("chat", token(1), since=newer.registered_at, scope=SCOPE)])
    assert removed == 1
    assert db.user_registrations(server.id, "u") == []
    assert len(db.user_registrations(other.id, "v")) == 1
    assert db.remove_dead([DeadToken("chat", token(1), scope=SCOPE)]) == 1
    assert db.count_registrations() == 0


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pushd.model import RemovalScope
    from pushd.store.sqlite import Database, DeadToken
    db = Database(sys.argv[1])
    scope = RemovalScope()
    dead = [DeadToken("chat", f"{n:064x}", scope=scope) for n in range(int(sys.argv[2]))]
    print("start", flush=True)
    while True:
        db.remove_dead(dead)
    """
)


def test_sigkill_during_a_write_leaves_all_or_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "pushd.sqlite3")
    count = 20_000
    db = Database(path)
    server, _ = db.add_server("s")
    with db._write_tx() as conn:  # bulk set-up only
        conn.executemany(
            "INSERT INTO registrations (server_id, user_id, token, app, environment,"
            " registered_at) VALUES (?, 'u', ?, 'chat', 'production', 0)",
            [(server.id, f"{n:064x}") for n in range(count)],
        )
    db.close()
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, path, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "start"
    time.sleep(0.02)  # inside the delete transaction (it takes far longer)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    reopened = Database(path)
    try:
        remaining = reopened.count_registrations()
        assert remaining in (0, count)
        raw = sqlite3.connect(path)
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw.close()
    finally:
        reopened.close()


@pytest.mark.parametrize(
    ("user_id", "user_uuid"), [(7, None), (None, "2b9b3a0a-0000-4000-8000-000000000001"), (7, "u")]
)
def test_a_zulip_user_lookup_uses_an_index(db: Database, user_id, user_uuid) -> None:
    from pushd.store.sqlite import _identity_clause

    clause, params = _identity_clause(user_id, user_uuid)
    plan = db._reader.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM zulip_registrations"
        f" WHERE server_uuid = ? AND {clause} ORDER BY id",
        ("s", *params),
    ).fetchall()
    details = " ".join(str(row[-1]) for row in plan)
    assert "zulip_registrations_by_" in details, details


def test_migration_7_normalises_zulip_hostnames_and_keeps_servers_working(
    tmp_path: Path,
) -> None:
    """A store written before pins: its servers keep working, under their one name."""
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path)
    for migration in MIGRATIONS[:6]:
        raw.executescript(migration)
    raw.execute("PRAGMA user_version = 6")
    rows = [
        ("00000000-0000-4000-8000-000000000001", "CHAT.Example.com.:443", 0),
        ("00000000-0000-4000-8000-000000000002", "other.example.com:8443", 1),
        ("00000000-0000-4000-8000-000000000003", "not a hostname", 0),
        ("00000000-0000-4000-8000-000000000004", "chat.example.com", 0),
    ]
    for uuid, hostname, deactivated in rows:
        raw.execute(
            "INSERT INTO zulip_servers (uuid, key_hash, hostname, created_at, deactivated)"
            " VALUES (?, ?, ?, 0, ?)",
            (uuid, hash_key("k" * 64), hostname, deactivated),
        )
    raw.commit()
    raw.close()

    db = Database(str(path))
    try:
        assert [(s.uuid[-1], s.hostname, s.released_at) for s in db.zulip_servers()] == [
            ("1", "chat.example.com", None),
            ("2", "other.example.com:8443", None),
            ("3", "not a hostname", None),  # left as it was: it can only fail to match
            ("4", "chat.example.com", None),
        ]
        holder = db.zulip_hostname_holder("chat.example.com:443")
        assert holder is not None and holder.uuid.endswith("1")
        # The deactivated server keeps its hostname (it did not before migration 7).
        held = db.zulip_hostname_holder("OTHER.example.com:8443")
        assert held is not None and held.uuid.endswith("2")
        # Two servers the migration found sharing a name both keep working: the later
        # one re-registers under it, but no third server can take it.
        db.zulip_update_server(rows[3][0], "Chat.example.com", "", None)
        with pytest.raises(HostnameTaken, match=r"held by Zulip server .*0001"):
            db.zulip_add_server(
                "00000000-0000-4000-8000-000000000005", "k" * 64, "chat.example.com"
            )
        assert db.zulip_pins() == []
    finally:
        db.close()


def test_zulip_hostnames_have_one_holder_until_released(db: Database) -> None:
    first = "00000000-0000-4000-8000-00000000000a"
    second = "00000000-0000-4000-8000-00000000000b"
    db.zulip_add_server(first, "k" * 64, "Chat.Example.com.")
    with pytest.raises(HostnameTaken, match=f"held by Zulip server {first}"):
        db.zulip_add_server(second, "k" * 64, "chat.example.com:443")
    with pytest.raises(StoreError, match="deactivate it first"):
        db.zulip_release_hostname("chat.example.com")
    db.zulip_set_deactivated(first, True)
    with pytest.raises(HostnameTaken):
        db.zulip_add_server(second, "k" * 64, "chat.example.com")
    assert db.zulip_release_hostname("CHAT.example.com") == [first]
    assert db.zulip_release_hostname("chat.example.com") == []
    db.zulip_add_server(second, "k" * 64, "chat.example.com")
    with pytest.raises(HostnameTaken, match=f"held by Zulip server {second}"):
        db.zulip_set_deactivated(first, False)
    # A released server may come back once nobody else holds its name.
    db.zulip_update_server(second, "new.example.com", "", None)
    db.zulip_set_deactivated(first, False)
    restored = db.zulip_server(first)
    assert restored is not None and not restored.deactivated and restored.released_at is None


def test_zulip_pins(db: Database) -> None:
    org = "00000000-0000-4000-8000-00000000000A"
    assert db.zulip_add_pin("CHAT.example.com.", org) is None
    again = db.zulip_add_pin("chat.example.com:443", org.lower())
    assert again is not None and again.org_id == org.lower()
    with pytest.raises(StoreError, match="add --replace"):
        db.zulip_add_pin("chat.example.com", "00000000-0000-4000-8000-00000000000b")
    moved = db.zulip_add_pin(
        "chat.example.com", "00000000-0000-4000-8000-00000000000b", replace=True
    )
    assert moved is not None and moved.org_id == org.lower()
    pin = db.zulip_pin("Chat.example.com")
    assert pin is not None and pin.org_id.endswith("b") and pin.hostname == "chat.example.com"
    assert db.zulip_remove_pin("chat.example.com.")
    assert not db.zulip_remove_pin("chat.example.com")
    with pytest.raises(StoreError, match="not a hostname"):
        db.zulip_add_pin("chat example", org)
