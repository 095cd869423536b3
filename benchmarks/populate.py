"""Fill a fresh pushd store with the benchmark's registrations, in one transaction.

:func:`pushd.store.open_store` creates the schema and the chat server (so the key is
hashed exactly as pushd expects); the rows themselves go in through a plain ``sqlite3``
connection with ``executemany``, because 100,000 calls of ``Store.register`` (a
transaction each) would take longer than the benchmark.  The
columns are pushd's; if its schema changes, the INSERT below fails loudly.

Rows are written the way pushd's own ``POST /v1/devices`` writes them: an APNs device
carries the app's environment and kind ``apns``; an FCM device carries ``production``
(FCM has no environments) and kind ``fcm``.

The Zulip bouncer's share is a Zulip server (``Store.zulip_add_server``: uuid and
hashed key, as ``manage.py register_server`` leaves it), its realm
(``Store.zulip_record_analytics``, as its first analytics upload leaves it) and
users with 10 legacy APNs registrations each, written as ``push/register`` from a
Zulip >= 8 server leaves them: ``user_uuid`` and ``realm_uuid`` set, ``user_id`` NULL,
kind 1, ``ios_app_id`` the benchmark APNs app's topic (which is how pushd finds the app).
They count towards the 100,000 of the memory goal, taken from the one-device APNs users.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import attrs
import trio
from common import (
    APP_NAME,
    FANOUT_DEVICES,
    FANOUT_USER_PREFIX,
    FCM_APP_NAME,
    FCM_FANOUT_USER_PREFIX,
    FCM_SINGLE_USER_PREFIX,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    MIXED_USER_PREFIX,
    SERVER_NAME,
    SINGLE_USER_PREFIX,
    TOPIC,
    ZULIP_DEVICES,
    ZULIP_HOSTNAME,
    ZULIP_KIND_APNS,
    ZULIP_REALM_UUID,
    ZULIP_SERVER_KEY,
    ZULIP_SERVER_UUID,
    ZULIP_USER_PREFIX,
    fcm_token,
    token,
    zulip_token,
    zulip_user_uuid,
)

from pushd.config import StoreConfig
from pushd.store import Server, ZulipRealm, open_store

#: What the APNs app's config says; registrations carry it like pushd's register() does.
ENVIRONMENT = "sandbox"
#: What pushd stores as the environment of an FCM registration.
FCM_ENVIRONMENT = "production"
APNS_KIND = "apns"
FCM_KIND = "fcm"


@attrs.frozen
class Population:
    """What was stored: the chat server's key and how many users of each kind.

    APNs one-device users fill whatever the other kinds leave of the total, so the store
    holds the registration count the memory goal names whatever the FCM and Zulip
    shares are.
    """

    key: str
    single_users: int
    fanout_users: int
    fcm_single_users: int
    fcm_fanout_users: int
    mixed_users: int
    zulip_users: int = 0

    @property
    def native_registrations(self) -> int:
        """Rows of pushd's own ``registrations`` table (the native API's devices)."""
        return (
            self.single_users
            + self.fcm_single_users
            + (self.fanout_users + self.fcm_fanout_users + self.mixed_users) * FANOUT_DEVICES
        )

    @property
    def zulip_registrations(self) -> int:
        """Rows of ``zulip_registrations`` (the Zulip bouncer's legacy devices)."""
        return self.zulip_users * ZULIP_DEVICES

    @property
    def registrations(self) -> int:
        return self.native_registrations + self.zulip_registrations

    @property
    def fcm_registrations(self) -> int:
        return (
            self.fcm_single_users
            + self.fcm_fanout_users * FANOUT_DEVICES
            + self.mixed_users * MIXED_FCM_DEVICES
        )

    def users(self, prefix: str) -> int:
        """How many users are stored under a user-name prefix of :mod:`common`."""
        return {
            SINGLE_USER_PREFIX: self.single_users,
            FANOUT_USER_PREFIX: self.fanout_users,
            FCM_SINGLE_USER_PREFIX: self.fcm_single_users,
            FCM_FANOUT_USER_PREFIX: self.fcm_fanout_users,
            MIXED_USER_PREFIX: self.mixed_users,
            ZULIP_USER_PREFIX: self.zulip_users,
        }[prefix]


Row = tuple[int, str, str, str, str, float, str]
#: server_uuid, kind, token, ios_app_id, user_id, user_uuid, realm_uuid, registered_at
ZulipRow = tuple[str, int, str, str, None, str, str, float]


class _Rows:
    """Registration rows; every APNs and every FCM token distinct across the store."""

    def __init__(self, server_id: int, now: float) -> None:
        self.server_id = server_id
        self.now = now
        self.apns_tokens = 0
        self.fcm_tokens = 0

    def apns(self, user: str, devices: int) -> Iterator[Row]:
        for _ in range(devices):
            yield (
                self.server_id,
                user,
                token(self.apns_tokens),
                APP_NAME,
                ENVIRONMENT,
                self.now,
                APNS_KIND,
            )
            self.apns_tokens += 1

    def fcm(self, user: str, devices: int) -> Iterator[Row]:
        for _ in range(devices):
            yield (
                self.server_id,
                user,
                fcm_token(self.fcm_tokens),
                FCM_APP_NAME,
                FCM_ENVIRONMENT,
                self.now,
                FCM_KIND,
            )
            self.fcm_tokens += 1


def _rows(rows: _Rows, population: Population) -> Iterator[Row]:
    for n in range(population.fanout_users):
        yield from rows.apns(f"{FANOUT_USER_PREFIX}{n}", FANOUT_DEVICES)
    for n in range(population.single_users):
        yield from rows.apns(f"{SINGLE_USER_PREFIX}{n}", 1)
    for n in range(population.fcm_fanout_users):
        yield from rows.fcm(f"{FCM_FANOUT_USER_PREFIX}{n}", FANOUT_DEVICES)
    for n in range(population.fcm_single_users):
        yield from rows.fcm(f"{FCM_SINGLE_USER_PREFIX}{n}", 1)
    for n in range(population.mixed_users):
        user = f"{MIXED_USER_PREFIX}{n}"
        yield from rows.apns(user, MIXED_APNS_DEVICES)
        yield from rows.fcm(user, MIXED_FCM_DEVICES)


def _zulip_rows(users: int, now: float) -> Iterator[ZulipRow]:
    for n in range(users):
        user_uuid = zulip_user_uuid(n)
        for device in range(ZULIP_DEVICES):
            yield (
                ZULIP_SERVER_UUID,
                ZULIP_KIND_APNS,
                zulip_token(n, device),
                TOPIC,
                None,
                user_uuid,
                ZULIP_REALM_UUID,
                now,
            )


async def _create(path: str, zulip: bool) -> tuple[Server, str]:
    """The schema and the chat server (and the Zulip server and realm), through pushd."""
    database = await open_store(StoreConfig(path=path))
    try:
        server, key = await database.add_server(SERVER_NAME)
        if zulip:
            await database.zulip_add_server(ZULIP_SERVER_UUID, ZULIP_SERVER_KEY, ZULIP_HOSTNAME)
            realm = ZulipRealm(ZULIP_REALM_UUID, ZULIP_SERVER_UUID, ZULIP_HOSTNAME, "Bench")
            await database.zulip_record_analytics(ZULIP_SERVER_UUID, [realm], (0, 0, 0))
    finally:
        await database.close()
    return server, key


def populate(
    path: str,
    total: int,
    fanout_users: int,
    *,
    fcm_single_users: int = 0,
    fcm_fanout_users: int = 0,
    mixed_users: int = 0,
    zulip_users: int = 0,
) -> Population:
    """Store ``total`` registrations: users of each kind as given (``*_fanout_users`` and
    ``mixed_users`` have 100 devices each, ``zulip_users`` 10 Zulip legacy APNs
    registrations each), the rest APNs users with one device each."""
    others = (
        fcm_single_users
        + (fanout_users + fcm_fanout_users + mixed_users) * FANOUT_DEVICES
        + zulip_users * ZULIP_DEVICES
    )
    single_users = total - others
    if single_users < 1:
        raise ValueError(f"{total} registrations leave no room for one-device users")
    server, key = trio.run(_create, path, zulip_users > 0)
    population = Population(
        key=key,
        single_users=single_users,
        fanout_users=fanout_users,
        fcm_single_users=fcm_single_users,
        fcm_fanout_users=fcm_fanout_users,
        mixed_users=mixed_users,
        zulip_users=zulip_users,
    )
    now = time.time()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO registrations (server_id, user_id, token, app, environment,"
            " registered_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?)",
            _rows(_Rows(server.id, now), population),
        )
        db.executemany(
            "INSERT INTO zulip_registrations (server_uuid, kind, token, ios_app_id, user_id,"
            " user_uuid, realm_uuid, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            _zulip_rows(zulip_users, now),
        )
        db.execute("COMMIT")
        (native,) = db.execute("SELECT count(*) FROM registrations").fetchone()
        (zulip,) = db.execute("SELECT count(*) FROM zulip_registrations").fetchone()
    finally:
        db.close()
    if native + zulip != total:
        raise RuntimeError(f"stored {native} + {zulip} Zulip registrations, meant {total}")
    return population
