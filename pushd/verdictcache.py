"""Which pushers may have a kept dead verdict, so that a push reads the store only then.

The Matrix gateway and the Mattermost proxy ask the store, on every push, whether a
verdict is kept for the device (found dead after its caller was answered); almost never
is there one.  On SQLite that read ran on the event loop for every notification.

What was chosen, per store:

- **SQLite** (one process, the store's only writer): every verdict this process keeps
  is made by the dispatcher, which adds its ``ref`` here before the store write
  (:meth:`VerdictCache.add`), and those kept before a restart are loaded at start
  (:meth:`VerdictCache.load`).  The set is then a superset of the refs with a verdict
  in the store: a push whose ref is not in it reads nothing; one whose ref is in it
  reads the store, which stays the record (reason, time, and whether it is still
  there).  If the load fails (the store is down at start), every push reads, as
  before, until a later load succeeds.
- **Shared store** (PostgreSQL, N instances): another instance may keep a verdict at
  any moment, and a cache that had not heard of it yet would let a push go to the dead
  token and the caller miss its rejection (the homeserver's retry after a lost answer
  may reach any instance).  So every push reads: one indexed read on a worker thread,
  off the event loop, as before (a Matrix notify's in the store call that records its
  dedupe keys, :meth:`VerdictCache.late_verdicts_and_dedupe`).  A refreshed copy would
  only bound that staleness, never remove it.

A ref leaves the set when its verdict has been told (:meth:`VerdictCache.forget`),
unless it was added again meanwhile (a newer verdict for the same pusher, written
after the read).  A verdict that expires unasked (``LATE_VERDICT_KEEP``) leaves its
ref behind until a restart: that pusher's pushes read the store, nothing worse.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence

from pushd.store import LateVerdict, Store, StoreUnavailable

log = logging.getLogger(__name__)


class VerdictCache:
    """The refs that may have a kept verdict (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        #: ref -> the add that put it here (a newer add survives a forget of an older).
        self._refs: dict[str, int] = {}
        #: ref -> the add seen when its verdict was read (to be told).
        self._read: dict[str, int] = {}
        self._adds = itertools.count(1)
        self._loaded = False

    @property
    def exact(self) -> bool:
        """Whether a ref not in the set certainly has no verdict in the store."""
        return self._loaded and not self.store.shared

    def add(self, ref: str) -> None:
        """A verdict is about to be kept under ``ref`` (before the store write)."""
        self._refs[ref] = next(self._adds)

    async def load(self) -> None:
        """Read the refs kept before this process started (SQLite only; see above)."""
        if self.store.shared or self._loaded:
            return
        try:
            refs = await self.store.verdict_refs()
        except StoreUnavailable:  # logged by the store: read per push meanwhile
            return
        for ref in refs:
            self._refs.setdefault(ref, 0)
        self._loaded = True

    async def late_verdicts(self, refs: Sequence[str]) -> dict[str, LateVerdict]:
        """The kept verdicts among ``refs``; the store is read only for refs that may
        have one (all of them on a shared store)."""
        if self.exact:
            known = self._refs
            refs = [ref for ref in refs if ref in known]
            if not refs:
                return {}
        found = await self.store.late_verdicts(refs)
        self._note_read(found)
        return found

    async def late_verdicts_and_dedupe(
        self,
        refs: Sequence[str],
        keys: Sequence[str],
        window: float,
        rejected: Callable[[Mapping[str, LateVerdict]], Sequence[bool]],
    ) -> tuple[dict[str, LateVerdict], list[bool]]:
        """:meth:`late_verdicts` of every ref (for a shared store, where none is known
        to have no verdict) and the dedupe of the keys they let go ahead, in one store
        call (:meth:`pushd.store.Store.verdicts_and_dedupe`)."""
        found, seen = await self.store.verdicts_and_dedupe(refs, keys, window, rejected)
        self._note_read(found)
        return found, seen

    def _note_read(self, found: Mapping[str, LateVerdict]) -> None:
        for ref in found:
            self._read[ref] = self._refs.get(ref, 0)

    async def forget(self, refs: Sequence[str]) -> None:
        """The verdicts under ``refs`` (read by :meth:`late_verdicts`) were told."""
        await self.store.forget_late_verdicts(refs)
        for ref in refs:
            seen = self._read.pop(ref, None)
            if seen is not None and self._refs.get(ref) == seen:
                del self._refs[ref]
