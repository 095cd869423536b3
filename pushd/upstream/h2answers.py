"""The receive side of one HTTP/2 connection: how each answer reaches its stream's owner.

Split from :mod:`pushd.upstream.h2conn` because it changes with the frame fast path
(:mod:`pushd.upstream.h2recv`) and with h2's events, not with the send side
(:mod:`pushd.upstream.h2streams`, which this builds on) or with the connection's tasks
(:mod:`pushd.upstream.h2conn`, which builds on this: its reader calls
:meth:`AnswerReader._receive` with every read).

Each read goes one of two ways, frame by frame: answers' own HEADERS and DATA on
streams still open are taken here directly, every other frame goes to h2 and comes
back as events (:meth:`AnswerReader._handle_events`).  Either way a stream ends in
exactly one report to its :class:`~pushd.upstream.h2types.StreamOwner`: an answer,
:class:`~pushd.upstream.h2types.Unprocessed` (refused, or above a GOAWAY's last
stream) or :class:`~pushd.upstream.h2types.Lost` (reset by the server).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Self

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
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from hpack.exceptions import HPACKError

from pushd import jsonutil
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
from pushd.upstream.h2streams import CONNECTION_WINDOW, DRAINED, STREAM_WINDOW, StreamTable
from pushd.upstream.h2types import MAX_RESPONSE_BODY, Lost, Peer, Stream, Unprocessed

#: Credit the connection, or a stream still open, once this much of its window was used
#: by frames taken on the fast path (:mod:`pushd.upstream.h2recv`): a quarter of the
#: window, so the server never waits for credit, and one WINDOW_UPDATE per thousands of
#: answers rather than one per read.
CONNECTION_ACK_AT = CONNECTION_WINDOW // 4
STREAM_ACK_AT = STREAM_WINDOW // 4
#: A response's ``:status`` is exactly three digits.
STATUS_DIGITS = 3
#: The status of an answer that cannot ask for its connection to be retired.
OK = 200


class AnswerReader(StreamTable):
    """A :class:`~pushd.upstream.h2streams.StreamTable` that takes in what the server
    sends; the connection (:class:`~pushd.upstream.h2conn.PoolConnection`) feeds it."""

    def __init__(
        self, *, peer: Peer, app: str, index: int, on_capacity: Callable[[Self], None]
    ) -> None:
        super().__init__(peer=peer, app=app, index=index, on_capacity=on_capacity)
        self._ping_ack: trio.Event | None = None
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
        #: Requests that got an answer: a connection that never completed one counts as a
        #: failed connect attempt for the pool's backoff.
        self.completed = 0
        #: Requests given up by their caller's deadline since the last answer here: the
        #: pool replaces a connection that only times out (see H2Pool).
        self.timeouts = 0
        #: Since when the server allows no streams here (SETTINGS_MAX_CONCURRENT_STREAMS
        #: 0), or None: the pool replaces a connection that stays so while requests wait.
        self.no_streams_since: float | None = None

    # --- receiving --------------------------------------------------------------------

    def _receive(self: Self, data: bytes | bytearray) -> None:
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
                self._die(DRAINED)
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
                stream.received += len(payload)
            self._unacked += length
        if flags & END_STREAM:
            self._answered_stream(stream)
        elif stream.received > MAX_RESPONSE_BODY:
            self._cut_short(stream)
        elif length:
            stream.unacked += length
            if stream.unacked >= STREAM_ACK_AT:
                self._h2._data_to_send += window_update(stream.stream_id, stream.unacked)
                stream.unacked = 0

    def _headers(self, stream: Stream, headers: Iterable[tuple[bytes, bytes]]) -> None:
        id_header = self._peer.id_header
        for name, value in headers:
            if name == b":status":
                # Three digits (RFC 9113 8.3.2); anything else is the peer's protocol
                # error, for this connection alone (int() raised, and killed pushd).
                if len(value) != STATUS_DIGITS or not value.isdigit():
                    raise FrameError("a :status that is not three digits")
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
        if stream.status != OK and self._peer.retiring is not None:
            self._retire_if_asked(stream)
        stream.owner.stream_answered(stream)
        self._capacity_freed = True

    def _cut_short(self, stream: Stream) -> None:
        """``stream``'s body passed :data:`MAX_RESPONSE_BODY`: reset it and report the
        answer its status gives (the body, cut, no longer parses)."""
        sid = stream.stream_id
        del self._streams[sid]
        self._blocked.pop(sid, None)
        with contextlib.suppress(H2Error):
            self._h2.reset_stream(sid, ErrorCodes.CANCEL)
        self._free()
        self._answered += 1
        stream.owner.stream_answered(stream)
        self._capacity_freed = True

    def _retire_if_asked(self, stream: Stream) -> None:
        """An answer that says its connection is going away (APNs' 503 ``Shutdown``):
        take no new requests here, let those in flight finish, then close, so the pool
        opens a fresh connection.  Without this every retry went to the same
        connection and heard ``Shutdown`` again."""
        assert self._peer.retiring is not None
        reason = self._peer.retiring(stream.status, stream.response_body())
        if reason is None or not self.accepting:
            return
        self._log.warning(
            "%s connection %d: %s answered %s; no new requests on it, closing once "
            "%d in flight have ended",
            self._app,
            self.index,
            self._peer.name,
            reason,
            len(self._streams),
        )
        self.retire(f"{self._peer.name} answered {reason}")

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
            elif isinstance(event, (StreamEnded, StreamReset)):
                # The stream is closed: its bytes not yet credited go to the connection.
                sid = event.stream_id
                if unacked is not None and sid in unacked:
                    gone_bytes += unacked.pop(sid)
                    gone_sid = sid
                stream = streams.get(sid)
                if stream is not None:
                    if isinstance(event, StreamEnded):
                        self._answered_stream(stream)
                    elif event.error_code == ErrorCodes.REFUSED_STREAM:
                        self._release(stream, Unprocessed("stream refused"))
                    else:
                        code = event.error_code
                        self._release(stream, Lost(f"stream reset by {self._peer.name}: {code!r}"))
            elif isinstance(event, DataReceived):
                sid = event.stream_id
                stream = streams.get(sid)
                data = event.data
                if stream is not None and data:
                    if stream.chunks is None:
                        stream.chunks = [data]
                    else:
                        stream.chunks.append(data)
                    stream.received += len(data)
                    if stream.received > MAX_RESPONSE_BODY:
                        self._cut_short(stream)
                length = event.flow_controlled_length
                if length:
                    if unacked is None:
                        unacked = {}
                    unacked[sid] = unacked.get(sid, 0) + length
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
            if self.max_streams > 0:
                self.no_streams_since = None
            elif self.no_streams_since is None:
                self.no_streams_since = trio.current_time()
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
            self._release(self._streams[sid], Unprocessed(f"GOAWAY {reason}", goaway=reason))
        if not self._streams:
            self._die(DRAINED)


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
