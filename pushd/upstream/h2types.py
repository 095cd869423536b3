"""The values an HTTP/2 connection and its owners share: streams, results, the peer.

Split from :mod:`pushd.upstream.h2conn` so that the pool, the batches and the providers'
clients can name a :class:`Stream` or a :class:`Peer` without the connection's machinery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import attrs
from hpack import HeaderTuple

#: One request header field; hpack's never-indexed tuple marks secrets.
Header = HeaderTuple | tuple[bytes, bytes]
#: Builds the request for a batch index: (encoded header fields, body).
RequestBuilder = Callable[[int], tuple[bytes, bytes]]


# --- results --------------------------------------------------------------------------


@attrs.frozen
class Unprocessed:
    """The server did not act on the request (GOAWAY above it, REFUSED_STREAM, never sent)."""

    reason: str
    #: The reason in the debug data of the GOAWAY that left it unprocessed, if that was
    #: how: APNs names a refused credential there as it would in an answer, and the
    #: owner treats it so (:meth:`~pushd.upstream.h2batch.Batch.goaway_outcome`).
    goaway: str | None = None


@attrs.frozen
class Lost:
    """The connection failed after the request was sent: it may or may not be delivered."""

    reason: str


#: How a stream ended without an answer.
Failure = Unprocessed | Lost


class StreamOwner(Protocol):
    """Whoever opened a stream, told how it ended: exactly one call per stream.

    The calls come from the connection's reader (or from whoever fails the connection)
    with nothing awaited, so an owner must act at once and never block; it may open new
    streams from within a call.
    """

    def stream_answered(self, stream: Stream) -> None:
        """The server answered: ``status``, ``upstream_id``, ``retry_after`` and
        ``response_body()`` are set."""

    def stream_failed(self, stream: Stream, failure: Failure) -> None:
        """The stream ended without an answer."""


# --- one request ----------------------------------------------------------------------


#: The most of one response body kept: APNs' and FCM's answers are a few hundred bytes
#: (an error's JSON).  A server that streamed a body without end had all of it kept
#: until the request timed out (about 20 MiB a second in a probe, 10 s a request, per
#: request in flight), in the memory every app shares; now the stream is cut there and
#: answered by its status.
MAX_RESPONSE_BODY = 64 * 1024


class Stream:
    """One request on the wire: what its owner needs back, filled in by the reader."""

    __slots__ = (
        "body",
        "chunks",
        "end_sent",
        "index",
        "owner",
        "received",
        "retry_after",
        "status",
        "stream_id",
        "unacked",
        "upstream_id",
    )

    def __init__(self, stream_id: int, owner: StreamOwner, index: int) -> None:
        self.stream_id = stream_id
        self.owner = owner
        #: The owner's name for this request (the token's position in its batch).
        self.index = index
        #: Body bytes still to send when the send window was too small.
        self.body = b""
        self.end_sent = True
        self.status = 0
        self.upstream_id: str | None = None
        self.retry_after: str | None = None
        #: Response body pieces; None until one arrives (a 200 has no body).
        self.chunks: list[bytes] | None = None
        #: Response body bytes kept in :attr:`chunks` (at most MAX_RESPONSE_BODY).
        self.received = 0
        #: Body bytes received and not yet credited to the stream's window.
        self.unacked = 0

    def response_body(self) -> bytes:
        """The response body received so far (complete once answered)."""
        return b"".join(self.chunks) if self.chunks else b""


@attrs.frozen
class Peer:
    """What a connection needs to know about the service at the other end."""

    #: The service's name in failure reasons ("closed by APNs").
    name: str
    #: Logger the connection's lines go to (each provider has its own).
    log: logging.Logger
    #: Response header holding the server's id for the message (``apns-id``), if any.
    id_header: bytes | None = None
    #: Streams assumed when the server's SETTINGS do not limit them (h2 would assume
    #: 2**32); None takes h2's figure, as APNs always sends the setting.
    default_streams: int | None = None
    #: Level of the pool's "connected" and "closed" lines: FCM's tests and operators
    #: expect no INFO lines from its client, APNs has always logged connections.
    connect_level: int = logging.INFO
    #: Given an answer's status and body (never for a 200), the reason it gives for
    #: moving to another connection (APNs' ``Shutdown``), or None: the connection then
    #: takes no new requests and closes once those in flight have ended.
    retiring: Callable[[int, bytes], str | None] | None = None


class ConnectionFailed(Exception):
    """Opening a connection failed (TLS, ALPN, or no SETTINGS from the server)."""
