"""The connection's fast receive path against a server writing frames by hand.

:mod:`pushd.upstream.h2recv` takes HEADERS and DATA on open streams without h2.  A
stock h2 server only writes the plain shapes, so this one writes its answers as raw
frames (with the server's own HPACK encoder, so the client's table stays in step): padded
DATA and HEADERS, priority fields, a header block continued in CONTINUATION frames,
trailers, frames cut into one-byte TLS records, and enough data to need credit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded, WindowUpdated

from pushd.model import Delivered, Outcome, RetryLater
from pushd.upstream import h2answers
from pushd.upstream.h2batch import Batch, Reauthenticate, Report
from pushd.upstream.h2pool import H2Pool
from pushd.upstream.h2recv import FrameError, FrameReader, unpad, window_update
from pushd.upstream.h2types import Peer, Stream
from pushd.upstream.hpack import encode_fields

PEER = Peer("Test", logging.getLogger("pushd.test"), default_streams=10)
_HEADER = struct.Struct(">LBL")
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload) << 8 | kind, flags, sid) + payload


#: Writes the answer to stream ``sid`` (request body ``body``) with the server's encoder.
Shape = Callable[[H2Connection, int, bytes], bytes]


def answer_body(body: bytes) -> bytes:
    return json.dumps({"name": body.decode()}).encode()


def padded(conn: H2Connection, sid: int, body: bytes) -> bytes:
    """HEADERS with priority fields and padding, then DATA padded, in two frames."""
    block = conn.encoder.encode([(b":status", b"200"), (b"x-id", b"abc" + body)])
    headers = bytes([3]) + b"\0\0\0\0\x10" + block + b"\0\0\0"
    answer = answer_body(body)
    return (
        frame(HEADERS, END_HEADERS | PADDED | PRIORITY, sid, headers)
        + frame(DATA, PADDED, sid, bytes([7]) + answer[:5] + b"\0" * 7)
        + frame(DATA, PADDED | END_STREAM, sid, bytes([0]) + answer[5:])
    )


def continued(conn: H2Connection, sid: int, body: bytes) -> bytes:
    """A header block in HEADERS + CONTINUATION (h2 reads it), the body on the fast path."""
    block = conn.encoder.encode([(b":status", b"200"), (b"retry-after", b"7")])
    return (
        frame(HEADERS, 0, sid, block[:2])
        + frame(CONTINUATION, 0, sid, block[2:3])
        + frame(CONTINUATION, END_HEADERS, sid, block[3:])
        + frame(DATA, END_STREAM, sid, answer_body(body))
    )


def trailers(conn: H2Connection, sid: int, body: bytes) -> bytes:
    """Headers, the body, then trailers (no :status) ending the stream."""
    head = conn.encoder.encode([(b":status", b"200")])
    tail = conn.encoder.encode([(b"grpc-status", b"0")])
    return (
        frame(HEADERS, END_HEADERS, sid, head)
        + frame(DATA, 0, sid, answer_body(body))
        + frame(HEADERS, END_HEADERS | END_STREAM, sid, tail)
    )


def bulky(conn: H2Connection, sid: int, body: bytes) -> bytes:
    """A 2,000-byte body: JSON padded with spaces, in two DATA frames."""
    answer = answer_body(body).ljust(2000)
    return (
        frame(HEADERS, END_HEADERS, sid, conn.encoder.encode([(b":status", b"200")]))
        + frame(DATA, 0, sid, answer[:1000])
        + frame(DATA, END_STREAM, sid, answer[1000:])
    )


@attrs.define
class Server:
    """Answers every request in ``shape``, ``chunk`` bytes per TLS record (0: all at once)."""

    shape: Shape
    chunk: int = 0
    #: Connection-level WINDOW_UPDATE increments received from the client, and an
    #: event set (and replaced) on each.
    credits: list[int] = attrs.Factory(list)
    credit: trio.Event = attrs.Factory(trio.Event)

    async def handle(self, sock: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.serve(sock)

    async def serve(self, sock: trio.SSLStream[trio.SocketStream]) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await sock.send_all(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        while True:
            data = await sock.receive_some(1 << 16)
            if not data:
                return
            out = b""
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    bodies[event.stream_id] = b""
                elif isinstance(event, DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    out += self.shape(conn, event.stream_id, bodies.pop(event.stream_id))
                elif isinstance(event, WindowUpdated) and event.stream_id == 0:
                    self.credits.append(event.delta)
                    self.credit.set()
                    self.credit = trio.Event()
            out = conn.data_to_send() + out
            step = self.chunk or len(out) or 1
            for start in range(0, len(out), step):
                await sock.send_all(out[start : start + step])


class EchoBatch(Batch):
    """Body per index is the index; the answer's ``name`` must echo it."""

    __slots__ = ("fields", "streams")

    def __init__(self, pool: H2Pool, report: Report, count: int) -> None:
        super().__init__(pool, report, count, None)
        self.fields = encode_fields(
            [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"h"), (b":path", b"/")]
        )
        self.streams: dict[int, Stream] = {}

    def build(self, index: int) -> tuple[bytes, bytes]:
        return self.fields, str(index).encode()

    def classify(self, stream: Stream) -> Outcome | Reauthenticate:
        self.streams[stream.index] = stream
        name = json.loads(stream.response_body())["name"]
        if stream.status != 200 or name != str(stream.index):
            return RetryLater(f"bad answer {stream.status} {name!r}")
        return Delivered(name)


async def exchange(
    nursery: trio.Nursery, tls: ssl.SSLContext, ca_file: Path, server: Server, count: int
) -> tuple[dict[int, Outcome], EchoBatch, H2Pool]:
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(tcp[0].socket.getsockname()[1])
    listeners = [trio.SSLListener(t, tls, https_compatible=True) for t in tcp]
    nursery.start_soon(trio.serve_listeners, server.handle, listeners)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["h2"])
    pool = H2Pool(
        PEER, name="t", label="test", host="127.0.0.1", port=port, ssl_context=ctx, connections=1
    )
    await nursery.start(pool.run)
    reports: dict[int, Outcome] = {}

    def report(index: int, outcome: Outcome) -> None:
        assert index not in reports
        reports[index] = outcome

    batch = EchoBatch(pool, report, count)
    batch.pending.extend(range(count))
    with trio.fail_after(10):
        await pool.send_batch(batch, trio.current_time() + 10)
    return reports, batch, pool


@pytest.mark.parametrize("chunk", [0, 1])
async def test_padded_and_prioritised_frames_are_read(
    nursery: trio.Nursery, simulator_tls: ssl.SSLContext, ca_file: Path, chunk: int
) -> None:
    # chunk=1: every frame arrives cut into one-byte TLS records.
    reports, batch, pool = await exchange(
        nursery, simulator_tls, ca_file, Server(padded, chunk=chunk), 25
    )
    assert reports == {i: Delivered(str(i)) for i in range(25)}
    assert batch.streams[3].response_body() == answer_body(b"3")  # the padding is gone
    assert pool.in_flight == 0


async def test_continued_header_block_goes_through_h2(
    nursery: trio.Nursery, simulator_tls: ssl.SSLContext, ca_file: Path
) -> None:
    reports, batch, _ = await exchange(nursery, simulator_tls, ca_file, Server(continued), 25)
    assert reports == {i: Delivered(str(i)) for i in range(25)}
    assert {stream.retry_after for stream in batch.streams.values()} == {"7"}


async def test_trailers_end_the_stream_and_keep_the_status(
    nursery: trio.Nursery, simulator_tls: ssl.SSLContext, ca_file: Path
) -> None:
    reports, _, pool = await exchange(nursery, simulator_tls, ca_file, Server(trailers), 25)
    assert reports == {i: Delivered(str(i)) for i in range(25)}
    assert pool.in_flight == 0


async def test_data_taken_on_the_fast_path_is_credited(
    nursery: trio.Nursery,
    simulator_tls: ssl.SSLContext,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At the real threshold (4 MiB) this would take thousands of answers.
    monkeypatch.setattr(h2answers, "CONNECTION_ACK_AT", 10_000)
    server = Server(bulky)
    reports, _, _ = await exchange(nursery, simulator_tls, ca_file, server, 30)
    assert reports == {i: Delivered(str(i)) for i in range(30)}
    # The first credit opens the connection window to 16 MiB; then 30 x 2,000 bytes taken
    # are credited in steps of at least 10,000 (one per read that crosses the line).
    with trio.fail_after(5):
        while sum(server.credits[1:]) < 50_000:
            await server.credit.wait()
    assert all(delta >= 10_000 for delta in server.credits[1:]), server.credits
    assert len(server.credits) <= 7, server.credits


def test_frame_reader_keeps_partial_frames_and_refuses_long_ones() -> None:
    reader = FrameReader()
    whole = frame(DATA, END_STREAM, 5, b"hello") + frame(HEADERS, END_HEADERS, 7, b"\x88")
    buf, frames = reader.frames(whole[:12], 16_384)
    assert frames == []
    buf, frames = reader.frames(whole[12:], 16_384)
    assert [(t, f, s, buf[a:b]) for t, f, s, a, b in frames] == [
        (DATA, END_STREAM, 5, b"hello"),
        (HEADERS, END_HEADERS, 7, b"\x88"),
    ]
    with pytest.raises(FrameError):
        reader.frames(frame(DATA, 0, 5, b"x" * 20), 16)


def test_unpad_and_window_update() -> None:
    assert unpad(PADDED, b"\x02abc\0\0", False) == b"abc"
    assert unpad(PADDED | PRIORITY, b"\x01" + b"\0" * 5 + b"blk\0", True) == b"blk"
    assert unpad(PRIORITY, b"\0" * 5 + b"blk", False) == b"\0" * 5 + b"blk"  # DATA has none
    with pytest.raises(FrameError):
        unpad(PADDED, b"\x09ab", False)
    with pytest.raises(FrameError):
        unpad(PADDED, b"", False)
    assert window_update(0, 1000) == frame(0x8, 0, 0, (1000).to_bytes(4, "big"))
