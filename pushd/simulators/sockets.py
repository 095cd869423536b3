"""Listening and socket tricks both simulators need: TLS listeners on a free port, and
the TCP socket under a (TLS) stream, to find its peer or reset it like a crashed server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from typing import Any

import trio


async def open_listeners(
    ssl_context: ssl.SSLContext | None, host: str, port: int
) -> tuple[int, list[trio.abc.Listener[Any]]]:
    """Listen on ``host:port`` (0: any free port); return the bound port and the
    listeners, wrapped in TLS unless ``ssl_context`` is None."""
    tcp_listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(tcp_listeners[0].socket.getsockname()[1])
    listeners: list[trio.abc.Listener[Any]] = list(tcp_listeners)
    if ssl_context is not None:
        listeners = [
            trio.SSLListener(listener, ssl_context, https_compatible=True)
            for listener in tcp_listeners
        ]
    return bound, listeners


def socket_stream(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The TCP stream under ``stream`` and any TLS layers, or None if there is none."""
    transport: object = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    return transport if isinstance(transport, trio.SocketStream) else None


def set_linger_zero(stream: trio.abc.Stream) -> None:
    """Make closing ``stream`` send a TCP RST, like a server that crashed."""
    transport = socket_stream(stream)
    if transport is not None:
        with contextlib.suppress(OSError):
            transport.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
