"""Host name lookups that one app's broken DNS cannot take from the others.

trio resolves a name with the C library's ``getaddrinfo`` on a worker thread, and a
lookup cancelled by its caller (a connect that timed out) is *abandoned*, not stopped:
the thread runs on until the resolver gives up, holding one of the 40 tokens of trio's
default thread limiter all the while.  A host whose DNS server never answers (60 s a
lookup with ``options timeout:30 attempts:2``), retried by every connection of its pool
about every 11 s, took all 40 within a minute; from then on no other app could resolve
a name either: a healthy app whose connection was replaced (a GOAWAY, a recycle) or
whose FCM token had to be refreshed failed every push with "unreachable: TooSlowError".

:class:`PerHostResolver` gives each host name its own limiter of
:data:`LOOKUPS_PER_HOST` threads, instead of the shared one: a host whose lookups hang
holds that many threads at most, its next connects wait for them (and time out as
before), and every other host resolves as usual.  :func:`install` makes it trio's
resolver for the run, so the APNs and FCM pools, the HTTP proxy's tunnel and httpx's
token requests all go through it.  Addresses given as numbers never need it.
"""

from __future__ import annotations

import socket
from typing import Any, Final

import trio

#: Lookups of one host name that may run (or hang) at once.  One is enough for the
#: handful of connections a pool opens together; a second lets a fresh lookup go past
#: one that hangs but will soon end (the resolver's own timeout), without letting a host
#: whose lookups all hang take more than two threads.
LOOKUPS_PER_HOST: Final = 2


class PerHostResolver(trio.abc.HostnameResolver):
    """``getaddrinfo`` on a thread, each host name with its own thread limiter."""

    def __init__(self) -> None:
        self._limiters: dict[bytes | None, trio.CapacityLimiter] = {}

    def limiter(self, host: bytes | None) -> trio.CapacityLimiter:
        """The limiter of ``host``'s lookups (made on first use: hosts come from the
        config, so there are few)."""
        limiter = self._limiters.get(host)
        if limiter is None:
            limiter = self._limiters[host] = trio.CapacityLimiter(LOOKUPS_PER_HOST)
        return limiter

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        return await trio.to_thread.run_sync(
            socket.getaddrinfo,
            host,
            port,
            family,
            type,
            proto,
            flags,
            abandon_on_cancel=True,
            limiter=self.limiter(host),
        )

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        return await trio.to_thread.run_sync(
            socket.getnameinfo, sockaddr, flags, abandon_on_cancel=True
        )


def install() -> PerHostResolver:
    """Make a :class:`PerHostResolver` trio's resolver for the rest of this run."""
    resolver = PerHostResolver()
    trio.socket.set_custom_hostname_resolver(resolver)
    return resolver
