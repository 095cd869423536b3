"""The Zulip push bouncer's realms and legacy device registrations.

Tables ``zulip_realms`` and ``zulip_registrations`` (migrations 3 and 5).  Zulip servers
key device tokens by their own user ids (or uuids), so these are tables of their own
rather than rows in ``registrations``; realms keep only what the protocol needs: which
server owns them, host and name.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from pushd.store.engine import Engine, Row, Tx
from pushd.store.servers import marks


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


_REG_COLUMNS: Final = (
    "id, server_uuid, kind, token, ios_app_id, user_id, user_uuid, realm_uuid, registered_at"
)


def optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _registration(row: Row) -> ZulipRegistration:
    return ZulipRegistration(
        id=int(row[0]),
        server_uuid=str(row[1]),
        kind=int(row[2]),
        token=str(row[3]),
        ios_app_id=optional_str(row[4]),
        user_id=optional_int(row[5]),
        user_uuid=optional_str(row[6]),
        realm_uuid=optional_str(row[7]),
        registered_at=float(row[8]),
    )


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
        return "1 = 0", ()
    return "(" + " OR ".join(parts) + ")", params


def _realm(tx: Tx, uuid: str) -> ZulipRealm | None:
    row = tx.one("SELECT uuid, server_uuid, host, name FROM zulip_realms WHERE uuid = ?", (uuid,))
    if row is None:
        return None
    return ZulipRealm(str(row[0]), str(row[1]), str(row[2]), str(row[3]))


def _user_registrations(
    tx: Tx, server_uuid: str, user_id: int | None, user_uuid: str | None
) -> list[ZulipRegistration]:
    clause, params = _identity_clause(user_id, user_uuid)
    rows = tx.all(
        f"SELECT {_REG_COLUMNS} FROM zulip_registrations"
        f" WHERE server_uuid = ? AND {clause} ORDER BY id",
        (server_uuid, *params),
    )
    return [_registration(row) for row in rows]


class ZulipDeviceQueries:
    """Mixed into :class:`pushd.store.Store`."""

    engine: Engine

    # --- realms -------------------------------------------------------------------------

    async def zulip_realm(self, uuid: str) -> ZulipRealm | None:
        return await self.engine.read(lambda tx: _realm(tx, uuid))

    async def zulip_realm_and_registrations(
        self, realm_uuid: str | None, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> tuple[ZulipRealm | None, list[ZulipRegistration]]:
        """:meth:`zulip_realm` (None for a None uuid) and :meth:`zulip_user_registrations`
        in one store call: what a notify reads before it sends, one hop to a worker
        thread on PostgreSQL instead of two.  The registrations are read whoever owns
        the realm; the caller refuses a realm of another server before using them."""

        def both(tx: Tx) -> tuple[ZulipRealm | None, list[ZulipRegistration]]:
            realm = None if realm_uuid is None else _realm(tx, realm_uuid)
            return realm, _user_registrations(tx, server_uuid, user_id, user_uuid)

        return await self.engine.read(both)

    async def zulip_record_analytics(
        self, server_uuid: str, realms: Sequence[ZulipRealm], highs: tuple[int, int, int]
    ) -> None:
        """Upsert the server's realms and raise its analytics high-water marks.

        The caller has checked that no realm belongs to another server; the upsert's
        ``server_uuid`` guard keeps a race from moving one anyway.
        """
        now = time.time()

        def tx(tx: Tx) -> None:
            for realm in realms:
                tx.execute(
                    "INSERT INTO zulip_realms (uuid, server_uuid, host, name, updated_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (uuid) DO UPDATE SET"
                    " host = excluded.host, name = excluded.name,"
                    " updated_at = excluded.updated_at"
                    " WHERE zulip_realms.server_uuid = excluded.server_uuid",
                    (realm.uuid, server_uuid, realm.host, realm.name, now),
                )
            # A mark only ever rises (an older upload arriving late must not lower it):
            # CASE, because SQLite's max(a, b) is PostgreSQL's greatest(a, b).
            tx.execute(
                "UPDATE zulip_servers SET"
                " last_realm_count_id = CASE WHEN last_realm_count_id < ? THEN ?"
                " ELSE last_realm_count_id END,"
                " last_installation_count_id = CASE WHEN last_installation_count_id < ? THEN ?"
                " ELSE last_installation_count_id END,"
                " last_realmauditlog_id = CASE WHEN last_realmauditlog_id < ? THEN ?"
                " ELSE last_realmauditlog_id END WHERE uuid = ?",
                (highs[0], highs[0], highs[1], highs[1], highs[2], highs[2], server_uuid),
            )

        await self.engine.write(tx)

    # --- legacy registrations -----------------------------------------------------------

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
        """Store a legacy registration, idempotently (Zulip's ``ignore_conflicts``).

        With both ids, Zulip keeps only the uuid row and drops the user-id row of the
        same token.  A repeated registration renews ``registered_at`` (APNs' 410 rule).
        """
        now = time.time()

        def tx(tx: Tx) -> None:
            user = user_id
            if user_id is not None and user_uuid is not None:
                tx.execute(
                    "DELETE FROM zulip_registrations WHERE server_uuid = ? AND kind = ?"
                    " AND token = ? AND user_id = ?",
                    (server_uuid, kind, token, user_id),
                )
                user = None
            changed = tx.execute(
                "UPDATE zulip_registrations SET registered_at = ?,"
                " realm_uuid = coalesce(?, realm_uuid)"
                " WHERE server_uuid = ? AND kind = ? AND token = ?"
                " AND coalesce(user_id, -1) = coalesce(?, -1)"
                " AND coalesce(user_uuid, '') = coalesce(?, '')",
                (now, realm_uuid, server_uuid, kind, token, user, user_uuid),
            )
            if changed == 0:
                tx.execute(
                    "INSERT INTO zulip_registrations (server_uuid, kind, token, ios_app_id,"
                    " user_id, user_uuid, realm_uuid, registered_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (server_uuid, kind, token, ios_app_id, user, user_uuid, realm_uuid, now),
                )

        await self.engine.write(tx)

    async def zulip_unregister(
        self, server_uuid: str, kind: int, token: str, user_id: int | None, user_uuid: str | None
    ) -> int:
        clause, params = _identity_clause(user_id, user_uuid)
        return await self.engine.write(
            lambda tx: tx.execute(
                "DELETE FROM zulip_registrations WHERE server_uuid = ? AND kind = ?"
                f" AND token = ? AND {clause}",
                (server_uuid, kind, token, *params),
            )
        )

    async def zulip_unregister_all(
        self, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> int:
        clause, params = _identity_clause(user_id, user_uuid)
        return await self.engine.write(
            lambda tx: tx.execute(
                f"DELETE FROM zulip_registrations WHERE server_uuid = ? AND {clause}",
                (server_uuid, *params),
            )
        )

    async def zulip_user_registrations(
        self, server_uuid: str, user_id: int | None, user_uuid: str | None
    ) -> list[ZulipRegistration]:
        return await self.engine.read(
            lambda tx: _user_registrations(tx, server_uuid, user_id, user_uuid)
        )

    async def zulip_delete_registrations(self, ids: Iterable[int]) -> int:
        wanted = list(ids)
        if not wanted:
            return 0
        return await self.engine.write(
            lambda tx: tx.execute(
                f"DELETE FROM zulip_registrations WHERE id IN ({marks(len(wanted))})", wanted
            )
        )

    async def zulip_registrations_by_kind(self) -> dict[tuple[int, str | None], int]:
        """Zulip's legacy registrations per (kind, ios_app_id), which the config maps to
        apps; for the periodic metrics refresh, never per request."""
        rows = await self.engine.read(
            lambda tx: tx.all(
                "SELECT kind, ios_app_id, count(*) FROM zulip_registrations"
                " GROUP BY kind, ios_app_id"
            )
        )
        return {(int(kind), optional_str(app_id)): int(count) for kind, app_id, count in rows}
