"""pushd's adjustments to h2's connection: O(1) stream accounting, a lean request path,
a GOAWAY that lets answers finish, and only resets remembered among closed streams.

Split from :mod:`pushd.upstream.h2conn`, which runs the protocol over a socket with these.
"""

from __future__ import annotations

import struct

from h2.config import H2Configuration
from h2.connection import (
    ConnectionInputs,
    ConnectionState,
    H2Connection,
    H2ConnectionStateMachine,
)
from h2.exceptions import NoAvailableStreamIDError, TooManyStreamsError
from h2.stream import H2Stream, StreamClosedBy, StreamState

from pushd.upstream.h2types import Header
from pushd.upstream.hpack import HeaderEncoder, encode_fields
from pushd.upstream.hpackdec import HeaderDecoder

#: Frame types and flags (RFC 9113 §6) written by :meth:`LeanH2.send_request`.
_DATA = 0x0
_HEADERS = 0x1
_CONTINUATION = 0x9
_END_STREAM = 0x1
_END_HEADERS = 0x4
#: A frame header: 24-bit length and 8-bit type packed in one word, flags, stream id.
_FRAME_HEADER = struct.Struct(">LBL")
_POST = b"POST"
#: The highest stream id (31 bits, RFC 9113 §5.1.1).
_MAX_STREAM_ID = (1 << 31) - 1

#: What opening a stream reads of both sides' settings (:meth:`LeanH2.stream_params`):
#: the server's stream limit, our and its initial stream windows, the largest frame
#: it takes.
StreamParams = tuple[int, int, int, int]

_H2_CONFIG = H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)


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


class LeanH2(H2Connection):
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

    def stream_params(self) -> StreamParams:
        """The settings a new stream is opened with.  Each read goes through h2's
        ``Settings`` mapping (about a microsecond); a batch reads them once and passes
        them to every :meth:`send_fields` call (no frame is received in between, so they
        cannot change)."""
        remote = self.remote_settings
        return (
            remote.max_concurrent_streams,
            self.local_settings.initial_window_size,
            remote.initial_window_size,
            self.max_outbound_frame_size,
        )

    def send_fields(
        self, fields: bytes, body: bytes, params: StreamParams | None = None
    ) -> tuple[int, int]:
        """:meth:`send_request` for headers already encoded (:func:`encode_fields`).

        A batch encodes the headers it shares once and splices in each ``:path``, and
        reads the settings once (``params``, :meth:`stream_params`).  The stream is
        built as h2's ``_begin_new_stream`` builds it and put in the state its
        ``SEND_HEADERS`` (and ``SEND_END_STREAM``) inputs would leave, without the
        state machines' lookups: on an open connection those inputs can only go one
        way.  ``tests/test_apns_connection.py`` compares the result with stock h2's.
        """
        limit, inbound, outbound, frame_size = params or self.stream_params()
        stream_id = self.highest_outbound_stream_id + 2 if self.highest_outbound_stream_id else 1
        if stream_id > _MAX_STREAM_ID:
            raise NoAvailableStreamIDError("Exhausted allowed stream IDs")
        if self.open_count + 1 > limit:
            raise TooManyStreamsError(f"Max outbound streams is {limit}, {self.open_count} open")
        if self.state_machine.state is not ConnectionState.CLIENT_OPEN:
            # Not open (closed, or before the preface): h2 raises or moves it as usual.
            self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = H2Stream(
            stream_id,
            config=self.config,
            inbound_window_size=inbound,
            outbound_window_size=outbound,
        )
        stream.max_outbound_frame_size = frame_size
        self.streams[stream_id] = stream
        self.highest_outbound_stream_id = stream_id
        machine = stream.state_machine
        machine.client = True
        machine.headers_sent = True
        # What stock send_headers reads from the headers: the method decides whether a
        # response may have a body (HEAD); push requests are always POST.
        stream.request_method = _POST

        block = self._encoder.block(fields)
        size = min(len(body), frame_size, self.outbound_flow_control_window, outbound)
        ended = not body or size == len(body)
        machine.state = StreamState.HALF_CLOSED_LOCAL if ended else StreamState.OPEN
        headers_flags = _END_HEADERS | _END_STREAM if not body else _END_HEADERS
        if len(block) <= frame_size:
            header = _FRAME_HEADER.pack(len(block) << 8 | _HEADERS, headers_flags, stream_id)
            parts = [header, block]
        else:
            parts = _split_header_block(block, frame_size, headers_flags, stream_id)
        if size > 0:
            # SEND_DATA on an open connection and stream changes no state.
            data_flags = _END_STREAM if ended else 0
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
