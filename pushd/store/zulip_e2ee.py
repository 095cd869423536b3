"""Zulip's end-to-end encrypted pushes: the bouncer's key pairs and E2EE devices.

Tables ``zulip_bouncer_keys`` and ``zulip_e2ee_devices`` (migration 4).  Key pairs live
in the store rather than the config: the CLI adds and removes them while the daemon
runs, and the daemon reads them per request.  Only what sending needs is stored: no
sealed registration and no push key.  Private keys are stored sealed with the spool
keys (migration 10, :mod:`pushd.frontends.zulip.bouncer_keys`); this module stores
and returns them as given, sealed or not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import attrs

from pushd.store.engine import Engine, Row, Tx, serialize
from pushd.store.errors import Conflict, StoreError
from pushd.store.servers import marks
from pushd.store.zulip_devices import optional_int, optional_str


@attrs.frozen
class ZulipBouncerKey:
    """A bouncer X25519 key pair (base64); apps seal their registrations to the public one.

    Several live at once: each app release bakes in one public key, and a key is only
    removed once the app versions carrying it are gone.  ``private_key`` is as stored:
    sealed with the spool key ``key_id`` (base64 of the sealed text), or, if that is
    None, a row from before sealing, in the clear.
    """

    id: int
    public_key: str
    private_key: str = attrs.field(repr=False)
    created_at: float
    key_id: str | None = None


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


_DEVICE_COLUMNS: Final = (
    "id, server_uuid, realm_uuid, token_kind, token, ios_app_id, token_id, push_account_id,"
    " registered_at"
)
_KEY_COLUMNS: Final = "id, public_key, private_key, created_at, key_id"
#: Registrations of one E2EE device take turns (:func:`~pushd.store.engine.serialize`).
DEVICE_LOCK: Final = "zulip-e2ee-device"


def _device(row: Row) -> ZulipE2eeDevice:
    return ZulipE2eeDevice(
        id=int(row[0]),
        server_uuid=str(row[1]),
        realm_uuid=str(row[2]),
        token_kind=str(row[3]),
        token=str(row[4]),
        ios_app_id=optional_str(row[5]),
        token_id=optional_int(row[6]),
        push_account_id=optional_int(row[7]),
        registered_at=float(row[8]),
    )


def _key(row: Row) -> ZulipBouncerKey:
    return ZulipBouncerKey(
        int(row[0]), str(row[1]), str(row[2]), float(row[3]), optional_str(row[4])
    )


class ZulipE2eeQueries:
    """Mixed into :class:`pushd.store.Store`."""

    engine: Engine

    async def zulip_add_bouncer_key(
        self, public_key: str, private_key: str, *, key_id: str | None
    ) -> ZulipBouncerKey:
        """Store a key pair (base64; the private key sealed with spool key ``key_id``, or
        in the clear if None); StoreError if the public key is there already."""
        now = time.time()

        def tx(tx: Tx) -> int:
            row = tx.one(
                "INSERT INTO zulip_bouncer_keys (public_key, private_key, created_at, key_id)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (public_key, private_key, now, key_id),
            )
            assert row is not None
            return int(row[0])

        try:
            row_id = await self.engine.write(tx)
        except Conflict:
            raise StoreError("this bouncer key exists already") from None
        return ZulipBouncerKey(row_id, public_key, private_key, now, key_id)

    async def zulip_reseal_bouncer_key(
        self, key: ZulipBouncerKey, private_key: str, key_id: str
    ) -> bool:
        """Replace ``key``'s stored private key with one sealed under ``key_id``, unless
        the row changed since ``key`` was read; whether it was replaced.

        One UPDATE that compares the old value, so instances doing this at once (each
        ``serve`` start on one PostgreSQL, a ``rotate-key`` beside them) never undo each
        other: the first wins, the others find the row changed and leave it.
        """
        changed = await self.engine.write(
            lambda tx: tx.execute(
                "UPDATE zulip_bouncer_keys SET private_key = ?, key_id = ?"
                " WHERE id = ? AND private_key = ?",
                (private_key, key_id, key.id, key.private_key),
            )
        )
        return changed > 0

    async def zulip_bouncer_key_ids(self) -> set[str]:
        """The spool keys bouncer private keys are sealed with (``rotate-key --prune``
        keeps them)."""
        rows = await self.engine.read(
            lambda tx: tx.all(
                "SELECT DISTINCT key_id FROM zulip_bouncer_keys WHERE key_id IS NOT NULL"
            )
        )
        return {str(row[0]) for row in rows}

    async def zulip_bouncer_keys(self) -> list[ZulipBouncerKey]:
        rows = await self.engine.read(
            lambda tx: tx.all(f"SELECT {_KEY_COLUMNS} FROM zulip_bouncer_keys ORDER BY id")
        )
        return [_key(row) for row in rows]

    async def zulip_bouncer_key(self, public_key: str) -> ZulipBouncerKey | None:
        """The live key pair with this public key (base64), or None."""
        row = await self.engine.read(
            lambda tx: tx.one(
                f"SELECT {_KEY_COLUMNS} FROM zulip_bouncer_keys WHERE public_key = ?",
                (public_key,),
            )
        )
        return None if row is None else _key(row)

    async def zulip_remove_bouncer_key(self, key: str) -> int:
        """Delete the key pair named by its id or its public key; returns the count."""
        return await self.engine.write(
            lambda tx: tx.execute(
                "DELETE FROM zulip_bouncer_keys WHERE public_key = ? OR CAST(id AS TEXT) = ?",
                (key, key),
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
        """Store an E2EE device idempotently; returns its id (Zulip 11's ``device_id``).

        The key is (realm, token_id) for Zulip 12 and (realm, push_account_id, token) for
        Zulip 11.  A repeat renews ``registered_at`` (the device has just shown the token
        alive, which APNs' 410 rule compares against) and takes the newest token and app.
        """
        if (token_id is None) == (push_account_id is None):
            raise ValueError("exactly one of token_id and push_account_id")
        now = time.time()
        if token_id is not None:
            match = "realm_uuid = ? AND token_id = ?"
            key: tuple[object, ...] = (realm_uuid, token_id)
        else:
            match = "realm_uuid = ? AND push_account_id = ? AND token = ?"
            key = (realm_uuid, push_account_id, token)

        def tx(tx: Tx) -> int:
            # Two instances registering one device at once: one inserts, one updates.
            serialize(tx, DEVICE_LOCK, repr(key))
            row = tx.one(f"SELECT id FROM zulip_e2ee_devices WHERE {match}", key)
            if row is not None:
                tx.execute(
                    "UPDATE zulip_e2ee_devices SET token_kind = ?, token = ?, ios_app_id = ?,"
                    " registered_at = ? WHERE id = ?",
                    (token_kind, token, ios_app_id, now, row[0]),
                )
                return int(row[0])
            inserted = tx.one(
                "INSERT INTO zulip_e2ee_devices (server_uuid, realm_uuid, token_kind, token,"
                " ios_app_id, token_id, push_account_id, registered_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (server_uuid, realm_uuid, token_kind, token, ios_app_id, token_id,
                 push_account_id, now),
            )  # fmt: skip
            assert inserted is not None
            return int(inserted[0])

        return await self.engine.write(tx)

    async def zulip_e2ee_devices(
        self,
        realm_uuid: str,
        *,
        token_ids: Sequence[int] = (),
        device_ids: Sequence[int] = (),
    ) -> list[ZulipE2eeDevice]:
        """The realm's devices with these token ids (Zulip 12) or device ids (Zulip 11)."""

        def tx(tx: Tx) -> list[Row]:
            found: list[Row] = []
            for column, values in (("token_id", token_ids), ("id", device_ids)):
                unique = sorted(set(values))
                if unique:
                    found += tx.all(
                        f"SELECT {_DEVICE_COLUMNS} FROM zulip_e2ee_devices"
                        f" WHERE realm_uuid = ? AND {column} IN ({marks(len(unique))})"
                        " ORDER BY id",
                        (realm_uuid, *unique),
                    )
            return found

        return [_device(row) for row in await self.engine.read(tx)]
