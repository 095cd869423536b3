"""One long-lived HTTP/2 connection to a push service: h2 state, a reader, a writer, a pinger.

Provider-neutral: APNs and FCM both take one POST per device over long-lived HTTP/2
connections, and differ only in what a request carries and how an answer is read, which
is the owners' business (:mod:`pushd.upstream.h2pool`).  What the connection needs to
know of its peer is a :class:`Peer`: a name for log lines and failure reasons, the
response header that carries a message id, and how many streams to assume.

The pool (:mod:`pushd.upstream.h2pool`) decides *which* connection a request uses
and reserves a stream slot on it; this module runs the protocol.  Three tasks per
connection and nothing per request:

* the **reader** feeds received bytes to h2 and hands each event to the waiting request;
* the **writer** sends whatever h2 has queued, so requests that arrive while a write is in
  progress go out together in the next one (one ``send_all`` for many requests);
* the **pinger** sends a PING only after :data:`PING_INTERVAL` of silence and drops the
  connection if no ACK arrives within :data:`PING_TIMEOUT`.  Healthy idle connections are
  never closed: Apple wants them kept for hours (unlike aioapns' 10 s idle close), and
  for FCM a new connection costs a TLS handshake the next push would wait for.

Requests are opened in groups (:meth:`PoolConnection.open_streams`: one batch's requests
that share every header but ``:path``), and nothing waits per request: the reader tells
each stream's :class:`StreamOwner` how it ended, which is exactly one of an answer,
:class:`Unprocessed` (the server certainly did not act on it: safe to resend elsewhere) or
:class:`Lost` (it may have been delivered: report, do not resend).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio
from h2.config import H2Configuration
from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from h2.stream import StreamClosedBy, StreamInputs
from hpack import HeaderTuple

from pushd import jsonutil
from pushd.upstream.hpack import HeaderDecoder, HeaderEncoder, encode_fields

#: One request header field; hpack's never-indexed tuple marks secrets.
Header = HeaderTuple | tuple[bytes, bytes]
#: Builds the request for a batch index: (encoded header fields, body).
RequestBuilder = Callable[[int], tuple[bytes, bytes]]


#: Send a PING after this many seconds without any frame from the server.
PING_INTERVAL = 60.0
#: Drop the connection if the PING ACK takes longer than this (seconds).
PING_TIMEOUT = 10.0
#: Our receive windows.  Answers are tiny (FCM's JSON bodies too), so these only have to
#: be big enough that flow control never throttles answers; acknowledging data keeps
#: them open.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
#: SETTINGS_MAX_CONCURRENT_STREAMS we advertise.  The server opens no streams (push is off),
#: but not 0: h2 checks this limit whenever HEADERS arrive for a stream it no longer
#: knows, which is what an answer that crossed our RST_STREAM looks like once the closed
#: stream was pruned.  With 0 that check kills the connection; with 1 it passes and h2
#: answers the stray frame with RST_STREAM, as for any stream closed by reset.
INBOUND_STREAMS = 1
#: Bytes asked of the TLS stream per read.
READ_SIZE = 1 << 16
#: Stop opening streams past this id and let the pool replace the connection (ids are
#: 31-bit and odd; leave room for the streams already reserved).
STREAM_ID_LIMIT = (1 << 31) - 1 - 2 * 100_000
#: Drop h2's closed stream records once they outnumber open streams by this much.
PRUNE_SLACK = 256

#: Frame types and flags (RFC 9113 §6) written by :meth:`_H2.send_request`.
_DATA = 0x0
_HEADERS = 0x1
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
#: A frame header: 24-bit length and 8-bit type packed in one word, flags, stream id.
_FRAME_HEADER = struct.Struct(">LBL")
_POST = b"POST"

_H2_CONFIG = H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)


# --- results --------------------------------------------------------------------------


@attrs.frozen
class Unprocessed:
    """The server did not act on the request (GOAWAY above it, REFUSED_STREAM, never sent)."""

    reason: str


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


# --- h2 adjustments -------------------------------------------------------------------


class _DrainingStateMachine(H2ConnectionStateMachine):
    """h2's connection state machine, except that a received GOAWAY keeps it open.

    Stock h2 moves to CLOSED on GOAWAY and then rejects every later frame, including
    the answers to streams at or below ``last_stream_id`` that the server promises to finish.
    We still never open a new stream after GOAWAY; that rule lives in
    :attr:`PoolConnection.accepting`.
    """

    _transitions = {
        **H2ConnectionStateMachine._transitions,
        (ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY): (
            None,
            ConnectionState.CLIENT_OPEN,
        ),
    }


class _ResetStreams(dict[int, "StreamClosedBy | None"]):
    """h2's record of closed streams, keeping only those closed by RST_STREAM.

    h2 remembers how each of the last 65,536 streams of a connection closed, to answer
    a late frame on one: a stream closed by a reset gets a RST_STREAM back, any other
    is a connection error.  An entry is about 75 bytes, so a busy pool carried about
    10 MB of them, most for streams that ended normally, whose late frames are a
    connection error with or without the entry.  Keeping only resets gives the same
    answers; they are rare (timeouts, cancellations) and stay bounded.
    """

    def __setitem__(self, stream_id: int, closed_by: StreamClosedBy | None) -> None:
        if closed_by in _RESET:
            if len(self) >= H2Connection.MAX_CLOSED_STREAMS:
                del self[next(iter(self))]
            super().__setitem__(stream_id, closed_by)


_RESET = (StreamClosedBy.SEND_RST_STREAM, StreamClosedBy.RECV_RST_STREAM)


class _H2(H2Connection):
    """h2 with O(1) stream accounting and a lean path for opening a request.

    h2 counts open streams by scanning all of them on every ``send_headers`` (8.6 % of
    Sygnal's APNs CPU, protocol notes §3.8), which is quadratic with 1000 streams in
    flight.  We already count our streams exactly, so h2 uses that count, and closed
    stream records are pruned in batches through the base implementation.

    :meth:`send_request` replaces ``send_headers`` + ``send_data`` for a new request: the
    stock path re-validates and re-encodes every header name to bytes, scans the headers
    for the method and authority, and builds, flags and serialises hyperframe objects,
    which together cost more than everything else per request.  Ours does the same
    state transitions and window accounting and writes the frames' nine-byte headers
    directly.  ``tests/test_apns_connection.py`` checks that the bytes and the stream
    state equal stock h2's, so an h2 upgrade that changes the internals used here fails
    there first.
    """

    def __init__(self) -> None:
        super().__init__(config=_H2_CONFIG)
        self._closed_streams = _ResetStreams()
        self.state_machine = _DrainingStateMachine()
        # Static-table literals only, cached per field: see pushd.upstream.hpack.
        # h2 only calls encode() and sets header_table_size, which HeaderEncoder has.
        self._encoder = HeaderEncoder()
        self.encoder = self._encoder  # type: ignore[assignment]
        # Same contract as hpack's Decoder, a third of its CPU: see HeaderDecoder.
        self.decoder = HeaderDecoder(self.decoder.max_header_list_size)  # type: ignore[assignment]
        self.open_count = 0

    @property
    def open_outbound_streams(self) -> int:
        return self.open_count

    def prune_closed_streams(self) -> None:
        """Let h2 forget closed streams (its counting scan does that as a side effect)."""
        _ = super().open_outbound_streams

    def send_request(self, headers: list[Header], body: bytes) -> tuple[int, int]:
        """Open the next stream with ``headers`` and as much of ``body`` as the windows allow.

        Returns ``(stream id, body bytes sent)``; the stream is half-closed (END_STREAM
        sent) when all of ``body`` went out.  Raises :class:`H2Error` as ``send_headers``
        does (no stream id left, too many streams, connection closed); nothing is queued
        and no stream exists then.
        """
        return self.send_fields(encode_fields(headers), body)

    def send_fields(self, fields: bytes, body: bytes) -> tuple[int, int]:
        """:meth:`send_request` for headers already encoded (:func:`encode_fields`).

        A batch encodes the headers it shares once and splices in each ``:path``.
        """
        stream_id = self.get_next_available_stream_id()
        limit = self.remote_settings.max_concurrent_streams
        if self.open_count + 1 > limit:
            raise TooManyStreamsError(f"Max outbound streams is {limit}, {self.open_count} open")
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._begin_new_stream(stream_id, AllowedStreamIDs.ODD)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_HEADERS)
        # What stock send_headers reads from the headers: the method decides whether a
        # response may have a body (HEAD); push requests are always POST.
        stream.request_method = _POST

        block = self._encoder.block(fields)
        frame_size = self.max_outbound_frame_size
        size = min(len(body), frame_size, self.outbound_flow_control_window)
        size = min(size, stream.outbound_flow_control_window)
        headers_flags = _END_HEADERS
        if not body:
            headers_flags |= _END_STREAM
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if len(block) <= frame_size:
            header = _FRAME_HEADER.pack(len(block) << 8 | _HEADERS, headers_flags, stream_id)
            parts = [header, block]
        else:
            parts = _split_header_block(block, frame_size, headers_flags, stream_id)
        if size > 0:
            self.state_machine.process_input(ConnectionInputs.SEND_DATA)
            data_flags = 0
            if size == len(body):
                data_flags = _END_STREAM
                machine.process_input(StreamInputs.SEND_END_STREAM)
            # (OPEN, SEND_DATA) is a no-op transition: the stream was opened just above.
            parts += (_FRAME_HEADER.pack(size << 8 | _DATA, data_flags, stream_id), body[:size])
            stream.outbound_flow_control_window -= size
            self.outbound_flow_control_window -= size
        self._data_to_send += b"".join(parts)
        return stream_id, size


def _split_header_block(block: bytes, frame_size: int, flags: int, stream_id: int) -> list[bytes]:
    """A HEADERS frame plus CONTINUATION frames for a block longer than one frame.

    END_HEADERS moves to the last frame; END_STREAM stays on HEADERS (RFC 9113 §6.2).
    """
    chunks = [block[i : i + frame_size] for i in range(0, len(block), frame_size)]
    parts: list[bytes] = []
    last = len(chunks) - 1
    for n, chunk in enumerate(chunks):
        frame_type = _HEADERS if n == 0 else _CONTINUATION
        frame_flags = (flags if n == 0 else 0) & ~_END_HEADERS
        if n == last:
            frame_flags |= _END_HEADERS
        parts += (_FRAME_HEADER.pack(len(chunk) << 8 | frame_type, frame_flags, stream_id), chunk)
    return parts


# --- one request ----------------------------------------------------------------------


class Stream:
    """One request on the wire: what its owner needs back, filled in by the reader."""

    __slots__ = (
        "body",
        "chunks",
        "end_sent",
        "index",
        "owner",
        "retry_after",
        "status",
        "stream_id",
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


class ConnectionFailed(Exception):
    """Opening a connection failed (TLS, ALPN, or no SETTINGS from the server)."""


class PoolConnection:
    """One HTTP/2 connection.  Create with :meth:`open`, then run :meth:`serve`.

    ``reserved`` counts the streams open on behalf of the pool; the pool opens streams
    (:meth:`open_streams`) only while ``reserved < max_streams``.  If the server lowers
    SETTINGS_MAX_CONCURRENT_STREAMS below what is in flight, nothing is taken back:
    streams finish, ``reserved`` sinks, and new requests wait until it is below the new
    limit again.  Nothing ever blocks on the lowered limit, so no deadlock.
    """

    def __init__(
        self,
        sock: trio.SSLStream[trio.SocketStream],
        *,
        peer: Peer,
        app: str,
        index: int,
        on_capacity: Callable[[PoolConnection], None],
    ) -> None:
        self._sock = sock
        self._peer = peer
        self._log = peer.log
        #: Log prefix: ``apns[app]``, ``fcm[app]``.
        self._app = app
        self.index = index
        self._on_capacity = on_capacity
        self._h2 = _H2()
        self._h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_CONCURRENT_STREAMS: INBOUND_STREAMS,
            },
        )
        self._streams: dict[int, Stream] = {}
        #: Streams whose body waits for send window, in arrival order.
        self._blocked: dict[int, Stream] = {}
        self._write_wanted = trio.Event()
        self._ping_ack: trio.Event | None = None
        self._cancel_scope: trio.CancelScope | None = None
        self._last_received = trio.current_time()
        #: True while the reader handles one read's events: slots freed meanwhile are
        #: offered to the pool once at the end, so waiters get them in one chunk.
        self._in_handle = False
        self._capacity_freed = False
        #: Set once the server's first SETTINGS arrived.
        self.ready = False
        #: False after GOAWAY or once the connection failed: take no new requests.
        self.accepting = True
        self.max_streams = 0
        self.reserved = 0
        #: Requests that got an answer: a connection that never completed one counts as a
        #: failed connect attempt for the pool's backoff.
        self.completed = 0
        #: Requests given up by their caller's deadline since the last answer here: the
        #: pool replaces a connection that only times out (see H2Pool).
        self.timeouts = 0
        self.lost_reason: str | None = None
        self._goaway_reason: str | None = None

    @property
    def free_slots(self) -> int:
        """Stream slots the pool may still use (may be negative after a shrink)."""
        return self.max_streams - self.reserved if self.accepting else 0

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Send the preface and wait for the server's SETTINGS (the caller bounds time)."""
        h2 = self._h2
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        await self._sock.send_all(h2.data_to_send())
        while not self.ready:
            data = await self._sock.receive_some(READ_SIZE)
            if not data:
                raise ConnectionFailed("closed before sending SETTINGS")
            try:
                events = h2.receive_data(data)
            except H2Error as exc:
                raise ConnectionFailed(f"HTTP/2 error: {exc}") from None
            self._handle(events)
        pending = h2.data_to_send()
        if pending:
            await self._sock.send_all(pending)

    async def serve(self) -> None:
        """Run until the connection ends: drained after GOAWAY, failed, or cancelled.

        On return every stream that was on the connection has been reported to its owner.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                nursery.start_soon(self._pinger)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self.accepting = False
            self._fail_all(self.lost_reason or "connection closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._sock)

    def _die(self, reason: str) -> None:
        """Mark the connection failed and stop its tasks (serve() then cleans up)."""
        if self.lost_reason is None:
            if self._goaway_reason is not None:
                reason = f"{reason} after GOAWAY {self._goaway_reason}"
            self.lost_reason = reason
        self.accepting = False
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def close(self) -> None:
        """Stop the connection now (the pool is shutting down)."""
        self._die("client closing")

    def retire(self, reason: str) -> None:
        """Take no new requests; close once the streams still open have ended."""
        self.accepting = False
        if not self._streams:
            self._die(reason)

    def _fail_all(self, reason: str) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for stream in streams:
            # Without END_STREAM on the body the server cannot have processed it.
            failure: Failure = (
                Lost(f"connection lost: {reason}") if stream.end_sent else Unprocessed(reason)
            )
            self._free()
            stream.owner.stream_failed(stream, failure)
        if streams:
            self._after_free()

    # --- tasks ------------------------------------------------------------------------

    async def _reader(self) -> None:
        sock = self._sock
        h2 = self._h2
        while True:
            try:
                data = await sock.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._die(f"read failed: {type(exc).__name__}")
                return
            if not data:
                self._die(f"closed by {self._peer.name}")
                return
            self._last_received = trio.current_time()
            try:
                events = h2.receive_data(data)
            except H2Error as exc:
                self._die(f"HTTP/2 protocol error: {type(exc).__name__}")
                return
            self._handle(events)

    async def _writer(self) -> None:
        sock = self._sock
        h2 = self._h2
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            data = h2.data_to_send()
            if data:
                try:
                    await sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._die(f"write failed: {type(exc).__name__}")
                    return

    async def _pinger(self) -> None:
        while True:
            await trio.sleep_until(self._last_received + PING_INTERVAL)
            if trio.current_time() - self._last_received < PING_INTERVAL:
                continue  # something arrived meanwhile: not idle
            ack = self._ping_ack = trio.Event()
            try:
                self._h2.ping(os.urandom(8))
            except H2Error:
                return
            self._flush()
            with trio.move_on_after(PING_TIMEOUT):
                await ack.wait()
            if not ack.is_set():
                self._log.warning("%s connection %d: no PING ACK, closing", self._app, self.index)
                self._die("no PING ACK")
                return

    def _flush(self) -> None:
        self._write_wanted.set()

    # --- requests ---------------------------------------------------------------------

    def open_streams(
        self, owner: StreamOwner, indices: Sequence[int], build: RequestBuilder
    ) -> tuple[int, str | None]:
        """Open one stream per index, with the request ``build(index)`` gives; flush once.

        ``build`` returns the encoded header fields (:func:`pushd.upstream.hpack.
        encode_fields`; APNs splices ``:path`` into shared ones) and the body (FCM
        splices the token into a shared message).  Streams open
        in order until one cannot; returns ``(streams opened, why the rest were not)``,
        the reason ``None`` when all opened.  Those not opened were never sent.  The
        caller only asks for as many as :attr:`free_slots` says, so a refusal means APNs
        lowered its limit since, or the connection stopped accepting.
        """
        if not self.accepting:
            return 0, "connection no longer accepting"
        h2 = self._h2
        send = h2.send_fields
        streams = self._streams
        opened = 0
        failure: str | None = None
        for index in indices:
            fields, body = build(index)
            try:
                stream_id, sent = send(fields, body)
            except TooManyStreamsError:
                # The server lowered its limit and we have not seen the SETTINGS event yet: take
                # h2's word for it, so the pool stops offering slots here.
                self.max_streams = h2.remote_settings.max_concurrent_streams
                failure = "stream limit lowered"
                break
            except H2Error as exc:
                self.accepting = False
                failure = f"cannot open stream: {type(exc).__name__}"
                break
            h2.open_count += 1
            self.reserved += 1
            opened += 1
            stream = Stream(stream_id, owner, index)
            streams[stream_id] = stream
            if sent != len(body):
                stream.end_sent = False
                stream.body = body[sent:]
                self._send_body(stream)
            if stream_id >= STREAM_ID_LIMIT:
                self.accepting = False  # let the pool open a fresh connection
                if opened < len(indices):
                    failure = "connection no longer accepting"
                break
        if opened:
            self._flush()
        return opened, failure

    def abandon(self, owner: StreamOwner) -> list[Stream]:
        """Reset every stream of ``owner`` (it gave up) and free their slots.

        The owner is not called back; it gets the streams and reports them itself.
        """
        gone = [stream for stream in self._streams.values() if stream.owner is owner]
        if not gone:
            return gone
        h2 = self._h2
        for stream in gone:
            sid = stream.stream_id
            del self._streams[sid]
            self._blocked.pop(sid, None)
            with contextlib.suppress(H2Error):
                h2.reset_stream(sid, ErrorCodes.CANCEL)
            self._free()
        self._flush()
        self._after_free()
        return gone

    def _send_body(self, stream: Stream) -> None:
        """Send as much of the body as the send windows allow; park the rest."""
        h2 = self._h2
        sid = stream.stream_id
        body = stream.body
        while body:
            size = min(len(body), h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if size <= 0:
                stream.body = body
                self._blocked[sid] = stream
                return
            last = size == len(body)
            h2.send_data(sid, body[:size] if not last else body, end_stream=last)
            body = body[size:]
        stream.body = b""
        stream.end_sent = True

    def _resume_blocked(self) -> None:
        blocked = self._blocked
        self._blocked = {}
        for stream in blocked.values():
            if stream.stream_id in self._streams:
                try:
                    self._send_body(stream)
                except H2Error:
                    self._release(stream, Unprocessed("stream closed before body was sent"))
        self._flush()

    def _release(self, stream: Stream, failure: Failure) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
            self._blocked.pop(stream.stream_id, None)
            self._free()
            stream.owner.stream_failed(stream, failure)
            self._after_free()

    def _free(self) -> None:
        """Slot accounting for a stream just removed from :attr:`_streams`."""
        h2 = self._h2
        h2.open_count -= 1
        self.reserved -= 1
        if len(h2.streams) > 2 * h2.open_count + PRUNE_SLACK:
            h2.prune_closed_streams()

    def _after_free(self) -> None:
        """Slots were freed: close a drained connection, or offer them to the pool."""
        if not self.accepting and not self._streams:
            self._die("drained")
        elif self._in_handle:
            self._capacity_freed = True
        else:
            self._on_capacity(self)

    # --- events -----------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        """Act on one read's events; the per-request ones (nearly all) are tested first.

        (Dispatching on ``type(event) is ...`` instead of isinstance saves about 70 ns
        per event: not worth losing mypy's narrowing for.)
        """
        streams = self._streams
        h2 = self._h2
        id_header = self._peer.id_header
        flush = False
        #: Flow-controlled bytes received per stream, acknowledged once at the end: to the
        #: stream and connection while the stream is open, else to the connection only.
        unacked: dict[int, int] | None = None
        gone_bytes = 0
        gone_sid = 0
        answered = 0
        self._in_handle = True
        try:
            for event in events:
                if isinstance(event, ResponseReceived):
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        for name, value in event.headers or ():
                            if name == b":status":
                                stream.status = int(value)
                            elif name == id_header:
                                stream.upstream_id = value.decode("ascii", "replace")
                            elif name == b"retry-after":
                                stream.retry_after = value.decode("ascii", "replace")
                elif isinstance(event, StreamEnded):
                    sid = event.stream_id
                    if unacked is not None and sid in unacked:
                        gone_bytes += unacked.pop(sid)
                        gone_sid = sid
                    stream = streams.pop(sid, None)
                    if stream is not None:
                        if not stream.end_sent:
                            # Answered before reading the whole body (e.g. 413).
                            self._blocked.pop(sid, None)
                            with contextlib.suppress(H2Error):
                                h2.reset_stream(sid, ErrorCodes.NO_ERROR)
                            flush = True
                        self._free()
                        answered += 1
                        stream.owner.stream_answered(stream)
                        self._capacity_freed = True
                elif isinstance(event, DataReceived):
                    sid = event.stream_id
                    stream = streams.get(sid)
                    data = event.data
                    if stream is not None and data:
                        if stream.chunks is None:
                            stream.chunks = [data]
                        else:
                            stream.chunks.append(data)
                    length = event.flow_controlled_length
                    if length:
                        if unacked is None:
                            unacked = {}
                        unacked[sid] = unacked.get(sid, 0) + length
                elif isinstance(event, StreamReset):
                    sid = event.stream_id
                    if unacked is not None and sid in unacked:
                        gone_bytes += unacked.pop(sid)
                        gone_sid = sid
                    stream = streams.get(sid)
                    if stream is not None:
                        code = event.error_code
                        if code == ErrorCodes.REFUSED_STREAM:
                            self._release(stream, Unprocessed("stream refused"))
                        else:
                            self._release(
                                stream, Lost(f"stream reset by {self._peer.name}: {code!r}")
                            )
                elif isinstance(event, RemoteSettingsChanged):
                    self._settings_changed(event)
                    flush = True
                elif isinstance(event, WindowUpdated):
                    if self._blocked:
                        self._resume_blocked()
                elif isinstance(event, ConnectionTerminated):
                    self._goaway(event)
                elif isinstance(event, PingAckReceived):
                    if self._ping_ack is not None:
                        self._ping_ack.set()
                else:
                    # PingReceived, SettingsAcknowledged, ...: h2 already answered if needed.
                    flush = True
            if unacked:
                for sid, length in unacked.items():
                    h2.acknowledge_received_data(length, sid)
                flush = True
            if gone_bytes:
                # The stream is closed, so h2 only credits the connection window.
                h2.acknowledge_received_data(gone_bytes, gone_sid)
                flush = True
        finally:
            self._in_handle = False
        self.completed += answered
        if answered:
            self.timeouts = 0
        if flush:
            self._flush()
        if self._capacity_freed:
            self._capacity_freed = False
            if not self.accepting and not streams:
                self._die("drained")
            else:
                self._on_capacity(self)

    def _settings_changed(self, event: RemoteSettingsChanged) -> None:
        changed = event.changed_settings
        first = not self.ready
        self.ready = True
        streams = changed.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        if first or streams is not None:
            old = self.max_streams
            self.max_streams = self._h2.remote_settings.max_concurrent_streams
            default = self._peer.default_streams
            if first and default is not None and streams is None:
                self.max_streams = default
            if old != self.max_streams and not first:
                self._log.debug(
                    "%s connection %d: max streams %d -> %d",
                    self._app,
                    self.index,
                    old,
                    self.max_streams,
                )
        if SettingCodes.INITIAL_WINDOW_SIZE in changed and self._blocked:
            self._resume_blocked()
        if not first:
            self._capacity_freed = True  # offered to the pool at the end of _handle

    def _goaway(self, event: ConnectionTerminated) -> None:
        self.accepting = False
        last = event.last_stream_id if event.last_stream_id is not None else 0
        reason = _goaway_reason(event.additional_data)
        self._log.warning(
            "%s connection %d: GOAWAY %s (%s), last stream %d, %d in flight",
            self._app,
            self.index,
            reason,
            event.error_code,
            last,
            len(self._streams),
        )
        self._goaway_reason = reason
        for sid in [sid for sid in self._streams if sid > last]:
            self._release(self._streams[sid], Unprocessed(f"GOAWAY {reason}"))
        if not self._streams:
            self._die("drained")


def _goaway_reason(data: bytes | None) -> str:
    """APNs puts ``{"reason": "..."}`` in GOAWAY debug data; anything else is shown raw
    (Google's debug data is free text)."""
    if not data:
        return "(no reason)"
    try:
        reason = jsonutil.loads(data).get("reason")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        reason = None
    if isinstance(reason, str):
        return reason
    return repr(data[:100])
