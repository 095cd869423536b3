"""The Zulip push bouncer's servers: who they are, which hostname each holds, pins.

Tables ``zulip_servers`` and ``zulip_pins`` (migrations 3 and 7).  Zulip servers
authenticate with their own (uuid, key), so they have a table of their own rather than
rows in ``servers``.  Hostnames are stored normalised
(:func:`pushd.model.normalize_zulip_hostname`), so one server cannot be registered twice
as ``chat.example.com`` and ``CHAT.example.com.:443``; a hostname is *held* by its
server while that server is active, and after deactivation too (as in Zulip) until the
operator releases it.  A *pin* binds a hostname to the one ``zulip_org_id`` allowed to
register it.  Writes that check a hostname or a pin and then take it run one at a time
per name, on PostgreSQL too (:func:`~pushd.store.engine.serialize`).  Devices and realms
are in :mod:`pushd.store.zulip_devices`.
"""

from __future__ import annotations

import time
from typing import Final

import attrs

from pushd.model import normalize_zulip_hostname
from pushd.store.engine import Engine, Row, Tx, serialize
from pushd.store.errors import Conflict, StoreError
from pushd.store.servers import hash_key

#: Names under which writes that check, then take, a hostname or a pin take turns
#: (:func:`~pushd.store.engine.serialize`).
HOSTNAME_LOCK: Final = "zulip-hostname"
PIN_LOCK: Final = "zulip-pin"


class HostnameTaken(StoreError):
    """A Zulip hostname is held by another server (active, or deactivated and not
    released): the write that would have given it a second owner did not happen."""

    def __init__(self, hostname: str, holder: str) -> None:
        super().__init__(f"hostname {hostname} is held by Zulip server {holder}")
        self.hostname = hostname
        self.holder = holder


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


_COLUMNS: Final = (
    "uuid, key_hash, hostname, contact_email, created_at, deactivated,"
    " last_realm_count_id, last_installation_count_id, last_realmauditlog_id, released_at"
)


def _server(row: Row) -> ZulipServer:
    return ZulipServer(
        uuid=str(row[0]),
        key_hash=str(row[1]),
        hostname=str(row[2]),
        contact_email=str(row[3]),
        created_at=float(row[4]),
        deactivated=bool(row[5]),
        last_realm_count_id=int(row[6]),
        last_installation_count_id=int(row[7]),
        last_realmauditlog_id=int(row[8]),
        released_at=None if row[9] is None else float(row[9]),
    )


def zulip_server_in(tx: Tx, uuid: str) -> ZulipServer | None:
    """The server ``uuid``, read in ``tx``; None if unknown."""
    row = tx.one(f"SELECT {_COLUMNS} FROM zulip_servers WHERE uuid = ?", (uuid,))
    return None if row is None else _server(row)


def _pin(row: Row) -> ZulipPin:
    return ZulipPin(str(row[0]), str(row[1]), float(row[2]))


def host_of(hostname: str) -> str:
    """``hostname`` normalised; StoreError if it is not one."""
    host = normalize_zulip_hostname(hostname)
    if host is None:
        raise StoreError(f"{hostname!r} is not a hostname like chat.example.com[:port]")
    return host


def normalise_stored_hostnames(tx: Tx) -> None:
    """Migration 7's data step: existing hostnames in their normalised form (a value
    that does not parse is left as it was)."""
    for uuid, hostname in tx.all("SELECT uuid, hostname FROM zulip_servers"):
        host = normalize_zulip_hostname(str(hostname))
        if host is not None and host != hostname:
            tx.execute("UPDATE zulip_servers SET hostname = ? WHERE uuid = ?", (host, uuid))


def _holder(tx: Tx, host: str, other_than: str | None) -> ZulipServer | None:
    """The oldest server other than ``other_than`` that holds the normalised ``host``.

    The clause is left out rather than written ``? IS NULL OR uuid <> ?``: PostgreSQL
    cannot type a parameter that is only ever compared with NULL.
    """
    other = "" if other_than is None else " AND uuid <> ?"
    params: tuple[object, ...] = (host,) if other_than is None else (host, other_than)
    row = tx.one(
        f"SELECT {_COLUMNS} FROM zulip_servers WHERE hostname = ? AND released_at IS NULL"
        f"{other} ORDER BY created_at, uuid LIMIT 1",
        params,
    )
    return None if row is None else _server(row)


class ZulipServerQueries:
    """Mixed into :class:`pushd.store.Store`."""

    engine: Engine

    async def zulip_server(self, uuid: str) -> ZulipServer | None:
        return await self.engine.read(lambda tx: zulip_server_in(tx, uuid))

    async def zulip_servers(self) -> list[ZulipServer]:
        rows = await self.engine.read(
            lambda tx: tx.all(f"SELECT {_COLUMNS} FROM zulip_servers ORDER BY created_at, uuid")
        )
        return [_server(row) for row in rows]

    async def zulip_hostname_holder(
        self, hostname: str, *, other_than: str | None = None
    ) -> ZulipServer | None:
        """The server holding ``hostname`` (any spelling): active, or deactivated and not
        released.  Zulip keeps a deactivated server's hostname taken too, so that
        deactivating a registration never hands its name to whoever asks next."""
        host = host_of(hostname)
        return await self.engine.read(lambda tx: _holder(tx, host, other_than))

    async def zulip_add_server(
        self, uuid: str, key: str, hostname: str, contact_email: str = ""
    ) -> ZulipServer:
        """Create a server holding ``hostname`` (stored normalised).

        HostnameTaken if another server holds the hostname, checked in the same
        transaction so two registrations racing for one name cannot both win;
        StoreError if the uuid is taken.
        """
        host = host_of(hostname)
        now = time.time()

        def tx(tx: Tx) -> None:
            serialize(tx, HOSTNAME_LOCK, host)
            holder = _holder(tx, host, None)
            if holder is not None:
                raise HostnameTaken(host, holder.uuid)
            tx.execute(
                "INSERT INTO zulip_servers (uuid, key_hash, hostname, contact_email,"
                " created_at) VALUES (?, ?, ?, ?, ?)",
                (uuid, hash_key(key), host, contact_email, now),
            )

        try:
            await self.engine.write(tx)
        except Conflict:
            raise StoreError(f"a Zulip server with uuid {uuid} exists already") from None
        return ZulipServer(uuid, hash_key(key), host, contact_email, now, False)

    async def zulip_update_server(
        self, uuid: str, hostname: str, contact_email: str, new_key: str | None
    ) -> None:
        """Record a re-registration: new hostname and contact, and a new key if rotated.

        HostnameTaken (and nothing written) if it moves onto another server's hostname.
        Keeping its own is always fine, even one a migration found it sharing.
        """
        host = host_of(hostname)

        def tx(tx: Tx) -> None:
            serialize(tx, HOSTNAME_LOCK, host)
            current = tx.one("SELECT hostname FROM zulip_servers WHERE uuid = ?", (uuid,))
            holder = _holder(tx, host, uuid)
            if holder is not None and (current is None or current[0] != host):
                raise HostnameTaken(host, holder.uuid)
            tx.execute(
                "UPDATE zulip_servers SET hostname = ?, contact_email = ? WHERE uuid = ?",
                (host, contact_email, uuid),
            )
            if new_key is not None:
                tx.execute(
                    "UPDATE zulip_servers SET key_hash = ? WHERE uuid = ?",
                    (hash_key(new_key), uuid),
                )

        await self.engine.write(tx)

    async def zulip_set_deactivated(self, uuid: str, deactivated: bool) -> None:
        """Deactivate or reactivate a server.  A server whose hostname was released
        takes it back on reactivation, unless another server holds it by then
        (HostnameTaken: nothing changes)."""

        def tx(tx: Tx) -> None:
            row = tx.one(f"SELECT {_COLUMNS} FROM zulip_servers WHERE uuid = ?", (uuid,))
            if row is None:
                raise StoreError(f"no Zulip server with uuid {uuid}")
            server = _server(row)
            serialize(tx, HOSTNAME_LOCK, server.hostname)
            if not deactivated and server.released_at is not None:
                holder = _holder(tx, server.hostname, uuid)
                if holder is not None:
                    raise HostnameTaken(server.hostname, holder.uuid)
            released = server.released_at if deactivated else None
            tx.execute(
                "UPDATE zulip_servers SET deactivated = ?, released_at = ? WHERE uuid = ?",
                (int(deactivated), released, uuid),
            )

        await self.engine.write(tx)

    async def zulip_release_hostname(self, hostname: str) -> list[str]:
        """Free a hostname held by deactivated servers, so a new server may register
        it; returns their uuids.  StoreError if an active server holds it: deactivate
        that one first, so freeing a name is always a deliberate two-step act."""
        host = host_of(hostname)
        now = time.time()

        def tx(tx: Tx) -> list[str]:
            serialize(tx, HOSTNAME_LOCK, host)
            rows = tx.all(
                "SELECT uuid, deactivated FROM zulip_servers"
                " WHERE hostname = ? AND released_at IS NULL ORDER BY created_at, uuid",
                (host,),
            )
            active = [str(uuid) for uuid, deactivated in rows if not deactivated]
            if active:
                raise StoreError(
                    f"{host} is held by active Zulip server {active[0]}; deactivate it first"
                )
            tx.execute(
                "UPDATE zulip_servers SET released_at = ? WHERE hostname = ?"
                " AND released_at IS NULL",
                (now, host),
            )
            return [str(uuid) for uuid, _ in rows]

        return await self.engine.write(tx)

    # --- pins ---------------------------------------------------------------------------

    async def zulip_pins(self) -> list[ZulipPin]:
        rows = await self.engine.read(
            lambda tx: tx.all(
                "SELECT hostname, org_id, created_at FROM zulip_pins ORDER BY hostname"
            )
        )
        return [_pin(row) for row in rows]

    async def zulip_pin(self, hostname: str) -> ZulipPin | None:
        """The pin of ``hostname`` (any spelling), read per request so that pins the
        CLI writes count at once."""
        host = host_of(hostname)
        row = await self.engine.read(
            lambda tx: tx.one(
                "SELECT hostname, org_id, created_at FROM zulip_pins WHERE hostname = ?",
                (host,),
            )
        )
        return None if row is None else _pin(row)

    async def zulip_add_pin(
        self, hostname: str, org_id: str, *, replace: bool = False
    ) -> ZulipPin | None:
        """Pin ``hostname`` to ``org_id``; idempotent.  Returns the pin there was before,
        if any.  StoreError if the hostname is pinned to another org id and not
        ``replace``: moving a hostname to another server must be said out loud."""
        host = host_of(hostname)
        org = org_id.lower()
        now = time.time()

        def tx(tx: Tx) -> ZulipPin | None:
            serialize(tx, PIN_LOCK, host)
            row = tx.one(
                "SELECT hostname, org_id, created_at FROM zulip_pins WHERE hostname = ?",
                (host,),
            )
            old = None if row is None else _pin(row)
            if old is not None and old.org_id == org:
                return old
            if old is not None and not replace:
                raise StoreError(f"{host} is pinned to {old.org_id}; add --replace to move it")
            tx.execute(
                "INSERT INTO zulip_pins (hostname, org_id, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (hostname) DO UPDATE SET org_id = excluded.org_id,"
                " created_at = excluded.created_at",
                (host, org, now),
            )
            return old

        return await self.engine.write(tx)

    async def zulip_remove_pin(self, hostname: str) -> bool:
        host = host_of(hostname)
        removed = await self.engine.write(
            lambda tx: tx.execute("DELETE FROM zulip_pins WHERE hostname = ?", (host,))
        )
        return removed > 0
