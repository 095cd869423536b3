"""Fill a fresh pushd store with the benchmark's registrations, in one transaction.

:class:`~pushd.store.sqlite.Database` creates the schema and the chat server (so the
key is hashed exactly as pushd expects); the rows themselves go in through a plain
``sqlite3`` connection with ``executemany``, because 100,000 calls of
``Database.register`` (a transaction each) would take longer than the benchmark.  The
columns are pushd's; if its schema changes, the INSERT below fails loudly.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import attrs
from common import (
    APP_NAME,
    FANOUT_DEVICES,
    FANOUT_USER_PREFIX,
    SERVER_NAME,
    SINGLE_USER_PREFIX,
    token,
)

from pushd.store.sqlite import Database

#: What the app's config says; registrations carry it like pushd's own register() does.
ENVIRONMENT = "sandbox"


@attrs.frozen
class Population:
    """What was stored: the chat server's key and how many users of each kind."""

    key: str
    single_users: int
    fanout_users: int

    @property
    def registrations(self) -> int:
        return self.single_users + self.fanout_users * FANOUT_DEVICES


def _rows(server_id: int, singles: int, fanouts: int, now: float) -> Iterator[tuple[object, ...]]:
    n = 0
    for user in range(fanouts):
        for _ in range(FANOUT_DEVICES):
            yield (server_id, f"{FANOUT_USER_PREFIX}{user}", token(n), APP_NAME, ENVIRONMENT, now)
            n += 1
    for user in range(singles):
        yield (server_id, f"{SINGLE_USER_PREFIX}{user}", token(n), APP_NAME, ENVIRONMENT, now)
        n += 1


def populate(path: str, total: int, fanout_users: int) -> Population:
    """Store ``total`` registrations: ``fanout_users`` users with 100 devices, the rest
    users with one device each."""
    single_users = total - fanout_users * FANOUT_DEVICES
    if single_users < 1:
        raise ValueError(f"{total} registrations leave no room for one-device users")
    database = Database(path)
    try:
        server, key = database.add_server(SERVER_NAME)
    finally:
        database.close()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO registrations (server_id, user_id, token, app, environment,"
            " registered_at) VALUES (?, ?, ?, ?, ?, ?)",
            _rows(server.id, single_users, fanout_users, time.time()),
        )
        db.execute("COMMIT")
        (stored,) = db.execute("SELECT count(*) FROM registrations").fetchone()
    finally:
        db.close()
    if stored != total:
        raise RuntimeError(f"stored {stored} registrations, meant {total}")
    return Population(key=key, single_users=single_users, fanout_users=fanout_users)
