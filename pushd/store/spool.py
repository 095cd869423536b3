"""The spool's table: deliveries answered "retrying" and not final yet.

Table ``spool`` (migration 7), modelled on job queues that live in PostgreSQL
(Procrastinate, Oban): attempts, due time and lease are columns, and nothing is held in
a worker's memory that another worker could not take over.  An instance *claims* due
rows by writing its name and a lease into them (PostgreSQL: ``FOR UPDATE SKIP LOCKED``,
so instances never wait on each other's rows); a lease that outlives its holder expires
and the row is claimed again.  A row leaves the table when its delivery is final
(delivered, dead, failed) or expired.

What a row holds is what sending it again needs and nothing more: the push sealed
(:mod:`pushd.spool.seal`), the token, app and protocol, and the caller's reference for
late verdicts.  ``spool_counters`` keeps what an operator asks after the rows are gone:
how many expired or were dropped, per app.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import attrs

from pushd.store.engine import Engine, Row, Tx
from pushd.store.servers import marks


@attrs.frozen
class SpoolEntry:
    """A row to add: one delivery, its push sealed."""

    app: str
    token: str
    protocol: str
    ref: str | None
    caller: str | None
    registered_at: float | None
    key_id: str
    sealed: bytes = attrs.field(repr=False)
    attempt: int
    due_at: float
    expires_at: float
    created_at: float
    unknown: bool = False
    last_reason: str | None = None
    #: Set when the adding instance is still sending it (an attempt in flight).
    lease_owner: str | None = None
    lease_until: float | None = None


@attrs.frozen
class SpoolRow:
    """A claimed row."""

    id: int
    app: str
    token: str
    protocol: str
    ref: str | None
    caller: str | None
    registered_at: float | None
    key_id: str
    sealed: bytes = attrs.field(repr=False)
    attempt: int
    due_at: float
    expires_at: float
    created_at: float
    unknown: bool


@attrs.frozen
class Reschedule:
    """A row whose attempt failed transiently: when to try again, and why."""

    id: int
    attempt: int
    due_at: float
    unknown: bool
    reason: str


@attrs.frozen
class AppSpool:
    """One app's rows, for ``/healthz``, metrics and ``pushd spool status``."""

    app: str
    depth: int
    #: Due now (not leased); the rest wait for their time.
    due: int
    leased: int
    unknown: int
    oldest_due: float | None


_COLUMNS: Final = (
    "id, app, token, protocol, ref, caller, registered_at, key_id, sealed, attempt,"
    " due_at, expires_at, created_at, unknown"
)


def _row(row: Row) -> SpoolRow:
    return SpoolRow(
        id=int(row[0]),
        app=str(row[1]),
        token=str(row[2]),
        protocol=str(row[3]),
        ref=None if row[4] is None else str(row[4]),
        caller=None if row[5] is None else str(row[5]),
        registered_at=None if row[6] is None else float(row[6]),
        key_id=str(row[7]),
        sealed=bytes(row[8]),
        attempt=int(row[9]),
        due_at=float(row[10]),
        expires_at=float(row[11]),
        created_at=float(row[12]),
        unknown=bool(row[13]),
    )


def _add(tx: Tx, entry: SpoolEntry) -> int:
    row = tx.one(
        "INSERT INTO spool (app, token, protocol, ref, caller, registered_at, key_id, sealed,"
        " attempt, due_at, expires_at, created_at, unknown, last_reason, lease_owner,"
        " lease_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (
            entry.app, entry.token, entry.protocol, entry.ref, entry.caller,
            entry.registered_at, entry.key_id, entry.sealed, entry.attempt, entry.due_at,
            entry.expires_at, entry.created_at, int(entry.unknown), entry.last_reason,
            entry.lease_owner, entry.lease_until,
        ),
    )  # fmt: skip
    assert row is not None
    return int(row[0])


def count_event(tx: Tx, app: str, event: str, count: int) -> None:
    """Add ``count`` to the app's counter of ``event`` (expired, dropped, ...)."""
    if count:
        tx.execute(
            "INSERT INTO spool_counters (app, event, count) VALUES (?, ?, ?)"
            " ON CONFLICT (app, event) DO UPDATE SET count = spool_counters.count + ?",
            (app, event, count, count),
        )


class SpoolQueries:
    """Mixed into :class:`pushd.store.Store`."""

    engine: Engine

    async def spool_add(self, entries: Sequence[SpoolEntry]) -> list[int]:
        """Add rows in one transaction; their ids, in order."""
        if not entries:
            return []
        return await self.engine.write(lambda tx: [_add(tx, entry) for entry in entries])

    async def spool_claim(
        self,
        app: str,
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        *,
        unknown: bool,
    ) -> list[SpoolRow]:
        """Lease up to ``limit`` of the app's due rows: half the oldest due, half the
        newest, returned oldest first.

        Oldest first alone would starve what was spooled last behind a backlog (after an
        outage, a send spooled because the pool had not reconnected yet would wait for
        the whole backlog); newest first alone would starve the oldest.  Taking both
        ends keeps each bounded.  ``unknown``: whether rows whose last attempt got no
        answer may be taken (not while the upstream is failing: they may have been
        delivered already).
        """
        only_known = "" if unknown else " AND unknown = 0"
        skip = " FOR UPDATE SKIP LOCKED" if self.engine.dialect == "postgres" else ""

        def query(order: str) -> str:
            return (
                "UPDATE spool SET lease_owner = ?, lease_until = ? WHERE id IN ("
                "SELECT id FROM spool WHERE app = ? AND due_at <= ?"
                f" AND (lease_until IS NULL OR lease_until < ?){only_known}"
                f" ORDER BY due_at {order} LIMIT ?{skip}) RETURNING {_COLUMNS}"
            )

        oldest, newest = query("ASC"), query("DESC")
        older = (limit + 1) // 2

        def claim(tx: Tx) -> list[Row]:
            # Rows the first statement leased have a lease_until past ``now``: the
            # second cannot take them again.
            rows = tx.all(oldest, (owner, lease_until, app, now, now, older))
            if limit > older:
                rows += tx.all(newest, (owner, lease_until, app, now, now, limit - older))
            return rows

        rows = await self.engine.write(claim)
        return sorted((_row(row) for row in rows), key=lambda row: row.due_at)

    async def spool_settle(
        self,
        done: Sequence[int],
        reschedule: Sequence[Reschedule],
        events: Sequence[tuple[str, str, int]] = (),
        *,
        also: Callable[[Tx], object] | None = None,
        owner: str | None = None,
    ) -> None:
        """Record a batch of outcomes in one transaction: rows that are final go,
        transient failures get their next due time (and lose their lease), counters
        rise; ``also`` runs in the same transaction (dead-token removal).

        With ``owner`` (the settling instance), a reschedule leaves alone a row another
        instance has claimed since (this one's attempt outlived its lease): clearing
        that lease would let a third instance send it while the second still is.  A
        final row goes whoever holds it: it is delivered, dead or failed for all.
        """
        mine = "" if owner is None else " AND (lease_owner IS NULL OR lease_owner = ?)"
        who: tuple[object, ...] = () if owner is None else (owner,)

        def tx(tx: Tx) -> None:
            if done:
                ids = list(done)
                tx.execute(f"DELETE FROM spool WHERE id IN ({marks(len(ids))})", ids)
            tx.executemany(
                "UPDATE spool SET attempt = ?, due_at = ?, unknown = ?, last_reason = ?,"
                f" lease_owner = NULL, lease_until = NULL WHERE id = ?{mine}",
                [(r.attempt, r.due_at, int(r.unknown), r.reason, r.id, *who) for r in reschedule],
            )
            for app, event, count in events:
                count_event(tx, app, event, count)
            if also is not None:
                also(tx)

        await self.engine.write(tx)

    async def spool_release(self, owner: str | None) -> int:
        """Give up the leases of ``owner`` (None: every lease; only for a store no other
        process uses, at start-up) so the rows can be claimed again at once."""
        where = "lease_owner IS NOT NULL" if owner is None else "lease_owner = ?"
        params: tuple[object, ...] = () if owner is None else (owner,)
        return await self.engine.write(
            lambda tx: tx.execute(
                f"UPDATE spool SET lease_owner = NULL, lease_until = NULL WHERE {where}", params
            )
        )

    async def spool_release_prefix(self, prefix: str) -> int:
        """Give up the leases of every owner whose name starts with ``prefix``: a
        supervisor's worker that died (``host:pid:``, see ``dispatch.instance_name``),
        so its rows go again now rather than when their leases run out."""
        return await self.engine.write(
            lambda tx: tx.execute(
                "UPDATE spool SET lease_owner = NULL, lease_until = NULL"
                " WHERE substr(lease_owner, 1, ?) = ?",
                (len(prefix), prefix),
            )
        )

    async def spool_stats(self, now: float) -> list[AppSpool]:
        """Rows per app: depth, leased now, unknown outcome, oldest due time."""
        rows = await self.engine.read(
            lambda tx: tx.all(
                "SELECT app, count(*), sum(CASE WHEN due_at <= ? AND"
                " (lease_until IS NULL OR lease_until < ?) THEN 1 ELSE 0 END),"
                " sum(CASE WHEN lease_until IS NOT NULL AND lease_until >= ? THEN 1 ELSE 0 END),"
                " sum(unknown), min(due_at) FROM spool GROUP BY app ORDER BY app",
                (now, now, now),
            )
        )
        return [
            AppSpool(str(app), int(depth), int(due or 0), int(leased or 0), int(unknown or 0),
                     None if oldest is None else float(oldest))
            for app, depth, due, leased, unknown, oldest in rows
        ]  # fmt: skip

    async def spool_key_ids(self) -> dict[str, int]:
        """Rows per sealing key (``pushd spool rotate-key``)."""
        rows = await self.engine.read(
            lambda tx: tx.all("SELECT key_id, count(*) FROM spool GROUP BY key_id")
        )
        return {str(key): int(count) for key, count in rows}

    async def spool_counters(self) -> dict[tuple[str, str], int]:
        rows = await self.engine.read(
            lambda tx: tx.all("SELECT app, event, count FROM spool_counters")
        )
        return {(str(app), str(event)): int(count) for app, event, count in rows}

    async def spool_count(self, events: Sequence[tuple[str, str, int]]) -> None:
        """Raise counters outside a settle (a delivery refused before it was spooled)."""
        if not events:
            return

        def tx(tx: Tx) -> None:
            for app, event, count in events:
                count_event(tx, app, event, count)

        await self.engine.write(tx)

    async def spool_purge(self, app: str) -> int:
        """Delete every row of ``app`` (an operator's decision); counted as purged."""

        def tx(tx: Tx) -> int:
            removed = tx.execute("DELETE FROM spool WHERE app = ?", (app,))
            count_event(tx, app, "purged", removed)
            return removed

        return await self.engine.write(tx)

    async def spool_due_now(self, app: str, now: float) -> int:
        """Make ``app``'s rows due ``now`` (those not leased): its credentials or
        upstream changed, so rows waiting out a pause or a backoff the old ones earned
        go at once.  The count."""
        return await self.engine.write(
            lambda tx: tx.execute(
                "UPDATE spool SET due_at = ? WHERE app = ? AND due_at > ?"
                " AND (lease_until IS NULL OR lease_until < ?)",
                (now, app, now, now),
            )
        )

    async def spool_next_due(self) -> float | None:
        """The earliest due time of any row (the worker sleeps until then)."""
        row = await self.engine.read(lambda tx: tx.one("SELECT min(due_at) FROM spool"))
        return None if row is None or row[0] is None else float(row[0])

    async def spool_page(self, after_id: int, limit: int) -> list[SpoolRow]:
        """Rows by id after ``after_id`` (for re-sealing under a new key)."""
        rows = await self.engine.read(
            lambda tx: tx.all(
                f"SELECT {_COLUMNS} FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        )
        return [_row(row) for row in rows]

    async def spool_reseal(self, sealed: Sequence[tuple[int, str, bytes]]) -> None:
        """Replace rows' sealed pushes: (id, key id, sealed)."""
        await self.engine.write(
            lambda tx: tx.executemany(
                "UPDATE spool SET key_id = ?, sealed = ? WHERE id = ?",
                [(key_id, blob, row_id) for row_id, key_id, blob in sealed],
            )
        )
