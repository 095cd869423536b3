"""One rate limiter for every protocol: fixed-window counters per (protocol, identity).

Each protocol limits the party it can name: the authenticated chat server where the
protocol has credentials (native, Zulip, Rocket.Chat), the source address where it has
none (Matrix, Mattermost).  The limit guards pushd against a runaway loop or a stolen
credential hogging it; it is not a quota, so being generous is right and a forgotten
window only ever errs on the caller's side.

Why fixed windows: a window is two numbers per key (its start and its count), so
memory stays small, and the same two numbers can later live in a shared table when
several pushd instances serve one PostgreSQL (one row per key, an upsert per request).
A window starts at a key's first request, not on a clock boundary, so a burst is
counted in one window rather than split across two.

The interface is :class:`Limiter`'s single method; :class:`RateLimit` adds what every
protocol wants around it: the protocol's name in the key, and one warning per limited
key and window (a flood must not flood the log too).

Several instances on one PostgreSQL (``Store.shared``): the protocols that name an
authenticated chat server (native, Zulip, Rocket.Chat) count in the database instead,
through :meth:`RateLimit.acquire`: one upsert of a ``(key, window)`` row per request
(:meth:`pushd.store.Store.rate_hit`), so the limit holds whichever instance a request
reaches.  The native API makes the same upsert inside the statement that authenticates
(:meth:`pushd.store.Store.authenticate_counted`) and has :meth:`RateLimit.judge` read
the count: one database round trip per request for both.  Those windows are aligned on
the clock (every instance must name the same row), which, like any fixed window, lets a
caller send up to twice the limit across a window boundary.  If the database cannot
count, the request is let through: the store logs its own failure, and the request that
needs it will fail anyway.  A supervisor's workers on one SQLite file
(``[server] workers``) count the same way, through the same method, but in tables the
host's workers share in memory (:mod:`pushd.hostshared`): exact across them, and half
the CPU of a database write per request.  Matrix and Mattermost limit source addresses
(a flood, not a credential) and keep counting per instance: behind N instances a source
may send up to N times the limit.
"""

from __future__ import annotations

import collections
import logging
import math
from typing import Final, Protocol

from pushd.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

#: Keys remembered at most (MPNS's ``ThrottleMemoryStoreSize``): a flood from many
#: source addresses forgets the oldest windows instead of growing memory, about
#: 150 bytes a key (7.5 MB).
MAX_KEYS: Final = 50_000
#: A minute: the window of every ``rate_limit`` given as requests a minute.
MINUTE: Final = 60.0
#: Requests refused per protocol by every :class:`RateLimit` of this process, for the
#: metrics (``pushd_rate_limited_requests_total``).
REFUSED: Final[collections.Counter[str]] = collections.Counter()


class Limiter(Protocol):
    """Counts requests per key; the one operation a shared backend must provide."""

    def check(self, key: str, now: float) -> float | None:
        """Count one request of ``key`` at ``now`` (seconds); None if it is allowed,
        else the seconds until it would be."""
        ...


class FixedWindowLimiter:
    """At most ``limit`` requests per key in each ``window`` seconds, kept in memory.

    A key's window starts at its first request and ends ``window`` seconds later;
    refused requests are not counted.  Expired windows are dropped as time passes
    (the dict is in window order), and past ``max_keys`` live keys the oldest windows
    are forgotten, so neither time nor a flood of distinct keys grows memory.
    """

    def __init__(self, limit: int, window: float, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        #: key -> (window start, requests in it); insertion order is window order.
        self._windows: dict[str, tuple[float, int]] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def check(self, key: str, now: float) -> float | None:
        self._drop_expired(now)
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self.window:  # left behind by a wall clock stepped back
            del self._windows[key]
            start, count = now, 0
        if count == 0:
            while len(self._windows) >= self.max_keys:
                del self._windows[next(iter(self._windows))]
        if count >= self.limit:
            # min(): a wall clock stepped back must not promise more than one window.
            return min(self.window, start + self.window - now)
        self._windows[key] = (start, count + 1)
        return None

    def _drop_expired(self, now: float) -> None:
        """Forget windows that have ended: the oldest are first, so this stops early."""
        windows = self._windows
        while windows:
            oldest = next(iter(windows))
            if now - windows[oldest][0] < self.window:
                return
            del windows[oldest]


class SharedCounter(Protocol):
    """Window counters several instances share (:class:`pushd.store.Store`)."""

    async def rate_hit(self, key: str, window_start: int) -> int:
        """Count one request of ``key`` in the window starting at ``window_start``
        (UNIX seconds); the window's count, this one included."""
        ...


def retry_after_seconds(retry_after: float) -> int:
    """``Retry-After`` as HTTP writes it: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(retry_after))


class RateLimit:
    """One protocol's limit: ``limit`` requests per identity in ``window`` seconds.

    Keys are ``"<protocol>:<identity>"``, unambiguous because protocol names hold no
    colon, so protocols could share one backend.  A refused identity is logged at
    WARNING at most once every ``window`` seconds, however many requests it sends.
    """

    def __init__(
        self,
        protocol: str,
        limit: int,
        window: float = MINUTE,
        *,
        limiter: Limiter | None = None,
        max_keys: int = MAX_KEYS,
        shared: SharedCounter | None = None,
    ) -> None:
        self.protocol = protocol
        #: Where :meth:`acquire` counts when several instances share one database.
        self.shared = shared
        self.limit = limit
        self.window = window
        self.limiter: Limiter = limiter or FixedWindowLimiter(limit, window, max_keys)
        #: Identities refused and logged, with when their window ends (window order);
        #: bounded and pruned like the counters.
        self._warned = FixedWindowLimiter(1, window, max_keys)

    def check(self, identity: str, now: float) -> float | None:
        """Count one request of ``identity``; None if allowed, else seconds to wait."""
        retry_after = self.limiter.check(f"{self.protocol}:{identity}", now)
        self._warn(identity, now, retry_after)
        return retry_after

    async def acquire(self, identity: str, now: float) -> float | None:
        """:meth:`check`, counted in the shared database when there is one.

        The window is the clock's (``now`` rounded down to a multiple of the window),
        so every instance counts in the same row.  Refused requests are counted too:
        the count only says "over", and one upsert is cheaper than a read and a write.
        """
        if self.shared is None:
            return self.check(identity, now)
        start = self.window_start(now)
        try:
            count = await self.shared.rate_hit(self.key(identity), start)
        except StoreUnavailable:
            return None  # a guard, not a quota: let it through (the store logs)
        return self.judge(identity, now, count)

    def key(self, identity: str) -> str:
        """The key ``identity`` is counted under (the protocol's name first)."""
        return f"{self.protocol}:{identity}"

    def window_start(self, now: float) -> int:
        """The clock-aligned window ``now`` falls in: every instance names the same."""
        window = max(1, int(self.window))
        return int(now) // window * window

    def judge(self, identity: str, now: float, count: int) -> float | None:
        """:meth:`acquire`'s answer for a shared window that ``count`` requests of
        ``identity`` (this one included) reached, counted by the caller (the native
        API counts in the same statement that authenticates)."""
        ends = self.window_start(now) + max(1, int(self.window))
        retry_after = None if count <= self.limit else max(0.001, ends - now)
        self._warn(identity, now, retry_after)
        return retry_after

    def _warn(self, identity: str, now: float, retry_after: float | None) -> None:
        if retry_after is not None:
            REFUSED[self.protocol] += 1
        if retry_after is not None and self._warned.check(identity, now) is None:
            log.warning(
                "%s: %s is over its rate limit (%d requests in %g s): refusing its "
                "requests for %d s",
                self.protocol,
                identity,
                self.limit,
                self.window,
                retry_after_seconds(retry_after),
            )
