"""Rate windows and Matrix dedupe keys shared by the workers of one host, in memory.

N instances on one PostgreSQL count rate windows and dedupe keys in the database (one
upsert per request): they may be on different hosts.  A supervisor's workers on one
SQLite file are on one host, and there the same upsert costs twice the CPU of the
whole request (``benchmarks/workers.py``: a write-thread hop and a cross-process write
lock per request, 1.07 against 0.49 CPU-ms per notification).  So they share two
small tables in files the supervisor creates (:class:`HostTable`, memory-mapped, a
few MB), each operation a lookup of a 64-bit hash under an exclusive ``flock``: a few
microseconds, exact across workers, and kept across a worker's restart.

A table is open addressing over fixed slots of ``(key hash, stamp, count)``: for a
rate window the stamp is the window's start, for a dedupe key its expiry.  A key
probes :data:`PROBES` slots; a slot that is empty or stale is taken, and if none is,
the stalest of them is (a flood of new keys forgets the oldest, as the in-memory
limiter and dedupe do).  Two keys with the same 64-bit hash would share a slot: at
2^-64 per pair, not a concern for a few thousand live keys.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from pushd.store import Store
from pushd.store.engine import Engine

_SLOT: Final = struct.Struct("<qqq")
#: Slots of each table: far more than live chat servers (rates) and the in-memory
#: dedupe's bound (65,536 keys), at 24 bytes a slot.
RATE_SLOTS: Final = 1 << 14
DEDUPE_SLOTS: Final = 1 << 17
#: Slots a key may occupy, looked at in order from its hash.
PROBES: Final = 16
#: A rate window older than this is stale whatever its length (pushd's are a minute).
RATE_STALE: Final = 3600
RATES_FILE: Final = "rates"
DEDUPE_FILE: Final = "dedupe"


def key_hash(key: str) -> int:
    """A non-zero signed 64-bit hash (0 marks an empty slot)."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    value -= 1 << 63
    return value or 1


class HostTable:
    """One memory-mapped table of slots; see the module docstring."""

    def __init__(self, path: Path, slots: int) -> None:
        self.slots = slots
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = slots * _SLOT.size
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)

    @classmethod
    def create(cls, path: Path, slots: int) -> None:
        """A fresh, empty table (the supervisor, before any worker starts)."""
        path.unlink(missing_ok=True)
        cls(path, slots).close()

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _find(self, hashed: int, stale: int) -> tuple[int, bool]:
        """The slot offset for ``hashed``, and whether it holds that key already.

        Every probe is looked at before a slot is reused (the key may sit past a stale
        slot); a never-used slot ends the search, since slots are never emptied.  A slot
        whose stamp is below ``stale`` is free; with none free, the stalest is taken."""
        free, victim, victim_stamp = -1, -1, 0
        for probe in range(PROBES):
            offset = ((hashed + probe) % self.slots) * _SLOT.size
            held, stamp, _ = _SLOT.unpack_from(self._map, offset)
            if held == hashed:
                return offset, True
            if held == 0:
                return (offset if free < 0 else free), False
            if free < 0 and stamp < stale:
                free = offset
            if victim < 0 or stamp < victim_stamp:
                victim, victim_stamp = offset, stamp
        return (free if free >= 0 else victim), False

    def hit(self, key: str, window_start: int) -> int:
        """Count one request of ``key`` in the window starting at ``window_start``; the
        window's count so far, this one included."""
        hashed = key_hash(key)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            offset, found = self._find(hashed, window_start - RATE_STALE)
            count = 0
            if found:
                _, start, count = _SLOT.unpack_from(self._map, offset)
                if start != window_start:
                    count = 0
            _SLOT.pack_into(self._map, offset, hashed, window_start, count + 1)
            return int(count + 1)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def seen(self, keys: Sequence[str], window: float, now: float) -> list[bool]:
        """For each key, whether it was recorded within ``window`` seconds; records the
        new ones (under one lock: two workers cannot both see a key as new)."""
        result = []
        expiry_ms = int((now + window) * 1000)
        now_ms = int(now * 1000)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for key in keys:
                hashed = key_hash(key)
                offset, found = self._find(hashed, now_ms)
                if found and _SLOT.unpack_from(self._map, offset)[1] > now_ms:
                    result.append(True)
                    continue
                _SLOT.pack_into(self._map, offset, hashed, expiry_ms, 0)
                result.append(False)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return result


def create_tables(directory: Path) -> None:
    HostTable.create(directory / RATES_FILE, RATE_SLOTS)
    HostTable.create(directory / DEDUPE_FILE, DEDUPE_SLOTS)


class HostSharedStore(Store):
    """The store of a supervisor's worker on SQLite: rate windows and dedupe keys in
    the host's tables, everything else in the database."""

    def __init__(self, engine: Engine, directory: Path) -> None:
        super().__init__(engine)
        self.rates = HostTable(directory / RATES_FILE, RATE_SLOTS)
        self.dedupe = HostTable(directory / DEDUPE_FILE, DEDUPE_SLOTS)

    async def rate_hit(self, key: str, window_start: int) -> int:
        return self.rates.hit(key, window_start)

    async def dedupe_seen(self, keys: Sequence[str], window: float) -> list[bool]:
        return self.dedupe.seen(keys, window, time.time())

    async def close(self) -> None:
        self.rates.close()
        self.dedupe.close()
        await super().close()
