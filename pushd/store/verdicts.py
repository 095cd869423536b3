"""State owed to chat servers or shared by instances: late verdicts, dedupe, rate windows.

- **Late verdicts** (``late_verdicts``): a dead token found after its caller was
  answered (a spooled retry) or in an answer the caller may not have received, kept
  under the caller's own name for the device (``ref``) and the chat server it is owed to
  (``caller``) until that server's next request tells it.
- **Dedupe** (``dedupe``): keys of recently sent notifications (Matrix: app id, pushkey,
  event id), so a retry that reaches another instance is not sent twice.
- **Rate windows** (``rate_windows``): per-chat-server request counts of fixed windows,
  so a limit holds across instances.

The two last are only used when the database is shared (PostgreSQL); one SQLite
process keeps them in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs

from pushd.store.engine import Engine, Tx

#: A late dead verdict nobody asked about for this long is dropped: the device's
#: pusher is gone, or the next push finds the token dead again anyway.
LATE_VERDICT_KEEP: Final = 30 * 24 * 3600.0
#: Dedupe rows kept at most (about 100 bytes each with the index): beyond it upkeep
#: drops the soonest to expire, so a flood shortens the window rather than growing
#: the table.  Ten times the in-memory dedupe's bound: one table serves N instances.
DEDUPE_MAX_ROWS: Final = 655_360


@attrs.frozen
class LateVerdict:
    """A dead verdict kept for the caller's next request carrying ``ref``."""

    ref: str
    reason: str
    since: float | None
    found_at: float


def keep_verdict(
    tx: Tx, ref: str, reason: str, since: float | None, now: float, caller: str | None
) -> None:
    tx.execute(
        "INSERT INTO late_verdicts (ref, reason, since, found_at, caller) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (ref) DO UPDATE SET reason = excluded.reason, since = excluded.since,"
        " found_at = excluded.found_at, caller = excluded.caller",
        (ref, reason, since, now, caller),
    )


def _verdict(row: tuple[object, ...]) -> LateVerdict:
    ref, reason, since, found_at = row
    return LateVerdict(
        str(ref), str(reason), None if since is None else float(since),  # type: ignore[arg-type]
        float(found_at),  # type: ignore[arg-type]
    )  # fmt: skip


def _late_verdicts(tx: Tx, refs: Sequence[str]) -> dict[str, LateVerdict]:
    wanted = list(refs)
    rows = tx.all(
        "SELECT ref, reason, since, found_at FROM late_verdicts"
        f" WHERE ref IN ({','.join('?' * len(wanted))})",
        wanted,
    )
    return {str(row[0]): _verdict(row) for row in rows}


def _dedupe(tx: Tx, keys: Sequence[str], now: float, window: float) -> list[bool]:
    """For each key, whether it was recorded within ``window`` seconds of ``now``;
    records the new ones (in the caller's transaction)."""
    seen = []
    for key in keys:
        row = tx.one(
            "INSERT INTO dedupe (key, expires_at) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
            " WHERE dedupe.expires_at < ? RETURNING key",
            (key, now + window, now),
        )
        seen.append(row is None)
    return seen


def count_rate(tx: Tx, key: str, window_start: int) -> int:
    """Count one request of ``key`` in the window starting at ``window_start`` (one
    statement, repeatable as a count is); the window's count, this one included."""
    row = tx.one(
        "INSERT INTO rate_windows (key, window_start, count) VALUES (?, ?, 1)"
        " ON CONFLICT (key, window_start) DO UPDATE SET count = rate_windows.count + 1"
        " RETURNING count",
        (key, window_start),
    )
    return int(row[0]) if row else 1


class VerdictQueries:
    """Mixed into :class:`pushd.store.Store`."""

    engine: Engine

    async def late_verdicts(self, refs: Sequence[str]) -> dict[str, LateVerdict]:
        """The kept verdicts among ``refs`` (one indexed read)."""
        if not refs:
            return {}
        return await self.engine.read(lambda tx: _late_verdicts(tx, refs))

    async def verdicts_and_dedupe(
        self,
        refs: Sequence[str],
        keys: Sequence[str],
        window: float,
        rejected: Callable[[Mapping[str, LateVerdict]], Sequence[bool]],
    ) -> tuple[dict[str, LateVerdict], list[bool]]:
        """:meth:`late_verdicts` of ``refs``, then :meth:`dedupe_seen` of the ``keys``
        that ``rejected`` (given those verdicts) lets go ahead; a rejected key is
        neither looked up nor recorded (False).

        What a Matrix notify reads and writes before it sends.  On PostgreSQL one store
        call, one transaction: one hop to a worker thread instead of two (each costs
        about as much CPU as its round trip).  Elsewhere the two calls (SQLite workers
        keep dedupe keys in the host's tables).
        """

        def ahead(verdicts: Mapping[str, LateVerdict]) -> list[int]:
            return [n for n, no in enumerate(rejected(verdicts)) if not no]

        def spread(going: list[int], seen: Sequence[bool]) -> list[bool]:
            flags = [False] * len(keys)
            for n, repeat in zip(going, seen, strict=True):
                flags[n] = repeat
            return flags

        if self.engine.dialect != "postgres":
            verdicts = await self.late_verdicts(refs)
            going = ahead(verdicts)
            seen = await self.dedupe_seen([keys[n] for n in going], window) if going else []
            return verdicts, spread(going, seen)
        now = time.time()

        def both(tx: Tx) -> tuple[dict[str, LateVerdict], list[bool]]:
            verdicts = _late_verdicts(tx, refs) if refs else {}
            going = ahead(verdicts)
            return verdicts, spread(going, _dedupe(tx, [keys[n] for n in going], now, window))

        return await self.engine.write(both)

    async def verdict_refs(self) -> list[str]:
        """The ref of every kept verdict (:class:`pushd.verdictcache.VerdictCache`
        loads them at start)."""
        rows = await self.engine.read(lambda tx: tx.all("SELECT ref FROM late_verdicts", ()))
        return [str(row[0]) for row in rows]

    async def caller_verdicts(self, caller: str) -> list[LateVerdict]:
        """Every verdict kept for chat server ``caller`` (Zulip: its next answer)."""
        rows = await self.engine.read(
            lambda tx: tx.all(
                "SELECT ref, reason, since, found_at FROM late_verdicts WHERE caller = ?"
                " ORDER BY found_at",
                (caller,),
            )
        )
        return [_verdict(row) for row in rows]

    async def forget_late_verdicts(self, refs: Sequence[str]) -> None:
        """Drop verdicts the caller has now been told (or that no longer apply)."""
        if not refs:
            return
        wanted = [(ref,) for ref in refs]
        await self.engine.write(
            lambda tx: tx.executemany("DELETE FROM late_verdicts WHERE ref = ?", wanted)
        )

    async def dedupe_seen(self, keys: Sequence[str], window: float) -> list[bool]:
        """For each key, whether it was recorded within ``window`` seconds; records the
        new ones (one transaction, so two instances cannot both see a key as new)."""
        now = time.time()
        return await self.engine.write(lambda tx: _dedupe(tx, keys, now, window))

    async def rate_hit(self, key: str, window_start: int) -> int:
        """Count one request of ``key`` in the window starting at ``window_start``;
        the window's count so far, this one included."""
        return await self.engine.write_repeatable(lambda tx: count_rate(tx, key, window_start))

    async def expire_shared_state(self, rate_before: int) -> None:
        """Drop expired dedupe keys (and the soonest to expire past
        :data:`DEDUPE_MAX_ROWS`), rate windows that started before ``rate_before``, and
        late verdicts older than :data:`LATE_VERDICT_KEEP` (periodic upkeep)."""
        now = time.time()

        def tx(tx: Tx) -> None:
            tx.execute("DELETE FROM dedupe WHERE expires_at < ?", (now,))
            tx.execute(
                "DELETE FROM dedupe WHERE key IN"
                " (SELECT key FROM dedupe ORDER BY expires_at DESC LIMIT -1 OFFSET ?)"
                if tx.dialect == "sqlite"
                else "DELETE FROM dedupe WHERE key IN"
                " (SELECT key FROM dedupe ORDER BY expires_at DESC OFFSET ?)",
                (DEDUPE_MAX_ROWS,),
            )
            tx.execute("DELETE FROM rate_windows WHERE window_start < ?", (rate_before,))
            tx.execute("DELETE FROM late_verdicts WHERE found_at < ?", (now - LATE_VERDICT_KEEP,))

        await self.engine.write(tx)
