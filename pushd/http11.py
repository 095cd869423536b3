"""pushd's HTTP server: HTTP/1.1 on trio (llhttp parses), serving the frontends' routes.

Why not hypercorn, which the design card names: measured on one core (benchmarks/
run.py, the empty endpoint), hypercorn's trio worker costs about 0.5 CPU-ms per
request before pushd does anything, more than all of pushd's own work for a 1-device
push, and a chat server's request is always the same shape: a small POST on a kept-
alive connection.  llhttp (``httptools``) parses, answers are bytes templates; this
module only moves bytes, applies the timeouts, and shuts down gracefully, which costs a
fraction of that (h11, used first, cost more than everything else in the serving
layer: see :mod:`pushd.http1parse`).  HTTP/2 is not
offered: every supported chat server speaks HTTP/1.1 to its push gateway.

This module listens, accepts and shuts down; one connection's protocol (reading
requests, applying timeouts, answering) is :mod:`pushd.http1conn`, parsing with its
limits :mod:`pushd.http1parse`.

What a client can count on:

- keep-alive (pipelined requests are answered in order), ``Expect: 100-continue``,
  chunked bodies; every answer has a Content-Length;
- a body over its route's limit gets a 413 in the route's own protocol: read and
  dropped first when it is at most :data:`DRAIN_BYTES` over (so the client can read
  the answer instead of meeting a reset), refused unread otherwise;
- malformed HTTP gets a 400, a head over :data:`MAX_HEAD_BYTES` or with more than
  :data:`MAX_HEADERS` fields a 431, then the connection closes;
- once a request's first byte has arrived, its head must be in within ``read_timeout``
  and then its body within ``read_timeout`` (slow-loris guard); an idle kept-alive
  connection is closed after ``keep_alive_timeout``.  These are enforced by one sweeper
  task, not a trio deadline per connection (see :mod:`pushd.http1conn`), so a
  connection is closed up to :data:`SWEEPS_PER_TIMEOUT`-th of the shorter timeout
  (at most :data:`MAX_SWEEP_SECONDS`) after its time is up;
- behind a reverse proxy in ``trusted_proxies``, handlers see the client's address from
  ``X-Forwarded-For`` or ``Forwarded`` (see :mod:`pushd.forwarded`), not the proxy's;
- on shutdown, listeners close at once, idle connections close, and requests in
  flight are answered (with ``Connection: close``) by ``drain_seconds`` from the
  signal: ``on_drain`` is told that deadline first, and the dispatcher ends every
  caller's wait for an upstream there; a handler then has :data:`ANSWER_SECONDS` to
  spool and answer before its connection is closed unanswered.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Awaitable, Callable

import attrs
import trio

from pushd.config.constants import ANSWER_SECONDS
from pushd.frontends.http import Network, in_networks
from pushd.heap import settle
from pushd.http1conn import RECEIVE_BYTES, Connection
from pushd.http1parse import DRAIN_BYTES, MAX_HEAD_BYTES, MAX_HEADERS
from pushd.rawsocket import SocketIO
from pushd.routing import Router

__all__ = [
    "DRAIN_BYTES",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "RECEIVE_BYTES",
    "HttpServer",
    "HttpSettings",
    "ListenError",
]

log = logging.getLogger(__name__)

#: The sweeper looks at every connection this many times per (shorter) timeout...
SWEEPS_PER_TIMEOUT = 8
#: ...and at least this often: how late a timed-out connection may close.
MAX_SWEEP_SECONDS = 1.0
#: ...but no more often than this (a test's 10 ms timeout need not spin the loop).
MIN_SWEEP_SECONDS = 0.005


#: ``(route pattern, route method, status, seconds)`` of one answered request.
Observer = Callable[[str, str, int, float], None]
#: Told the drain deadline (trio's clock) as shutdown begins.
DrainHook = Callable[[float], None]


class ListenError(Exception):
    """The server cannot listen on its address; the message is one line for the admin."""


@attrs.frozen
class HttpSettings:
    """The server's timeouts, and whose forwarding headers it believes; see the module
    docstring."""

    read_timeout: float = 30.0
    keep_alive_timeout: float = 75.0
    drain_seconds: float = 10.0
    #: Reverse proxies (``[server] trusted_proxies``): only from these peers is the
    #: client's address taken from ``X-Forwarded-For`` or ``Forwarded``.
    trusted_proxies: tuple[Network, ...] = ()


class HttpServer:
    """Serves a :class:`~pushd.routing.Router` over HTTP/1.1, optionally with TLS."""

    def __init__(
        self,
        router: Router,
        settings: HttpSettings = HttpSettings(),
        ssl_context: ssl.SSLContext | None = None,
        *,
        observe: Observer | None = None,
        on_drain: DrainHook | None = None,
    ) -> None:
        self.router = router
        self.settings = settings
        self.ssl_context = ssl_context
        #: Called once per answered request (metrics); None costs nothing.
        self.observe = observe
        #: Ends the waits of handlers at the drain deadline (the dispatcher's), so they
        #: answer before their connections close.
        self.on_drain = on_drain
        #: When (trio's clock) requests in flight must be answered; set by shutdown.
        self.drain_deadline: float | None = None
        self.closing = False
        self._connections: set[Connection] = set()
        self._all_closed = trio.Event()

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closed, idle kept-alive ones included (the
        metrics' gauge: with workers it shows how the kernel spread the connections)."""
        return len(self._connections)

    async def serve(
        self,
        host: str,
        port: int,
        shutdown_trigger: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until ``shutdown_trigger`` returns, then shut down.

        ``task_status`` gets the bound URLs (the real port when ``port`` is 0).
        """
        listeners = await self.open_listeners(host, port)
        scheme = "https" if self.ssl_context else "http"
        urls = []
        for listener in listeners:
            address = listener.socket.getsockname()
            shown = f"[{address[0]}]" if ":" in address[0] else address[0]
            urls.append(f"{scheme}://{shown}:{address[1]}")
        async with trio.open_nursery() as connections:
            connections.start_soon(self._sweep, name="pushd http timeouts")
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    self._accept_all, listeners, connections, name="pushd http accept"
                )
                settle()  # start-up is over: see pushd.heap
                task_status.started(urls)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await self._shut_down()
            connections.cancel_scope.cancel()

    async def open_listeners(self, host: str, port: int) -> list[trio.SocketListener]:
        """The listening sockets :meth:`serve` accepts on: the one thing a subclass changes
        (:class:`pushd.reuseport.ReusePortHttpServer`), so serving stays in one place."""
        try:
            return await trio.open_tcp_listeners(port, host=host)
        except OSError as error:  # in use, a privileged port, not this machine's address
            reason = error.strerror or str(error)
            shown = f"[{host}]" if ":" in host else host
            raise ListenError(
                f"cannot listen on {shown}:{port}: {reason[:1].lower()}{reason[1:]}"
            ) from None

    async def _sweep(self) -> None:
        """Close connections that waited past their time (:attr:`Connection.expires_at`).

        One task for all connections instead of a deadline per connection that every
        request moves: see :mod:`pushd.http1conn`.
        """
        settings = self.settings
        shorter = min(settings.read_timeout, settings.keep_alive_timeout)
        interval = min(MAX_SWEEP_SECONDS, max(MIN_SWEEP_SECONDS, shorter / SWEEPS_PER_TIMEOUT))
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for connection in self._connections:
                if connection.expires_at <= now:
                    connection.expire()

    async def _accept_all(
        self, listeners: list[trio.SocketListener], connections: trio.Nursery
    ) -> None:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept, listener, connections)

    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as error:
                    if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS):
                        raise
                    log.error("http: cannot accept connections: %s; retrying", error.strerror)
                    await trio.sleep(0.1)
                    continue
                connections.start_soon(self._handle, stream)

    async def _handle(self, socket_stream: trio.SocketStream) -> None:
        try:
            address = socket_stream.socket.getpeername()
            peer: str | None = address[0] if isinstance(address, tuple) else None
        except OSError:
            peer = None
        stream: trio.abc.Stream = socket_stream
        io: SocketIO | None = None
        if self.ssl_context is not None:
            stream = trio.SSLStream(
                socket_stream, self.ssl_context, server_side=True, https_compatible=True
            )
        else:
            io = SocketIO(socket_stream.socket.fileno())
        trusted = self.settings.trusted_proxies  # looked at once per connection
        connection = Connection(
            self, stream, peer, bool(trusted) and in_networks(peer, trusted), io=io
        )
        self._connections.add(connection)
        try:
            await connection.run()
        except Exception:  # never let one connection take the server down
            log.exception("http: unexpected error on a connection; closed it")
        finally:
            self._connections.discard(connection)
            if not self._connections and self.closing:
                self._all_closed.set()
            await trio.aclose_forcefully(stream)

    async def _shut_down(self) -> None:
        """Close idle connections now; busy ones answer by the drain deadline.

        Closing a busy connection cancels its handler: its caller gets no answer and
        what it was waiting for is neither reported nor spooled.  So the deadline is
        told to :attr:`on_drain` first, which ends the handlers' waits there, and the
        handlers get :data:`ANSWER_SECONDS` more to write the spool and answer; only a
        connection still busy after that (a stalled store) is closed unanswered.
        """
        self.closing = True
        deadline = self.drain_deadline = trio.current_time() + self.settings.drain_seconds
        if self.on_drain is not None:
            self.on_drain(deadline)
        for connection in list(self._connections):
            if connection.idle_scope is not None:
                connection.idle_scope.cancel()
        if not self._connections:
            return
        with trio.move_on_at(deadline + ANSWER_SECONDS):
            await self._all_closed.wait()
        if self._connections:
            log.warning(
                "shutdown: %d requests still unanswered %.0f s after the drain deadline "
                "(drain_seconds = %.0f) were closed without an answer",
                len(self._connections),
                ANSWER_SECONDS,
                self.settings.drain_seconds,
            )
