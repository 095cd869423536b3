"""Chat servers of the native API, their users' device registrations, dead tokens.

Tables ``servers`` and ``registrations`` (migrations 1 and 2).  Keys are stored only as
their SHA-256: they are 256 random bits, so there is nothing to brute-force and a slow
KDF would cost CPU on every request.  Removing dead tokens reaches into the Zulip tables
too, because a token is dead for an app whoever stored it: see :class:`DeadToken`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from pushd.model import RemovalScope
from pushd.store.engine import Engine, Row, Tx
from pushd.store.errors import Conflict, StoreError
from pushd.store.verdicts import keep_verdict

#: Prefix of native API keys, so a leaked one is recognisable in a secret scanner.
KEY_PREFIX: Final = "pushd_"
KEY_BYTES: Final = 32
#: Zulip E2EE devices name their kind in words; legacy ones by number.
_E2EE_TOKEN_KIND: Final = {1: "apns", 2: "fcm"}


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

    ``scope`` says which stored registrations go (None: none, for a protocol that
    names its tokens per request, see ``pushd.model.STORED_PROTOCOLS``).  ``ref`` is
    the caller's own name for the device when its protocol can be told of a verdict
    later: the verdict is then kept under that name (and ``caller``, the chat server it
    is owed to) until the next request that carries it, whether it came after the
    caller was answered (a background retry) or in an answer that may have been lost.
    """

    app: str
    token: str
    since: float | None = None
    reason: str = ""
    ref: str | None = None
    scope: RemovalScope | None = None
    caller: str | None = None


def hash_key(key: str) -> str:
    """SHA-256 of an API key (see the module docstring)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh API key; shown once, stored only as its hash."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def _server(row: Row) -> Server:
    return Server(id=int(row[0]), name=str(row[1]), created_at=float(row[2]), active=bool(row[3]))


def checked_server(row: Row | None, digest: str) -> Server | None:
    """The server of a row found by a key's hash ``digest`` (id, name, created_at,
    active, key_hash first), or None.  The lookup is by hash, so comparing the stored
    hash again in constant time only guards against an index that matched on something
    other than equality."""
    if row is None or not hmac.compare_digest(str(row[4]), digest):
        return None
    return _server(row)


def _registration(row: Row) -> Registration:
    """A registration of a row of :data:`_REG_COLUMNS`."""
    return _own_registration(int(row[0]), str(row[1]), row[2:])


def _own_registration(server_id: int, user_id: str, own: Row) -> Registration:
    """A registration of its own five columns (token to kind), whose server and user
    the caller knows (read with them, or asked for)."""
    token, app, environment, registered_at, kind = own
    return Registration(
        server_id, user_id, str(token), str(app), str(environment), float(registered_at), str(kind)
    )


_REG_COLUMNS: Final = "server_id, user_id, token, app, environment, registered_at, kind"


#: A server by its key's hash (as :func:`checked_server` reads it) beside the
#: registrations of one of its users, oldest first; one row with NULLs for none.  A
#: registration's server and user are the ones asked for, so only its own columns are
#: read: each column of each row is an object made in Python, and a user with 100
#: devices read 1,200 of them where 1,000 do (12 % of the call's instructions).
_AUTHENTICATED_REGISTRATIONS: Final = (
    "SELECT s.id, s.name, s.created_at, s.active, s.key_hash,"
    " r.token, r.app, r.environment, r.registered_at, r.kind"
    " FROM servers s LEFT JOIN registrations r ON r.server_id = s.id AND r.user_id = ?"
    " WHERE s.key_hash = ? ORDER BY r.id"
)


def user_registrations(tx: Tx, server_id: int, user_id: str) -> list[Registration]:
    """A user's registrations under a server, oldest first."""
    rows = tx.all(
        f"SELECT {_REG_COLUMNS} FROM registrations WHERE server_id = ? AND user_id = ? ORDER BY id",
        (server_id, user_id),
    )
    return [_registration(row) for row in rows]


def marks(count: int) -> str:
    """``?, ?, ...`` for an IN list of ``count`` values."""
    return ",".join("?" * count)


def remove_scoped(tx: Tx, item: DeadToken, scope: RemovalScope) -> int:
    """Delete ``item.token``'s registrations within ``scope``; the count."""
    newer = "" if item.since is None else " AND registered_at < ?"
    after: tuple[object, ...] = () if item.since is None else (item.since,)
    environment = "" if scope.environment is None else " AND environment = ?"
    env: tuple[object, ...] = () if scope.environment is None else (scope.environment,)
    removed = tx.execute(
        f"DELETE FROM registrations WHERE app = ? AND token = ?{environment}{newer}",
        (item.app, item.token, *env, *after),
    )
    if scope.zulip_kind is None:
        return removed
    app_id = "" if scope.zulip_ios_app_id is None else " AND ios_app_id = ?"
    ios: tuple[object, ...] = () if scope.zulip_ios_app_id is None else (scope.zulip_ios_app_id,)
    removed += tx.execute(
        f"DELETE FROM zulip_registrations WHERE kind = ? AND token = ?{app_id}{newer}",
        (scope.zulip_kind, item.token, *ios, *after),
    )
    removed += tx.execute(
        f"DELETE FROM zulip_e2ee_devices WHERE token_kind = ? AND token = ?{app_id}{newer}",
        (_E2EE_TOKEN_KIND[scope.zulip_kind], item.token, *ios, *after),
    )
    return removed


def remove_dead_tx(tx: Tx, dead: Iterable[DeadToken], now: float) -> int:
    """Delete dead tokens in their scopes and keep verdicts owed to callers; the count."""
    removed = 0
    for item in dead:
        if item.scope is not None:
            removed += remove_scoped(tx, item, item.scope)
        if item.ref is not None:
            keep_verdict(tx, item.ref, item.reason, item.since, now, item.caller)
    return removed


class ServerQueries:
    """Native chat servers and registrations; mixed into :class:`pushd.store.Store`."""

    engine: Engine

    # --- servers ------------------------------------------------------------------------

    async def add_server(self, name: str, key: str | None = None) -> tuple[Server, str]:
        """Create a server; returns it and its key (the only time the key is seen).

        ``key`` is for the demo mode's well-known key; otherwise a fresh one is made.
        """
        key = key or new_key()
        now = time.time()

        def tx(tx: Tx) -> int:
            row = tx.one(
                "INSERT INTO servers (name, key_hash, created_at) VALUES (?, ?, ?) RETURNING id",
                (name, hash_key(key), now),
            )
            assert row is not None
            return int(row[0])

        try:
            server_id = await self.engine.write(tx)
        except Conflict:
            raise StoreError(f"a server named {name!r} exists already") from None
        return Server(id=server_id, name=name, created_at=now, active=True), key

    async def servers(self) -> list[Server]:
        rows = await self.engine.read(
            lambda tx: tx.all("SELECT id, name, created_at, active FROM servers ORDER BY id")
        )
        return [_server(row) for row in rows]

    async def rotate_key(self, name: str) -> str:
        """Give the server a new key; the old one stops working at once."""
        key = new_key()
        changed = await self.engine.write(
            lambda tx: tx.execute(
                "UPDATE servers SET key_hash = ? WHERE name = ?", (hash_key(key), name)
            )
        )
        if changed != 1:
            raise StoreError(f"no server named {name!r}")
        return key

    async def set_active(self, name: str, active: bool) -> None:
        changed = await self.engine.write(
            lambda tx: tx.execute(
                "UPDATE servers SET active = ? WHERE name = ?", (int(active), name)
            )
        )
        if changed != 1:
            raise StoreError(f"no server named {name!r}")

    async def authenticate(self, key: str) -> Server | None:
        """The server whose key this is (active or not), or None (:func:`checked_server`)."""
        digest = hash_key(key)
        row = await self.engine.read(
            lambda tx: tx.one(
                "SELECT id, name, created_at, active, key_hash FROM servers WHERE key_hash = ?",
                (digest,),
            )
        )
        return checked_server(row, digest)

    async def authenticate_for(
        self, key: str, user: str | None
    ) -> tuple[Server | None, list[Registration] | None]:
        """:meth:`authenticate`, and for an active server ``user``'s registrations
        (:func:`user_registrations`; None when not read), in one statement: a send to
        a user otherwise costs two, each of which takes SQLite's read lock and checks
        its WAL index (about 7 us of the 18 the pair costs)."""
        if user is None:
            return await self.authenticate(key), None
        digest = hash_key(key)

        def read(tx: Tx) -> tuple[Server | None, list[Registration] | None]:
            rows = tx.all(_AUTHENTICATED_REGISTRATIONS, (user, digest))
            server = checked_server(rows[0] if rows else None, digest)
            if server is None or not server.active:
                return server, None
            return server, [
                _own_registration(server.id, user, row[5:]) for row in rows if row[5] is not None
            ]

        return await self.engine.read(read)

    # --- registrations ------------------------------------------------------------------

    async def register(
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

        # The insert itself says whether the row is new (a SELECT first would let two
        # instances registering one device at once both call it new on PostgreSQL).
        def tx(tx: Tx) -> bool:
            inserted = tx.one(
                "INSERT INTO registrations (server_id, user_id, token, app, environment,"
                " registered_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (server_id, app, token) DO NOTHING RETURNING id",
                (server_id, user_id, token, app, environment, now, kind),
            )
            if inserted is not None:
                return True
            tx.execute(
                "UPDATE registrations SET user_id = ?, environment = ?, registered_at = ?,"
                " kind = ? WHERE server_id = ? AND app = ? AND token = ?",
                (user_id, environment, now, kind, server_id, app, token),
            )
            return False

        new = await self.engine.write(tx)
        return Registration(server_id, user_id, token, app, environment, now, kind), new

    async def unregister(
        self, server_id: int, tokens: Sequence[str], app: str | None = None
    ) -> int:
        """Remove a server's registrations of a token (of one app, or all); the count.

        ``tokens`` are the forms the token may be stored in (an APNs token in lower case,
        an FCM token as given), so a caller need not know which kind it holds.
        """
        if not tokens:  # ``IN ()`` is SQLite's, not PostgreSQL's
            return 0
        query = f"DELETE FROM registrations WHERE server_id = ? AND token IN ({marks(len(tokens))})"
        params: tuple[object, ...] = (server_id, *tokens)
        if app is not None:
            query += " AND app = ?"
            params += (app,)
        return await self.engine.write(lambda tx: tx.execute(query, params))

    async def unregister_user(self, server_id: int, user_id: str) -> int:
        return await self.engine.write(
            lambda tx: tx.execute(
                "DELETE FROM registrations WHERE server_id = ? AND user_id = ?",
                (server_id, user_id),
            )
        )

    async def user_registrations(self, server_id: int, user_id: str) -> list[Registration]:
        return await self.engine.read(lambda tx: user_registrations(tx, server_id, user_id))

    async def token_registrations(
        self, server_id: int, tokens: Iterable[str]
    ) -> list[Registration]:
        wanted = list(tokens)
        if not wanted:
            return []
        rows = await self.engine.read(
            lambda tx: tx.all(
                f"SELECT {_REG_COLUMNS} FROM registrations"
                f" WHERE server_id = ? AND token IN ({marks(len(wanted))}) ORDER BY id",
                (server_id, *wanted),
            )
        )
        return [_registration(row) for row in rows]

    async def count_registrations(self) -> int:
        row = await self.engine.read(lambda tx: tx.one("SELECT count(*) FROM registrations"))
        return int(row[0]) if row else 0

    async def registrations_by_app(self) -> dict[str, int]:
        """Registrations per app (native and Zulip legacy are counted apart by the
        caller's config; this is the native table), for the periodic metrics refresh."""
        rows = await self.engine.read(
            lambda tx: tx.all("SELECT app, count(*) FROM registrations GROUP BY app")
        )
        return {str(app): int(count) for app, count in rows}

    async def remove_dead(self, dead: Sequence[DeadToken]) -> int:
        """Delete dead tokens in the scope of the app that found them, in one transaction.

        Only registrations that the same app and environment serve go (see
        ``RemovalScope``): native ones of that app, and the Zulip ones pushd routes to
        it.  With a ``since`` time (APNs 410), only those made before it: one made
        after it belongs to a device that got the same token back and is alive.
        Verdicts with a ``ref`` are kept for the caller's next request.  Returns the
        count removed.
        """
        if not dead:
            return 0
        items = list(dead)
        now = time.time()
        return await self.engine.write(lambda tx: remove_dead_tx(tx, items, now))
