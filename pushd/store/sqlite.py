"""The embedded SQLite store: chat servers and device registrations.

Why two connections
-------------------
Writes go to one connection that lives on a worker thread (``trio.to_thread``, one at a
time): a commit may wait for the disk, and the event loop must never wait with it.

Reads go to a second, read-only connection used directly on the event-loop thread.  An
indexed point read costs a few microseconds, while a hop to a worker thread and back
costs about 130 µs of CPU on our machines (``benchmarks/store_hop.py``): on the hot path
(authenticate, look up a user's devices) the hop would cost more than everything else
pushd does per notification.  WAL mode lets the reader see every committed write at
its next statement, never a half-written one.

Every write method is one transaction (``with self._write_tx()``): a process killed at
any moment leaves the database as it was before or after the request, never between.

No message content is stored here: only servers, hashed keys, device tokens and the
Zulip bouncer's own key pairs (see migration 4).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import attrs
import trio

from pushd.files import private_file
from pushd.model import RemovalScope
from pushd.store.errors import FailureLog, StoreError, StoreUnavailable

__all__ = ["StoreError", "StoreUnavailable"]
from pushd.model import normalize_zulip_hostname

T = TypeVar("T")

#: Prefix of native API keys, so a leaked one is recognisable in a secret scanner.
KEY_PREFIX = "pushd_"
KEY_BYTES = 32
#: How long a writer waits for a lock held by another process (the CLI) before failing.
BUSY_TIMEOUT_MS = 5000
#: A late dead verdict nobody asked about for this long is dropped: the device's
#: pusher is gone, or the next push finds the token dead again anyway.
LATE_VERDICT_KEEP = 30 * 24 * 3600.0

#: Forward migrations; the schema version is the number applied (``PRAGMA user_version``).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE servers (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        active INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE registrations (
        id INTEGER PRIMARY KEY,
        server_id INTEGER NOT NULL REFERENCES servers(id),
        user_id TEXT NOT NULL,
        token TEXT NOT NULL,
        app TEXT NOT NULL,
        environment TEXT NOT NULL,
        registered_at REAL NOT NULL,
        UNIQUE (server_id, app, token)
    );
    CREATE INDEX registrations_by_user ON registrations (server_id, user_id);
    CREATE INDEX registrations_by_token ON registrations (app, token);
    """,
    # 2: the token's kind (apns or fcm), so a registration says what it is even if the
    # app it was made for is later renamed or removed from the config.
    """
    ALTER TABLE registrations ADD COLUMN kind TEXT NOT NULL DEFAULT 'apns';
    """,
    # 3: the Zulip push bouncer (pushd.frontends.zulip).  Zulip servers authenticate
    # with their own (uuid, key) and key device tokens by their own user ids, so they
    # get tables of their own rather than rows in servers/registrations.  Realms keep
    # only what the protocol needs: which server owns them, host and name.
    """
    CREATE TABLE zulip_servers (
        uuid TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        hostname TEXT NOT NULL,
        contact_email TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        deactivated INTEGER NOT NULL DEFAULT 0,
        last_realm_count_id INTEGER NOT NULL DEFAULT 0,
        last_installation_count_id INTEGER NOT NULL DEFAULT 0,
        last_realmauditlog_id INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE zulip_realms (
        uuid TEXT PRIMARY KEY,
        server_uuid TEXT NOT NULL REFERENCES zulip_servers(uuid),
        host TEXT NOT NULL,
        name TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE zulip_registrations (
        id INTEGER PRIMARY KEY,
        server_uuid TEXT NOT NULL REFERENCES zulip_servers(uuid),
        kind INTEGER NOT NULL,
        token TEXT NOT NULL,
        ios_app_id TEXT,
        user_id INTEGER,
        user_uuid TEXT,
        realm_uuid TEXT,
        registered_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX zulip_registrations_unique ON zulip_registrations
        (server_uuid, kind, token, ifnull(user_id, -1), ifnull(user_uuid, ''));
    CREATE INDEX zulip_registrations_by_token ON zulip_registrations (kind, token);
    """,
    # 4: the Zulip bouncer's end-to-end encrypted pushes (pushd.frontends.zulip.e2ee).
    # Bouncer key pairs live here rather than in the config: the CLI adds and removes
    # them while the daemon runs, and the daemon reads them per request from this file,
    # which is already the one place holding secrets of the same weight (device tokens).
    # E2EE devices are keyed by realm and, for Zulip 12, by ``token_id`` (the signed
    # int64 of the token's SHA-256 prefix) or, for Zulip 11, by ``push_account_id``;
    # their ``id`` is the ``device_id`` Zulip 11 is told.  No sealed registration and no
    # push key is ever stored: only what sending needs.
    """
    CREATE TABLE zulip_bouncer_keys (
        id INTEGER PRIMARY KEY,
        public_key TEXT NOT NULL UNIQUE,
        private_key TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE zulip_e2ee_devices (
        id INTEGER PRIMARY KEY,
        server_uuid TEXT NOT NULL REFERENCES zulip_servers(uuid),
        realm_uuid TEXT NOT NULL REFERENCES zulip_realms(uuid),
        token_kind TEXT NOT NULL,
        token TEXT NOT NULL,
        ios_app_id TEXT,
        token_id INTEGER,
        push_account_id INTEGER,
        registered_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX zulip_e2ee_by_token_id ON zulip_e2ee_devices (realm_uuid, token_id)
        WHERE token_id IS NOT NULL;
    CREATE UNIQUE INDEX zulip_e2ee_by_account ON zulip_e2ee_devices
        (realm_uuid, push_account_id, token) WHERE push_account_id IS NOT NULL;
    CREATE INDEX zulip_e2ee_by_token ON zulip_e2ee_devices (token);
    """,
    # 5: push/notify looks a user up by uuid or id; without these it read every row of
    # the Zulip server (2.3 CPU-ms for 10,000 registrations, benchmarks/run.py).
    """
    CREATE INDEX zulip_registrations_by_uuid ON zulip_registrations (server_uuid, user_uuid);
    CREATE INDEX zulip_registrations_by_id ON zulip_registrations (server_uuid, user_id);
    """,
    # 6: dead verdicts kept under the caller's own name for the device (Matrix: app_id
    # and pushkey) until its next request: see DeadToken.
    """
    CREATE TABLE late_verdicts (
        ref TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since REAL,
        found_at REAL NOT NULL
    );
    CREATE INDEX late_verdicts_by_age ON late_verdicts (found_at);
    """,
    # 7: Zulip hostnames bound to one zulip_org_id (``pushd zulip servers allow``), so
    # that registering first with an allowed hostname no longer takes it.  Hostnames
    # are kept in their normalised form (pushd.model.normalize_zulip_hostname, which
    # the store registers as an SQL function) so one server cannot be registered twice
    # as ``chat.example.com`` and ``CHAT.example.com.:443``.  A deactivated server
    # keeps its hostname, as in Zulip, until the operator releases it (``released_at``).
    """
    ALTER TABLE zulip_servers ADD COLUMN released_at REAL;
    UPDATE zulip_servers SET hostname = pushd_zulip_hostname(hostname);
    CREATE INDEX zulip_servers_by_hostname ON zulip_servers (hostname);
    CREATE TABLE zulip_pins (
        hostname TEXT PRIMARY KEY,
        org_id TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def failure_kind(error: sqlite3.Error) -> str:
    """A few words for what went wrong, from SQLite's error name (never its message,
    which may quote a value)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    for prefix, kind in _FAILURE_KINDS:
        if name.startswith(prefix):
            return kind
    return "database_error"


_FAILURE_KINDS: tuple[tuple[str, str], ...] = (
    ("SQLITE_FULL", "disk_full"),
    ("SQLITE_IOERR", "io_error"),
    ("SQLITE_READONLY", "read_only"),
    ("SQLITE_BUSY", "busy"),
    ("SQLITE_LOCKED", "busy"),
    ("SQLITE_CANTOPEN", "cannot_open"),
    ("SQLITE_CORRUPT", "corrupt"),
    ("SQLITE_NOTADB", "corrupt"),
)


class HostnameTaken(StoreError):
    """A Zulip hostname is held by another server (active, or deactivated and not
    released): the write that would have given it a second owner did not happen."""

    def __init__(self, hostname: str, holder: str) -> None:
        super().__init__(f"hostname {hostname} is held by Zulip server {holder}")
        self.hostname = hostname
        self.holder = holder


@attrs.frozen
class Server:
    """A chat server allowed to use the native API."""

    id: int
    name: str
    created_at: float
    active: bool


@attrs.frozen
class Registration:
    """One device token of one user of one chat server."""

    server_id: int
    user_id: str
    token: str
    app: str
    environment: str
    registered_at: float
    kind: str = "apns"


@attrs.frozen
class DeadToken:
    """A token an upstream called dead, and since when (APNs' 410 timestamp).

    ``ref`` is the caller's own name for the device when its protocol can be told of
    a verdict later (Matrix's ``rejected``): the verdict is then kept under that name
    until the next request that carries it (:meth:`Database.late_verdicts`), whether it
    came after the caller was answered (a background retry) or in an answer that may
    have been lost (the homeserver then repeats the request).
    """

    app: str
    token: str
    since: float | None = None
    reason: str = ""
    ref: str | None = None
    #: Which stored registrations the verdict removes; None: none (a protocol that
    #: names its tokens per request, see ``pushd.model.STORED_PROTOCOLS``).
    scope: RemovalScope | None = None


@attrs.frozen
class LateVerdict:
    """A dead verdict kept for the caller's next request carrying ``ref``."""

    ref: str
    reason: str
    since: float | None
    found_at: float


def hash_key(key: str) -> str:
    """SHA-256 of an API key.

    Keys are 256 random bits, so a fast hash is enough: there is nothing to brute-force,
    and a slow KDF would cost CPU on every request.
    """
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key; shown once, stored only as its hash."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def _connect(path: str, *, readonly: bool) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri() + ("?mode=ro" if readonly else "")
    try:
        db = sqlite3.connect(
            uri,
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
    except sqlite3.OperationalError as error:
        raise StoreError(f"cannot open {path}: {error}") from None
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _registration(row: Sequence[object]) -> Registration:
    server_id, user_id, token, app, environment, registered_at, kind = row
    return Registration(
        server_id=int(server_id),  # type: ignore[call-overload]
        user_id=str(user_id),
        token=str(token),
        app=str(app),
        environment=str(environment),
        registered_at=float(registered_at),  # type: ignore[arg-type]
        kind=str(kind),
    )


_REG_COLUMNS = "server_id, user_id, token, app, environment, registered_at, kind"


@attrs.frozen
class ZulipServer:
    """A Zulip server registered with the push bouncer (its key only as a hash)."""

    uuid: str
    key_hash: str = attrs.field(repr=False)
    hostname: str
    contact_email: str
    created_at: float
    deactivated: bool
    last_realm_count_id: int = 0
    last_installation_count_id: int = 0
    last_realmauditlog_id: int = 0
    #: When the operator freed the hostname of this (deactivated) server; until then
    #: no other server may register it.
    released_at: float | None = None


@attrs.frozen
class ZulipPin:
    """A hostname (normalised) that only the Zulip server with ``org_id`` may register."""

    hostname: str
    org_id: str
    created_at: float


@attrs.frozen
class ZulipRealm:
    """A realm (organization) of a Zulip server, learned from its analytics upload."""

    uuid: str
    server_uuid: str
    host: str
    name: str


@attrs.frozen
class ZulipRegistration:
    """A legacy Zulip device token: kind 1 = APNs (stored lower case), 2 = FCM.

    Exactly one of ``user_id`` and ``user_uuid`` is set, as in Zulip's own bouncer.
    """

    id: int
    server_uuid: str
    kind: int
    token: str
    ios_app_id: str | None
    user_id: int | None
    user_uuid: str | None
    realm_uuid: str | None
    registered_at: float


@attrs.frozen
class ZulipBouncerKey:
    """A bouncer X25519 key pair (base64); apps seal their registrations to the public one.

    Several live at once: each app release bakes in one public key, and a key is only
    removed once the app versions carrying it are gone.
    """

    id: int
    public_key: str
    private_key: str = attrs.field(repr=False)
    created_at: float


@attrs.frozen
class ZulipE2eeDevice:
    """An E2EE device registration: what sending to it needs, nothing more.

    ``token_id`` (Zulip 12, signed int64) or ``push_account_id`` (Zulip 11) is set;
    ``id`` is the ``device_id`` Zulip 11 servers are given.  ``token_kind`` is "apns"
    (token stored lower case) or "fcm".
    """

    id: int
    server_uuid: str
    realm_uuid: str
    token_kind: str
    token: str
    ios_app_id: str | None
    token_id: int | None
    push_account_id: int | None
    registered_at: float


_ZULIP_E2EE_COLUMNS = (
    "id, server_uuid, realm_uuid, token_kind, token, ios_app_id, token_id, push_account_id,"
    " registered_at"
)


def _zulip_e2ee_device(row: Sequence[object]) -> ZulipE2eeDevice:
    return ZulipE2eeDevice(
        id=int(row[0]),  # type: ignore[call-overload]
        server_uuid=str(row[1]),
        realm_uuid=str(row[2]),
        token_kind=str(row[3]),
        token=str(row[4]),
        ios_app_id=None if row[5] is None else str(row[5]),
        token_id=None if row[6] is None else int(row[6]),  # type: ignore[call-overload]
        push_account_id=None if row[7] is None else int(row[7]),  # type: ignore[call-overload]
        registered_at=float(row[8]),  # type: ignore[arg-type]
    )


_ZULIP_SERVER_COLUMNS = (
    "uuid, key_hash, hostname, contact_email, created_at, deactivated,"
    " last_realm_count_id, last_installation_count_id, last_realmauditlog_id, released_at"
)
_ZULIP_REG_COLUMNS = (
    "id, server_uuid, kind, token, ios_app_id, user_id, user_uuid, realm_uuid, registered_at"
)


def _zulip_server(row: Sequence[object]) -> ZulipServer:
    return ZulipServer(
        uuid=str(row[0]),
        key_hash=str(row[1]),
        hostname=str(row[2]),
        contact_email=str(row[3]),
        created_at=float(row[4]),  # type: ignore[arg-type]
        deactivated=bool(row[5]),
        last_realm_count_id=int(row[6]),  # type: ignore[call-overload]
        last_installation_count_id=int(row[7]),  # type: ignore[call-overload]
        last_realmauditlog_id=int(row[8]),  # type: ignore[call-overload]
        released_at=None if row[9] is None else float(row[9]),  # type: ignore[arg-type]
    )


def _zulip_registration(row: Sequence[object]) -> ZulipRegistration:
    return ZulipRegistration(
        id=int(row[0]),  # type: ignore[call-overload]
        server_uuid=str(row[1]),
        kind=int(row[2]),  # type: ignore[call-overload]
        token=str(row[3]),
        ios_app_id=None if row[4] is None else str(row[4]),
        user_id=None if row[5] is None else int(row[5]),  # type: ignore[call-overload]
        user_uuid=None if row[6] is None else str(row[6]),
        realm_uuid=None if row[7] is None else str(row[7]),
        registered_at=float(row[8]),  # type: ignore[arg-type]
    )


def _sql_zulip_hostname(hostname: str | None) -> str | None:
    """Migration 7's normaliser: a stored value it cannot parse is left as it was."""
    if hostname is None:
        return None
    return normalize_zulip_hostname(hostname) or hostname


def _zulip_host(hostname: str) -> str:
    host = normalize_zulip_hostname(hostname)
    if host is None:
        raise StoreError(f"{hostname!r} is not a hostname like chat.example.com[:port]")
    return host


def _zulip_holder(db: sqlite3.Connection, host: str, other_than: str | None) -> ZulipServer | None:
    """The oldest server other than ``other_than`` that holds the normalised ``host``."""
    row = db.execute(
        f"SELECT {_ZULIP_SERVER_COLUMNS} FROM zulip_servers WHERE hostname = ?"
        " AND released_at IS NULL AND uuid IS NOT ? ORDER BY created_at, uuid LIMIT 1",
        (host, other_than),
    ).fetchone()
    return None if row is None else _zulip_server(row)


def _identity_clause(user_id: int | None, user_uuid: str | None) -> tuple[str, tuple[object, ...]]:
    """Zulip's ``UserPushIdentityCompat.filter_q``: match the uuid OR the id, if given."""
    parts: list[str] = []
    params: tuple[object, ...] = ()
    if user_uuid is not None:
        parts.append("user_uuid = ?")
        params += (user_uuid,)
    if user_id is not None:
        parts.append("user_id = ?")
        params += (user_id,)
    if not parts:
        return "0", ()
    return "(" + " OR ".join(parts) + ")", params


#: Zulip E2EE devices name their kind in words; legacy ones by number.
_E2EE_TOKEN_KIND = {1: "apns", 2: "fcm"}


def _remove_scoped(db: sqlite3.Connection, item: DeadToken, scope: RemovalScope) -> int:
    """Delete ``item.token``'s registrations within ``scope``; the count."""
    newer = "" if item.since is None else " AND registered_at < ?"
    after: tuple[object, ...] = () if item.since is None else (item.since,)
    environment = "" if scope.environment is None else " AND environment = ?"
    env: tuple[object, ...] = () if scope.environment is None else (scope.environment,)
    removed = db.execute(
        f"DELETE FROM registrations WHERE app = ? AND token = ?{environment}{newer}",
        (item.app, item.token, *env, *after),
    ).rowcount
    if scope.zulip_kind is None:
        return removed
    app_id = "" if scope.zulip_ios_app_id is None else " AND ios_app_id = ?"
    ios: tuple[object, ...] = () if scope.zulip_ios_app_id is None else (scope.zulip_ios_app_id,)
    removed += db.execute(
        f"DELETE FROM zulip_registrations WHERE kind = ? AND token = ?{app_id}{newer}",
        (scope.zulip_kind, item.token, *ios, *after),
    ).rowcount
    removed += db.execute(
        f"DELETE FROM zulip_e2ee_devices WHERE token_kind = ? AND token = ?{app_id}{newer}",
        (_E2EE_TOKEN_KIND[scope.zulip_kind], item.token, *ios, *after),
    ).rowcount
    return removed


class Database:
    """Synchronous access: used by the CLI directly and by :class:`Store` on threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            private_file(Path(path))
        except OSError as error:
            raise StoreError(f"cannot open {path}: {error.strerror}") from None
        self._db = _connect(path, readonly=False)
        self._db.create_function("pushd_zulip_hostname", 1, _sql_zulip_hostname, deterministic=True)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across process crashes in WAL mode; only an OS crash can
            # lose the last commits, never corrupt the file.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            self._db.close()
            raise StoreError(f"{path}: {error}") from None
        self._reader = _connect(path, readonly=True)
        self._reader.execute("PRAGMA query_only = ON")

    def close(self) -> None:
        self._reader.close()
        self._db.close()

    # --- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _write_tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write_tx() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema {version}, newer than this pushd "
                    f"({SCHEMA_VERSION}): upgrade pushd or restore a backup"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        (version,) = self._reader.execute("PRAGMA user_version").fetchone()
        return int(version)

    # --- servers ------------------------------------------------------------------------

    def add_server(self, name: str, key: str | None = None) -> tuple[Server, str]:
        """Create a server; returns it and its key (the only time the key is seen).

        ``key`` is for the demo mode's well-known key; otherwise a fresh one is made.
        """
        key = key or new_key()
        now = time.time()
        with self._write_tx() as db:
            try:
                cursor = db.execute(
                    "INSERT INTO servers (name, key_hash, created_at) VALUES (?, ?, ?)",
                    (name, hash_key(key), now),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"a server named {name!r} exists already") from None
        assert cursor.lastrowid is not None
        return Server(id=cursor.lastrowid, name=name, created_at=now, active=True), key

    def servers(self) -> list[Server]:
        rows = self._reader.execute(
            "SELECT id, name, created_at, active FROM servers ORDER BY id"
        ).fetchall()
        return [Server(id=r[0], name=r[1], created_at=r[2], active=bool(r[3])) for r in rows]

    def rotate_key(self, name: str) -> str:
        """Give the server a new key; the old one stops working at once."""
        key = new_key()
        with self._write_tx() as db:
            cursor = db.execute(
                "UPDATE servers SET key_hash = ? WHERE name = ?", (hash_key(key), name)
            )
            if cursor.rowcount != 1:
                raise StoreError(f"no server named {name!r}")
        return key

    def set_active(self, name: str, active: bool) -> None:
        with self._write_tx() as db:
            cursor = db.execute("UPDATE servers SET active = ? WHERE name = ?", (int(active), name))
            if cursor.rowcount != 1:
                raise StoreError(f"no server named {name!r}")

    def authenticate(self, key: str) -> Server | None:
        """The server whose key this is (active or not), or None.

        The lookup is by hash, so comparing the stored hash again in constant time only
        guards against an index that matched on something other than equality.
        """
        digest = hash_key(key)
        row = self._reader.execute(
            "SELECT id, name, created_at, active, key_hash FROM servers WHERE key_hash = ?",
            (digest,),
        ).fetchone()
        if row is None or not hmac.compare_digest(row[4], digest):
            return None
        return Server(id=row[0], name=row[1], created_at=row[2], active=bool(row[3]))

    # --- registrations --------------------------------------------------------------------

    def register(
        self,
        server_id: int,
        user_id: str,
        token: str,
        app: str,
        environment: str,
        kind: str = "apns",
    ) -> tuple[Registration, bool]:
        """Store a registration; returns it and whether it is new.

        Registering a known (server, app, token) again moves it to the given user and
        renews ``registered_at``: the device has proved the token alive just now, which
        is what APNs' 410 timestamp rule compares against.
        """
        now = time.time()
        with self._write_tx() as db:
            existed = db.execute(
                "SELECT 1 FROM registrations WHERE server_id = ? AND app = ? AND token = ?",
                (server_id, app, token),
            ).fetchone()
            db.execute(
                "INSERT INTO registrations (server_id, user_id, token, app, environment,"
                " registered_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_id, app, token) DO UPDATE SET"
                " user_id = excluded.user_id, environment = excluded.environment,"
                " registered_at = excluded.registered_at, kind = excluded.kind",
                (server_id, user_id, token, app, environment, now, kind),
            )
        registration = Registration(server_id, user_id, token, app, environment, now, kind)
        return registration, existed is None

    def unregister(self, server_id: int, tokens: Sequence[str], app: str | None = None) -> int:
        """Remove a server's registrations of a token (of one app, or all); the count.

        ``tokens`` are the forms the token may be stored in (an APNs token in lower case,
        an FCM token as given), so a caller need not know which kind it holds.
        """
        marks = ",".join("?" * len(tokens))
        query = f"DELETE FROM registrations WHERE server_id = ? AND token IN ({marks})"
        params: tuple[object, ...] = (server_id, *tokens)
        if app is not None:
            query += " AND app = ?"
            params += (app,)
        with self._write_tx() as db:
            cursor = db.execute(query, params)
        return cursor.rowcount

    def unregister_user(self, server_id: int, user_id: str) -> int:
        with self._write_tx() as db:
            cursor = db.execute(
                "DELETE FROM registrations WHERE server_id = ? AND user_id = ?",
                (server_id, user_id),
            )
        return cursor.rowcount

    def user_registrations(self, server_id: int, user_id: str) -> list[Registration]:
        rows = self._reader.execute(
            f"SELECT {_REG_COLUMNS} FROM registrations WHERE server_id = ? AND user_id = ?"
            " ORDER BY id",
            (server_id, user_id),
        ).fetchall()
        return [_registration(row) for row in rows]

    def token_registrations(self, server_id: int, tokens: Iterable[str]) -> list[Registration]:
        tokens = list(tokens)
        if not tokens:
            return []
        marks = ",".join("?" * len(tokens))
        rows = self._reader.execute(
            f"SELECT {_REG_COLUMNS} FROM registrations"
            f" WHERE server_id = ? AND token IN ({marks}) ORDER BY id",
            (server_id, *tokens),
        ).fetchall()
        return [_registration(row) for row in rows]

    def count_registrations(self) -> int:
        (count,) = self._reader.execute("SELECT count(*) FROM registrations").fetchone()
        return int(count)

    def remove_dead(self, dead: Iterable[DeadToken]) -> int:
        """Delete dead tokens in the scope of the app that found them, in one transaction.

        Only registrations that the same app and environment serve go (see
        ``RemovalScope``): native ones of that app, and the Zulip ones pushd routes to
        it.  With a ``since`` time (APNs 410), only those made before it: one made
        after it belongs to a device that got the same token back and is alive.
        Verdicts with a ``ref`` are kept for the caller's next request.  Returns the
        count removed.
        """
        removed = 0
        now = time.time()
        with self._write_tx() as db:
            for item in dead:
                if item.scope is not None:
                    removed += _remove_scoped(db, item, item.scope)
                if item.ref is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO late_verdicts (ref, reason, since, found_at)"
                        " VALUES (?, ?, ?, ?)",
                        (item.ref, item.reason, item.since, now),
                    )
            db.execute("DELETE FROM late_verdicts WHERE found_at < ?", (now - LATE_VERDICT_KEEP,))
        return removed

    def late_verdicts(self, refs: Sequence[str]) -> dict[str, LateVerdict]:
        """The kept verdicts among ``refs`` (one indexed read)."""
        if not refs:
            return {}
        marks = ",".join("?" * len(refs))
        rows = self._reader.execute(
            f"SELECT ref, reason, since, found_at FROM late_verdicts WHERE ref IN ({marks})",
            list(refs),
        ).fetchall()
        return {row[0]: LateVerdict(*row) for row in rows}

    def forget_late_verdicts(self, refs: Iterable[str]) -> None:
        """Drop verdicts the caller has now been told (or that no longer apply)."""
        with self._write_tx() as db:
            db.executemany("DELETE FROM late_verdicts WHERE ref = ?", [(ref,) for ref in refs])

    # --- Zulip push bouncer ---------------------------------------------------------------

    def zulip_server(self, uuid: str) -> ZulipServer | None:
        row = self._reader.execute(
            f"SELECT {_ZULIP_SERVER_COLUMNS} FROM zulip_servers WHERE uuid = ?", (uuid,)
        ).fetchone()
        return None if row is None else _zulip_server(row)

    def zulip_servers(self) -> list[ZulipServer]:
        rows = self._reader.execute(
            f"SELECT {_ZULIP_SERVER_COLUMNS} FROM zulip_servers ORDER BY created_at, uuid"
        ).fetchall()
        return [_zulip_server(row) for row in rows]

    def zulip_hostname_holder(
        self, hostname: str, *, other_than: str | None = None
    ) -> ZulipServer | None:
        """The server holding ``hostname`` (any spelling): active, or deactivated and not
        released.  Zulip keeps a deactivated server's hostname taken too, so that
        deactivating a registration never hands its name to whoever asks next."""
        return _zulip_holder(self._reader, _zulip_host(hostname), other_than)

    def zulip_add_server(
        self, uuid: str, key: str, hostname: str, contact_email: str = ""
    ) -> ZulipServer:
        """Create a server holding ``hostname`` (stored normalised).

        HostnameTaken if another server holds the hostname, checked in the same
        transaction so two registrations racing for one name cannot both win;
        StoreError if the uuid is taken.
        """
        host = _zulip_host(hostname)
        now = time.time()
        with self._write_tx() as db:
            holder = _zulip_holder(db, host, None)
            if holder is not None:
                raise HostnameTaken(host, holder.uuid)
            try:
                db.execute(
                    "INSERT INTO zulip_servers (uuid, key_hash, hostname, contact_email,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    (uuid, hash_key(key), host, contact_email, now),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"a Zulip server with uuid {uuid} exists already") from None
        return ZulipServer(uuid, hash_key(key), host, contact_email, now, False)

    def zulip_update_server(
        self, uuid: str, hostname: str, contact_email: str, new_key: str | None
    ) -> None:
        """Record a re-registration: new hostname and contact, and a new key if rotated.

        HostnameTaken (and nothing written) if it moves onto another server's hostname.
        Keeping its own is always fine, even one a migration found it sharing.
        """
        host = _zulip_host(hostname)
        with self._write_tx() as db:
            row = db.execute("SELECT hostname FROM zulip_servers WHERE uuid = ?", (uuid,))
            current = row.fetchone()
            holder = _zulip_holder(db, host, uuid)
            if holder is not None and (current is None or current[0] != host):
                raise HostnameTaken(host, holder.uuid)
            db.execute(
                "UPDATE zulip_servers SET hostname = ?, contact_email = ? WHERE uuid = ?",
                (host, contact_email, uuid),
            )
            if new_key is not None:
                db.execute(
                    "UPDATE zulip_servers SET key_hash = ? WHERE uuid = ?",
                    (hash_key(new_key), uuid),
                )

    def zulip_set_deactivated(self, uuid: str, deactivated: bool) -> None:
        """Deactivate or reactivate a server.  A server whose hostname was released
        takes it back on reactivation, unless another server holds it by then
        (HostnameTaken: nothing changes)."""
        with self._write_tx() as db:
            row = db.execute(
                f"SELECT {_ZULIP_SERVER_COLUMNS} FROM zulip_servers WHERE uuid = ?", (uuid,)
            ).fetchone()
            if row is None:
                raise StoreError(f"no Zulip server with uuid {uuid}")
            server = _zulip_server(row)
            if not deactivated and server.released_at is not None:
                holder = _zulip_holder(db, server.hostname, uuid)
                if holder is not None:
                    raise HostnameTaken(server.hostname, holder.uuid)
            db.execute(
                "UPDATE zulip_servers SET deactivated = ?,"
                " released_at = CASE WHEN ? THEN released_at END WHERE uuid = ?",
                (int(deactivated), int(deactivated), uuid),
            )

    def zulip_release_hostname(self, hostname: str) -> list[str]:
        """Free a hostname held by deactivated servers, so a new server may register
        it; returns their uuids.  StoreError if an active server holds it: deactivate
        that one first, so freeing a name is always a deliberate two-step act."""
        host = _zulip_host(hostname)
        with self._write_tx() as db:
            rows = db.execute(
                "SELECT uuid, deactivated FROM zulip_servers"
                " WHERE hostname = ? AND released_at IS NULL ORDER BY created_at, uuid",
                (host,),
            ).fetchall()
            active = [str(uuid) for uuid, deactivated in rows if not deactivated]
            if active:
                raise StoreError(
                    f"{host} is held by active Zulip server {active[0]}; deactivate it first"
                )
            db.execute(
                "UPDATE zulip_servers SET released_at = ? WHERE hostname = ?"
                " AND released_at IS NULL",
                (time.time(), host),
            )
        return [str(uuid) for uuid, _ in rows]

    def zulip_pins(self) -> list[ZulipPin]:
        rows = self._reader.execute(
            "SELECT hostname, org_id, created_at FROM zulip_pins ORDER BY hostname"
        ).fetchall()
        return [ZulipPin(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def zulip_pin(self, hostname: str) -> ZulipPin | None:
        """The pin of ``hostname`` (any spelling), read per request so that pins the
        CLI writes count at once."""
        row = self._reader.execute(
            "SELECT hostname, org_id, created_at FROM zulip_pins WHERE hostname = ?",
            (_zulip_host(hostname),),
        ).fetchone()
        return None if row is None else ZulipPin(str(row[0]), str(row[1]), float(row[2]))

    def zulip_add_pin(
        self, hostname: str, org_id: str, *, replace: bool = False
    ) -> ZulipPin | None:
        """Pin ``hostname`` to ``org_id``; idempotent.  Returns the pin there was before,
        if any.  StoreError if the hostname is pinned to another org id and not
        ``replace``: moving a hostname to another server must be said out loud."""
        host = _zulip_host(hostname)
        org = org_id.lower()
        with self._write_tx() as db:
            row = db.execute(
                "SELECT hostname, org_id, created_at FROM zulip_pins WHERE hostname = ?",
                (host,),
            ).fetchone()
            old = None if row is None else ZulipPin(str(row[0]), str(row[1]), float(row[2]))
            if old is not None and old.org_id == org:
                return old
            if old is not None and not replace:
                raise StoreError(f"{host} is pinned to {old.org_id}; add --replace to move it")
            db.execute(
                "INSERT OR REPLACE INTO zulip_pins (hostname, org_id, created_at) VALUES (?, ?, ?)",
                (host, org, time.time()),
            )
        return old

    def zulip_remove_pin(self, hostname: str) -> bool:
        with self._write_tx() as db:
            cursor = db.execute(
                "DELETE FROM zulip_pins WHERE hostname = ?", (_zulip_host(hostname),)
            )
            return cursor.rowcount > 0

    def zulip_realm(self, uuid: str) -> ZulipRealm | None:
        row = self._reader.execute(
            "SELECT uuid, server_uuid, host, name FROM zulip_realms WHERE uuid = ?", (uuid,)
        ).fetchone()
        if row is None:
            return None
        return ZulipRealm(str(row[0]), str(row[1]), str(row[2]), str(row[3]))

    def zulip_record_analytics(
        self,
        server_uuid: str,
        realms: Sequence[ZulipRealm],
        marks: tuple[int, int, int],
    ) -> None:
        """Upsert the server's realms and raise its analytics high-water marks.

        The caller has checked that no realm belongs to another server; the UPDATE's
        ``server_uuid`` guard keeps a race from moving one anyway.
        """
        now = time.time()
        with self._write_tx() as db:
            for realm in realms:
                db.execute(
                    "INSERT INTO zulip_realms (uuid, server_uuid, host, name, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (uuid) DO UPDATE SET"
                    " host = excluded.host, name = excluded.name,"
                    " updated_at = excluded.updated_at"
                    " WHERE zulip_realms.server_uuid = excluded.server_uuid",
                    (realm.uuid, server_uuid, realm.host, realm.name, now),
                )
            db.execute(
                "UPDATE zulip_servers SET"
                " last_realm_count_id = max(last_realm_count_id, ?),"
                " last_installation_count_id = max(last_installation_count_id, ?),"
                " last_realmauditlog_id = max(last_realmauditlog_id, ?) WHERE uuid = ?",
                (*marks, server_uuid),
            )

    def zulip_register(
        self,
        server_uuid: str,
        kind: int,
        token: str,
        ios_app_id: str | None,
        user_id: int | None,
        user_uuid: str | None,
        realm_uuid: str | None,
    ) -> None:
        """Store a legacy registration, idempotently (Zulip's ``ignore_conflicts``).

        With both ids, Zulip keeps only the uuid row and drops the user-id row of the
        same token.  A repeated registration renews ``registered_at`` (APNs' 410 rule).
        """
        now = time.time()
        with self._write_tx() as db:
            if user_id is not None and user_uuid is not None:
                db.execute(
                    "DELETE FROM zulip_registrations WHERE server_uuid = ? AND kind = ?"
                    " AND token = ? AND user_id = ?",
                    (server_uuid, kind, token, user_id),
                )
                user_id = None
            cursor = db.execute(
                "UPDATE zulip_registrations SET registered_at = ?,"
                " realm_uuid = ifnull(?, realm_uuid)"
                " WHERE server_uuid = ? AND kind = ? AND token = ?"
                " AND ifnull(user_id, -1) = ifnull(?, -1)"
                " AND ifnull(user_uuid, '') = ifnull(?, '')",
                (now, realm_uuid, server_uuid, kind, token, user_id, user_uuid),
            )
            if cursor.rowcount == 0:
                db.execute(
                    f"INSERT INTO zulip_registrations ({_ZULIP_REG_COLUMNS})"
                    " VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (server_uuid, kind, token, ios_app_id, user_id, user_uuid, realm_uuid, now),
                )

    def zulip_unregister(
        self,
        server_uuid: str,
        kind: int,
        token: str,
        user_id: int | None,
        user_uuid: str | None,
    ) -> int:
        clause, params = _identity_clause(user_id, user_uuid)
        with self._write_tx() as db:
            cursor = db.execute(
                "DELETE FROM zulip_registrations WHERE server_uuid = ? AND kind = ?"
                f" AND token = ? AND {clause}",
                (server_uuid, kind, token, *params),
            )
        return cursor.rowcount

    def zulip_unregister_all(
        self, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> int:
        clause, params = _identity_clause(user_id, user_uuid)
        with self._write_tx() as db:
            cursor = db.execute(
                f"DELETE FROM zulip_registrations WHERE server_uuid = ? AND {clause}",
                (server_uuid, *params),
            )
        return cursor.rowcount

    def zulip_user_registrations(
        self, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> list[ZulipRegistration]:
        clause, params = _identity_clause(user_id, user_uuid)
        rows = self._reader.execute(
            f"SELECT {_ZULIP_REG_COLUMNS} FROM zulip_registrations"
            f" WHERE server_uuid = ? AND {clause} ORDER BY id",
            (server_uuid, *params),
        ).fetchall()
        return [_zulip_registration(row) for row in rows]

    def zulip_delete_registrations(self, ids: Iterable[int]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write_tx() as db:
            cursor = db.execute(f"DELETE FROM zulip_registrations WHERE id IN ({marks})", ids)
        return cursor.rowcount

    # --- Zulip E2EE: bouncer keys and devices ---------------------------------------------

    def zulip_add_bouncer_key(self, public_key: str, private_key: str) -> ZulipBouncerKey:
        """Store a key pair (base64); StoreError if the public key is there already."""
        now = time.time()
        with self._write_tx() as db:
            try:
                cursor = db.execute(
                    "INSERT INTO zulip_bouncer_keys (public_key, private_key, created_at)"
                    " VALUES (?, ?, ?)",
                    (public_key, private_key, now),
                )
            except sqlite3.IntegrityError:
                raise StoreError("this bouncer key exists already") from None
        assert cursor.lastrowid is not None
        return ZulipBouncerKey(cursor.lastrowid, public_key, private_key, now)

    def zulip_bouncer_keys(self) -> list[ZulipBouncerKey]:
        rows = self._reader.execute(
            "SELECT id, public_key, private_key, created_at FROM zulip_bouncer_keys ORDER BY id"
        ).fetchall()
        return [ZulipBouncerKey(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    def zulip_bouncer_key(self, public_key: str) -> ZulipBouncerKey | None:
        """The live key pair with this public key (base64), or None."""
        row = self._reader.execute(
            "SELECT id, public_key, private_key, created_at FROM zulip_bouncer_keys"
            " WHERE public_key = ?",
            (public_key,),
        ).fetchone()
        if row is None:
            return None
        return ZulipBouncerKey(int(row[0]), str(row[1]), str(row[2]), float(row[3]))

    def zulip_remove_bouncer_key(self, key: str) -> int:
        """Delete the key pair named by its id or its public key; returns the count."""
        with self._write_tx() as db:
            cursor = db.execute(
                "DELETE FROM zulip_bouncer_keys WHERE public_key = ? OR CAST(id AS TEXT) = ?",
                (key, key),
            )
        return cursor.rowcount

    def zulip_e2ee_register(
        self,
        server_uuid: str,
        realm_uuid: str,
        token_kind: str,
        token: str,
        ios_app_id: str | None,
        *,
        token_id: int | None = None,
        push_account_id: int | None = None,
    ) -> int:
        """Store an E2EE device idempotently; returns its id (Zulip 11's ``device_id``).

        The key is (realm, token_id) for Zulip 12 and (realm, push_account_id, token) for
        Zulip 11.  A repeat renews ``registered_at`` (the device has just shown the token
        alive, which APNs' 410 rule compares against) and takes the newest token and app.
        """
        if (token_id is None) == (push_account_id is None):
            raise ValueError("exactly one of token_id and push_account_id")
        now = time.time()
        with self._write_tx() as db:
            if token_id is not None:
                match = "realm_uuid = ? AND token_id = ?"
                key: tuple[object, ...] = (realm_uuid, token_id)
            else:
                match = "realm_uuid = ? AND push_account_id = ? AND token = ?"
                key = (realm_uuid, push_account_id, token)
            row = db.execute(f"SELECT id FROM zulip_e2ee_devices WHERE {match}", key).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE zulip_e2ee_devices SET token_kind = ?, token = ?, ios_app_id = ?,"
                    " registered_at = ? WHERE id = ?",
                    (token_kind, token, ios_app_id, now, row[0]),
                )
                return int(row[0])
            cursor = db.execute(
                f"INSERT INTO zulip_e2ee_devices ({_ZULIP_E2EE_COLUMNS})"
                " VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    server_uuid,
                    realm_uuid,
                    token_kind,
                    token,
                    ios_app_id,
                    token_id,
                    push_account_id,
                    now,
                ),
            )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def zulip_e2ee_devices(
        self,
        realm_uuid: str,
        *,
        token_ids: Sequence[int] = (),
        device_ids: Sequence[int] = (),
    ) -> list[ZulipE2eeDevice]:
        """The realm's devices with these token ids (Zulip 12) or device ids (Zulip 11)."""
        found: list[ZulipE2eeDevice] = []
        for column, values in (("token_id", token_ids), ("id", device_ids)):
            unique = sorted(set(values))
            if not unique:
                continue
            marks = ",".join("?" * len(unique))
            rows = self._reader.execute(
                f"SELECT {_ZULIP_E2EE_COLUMNS} FROM zulip_e2ee_devices"
                f" WHERE realm_uuid = ? AND {column} IN ({marks}) ORDER BY id",
                (realm_uuid, *unique),
            ).fetchall()
            found.extend(_zulip_e2ee_device(row) for row in rows)
        return found


class Store:
    """The async face of :class:`Database` for the daemon: reads inline, writes on a thread.

    A single-slot limiter serialises the writes, so the write connection is only ever
    used by one thread at a time.
    """

    def __init__(self, database: Database) -> None:
        self.db = database
        self._writer = trio.CapacityLimiter(1)
        self.failures = FailureLog()

    @classmethod
    async def open(cls, path: str) -> Store:
        database = await trio.to_thread.run_sync(Database, path)
        return cls(database)

    async def close(self) -> None:
        await self._write(self.db.close)

    async def _write(self, fn: Callable[..., T], *args: object) -> T:
        # Shielded: once a write has started, finish it even if the caller is cancelled,
        # so what the caller hears never disagrees with what was committed.
        with trio.CancelScope(shield=True):
            try:
                result = await trio.to_thread.run_sync(fn, *args, limiter=self._writer)
            except sqlite3.IntegrityError:
                raise  # a bug, not an outage: the write methods turn expected ones into StoreError
            except sqlite3.Error as error:
                raise self.failures.failed(failure_kind(error)) from None
        self.failures.succeeded()
        return result

    def _read(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as error:
            raise self.failures.failed(failure_kind(error)) from None

    @property
    def unhealthy(self) -> str | None:
        """Why the store is failing (a kind like ``disk_full``), or None."""
        return self.failures.failing

    # Reads: inline, see the module docstring.
    def authenticate(self, key: str) -> Server | None:
        return self._read(self.db.authenticate, key)

    def user_registrations(self, server_id: int, user_id: str) -> list[Registration]:
        return self._read(self.db.user_registrations, server_id, user_id)

    def token_registrations(self, server_id: int, tokens: Iterable[str]) -> list[Registration]:
        return self._read(self.db.token_registrations, server_id, tokens)

    # Writes.
    async def register(
        self,
        server_id: int,
        user_id: str,
        token: str,
        app: str,
        environment: str,
        kind: str = "apns",
    ) -> tuple[Registration, bool]:
        return await self._write(
            self.db.register, server_id, user_id, token, app, environment, kind
        )

    async def unregister(
        self, server_id: int, tokens: Sequence[str], app: str | None = None
    ) -> int:
        return await self._write(self.db.unregister, server_id, tokens, app)

    async def unregister_user(self, server_id: int, user_id: str) -> int:
        return await self._write(self.db.unregister_user, server_id, user_id)

    async def remove_dead(self, dead: Sequence[DeadToken]) -> int:
        if not dead:
            return 0
        return await self._write(self.db.remove_dead, list(dead))

    def late_verdicts(self, refs: Sequence[str]) -> dict[str, LateVerdict]:
        return self._read(self.db.late_verdicts, refs)

    async def forget_late_verdicts(self, refs: Sequence[str]) -> None:
        if refs:
            await self._write(self.db.forget_late_verdicts, list(refs))

    # Zulip push bouncer: reads inline, writes on the worker thread, as above.
    def zulip_server(self, uuid: str) -> ZulipServer | None:
        return self._read(self.db.zulip_server, uuid)

    def zulip_hostname_holder(
        self, hostname: str, *, other_than: str | None = None
    ) -> ZulipServer | None:
        return self._read(lambda: self.db.zulip_hostname_holder(hostname, other_than=other_than))

    def zulip_pin(self, hostname: str) -> ZulipPin | None:
        return self._read(self.db.zulip_pin, hostname)

    def zulip_realm(self, uuid: str) -> ZulipRealm | None:
        return self._read(self.db.zulip_realm, uuid)

    def zulip_user_registrations(
        self, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> list[ZulipRegistration]:
        return self._read(self.db.zulip_user_registrations, server_uuid, user_id, user_uuid)

    async def zulip_add_server(
        self, uuid: str, key: str, hostname: str, contact_email: str
    ) -> ZulipServer:
        return await self._write(self.db.zulip_add_server, uuid, key, hostname, contact_email)

    async def zulip_update_server(
        self, uuid: str, hostname: str, contact_email: str, new_key: str | None
    ) -> None:
        await self._write(self.db.zulip_update_server, uuid, hostname, contact_email, new_key)

    async def zulip_set_deactivated(self, uuid: str, deactivated: bool) -> None:
        await self._write(self.db.zulip_set_deactivated, uuid, deactivated)

    async def zulip_record_analytics(
        self, server_uuid: str, realms: Sequence[ZulipRealm], marks: tuple[int, int, int]
    ) -> None:
        await self._write(self.db.zulip_record_analytics, server_uuid, list(realms), marks)

    async def zulip_register(
        self,
        server_uuid: str,
        kind: int,
        token: str,
        ios_app_id: str | None,
        user_id: int | None,
        user_uuid: str | None,
        realm_uuid: str | None,
    ) -> None:
        await self._write(
            self.db.zulip_register,
            server_uuid,
            kind,
            token,
            ios_app_id,
            user_id,
            user_uuid,
            realm_uuid,
        )

    async def zulip_unregister(
        self, server_uuid: str, kind: int, token: str, user_id: int | None, user_uuid: str | None
    ) -> int:
        return await self._write(
            self.db.zulip_unregister, server_uuid, kind, token, user_id, user_uuid
        )

    async def zulip_unregister_all(
        self, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> int:
        return await self._write(self.db.zulip_unregister_all, server_uuid, user_id, user_uuid)

    async def zulip_delete_registrations(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        return await self._write(self.db.zulip_delete_registrations, list(ids))

    # Zulip E2EE: keys are read per request, so ones the CLI adds or removes count at once.
    def zulip_bouncer_key(self, public_key: str) -> ZulipBouncerKey | None:
        return self._read(self.db.zulip_bouncer_key, public_key)

    def zulip_e2ee_devices(
        self,
        realm_uuid: str,
        *,
        token_ids: Sequence[int] = (),
        device_ids: Sequence[int] = (),
    ) -> list[ZulipE2eeDevice]:
        return self._read(
            lambda: self.db.zulip_e2ee_devices(
                realm_uuid, token_ids=token_ids, device_ids=device_ids
            )
        )

    async def zulip_e2ee_register(
        self,
        server_uuid: str,
        realm_uuid: str,
        token_kind: str,
        token: str,
        ios_app_id: str | None,
        *,
        token_id: int | None = None,
        push_account_id: int | None = None,
    ) -> int:
        def write() -> int:
            return self.db.zulip_e2ee_register(
                server_uuid,
                realm_uuid,
                token_kind,
                token,
                ios_app_id,
                token_id=token_id,
                push_account_id=push_account_id,
            )

        return await self._write(write)
