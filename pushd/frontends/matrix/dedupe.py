"""Matrix dedupe: a homeserver's retry of an event already sent is not sent again.

A homeserver that does not hear pushd's answer (a timeout, a dropped connection)
repeats the notify.  Sent events are remembered by (app_id, pushkey, event_id) for
``[matrix] dedupe_seconds``:

- one process (SQLite): :class:`Dedupe`, two generations of hashes in memory;
- several instances on one PostgreSQL: :class:`SharedDedupe`, rows of the store's
  ``dedupe`` table, because the load balancer may send the retry to another instance.
  A row holds a 128-bit hash of the key and when it expires, never the pushkey nor the
  event id; the spool worker's upkeep deletes expired rows (and the oldest past
  :data:`pushd.store.verdicts.DEDUPE_MAX_ROWS`), so the table holds about
  ``rate x dedupe_seconds`` rows.  Checking and recording is one transaction, so two
  instances receiving the same retry at once send it once.

Both record a key when it is checked, before the push is built: a push that then fails
is not sent again by a retry within the window, as Sygnal behaves; pushd's own spool
retries it instead.  A device rejected by a kept dead verdict is not recorded.  On a
shared store the verdicts are read in the same store call (:meth:`SharedDedupe.
verdicts_and_seen`): what a notify costs the database before it sends, in one hop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

import trio

from pushd import jsonutil
from pushd.store import LateVerdict, Store
from pushd.verdictcache import VerdictCache

#: Remembered (app_id, pushkey, event_id) at most, about 100 bytes each (6.5 MB):
#: beyond it the window shrinks rather than memory growing.  At 2,000 pushes a second
#: that still covers 30 s, Synapse's first five retries of a lost answer.
DEDUPE_MAX_ENTRIES: Final = 65_536
#: Bytes of BLAKE2b kept per key in the shared table: 128 bits, so no two events of
#: any realistic history collide, and nothing readable is stored.
SHARED_DIGEST_BYTES: Final = 16

Key = tuple[str, str, str]


#: Given the kept verdicts, which devices they reject (the gateway's rule).
Rejected = Callable[[Mapping[str, LateVerdict]], Sequence[bool]]


class Deduper(Protocol):
    """What the gateway asks before it builds anything."""

    async def verdicts_and_seen(
        self, verdicts: VerdictCache, refs: Sequence[str], keys: Sequence[Key], rejected: Rejected
    ) -> tuple[dict[str, LateVerdict], list[bool]]:
        """The kept verdicts among ``refs``, and for each key whether its event was sent
        recently (recorded now), for the keys of devices ``rejected`` lets go ahead; a
        rejected device's key is False and not recorded (its pusher may be set again,
        and the homeserver's retry must then reach it)."""
        ...


class Dedupe:
    """Recently sent (app_id, pushkey, event_id), forgotten after ``window`` seconds.

    Two generations of hashes: a key is known if either holds it, and the older one is
    dropped when the newer is ``window`` old (or full), so a key is remembered for
    between one and two windows.  Hashes, not strings: a 64-bit collision would only
    suppress one push, and the strings would cost five times the memory.
    """

    def __init__(self, window: float, max_entries: int = DEDUPE_MAX_ENTRIES) -> None:
        self.window = window
        self.max_entries = max_entries
        self._current: set[int] = set()
        self._previous: set[int] = set()
        self._started: float | None = None  # set on first use, inside trio

    def seen(self, key: Key) -> bool:
        """Whether ``key`` was sent recently; remembers it either way."""
        if self.window <= 0:
            return False
        now = trio.current_time()
        if self._started is None:
            self._started = now
        if now - self._started >= self.window or len(self._current) >= self.max_entries // 2:
            self._previous, self._current = self._current, set()
            self._started = now
        digest = hash(key)
        if digest in self._current or digest in self._previous:
            return True
        self._current.add(digest)
        return False

    async def verdicts_and_seen(
        self, verdicts: VerdictCache, refs: Sequence[str], keys: Sequence[Key], rejected: Rejected
    ) -> tuple[dict[str, LateVerdict], list[bool]]:
        found = await verdicts.late_verdicts(refs)
        going = rejected(found)
        return found, [not no and self.seen(key) for key, no in zip(keys, going, strict=True)]


def shared_key(key: Key) -> str:
    """The row name of ``key``: a hash (JSON first, so no choice of the homeserver's
    strings names another pusher's event)."""
    text = jsonutil.key_text(*key)
    digest = hashlib.blake2b(text.encode(), digest_size=SHARED_DIGEST_BYTES).hexdigest()
    return "matrix:" + digest


class SharedDedupe:
    """:class:`Dedupe` in the store, for instances sharing one database."""

    def __init__(self, store: Store, window: float) -> None:
        self.store = store
        self.window = window

    async def verdicts_and_seen(
        self, verdicts: VerdictCache, refs: Sequence[str], keys: Sequence[Key], rejected: Rejected
    ) -> tuple[dict[str, LateVerdict], list[bool]]:
        """Both in one store call (one hop to a worker thread on PostgreSQL, not two)."""
        if self.window <= 0 or not keys:
            return await verdicts.late_verdicts(refs), [False] * len(keys)
        hashed = [shared_key(key) for key in keys]
        return await verdicts.late_verdicts_and_dedupe(refs, hashed, self.window, rejected)


def dedupe_for(store: Store, window: float) -> Deduper:
    """Shared through the store when other instances use it, else in memory."""
    return SharedDedupe(store, window) if store.shared else Dedupe(window)
