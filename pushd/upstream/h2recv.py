"""The receive side's fast path: answers' HEADERS and DATA frames read without h2.

Why: with FCM every answer is three frames (HEADERS, a JSON DATA frame, often an empty
DATA frame with END_STREAM), and h2 spent about 30 % of pushd's CPU on a 100-device FCM
fan-out taking them in: a hyperframe object per frame (and its ``repr``, built for a
trace log line even when nobody logs), a state machine step per frame, an event object
per frame, flow-control bookkeeping per frame.  For a frame on a stream the connection
itself opened and still waits on, all of that says nothing new: the headers only need
decoding (the HPACK table must see every block, in order), the data only needs keeping
and counting.

So :class:`FrameReader` cuts the bytes into frames; the connection
(:meth:`pushd.upstream.h2conn.PoolConnection._receive`) handles HEADERS with
END_HEADERS and DATA on its own open streams directly, and hands every other frame
(SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY, CONTINUATION sequences, frames on
streams it no longer knows) to h2 as raw bytes, in order, so h2 keeps doing everything
it did for them.  A stream that ends this way is dropped from h2's table at once (h2
would only have kept a record that :class:`~pushd.upstream.h2proto._ResetStreams`
throws away for normal closes).

Flow control for the bytes taken this way is ours: h2 never sees them, so its windows
stay as they were (it would only check that the server respects them).  The connection
credits itself with a WINDOW_UPDATE once ``CONNECTION_ACK_AT`` bytes were taken, and a
stream still open once it took ``STREAM_ACK_AT`` (:mod:`pushd.upstream.h2answers`; answers
are a few hundred bytes, so in practice only the connection is ever credited, every few
thousand answers), instead of a call into h2 per read.
"""

from __future__ import annotations

import struct
from typing import Final

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

#: Frame types and flags (RFC 9113 §6).
DATA: Final = 0x0
HEADERS: Final = 0x1
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY: Final = 0x20
WINDOW_UPDATE: Final = 0x8
#: A frame header: 24-bit length and 8-bit type packed in one word, flags, stream id.
FRAME_HEADER: Final = struct.Struct(">LBL")
FRAME_HEADER_SIZE: Final = 9
#: A HEADERS frame's priority fields (stream dependency and weight), when PRIORITY is set.
PRIORITY_SIZE: Final = 5
_WINDOW_INCREMENT = struct.Struct(">L")
_STREAM_ID_MASK: Final = 0x7FFF_FFFF

#: One frame of a buffer: type, flags, stream id, where its payload starts and ends.
Frame = tuple[int, int, int, int, int]


class FrameError(ProtocolError):
    """A frame h2 would also refuse (too long, bad padding): a connection error."""

    error_code = ErrorCodes.PROTOCOL_ERROR


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame crediting ``stream_id`` (0: the connection)."""
    return FRAME_HEADER.pack(4 << 8 | WINDOW_UPDATE, 0, stream_id) + _WINDOW_INCREMENT.pack(
        increment
    )


def unpad(flags: int, payload: bytes, priority: bool) -> bytes:
    """The fragment of a DATA or HEADERS frame: padding (and priority fields) removed."""
    start = 0
    end = len(payload)
    if flags & PADDED:
        if not payload:
            raise FrameError("padded frame without a pad length")
        end -= payload[0]
        start = 1
    if priority and flags & PRIORITY:
        start += PRIORITY_SIZE
    if end < start:
        raise FrameError("padding longer than the frame")
    return payload[start:end] if start or end != len(payload) else payload


class FrameReader:
    """Cuts received bytes into whole frames; keeps a partial frame for the next read."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def frames(self, data: bytes | bytearray, max_size: int) -> tuple[bytes, list[Frame]]:
        """The whole frames in what was kept plus ``data``: that buffer, and
        ``(type, flags, stream id, payload start, payload end)`` per frame in it (the
        frame's raw bytes start :data:`FRAME_HEADER_SIZE` before its payload).

        Raises :class:`FrameError` for a frame longer than ``max_size`` (our
        SETTINGS_MAX_FRAME_SIZE).
        """
        if self._rest:
            data = self._rest + data
        elif not isinstance(data, bytes):
            data = bytes(data)
        end = len(data)
        pos = 0
        out: list[Frame] = []
        unpack = FRAME_HEADER.unpack_from
        while end - pos >= FRAME_HEADER_SIZE:
            word, flags, stream_id = unpack(data, pos)
            length = word >> 8
            if length > max_size:
                raise FrameError(f"frame of {length} bytes > {max_size}")
            start = pos + FRAME_HEADER_SIZE
            stop = start + length
            if stop > end:
                break
            out.append((word & 0xFF, flags, stream_id & _STREAM_ID_MASK, start, stop))
            pos = stop
        self._rest = data[pos:] if pos < end else b""
        return data, out
