"""One client connection of :mod:`pushd.http11`'s server: bytes in, h11 events,
requests to the router, answers out in order.

Kept apart from the listening and shutdown side so each stays readable; what a client
can count on is listed in :mod:`pushd.http11`'s docstring.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import unquote

import attrs
import h11
import trio

from pushd.forwarded import forwarded_client
from pushd.frontends.http import Reply, Request
from pushd.requestid import REQUEST_ID, new_request_id
from pushd.routing import Found, Router, error_reply

if TYPE_CHECKING:
    from pushd.http11 import HttpServer

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes asked of the socket per read.
RECEIVE_BYTES: Final = 64 * 1024
#: Request head limit (h11's default): the start line and headers.  A chat server's
#: head is a few hundred bytes; a proxy's forwarding headers add a few dozen.
MAX_HEAD_BYTES: Final = 16 * 1024
#: Header fields a request may carry.  Chat servers send 4 to 10 (Synapse: Host,
#: User-Agent, Content-Type, Content-Length; Zulip's python-requests adds Accept,
#: Accept-Encoding, Connection, Authorization; Mattermost's Go client and Rocket.Chat's
#: Node client are alike) and a reverse proxy adds a handful (X-Forwarded-For, -Proto,
#: -Host, X-Real-IP, Forwarded, Via).  100 is ten times that, and Apache's default
#: ``LimitRequestFields``; thousands of tiny headers fit in 16 KiB and only cost CPU.
MAX_HEADERS: Final = 100
#: A body over its route's limit by at most this much is read and dropped before the
#: 413; bigger ones are refused unread (the connection then closes).
DRAIN_BYTES: Final = 1024 * 1024
#: The route label of a request no route matched (404, 405): one label for all of them,
#: whatever path or method a scanner tries.
UNMATCHED: Final = ("unmatched", "")


class _ClientGone(Exception):
    """The client closed or broke the connection, or timed out: stop serving it."""


@attrs.define(eq=False)
class Connection:
    """One client connection: requests in, answers out, in order."""

    server: HttpServer
    stream: trio.abc.Stream
    #: The address of the socket's other end.
    peer: str | None
    #: Whether ``peer`` is a trusted proxy, whose forwarding headers name the client.
    via_proxy: bool = False
    protocol: h11.Connection = attrs.field(
        factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    )
    #: Set while waiting for the next request on a kept-alive connection: shutdown
    #: cancels it, which closes the connection between requests, never inside one.
    idle_scope: trio.CancelScope | None = None
    #: The route pattern and method the request being answered matched, for metrics
    #: (never the path itself: Mattermost's and Rocket.Chat's hold secrets).
    route: tuple[str, str] = ("", "")

    async def _receive(self) -> bytes:
        """The next bytes from the client (empty at its end of stream)."""
        try:
            data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise _ClientGone from None
        return data if isinstance(data, bytes) else bytes(data)

    async def _next_event(self) -> object:
        """The next h11 event (or h11.PAUSED), reading from the socket as needed."""
        while True:
            event = self.protocol.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.protocol.receive_data(await self._receive())

    async def _read_head(self) -> h11.Request | None:
        """The next request's head, or None when the connection is done (closed by the
        client, idle past ``keep_alive_timeout``, or the server is shutting down).

        Two clocks: an idle kept-alive connection may wait ``keep_alive_timeout`` for a
        request, but once its first byte is in (or was read with the previous request),
        the whole head must follow within ``read_timeout``, or a client trickling a
        head byte by byte would hold its task for the longer of the two.
        """
        settings = self.server.settings
        buffered = len(self.protocol.trailing_data[0])  # pipelined: already started
        received = buffered
        event: object = None
        with trio.move_on_after(
            settings.read_timeout if buffered else settings.keep_alive_timeout
        ) as waiting:
            self.idle_scope = waiting
            if self.server.closing:
                waiting.cancel()
            while (event := self.protocol.next_event()) is h11.NEED_DATA:
                data = await self._receive()
                if not received:
                    waiting.deadline = trio.current_time() + settings.read_timeout
                received += len(data)
                self.protocol.receive_data(data)
        self.idle_scope = None
        if waiting.cancelled_caught or not isinstance(event, h11.Request):
            return None
        self._check_head(event, received)
        return event

    def _check_head(self, head: h11.Request, received: int) -> None:
        """Hold ``head`` to :data:`MAX_HEADERS` and :data:`MAX_HEAD_BYTES`.

        h11 bounds a head only while it is incomplete (``max_incomplete_event_size``):
        one that arrives whole in one read is parsed at any size.  Both checks are
        cheap: h11's header list knows its length, and the head's size is the bytes it
        was parsed from (``received``) less what h11 left unparsed, worked out only when
        ``received`` alone is over the limit.
        """
        if len(head.headers) > MAX_HEADERS or (
            received > MAX_HEAD_BYTES
            and received - len(self.protocol.trailing_data[0]) > MAX_HEAD_BYTES
        ):
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)

    async def _send(self, *events: h11.Event) -> None:
        """Write ``events`` in one go; a client that stops reading for ``read_timeout``
        is dropped rather than holding its task forever."""
        data = b"".join(self.protocol.send(event) or b"" for event in events)
        with trio.move_on_after(self.server.settings.read_timeout) as writing:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                raise _ClientGone from None
        if writing.cancelled_caught:
            raise _ClientGone

    async def run(self) -> None:
        try:
            while not self.server.closing:
                if not await self._serve_one():
                    return
                if self.protocol.our_state is h11.MUST_CLOSE or self.server.closing:
                    return
                try:
                    self.protocol.start_next_cycle()
                except h11.LocalProtocolError:  # the request's body was not read
                    return
        except _ClientGone:
            return
        except h11.RemoteProtocolError as error:
            await self._refuse_malformed(error)

    async def _refuse_malformed(self, error: h11.RemoteProtocolError) -> None:
        if self.protocol.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = error.error_status_hint
        message = (
            f"the request head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header fields"
            if status == 431
            else "malformed HTTP request"
        )
        reply = error_reply(status, "bad_request", message)
        headers = self._headers(reply, close=True)
        with contextlib.suppress(_ClientGone, h11.LocalProtocolError):
            await self._send(
                h11.Response(status_code=status, headers=headers),
                h11.Data(data=reply.body),
                h11.EndOfMessage(),
            )

    async def _serve_one(self) -> bool:
        """Read one request and answer it; False when the connection is done."""
        event = await self._read_head()
        if event is None:
            return False
        started = time.perf_counter()
        reply = await self._answer(event)
        observe = self.server.observe
        if observe is not None:
            observe(*self.route, reply.status, time.perf_counter() - started)
        head = h11.Response(
            status_code=reply.status, headers=self._headers(reply, self.server.closing)
        )
        body = b"" if event.method == b"HEAD" else reply.body
        await self._send(head, h11.Data(data=body), h11.EndOfMessage())
        return True

    def _headers(self, reply: Reply, close: bool) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", reply.content_type.encode("latin-1")),
            (b"content-length", str(len(reply.body)).encode("latin-1")),
        ]
        headers += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in reply.headers]
        if close:
            headers.append((b"connection", b"close"))
        return headers

    async def _answer(self, head: h11.Request) -> Reply:
        method = head.method.decode("ascii")
        path = unquote(head.target.decode("latin-1").partition("?")[0])
        found = self.server.router.find(method, path)
        if isinstance(found, Reply):
            self.route = UNMATCHED
            await self._reading(self._drain(DRAIN_BYTES))  # a body nobody wants: drop it
            return found
        self.route = (found.route.path, found.route.method)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
        body = await self._reading(self._body(found, headers))
        if body is None:
            return Router.too_large(found)
        request = Request(
            method=method,
            path=path,
            headers=headers,
            body=body,
            params=found.params,
            client=(
                forwarded_client(head.headers, self.peer, self.server.settings.trusted_proxies)
                if self.via_proxy
                else self.peer
            ),
            request_id=new_request_id(),
        )
        # The handler runs without a timeout: each protocol bounds its own waiting.
        # Tasks it starts (the dispatcher's attempts) inherit the request id.
        current = REQUEST_ID.set(request.request_id)
        try:
            reply = await Router.call(found, request)
        finally:
            REQUEST_ID.reset(current)
        log.debug(
            "%s: %s %s from %s (peer %s): %d",
            request.request_id,
            method,
            found.route.name,  # not the path: Mattermost's and Rocket.Chat's hold secrets
            request.client or "-",
            self.peer or "-",
            reply.status,
        )
        return reply

    async def _reading(self, reading: Awaitable[T]) -> T:
        """Await ``reading`` (a body read) within ``read_timeout``: a slow-loris guard."""
        with trio.move_on_after(self.server.settings.read_timeout):
            return await reading
        raise _ClientGone

    async def _body(self, found: Found, headers: dict[str, str]) -> bytes | None:
        """The request body, or None if it is over the route's limit."""
        limit = found.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            if int(length) <= limit + DRAIN_BYTES:
                await self._drain(int(length))
            return None  # an unread rest makes start_next_cycle fail: the connection closes
        await self._continue()
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    await self._drain(limit + DRAIN_BYTES - size)
                    return None
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise _ClientGone

    async def _continue(self) -> None:
        if self.protocol.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))

    async def _drain(self, budget: int) -> None:
        """Read and drop the rest of the body, up to ``budget`` bytes.

        A client waiting for ``100 Continue`` has sent none of it: there is nothing to
        read, and the connection closes after the answer.
        """
        if (
            self.protocol.their_state is not h11.SEND_BODY
            or self.protocol.they_are_waiting_for_100_continue
        ):
            return
        while budget >= 0:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                budget -= len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise _ClientGone
