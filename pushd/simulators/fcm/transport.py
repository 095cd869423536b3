"""TLS and hypercorn: ALPN, hypercorn's settings for an upstream look-alike, and the
accepted connections a scripted ``drop`` or ``goaway`` ends.

hypercorn serves HTTP/1.1 (and clear-text h2c); HTTP/2 over TLS has the simulator's own
loop (:mod:`pushd.simulators.fcm.h2server`)."""

from __future__ import annotations

import logging
import ssl
from typing import Protocol

import h2.exceptions
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio.tcp_server import TCPServer

from pushd.simulators.fcm.constants import (
    CLOSE_LINGER,
    HANDSHAKE_TIMEOUT,
    KEEP_ALIVE_MAX_REQUESTS,
    KEEP_ALIVE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
)
from pushd.simulators.sockets import set_linger_zero, socket_stream

#: hypercorn's error log.  Named for the package, as it was before the split.
log = logging.getLogger("pushd.simulators.fcm")


def configure_alpn(context: ssl.SSLContext) -> ssl.SSLContext:
    """Offer both HTTP/2 and HTTP/1.1 on a server ``context``, as FCM does; return it.

    :func:`pushd.simulators.certs.configure_h2` offers only ``h2`` (APNs has no HTTP/1.1);
    an FCM client may use either.
    """
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


def hypercorn_config() -> HypercornConfig:
    """hypercorn settings for an upstream look-alike, not a web app (see the module doc)."""
    config = HypercornConfig()
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.h2_max_concurrent_streams = MAX_CONCURRENT_STREAMS
    config.ssl_handshake_timeout = HANDSHAKE_TIMEOUT
    config.accesslog = None  # tokens and projects stay out of logs
    config.errorlog = log
    config.include_server_header = False
    return config


class Served(Protocol):
    """What a scripted ``drop`` or ``goaway`` needs of a connection, whichever loop
    serves it: hypercorn's (:class:`Connection`) or the simulator's own HTTP/2 loop
    (:class:`~pushd.simulators.fcm.h2server.H2Served`)."""

    #: Set once GOAWAY went out: no more answers are recorded on it.
    closing: bool
    dropped: bool
    #: Requests taken on this connection (for ``goaway_after``).
    taken: int

    async def goaway(self, reason: str) -> None: ...

    def drop(self) -> None: ...


class Connection:
    """One connection hypercorn serves, so a scripted ``drop`` or ``goaway`` can end it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.scope = trio.CancelScope()
        self.dropped = False
        #: Set once GOAWAY went out: no more answers are recorded on it.
        self.closing = False
        #: Requests taken on this connection (for ``goaway_after``).
        self.taken = 0
        self.server: TCPServer | None = None

    async def goaway(self, reason: str) -> None:
        """Send GOAWAY, give the client :data:`CLOSE_LINGER` to hang up, then close.

        Every stream not yet answered lies above the GOAWAY's last stream id, so the
        client knows none of them was processed.  An HTTP/1.1 connection is just closed.
        """
        if self.closing:
            return
        self.closing = True
        wrapper = getattr(self.server, "protocol", None)
        protocol = getattr(wrapper, "protocol", None)
        if self.server is not None and isinstance(protocol, H2Protocol):
            h2conn = protocol.connection
            pending = list(protocol.streams)
            last = min(pending) - 2 if pending else h2conn.highest_inbound_stream_id
            try:
                h2conn.close_connection(
                    error_code=0, additional_data=reason.encode(), last_stream_id=max(last, 0)
                )
            except h2.exceptions.ProtocolError:
                pass  # h2 has closed the connection already (the client's GOAWAY)
            else:
                await self.server.protocol_send(RawData(data=h2conn.data_to_send()))
                await trio.sleep(CLOSE_LINGER)
        self.scope.cancel()

    def drop(self) -> None:
        """Reset the connection: RST on close, and stop hypercorn serving it."""
        self.dropped = True
        set_linger_zero(self.stream)
        self.scope.cancel()


def peer_key(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The client's address and port: how the ASGI app finds its request's connection."""
    transport = socket_stream(stream)
    if transport is None:
        return None
    try:
        peer = transport.socket.getpeername()
    except OSError:
        return None
    return str(peer[0]), int(peer[1])
