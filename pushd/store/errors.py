"""Store errors, and how a failing store is told apart from a bad request.

A store that cannot write (a full disk, an I/O error, a read-only file, a database
server gone) is an outage, not a bug: the caller hears 503 ``store_unavailable`` in its
own protocol and retries, the log gets one line per kind of failure rather than a
traceback per request, and ``/healthz`` says "degraded" until a write succeeds again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import attrs

log = logging.getLogger("pushd.store")

#: One log line per kind of failure at most this often; the rest are counted.
FAILURE_LOG_INTERVAL: Final = 60.0
#: A store call still running (or waiting for its turn) after this long makes the store
#: count as failing (``stalled``) in ``/healthz`` and ``pushd_store_healthy``: a database
#: that hangs instead of failing (a middlebox swallowing its packets) is seen too.
#: Calls are never abandoned (:mod:`pushd.store.hop`): this only reports.
STALL_AFTER: Final = 10.0


class StoreError(Exception):
    """The database cannot be used (newer schema, unwritable file, ...)."""


class Conflict(StoreError):
    """A write broke a uniqueness or reference rule (the query decides what it means)."""


class ValueRefused(StoreError):
    """A value from the request that the database cannot hold: PostgreSQL refuses a NUL
    character in text, and both stores an integer beyond 64 bits.  The request's fault,
    not an outage: the caller hears 400 in its own protocol (frontends refuse such
    values at the door where they know the field; this is the guard behind them).
    ``kind`` names the problem, never the value."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"a value cannot be stored: {kind}")
        self.kind = kind


class StoreUnavailable(StoreError):
    """The store failed to read or write for a reason outside the request (an outage).

    ``kind`` names the failure in a few words (``disk_full``, ``io_error``, ...): it is
    what the log and ``/healthz`` show, never the statement or its values.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(f"the store is unavailable: {kind}")
        self.kind = kind


@attrs.define
class FailureLog:
    """The store's recent failures: rate-limited log lines and the health reason."""

    clock: Callable[[], float] = time.monotonic
    #: The kind of the last failure, until a write succeeds again.
    failing: str | None = None
    _logged: dict[str, float] = attrs.Factory(dict)
    _suppressed: dict[str, int] = attrs.Factory(dict)

    #: Calls in flight: when each began (``clock``), by a number of its own.
    _running: dict[int, float] = attrs.Factory(dict)
    _calls: int = 0
    #: When the oldest call of a stall that was logged began (None: no stall logged).
    _stalled_since: float | None = None
    #: A cheap look at the store that :attr:`reason` takes while nothing has failed
    #: (SQLite: is the file still the one opened?), so ``/healthz`` and the metrics
    #: see a store gone bad before a request trips over it.  It records what it
    #: finds through :meth:`failed`.
    probe: Callable[[], object] | None = None

    def began(self) -> int:
        """A store call begins (waiting for its turn included); pass the number to
        :meth:`ended`."""
        self._calls += 1
        self._running[self._calls] = self.clock()
        return self._calls

    def ended(self, call: int) -> None:
        began = self._running.pop(call, None)
        if self._stalled_since is not None and not self._stalled(self.clock()):
            took = self.clock() - (began if began is not None else self._stalled_since)
            log.warning("store calls complete again (the longest took %.0f s)", took)
            self._stalled_since = None

    def _stalled(self, now: float) -> bool:
        running = self._running
        return bool(running) and now - min(running.values()) > STALL_AFTER

    @property
    def reason(self) -> str | None:
        """Why the store counts as failing: the last failure's kind until a write
        succeeds, or ``stalled`` while a call has run longer than :data:`STALL_AFTER`
        (said once in the log when first seen here, and once when calls complete
        again: health and the metrics ask every few seconds)."""
        if self.failing is None and self.probe is not None:
            self.probe()
        if self.failing is not None:
            return self.failing
        now = self.clock()
        if not self._stalled(now):
            return None
        if self._stalled_since is None:
            self._stalled_since = min(self._running.values())
            log.error(
                "store stalled: a call has waited over %.0f s for the database (hung, or "
                "a network path that swallows its packets); requests that need it wait",
                STALL_AFTER,
            )
        return "stalled"

    def failed(self, kind: str, detail: str = "") -> StoreUnavailable:
        """Record a failure of ``kind``, log it if due, return the error to raise.

        ``detail`` is what the log line adds for the admin (what happened, what to
        do); it never reaches the caller, which hears only ``kind``."""
        self.failing = kind
        now = self.clock()
        last = self._logged.get(kind)
        if last is None or now - last >= FAILURE_LOG_INTERVAL:
            suppressed = self._suppressed.pop(kind, 0)
            more = f" ({suppressed} more since the last line)" if suppressed else ""
            log.error(
                "store unavailable: %s%s; requests that need it are answered 503%s",
                kind,
                f" ({detail})" if detail else "",
                more,
            )
            self._logged[kind] = now
        else:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
        return StoreUnavailable(kind)

    def succeeded(self) -> None:
        """A write went through: the store is healthy again."""
        if self.failing is not None:
            log.warning("store available again (after %s)", self.failing)
            self.failing = None
