"""One client connection of :mod:`pushd.http11`'s server: bytes in, requests to the
router, answers out in order.

Kept apart from the listening and shutdown side so each stays readable; what a client
can count on is listed in :mod:`pushd.http11`'s docstring, and parsing with its limits
is :mod:`pushd.http1parse`.

What a request costs here is what every push pays, so the common case (a small POST
on a kept-alive connection, whole in one read) takes one read, one parse, one handler
call and one write: no task, no cancel scope and no trio deadline of its own.  The
connection's one cancel scope has no deadline: the connection keeps the time it may
wait until in a plain float (:attr:`Connection.expires_at`, moved with what it waits
for: an idle client ``keep_alive_timeout``; a head or body under way, or a client
reading an answer, ``read_timeout``; the handler: none), and the server's sweeper
(:mod:`pushd.http11`) cancels the scopes of connections past it, a few times per
timeout.  Moving a trio deadline costs a few microseconds (a context manager and the
deadline heap), and a request moved it five times; a float costs nothing.  When it
expires the connection closes, which is what each of those timeouts means.  Answers
are written from a bytes template in one ``send_all``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import attrs
import trio

from pushd.forwarded import forwarded_client
from pushd.frontends.http import Reply, Request
from pushd.http1parse import MAX_HEAD_BYTES, MAX_HEADERS, Message, RequestReader
from pushd.rawsocket import SocketIO
from pushd.requestid import REQUEST_ID, new_request_id
from pushd.routing import Router, error_reply

if TYPE_CHECKING:
    from pushd.http11 import HttpServer

log = logging.getLogger(__name__)

#: Bytes asked of the socket per read.
RECEIVE_BYTES: Final = 64 * 1024
#: Written when a client that sent ``Expect: 100-continue`` may send its body.
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The status line of every status pushd may answer, with its standard reason phrase.
STATUS_LINES: Final = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode("latin-1")
    for status in HTTPStatus
}
_CLOSE: Final = b"connection: close\r\n"
#: The route label of a request no route matched (404, 405): one label for all of them,
#: whatever path or method a scanner tries.
UNMATCHED: Final = ("unmatched", "")
_UNSAFE: Final = ("\r", "\n", "\0")


class _ClientGone(Exception):
    """The client closed or broke the connection, or stopped reading: stop serving it."""


def head_bytes(reply: Reply, close: bool) -> bytes:
    """The answer's status line and headers, ending with the blank line."""
    status = STATUS_LINES.get(reply.status) or f"HTTP/1.1 {reply.status} \r\n".encode()
    head = b"%scontent-type: %s\r\ncontent-length: %d\r\n" % (
        status,
        reply.content_type.encode("latin-1"),
        len(reply.body),
    )
    for name, value in reply.headers:
        if any(c in name or c in value for c in _UNSAFE):  # never split a response
            log.error("http: dropped a reply header with a line break in it: %s", name)
            continue
        head += b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
    return head + (_CLOSE + b"\r\n" if close else b"\r\n")


@attrs.define(eq=False)
class Connection:
    """One client connection: requests in, answers out, in order."""

    server: HttpServer
    stream: trio.abc.Stream
    #: The address of the socket's other end.
    peer: str | None
    #: Whether ``peer`` is a trusted proxy, whose forwarding headers name the client.
    via_proxy: bool = False
    #: A plain TCP connection's socket, read and written directly (:mod:`pushd.rawsocket`);
    #: None for TLS, which goes through ``stream``.
    io: SocketIO | None = None
    reader: RequestReader = attrs.field(init=False)
    #: Set while waiting for a request (or the rest of its head): shutdown cancels it,
    #: which closes the connection between requests, never while one is answered.
    idle_scope: trio.CancelScope | None = None
    #: When (trio's clock) the connection is closed if it is still waiting: the
    #: server's sweeper compares it; ``inf`` while a handler runs.
    expires_at: float = math.inf
    _scope: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)

    def __attrs_post_init__(self) -> None:
        self.reader = RequestReader(self.server)

    def expire(self) -> None:
        """Close the connection: it waited past :attr:`expires_at` (the sweeper)."""
        self._scope.cancel()

    async def run(self) -> None:
        """Serve requests until the client, a timeout, an error or shutdown ends it."""
        with self._scope:
            try:
                io = self.io
                while (message := await self._next_message()) is not None:
                    if not await self._serve(message):
                        return
                    if io is not None:
                        await io.turn()
            except _ClientGone:
                return

    async def _receive(self) -> bytes:
        """The next bytes from the client; :class:`_ClientGone` at its end of stream."""
        try:
            io = self.io
            data = await (
                self.stream.receive_some(RECEIVE_BYTES) if io is None else io.receive(RECEIVE_BYTES)
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClientGone from None
        if not data:
            raise _ClientGone
        return data if isinstance(data, bytes) else bytes(data)

    async def _next_message(self) -> Message | None:
        """The next request to answer, reading as needed; None when the connection is
        done (and a malformed request has been answered).

        Two clocks: an idle kept-alive connection may wait ``keep_alive_timeout`` for a
        request, but once its first byte is in (or was read with the previous request),
        the whole head must follow within ``read_timeout``, and then the body within
        ``read_timeout`` of the head.
        """
        reader = self.reader
        settings = self.server.settings
        if reader.ready:
            return reader.ready.popleft()
        if reader.stopped:
            if reader.error is not None:
                await self._refuse_malformed(reader.error)
            return None
        if self.server.closing:
            return None
        scope = self._scope
        began = reader.in_message
        wait = settings.read_timeout if began else settings.keep_alive_timeout
        self.expires_at = trio.current_time() + wait
        heads = reader.heads
        while not reader.ready and not reader.stopped:
            waiting = reader.waiting_continue
            if waiting is not None:
                reader.waiting_continue = None
                await self._write(CONTINUE)
            self.idle_scope = None if reader.reading_body else scope
            data = await self._receive()
            self.idle_scope = None
            reader.feed(data)
            # The first byte starts the head's clock, a head in starts the body's.
            if not began or reader.heads != heads:
                began = True
                heads = reader.heads
                self.expires_at = trio.current_time() + settings.read_timeout
        return await self._next_message()

    async def _write(self, data: bytes) -> None:
        """Write ``data``; a client that stops reading for ``read_timeout`` is dropped."""
        self.expires_at = trio.current_time() + self.server.settings.read_timeout
        try:
            io = self.io
            await (self.stream.send_all(data) if io is None else io.send_all(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClientGone from None

    async def _serve(self, message: Message) -> bool:
        """Answer ``message``; False when the connection is to close after it."""
        self.expires_at = math.inf  # each protocol bounds its own waiting
        started = time.perf_counter()
        reply = await self._answer(message)
        observe = self.server.observe
        if observe is not None:
            found = message.found
            # The route pattern and method, never the path: Mattermost's and
            # Rocket.Chat's hold secrets.
            route = (
                UNMATCHED if isinstance(found, Reply) else (found.route.path, found.route.method)
            )
            observe(*route, reply.status, time.perf_counter() - started)
        close = not message.keep_alive or self.server.closing
        answer = head_bytes(reply, close)
        if message.method != "HEAD":
            answer += reply.body
        await self._write(answer)
        return not close

    async def _refuse_malformed(self, status: int) -> None:
        message = (
            f"the request head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header fields"
            if status == 431
            else "malformed HTTP request"
        )
        reply = error_reply(status, "bad_request", message)
        observe = self.server.observe
        if observe is not None:  # a scanner's junk is traffic too: count it, unrouted
            observe(*UNMATCHED, status, 0.0)
        with contextlib.suppress(_ClientGone):
            await self._write(head_bytes(reply, close=True) + reply.body)

    async def _answer(self, message: Message) -> Reply:
        found = message.found
        if isinstance(found, Reply):
            return found
        if message.too_large:
            return Router.too_large(found)
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in message.headers
        }
        request = Request(
            method=message.method,
            path=message.path,
            headers=headers,
            body=b"".join(message.body),
            params=found.params,
            client=(
                forwarded_client(message.headers, self.peer, self.server.settings.trusted_proxies)
                if self.via_proxy
                else self.peer
            ),
            request_id=new_request_id(),
        )
        # Tasks the handler starts (the dispatcher's attempts) inherit the request id.
        current = REQUEST_ID.set(request.request_id)
        try:
            reply = await Router.call(found, request)
        finally:
            REQUEST_ID.reset(current)
        log.debug(
            "%s: %s %s from %s (peer %s): %d",
            request.request_id,
            message.method,
            found.route.name,  # not the path: Mattermost's and Rocket.Chat's hold secrets
            request.client or "-",
            self.peer or "-",
            reply.status,
        )
        return reply
