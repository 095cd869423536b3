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
import os
from collections.abc import Callable, Iterable, Sequence

import trio
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
from hpack.exceptions import HPACKError

from pushd import jsonutil
from pushd.upstream.h2proto import LeanH2
from pushd.upstream.h2recv import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER_SIZE,
    HEADERS,
    PADDED,
    FrameError,
    FrameReader,
    unpad,
    window_update,
)
from pushd.upstream.h2types import (
    ConnectionFailed,
    Failure,
    Lost,
    Peer,
    RequestBuilder,
    Stream,
    StreamOwner,
    Unprocessed,
)

#: Send a PING after this many seconds without any frame from the server.
PING_INTERVAL = 60.0
#: Drop the connection if the PING ACK takes longer than this (seconds).
PING_TIMEOUT = 10.0
#: Our receive windows.  Answers are tiny (FCM's JSON bodies too), so these only have to
#: be big enough that flow control never throttles answers; acknowledging data keeps
#: them open.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
#: Credit the connection, or a stream still open, once this much of its window was used
#: by frames taken on the fast path (:mod:`pushd.upstream.h2recv`): a quarter of the
#: window, so the server never waits for credit, and one WINDOW_UPDATE per thousands of
#: answers rather than one per read.
CONNECTION_ACK_AT = CONNECTION_WINDOW // 4
STREAM_ACK_AT = STREAM_WINDOW // 4
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
        self._h2 = LeanH2()
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
        self._frames = FrameReader()
        #: Inside a header block h2 is reading (HEADERS without END_HEADERS so far): every
        #: frame goes to h2 until its END_HEADERS (RFC 9113 §6.10).
        self._continuing = False
        #: Flow-controlled bytes taken on the fast path since the connection was credited.
        self._unacked = 0
        #: Streams answered during the current read.
        self._answered = 0
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
                self._receive(data)
            except H2Error as exc:
                raise ConnectionFailed(f"HTTP/2 error: {exc}") from None
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
                self._receive(data)
            except H2Error as exc:
                self._die(f"HTTP/2 protocol error: {type(exc).__name__}")
                return

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

    # --- receiving --------------------------------------------------------------------

    def _receive(self, data: bytes | bytearray) -> None:
        """Take in one read: answers' own frames directly, every other frame through h2.

        See :mod:`pushd.upstream.h2recv` for why and what goes which way.  Frames go to
        h2 in runs of consecutive ones, in order, so its state (and the HPACK table,
        which both paths share) sees them as sent.  Raises :class:`H2Error` for a
        connection error.
        """
        h2 = self._h2
        buf, frames = self._frames.frames(data, h2.max_inbound_frame_size)
        if not frames:
            return
        streams = self._streams
        run_start = -1  # raw bytes of the frames waiting to go to h2
        run_end = 0
        self._in_handle = True
        try:
            for frame_type, flags, sid, start, stop in frames:
                stream = None
                if frame_type <= HEADERS and not self._continuing:
                    stream = streams.get(sid)
                    if stream is not None and run_start >= 0:
                        self._handle_events(h2.receive_data(buf[run_start:run_end]))
                        run_start = -1
                        stream = streams.get(sid)  # h2's frames may have ended it
                if stream is None or (frame_type == HEADERS and not flags & END_HEADERS):
                    if frame_type == HEADERS:
                        self._continuing = not flags & END_HEADERS
                    elif frame_type == CONTINUATION and flags & END_HEADERS:
                        self._continuing = False
                    if run_start < 0:
                        run_start = start - FRAME_HEADER_SIZE
                    run_end = stop
                elif frame_type == DATA:
                    self._take_data(stream, flags, buf, start, stop)
                else:
                    self._take_headers(stream, flags, buf[start:stop])
            if run_start >= 0:
                self._handle_events(h2.receive_data(buf[run_start:run_end]))
            if self._unacked >= CONNECTION_ACK_AT:
                h2._data_to_send += window_update(0, self._unacked)
                self._unacked = 0
        finally:
            self._in_handle = False
        answered = self._answered
        if answered:
            self._answered = 0
            self.completed += answered
            self.timeouts = 0
        if h2._data_to_send:
            self._flush()
        if self._capacity_freed:
            self._capacity_freed = False
            if not self.accepting and not streams:
                self._die("drained")
            else:
                self._on_capacity(self)

    def _take_headers(self, stream: Stream, flags: int, payload: bytes) -> None:
        """A whole header block on one of our open streams (the answer's, or trailers)."""
        try:
            headers = self._h2.decoder.decode(unpad(flags, payload, True), raw=True)
        except HPACKError as exc:
            raise FrameError(f"header block: {type(exc).__name__}") from None
        self._headers(stream, headers)
        if flags & END_STREAM:
            self._answered_stream(stream)

    def _take_data(self, stream: Stream, flags: int, buf: bytes, start: int, stop: int) -> None:
        """A DATA frame on one of our open streams: keep the body, count it for credit."""
        length = stop - start
        if length:
            payload = buf[start:stop]
            if flags & PADDED:
                payload = unpad(flags, payload, False)
            if payload:
                if stream.chunks is None:
                    stream.chunks = [payload]
                else:
                    stream.chunks.append(payload)
            self._unacked += length
        if flags & END_STREAM:
            self._answered_stream(stream)
        elif length:
            stream.unacked += length
            if stream.unacked >= STREAM_ACK_AT:
                self._h2._data_to_send += window_update(stream.stream_id, stream.unacked)
                stream.unacked = 0

    def _headers(self, stream: Stream, headers: Iterable[tuple[bytes, bytes]]) -> None:
        id_header = self._peer.id_header
        for name, value in headers:
            if name == b":status":
                stream.status = int(value)
            elif name == id_header:
                stream.upstream_id = value.decode("ascii", "replace")
            elif name == b"retry-after":
                stream.retry_after = value.decode("ascii", "replace")

    def _answered_stream(self, stream: Stream) -> None:
        """``stream`` got its END_STREAM: free its slot and tell its owner.

        Taken on the fast path, h2 never saw the answer: its record of the stream is
        dropped here (h2 keeps nothing for a normal close either, see ``_ResetStreams``).
        """
        sid = stream.stream_id
        del self._streams[sid]
        h2 = self._h2
        if not stream.end_sent:
            # Answered before reading the whole body (e.g. 413): stop sending it.
            self._blocked.pop(sid, None)
            with contextlib.suppress(H2Error):
                h2.reset_stream(sid, ErrorCodes.NO_ERROR)
        else:
            h2.streams.pop(sid, None)
        self._free()
        self._answered += 1
        stream.owner.stream_answered(stream)
        self._capacity_freed = True

    def _handle_events(self, events: list[Event]) -> None:
        """Act on the events h2 made of the frames it was given (see :meth:`_receive`).

        (Dispatching on ``type(event) is ...`` instead of isinstance saves about 70 ns
        per event: not worth losing mypy's narrowing for.)
        """
        streams = self._streams
        h2 = self._h2
        #: Flow-controlled bytes received per stream, acknowledged once at the end: to the
        #: stream and connection while the stream is open, else to the connection only.
        unacked: dict[int, int] | None = None
        gone_bytes = 0
        gone_sid = 0
        for event in events:
            if isinstance(event, ResponseReceived):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    self._headers(stream, event.headers or [])
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                if unacked is not None and sid in unacked:
                    gone_bytes += unacked.pop(sid)
                    gone_sid = sid
                stream = streams.get(sid)
                if stream is not None:
                    self._answered_stream(stream)
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
                        self._release(stream, Lost(f"stream reset by {self._peer.name}: {code!r}"))
            elif isinstance(event, RemoteSettingsChanged):
                self._settings_changed(event)
            elif isinstance(event, WindowUpdated):
                if self._blocked:
                    self._resume_blocked()
            elif isinstance(event, ConnectionTerminated):
                self._goaway(event)
            elif isinstance(event, PingAckReceived) and self._ping_ack is not None:
                self._ping_ack.set()
            # PingReceived, SettingsAcknowledged, ...: h2 already answered if needed.
        if unacked:
            for sid, length in unacked.items():
                h2.acknowledge_received_data(length, sid)
        if gone_bytes:
            # The stream is closed, so h2 only credits the connection window.
            h2.acknowledge_received_data(gone_bytes, gone_sid)

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
