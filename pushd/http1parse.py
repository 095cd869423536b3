"""Requests out of a connection's bytes: llhttp (through ``httptools``) plus pushd's limits.

Why llhttp and not h11, which pushd used first: measured on this machine, h11 costs
about 45-50 µs to parse one small POST and frame its answer, ``httptools`` about 2 µs,
and the serving layer's cost per request is what every chat server's push pays
(``benchmarks/``, the empty endpoint and its ratio to the floor).  llhttp is Node's
parser, strict by default, and what uvicorn uses.

llhttp parses and checks the syntax; this module adds what h11 did for pushd and
llhttp does not: a ``Host`` header on HTTP/1.1 requests, a bound on the head's size and
field count, and the route's body limit (see :mod:`pushd.http11` for what a client can
count on).  It does no I/O: :class:`RequestReader` is fed bytes and queues
:class:`Message` values for :mod:`pushd.http1conn` to answer, in order.

A bound on the head holds however the head arrives.  llhttp keeps a header it has not
seen the end of in memory and calls back only when it is whole, so the reader counts
two ways, both lower bounds of the head's true size: the pieces called back (the
target, every header with its separators) and, while a head spans reads, the reads
fed entirely inside it.  Memory held for a head is thus at most the limit plus one
read.
"""

from __future__ import annotations

import collections
import re
from typing import Final, Protocol
from urllib.parse import unquote

import attrs
import httptools

from pushd.frontends.http import Reply
from pushd.routing import Found, Router

#: Request head limit (as h11's default was): the start line and headers.  A chat
#: server's head is a few hundred bytes; a proxy's forwarding headers add a few dozen.
MAX_HEAD_BYTES: Final = 16 * 1024
#: Header fields a request may carry.  Chat servers send 4 to 10 (Synapse: Host,
#: User-Agent, Content-Type, Content-Length; Zulip's python-requests adds Accept,
#: Accept-Encoding, Connection, Authorization; Mattermost's Go client and Rocket.Chat's
#: Node client are alike) and a reverse proxy adds a handful (X-Forwarded-For, -Proto,
#: -Host, X-Real-IP, Forwarded, Via).  100 is ten times that, and Apache's default
#: ``LimitRequestFields``; thousands of tiny headers fit in 16 KiB and only cost CPU.
MAX_HEADERS: Final = 100
#: A body over its route's limit by at most this much is read and dropped before the
#: 413; bigger ones are refused unread (the connection then closes).  A body nobody
#: wants (a 404 or 405) is dropped the same way, within this budget.
DRAIN_BYTES: Final = 1024 * 1024
#: Bytes a header line adds to its name and value: ``": "`` and CRLF.
_HEADER_OVERHEAD: Final = 4
#: The request line's bytes besides the target: the longest method pushd serves,
#: spaces, ``HTTP/1.1`` and CRLF.
_REQUEST_LINE_OVERHEAD: Final = 18
_EXPECT_CONTINUE: Final = b"100-continue"
#: A run of slashes in a path, read as one, as nginx does by default (``merge_slashes``):
#: chat servers join a configured URL and a path by concatenation (Zulip's
#: ``register_server``, Rocket.Chat's gateway client), so a URL set with a trailing
#: slash asks for ``//api/...``, which the services they were written for serve.
_SLASHES: Final = re.compile("/{2,}")
#: llhttp's ``HPE_PAUSED_UPGRADE``: the request asked for another protocol; what was
#: parsed is served, then the connection closes.
_Upgrade = httptools.HttpParserUpgrade


class RouterSource(Protocol):
    """Where the reader finds the routes: the server, whose router a reload replaces
    (looked up per request, so a kept-alive connection sees the new routes)."""

    router: Router


class HeadTooLarge(Exception):
    """The request head is over :data:`MAX_HEAD_BYTES` or :data:`MAX_HEADERS`: 431."""


class _Refuse(Exception):
    """Stop parsing: the current message is answered as it is and the connection closes."""


@attrs.define(eq=False)
class Message:
    """One request as parsed: its head, its route (or the answer instead), its body."""

    method: str
    #: The path, percent-decoded, without the query.
    path: str
    #: Header fields in order, names in lower case (as :mod:`pushd.forwarded` reads them).
    headers: list[tuple[bytes, bytes]]
    #: The route and its body limit, or the 404/405 to answer (the body is dropped).
    found: Found | Reply
    body: list[bytes] = attrs.Factory(list)
    size: int = 0
    #: Over the route's limit: answered 413 (the body is dropped, not kept).
    too_large: bool = False
    #: The client waits for ``100 Continue`` before it sends the body.
    expect_continue: bool = False
    #: The body was read to its end (False for a message answered before its body).
    complete: bool = False
    #: The client lets the connection carry another request after this one.
    keep_alive: bool = False

    @property
    def accepted(self) -> bool:
        """Whether the body is wanted: a route was found and the body is within its limit."""
        return isinstance(self.found, Found) and not self.too_large

    @property
    def budget(self) -> int:
        """Bytes of body read before the message is refused unread."""
        if isinstance(self.found, Found):
            return self.found.max_body_bytes + DRAIN_BYTES
        return DRAIN_BYTES


class RequestReader:
    """Feeds a connection's bytes to llhttp and queues the requests in order.

    After :meth:`feed`, :attr:`ready` holds the messages to answer (in order; the last
    may be answered before its body, see :attr:`Message.complete`), :attr:`error` the
    status of a malformed request (answered after the ready ones, then the connection
    closes) and :attr:`waiting_continue` a message whose client waits for
    ``100 Continue``.  Once a message is refused or an error is found, nothing more is
    parsed (:attr:`stopped`).
    """

    def __init__(self, source: RouterSource) -> None:
        self.source = source
        self._parser = httptools.HttpRequestParser(self)
        self.ready: collections.deque[Message] = collections.deque()
        #: 400 (malformed) or 431 (head too large); None while the bytes make sense.
        self.error: int | None = None
        self.stopped = False
        #: Heads parsed so far: the connection restarts the body's clock on each one.
        self.heads = 0
        self.waiting_continue: Message | None = None
        self._current: Message | None = None
        self._in_head = False
        self._target: list[bytes] = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._spanning_bytes = 0
        #: Whether a request began during the current :meth:`feed`.
        self._begun = False

    @property
    def in_message(self) -> bool:
        """Whether a request has begun and is not yet queued (its head or body pending)."""
        return self._in_head or self._current is not None

    @property
    def reading_body(self) -> bool:
        """Whether a request's head is in and its body is still being read."""
        return self._current is not None

    def feed(self, data: bytes) -> None:
        """Parse ``data``; see the class docstring for what it leaves."""
        if self.stopped:
            return
        spanning = self._in_head
        self._begun = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            self._stop(error.__context__)
        except _Upgrade:
            self.stopped = True  # what was parsed is answered, then the connection closes
            if self.ready:
                self.ready[-1].keep_alive = False
        except httptools.HttpParserError:
            self._stop(None)
        else:
            # Only a head that was under way before this read and is still open after
            # it spanned all of it; one begun in this read (after pipelined requests)
            # holds only its tail, which the next reads' count bounds.
            if self._in_head and spanning and not self._begun:
                self._spanning_bytes += len(data)
                if self._spanning_bytes > MAX_HEAD_BYTES:
                    self._stop(HeadTooLarge())

    def _stop(self, reason: BaseException | None) -> None:
        self.stopped = True
        self.waiting_continue = None
        if isinstance(reason, _Refuse):
            return
        self.error = 431 if isinstance(reason, HeadTooLarge) else 400

    # llhttp's callbacks (httptools calls them during feed_data) ---------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._begun = True
        self._target = []
        self._fields = []
        self._head_bytes = _REQUEST_LINE_OVERHEAD
        self._spanning_bytes = 0

    def on_url(self, piece: bytes) -> None:
        self._target.append(piece)
        self._count(len(piece))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name.lower(), value.strip(b" \t")))
        if len(self._fields) > MAX_HEADERS:
            raise HeadTooLarge
        self._count(len(name) + len(value) + _HEADER_OVERHEAD)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.heads += 1
        parser = self._parser
        hosts = 0
        expect = length = None
        for name, value in self._fields:
            if name == b"host":
                hosts += 1
            elif name == b"expect":
                expect = value
            elif name == b"content-length":
                length = value
        http10 = parser.get_http_version() == "1.0"
        if hosts > 1 or (hosts == 0 and not http10):
            raise ValueError("a request needs exactly one Host header")  # 400
        method = parser.get_method().decode("ascii")
        target = b"".join(self._target).decode("latin-1")
        path = unquote(target.partition("?")[0])
        if "//" in path:
            path = _SLASHES.sub("/", path)
        message = Message(method, path, self._fields, self.source.router.find(method, path))
        # HTTP/1.0 is answered and closed, as h11 did: no client of pushd's speaks it.
        message.keep_alive = not http10 and parser.should_keep_alive()
        self._current = message
        if isinstance(message.found, Found) and length is not None:
            # llhttp has checked it is all digits
            message.too_large = int(length) > message.found.max_body_bytes
            if int(length) > message.budget:
                self._refuse(message)
        if expect is not None and expect.lower() == _EXPECT_CONTINUE:
            message.expect_continue = True
            if not message.accepted:
                self._refuse(message)  # the client sends no body: answer, then close
            else:
                self.waiting_continue = message

    def on_body(self, data: bytes) -> None:
        message = self._current
        assert message is not None
        self.waiting_continue = None
        message.size += len(data)
        if message.accepted:
            if isinstance(message.found, Found) and message.size > message.found.max_body_bytes:
                message.too_large = True
                message.body = []
            else:
                message.body.append(data)
        if message.size > message.budget:
            self._refuse(message)

    def on_message_complete(self) -> None:
        message = self._current
        assert message is not None
        self._current = None
        self.waiting_continue = None
        message.complete = True
        message.keep_alive = message.keep_alive and self._parser.should_keep_alive()
        self.ready.append(message)

    def _refuse(self, message: Message) -> None:
        """Answer ``message`` before its body; the connection closes after it."""
        message.keep_alive = False
        self._current = None
        self.ready.append(message)
        raise _Refuse
