"""Listening with ``SO_REUSEPORT``: N worker processes on one port.

With ``[server] workers = N`` each worker binds the API port itself, every socket with
``SO_REUSEPORT``, and Linux spreads new connections over the listening sockets by a
hash of the connection's addresses.  Why not one socket inherited by every worker (the
pre-fork way): with one shared accept queue, the process that wakes first takes the
connection, and under load that is whichever is least busy only by luck; per-socket
queues balance connections evenly and need no descriptor passing.  The price: a chat
server's keep-alive connection stays with the worker that took it, so balance is per
connection, not per request.

The supervisor (:mod:`pushd.supervisor`) also binds the port with ``SO_REUSEPORT`` but
never listens: that reserves the port (a port 0 is resolved once, for every worker)
while workers come and go, and no connection is ever queued on that socket.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

import trio

from pushd.http11 import HttpServer, ListenError

#: The accept queue of each worker's socket (what trio uses by default).
BACKLOG: Final = 0xFFFF


def _addresses(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    seen: list[tuple[int, tuple[object, ...]]] = []
    for family, _, _, _, address in infos:
        if (family, address) not in seen:
            seen.append((family, tuple(address)))
    return seen


def bind_reuse_port(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``host:port`` with ``SO_REUSEPORT`` (not listening yet); a
    port 0 is chosen by the first bind and used for the others.  ListenError names
    the address if it cannot be bound."""
    sockets: list[socket.socket] = []
    try:
        for family, address in _addresses(host, port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError as error:
        for sock in sockets:
            sock.close()
        reason = error.strerror or str(error)
        if error.errno == errno.EADDRINUSE:
            reason += " (by a process that does not set SO_REUSEPORT, or another user's)"
        shown = f"[{host}]" if ":" in host else host
        raise ListenError(
            f"cannot listen on {shown}:{port}: {reason[:1].lower()}{reason[1:]}"
        ) from None
    return sockets


class ReusePortHttpServer(HttpServer):
    """:class:`~pushd.http11.HttpServer` whose listeners set ``SO_REUSEPORT``.

    Only :meth:`open_listeners` differs (how its sockets are made); connections, the
    timeout sweeper, the drain and the start-up heap freeze are the base class's.
    """

    async def open_listeners(self, host: str, port: int) -> list[trio.SocketListener]:
        listeners = []
        for sock in bind_reuse_port(host, port):
            sock.listen(BACKLOG)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        return listeners
