"""Answers that reach the connection through h2's events rather than the fast path.

:mod:`pushd.upstream.h2answers` takes most answers without h2; a stream ends through h2
only when the server resets it (RST_STREAM) or ends it on a header block continued in
CONTINUATION frames.  The server of :mod:`tests.test_h2recv` writes those frames by hand.
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import trio
from h2.connection import H2Connection
from h2.errors import ErrorCodes

from pushd.model import Delivered, Outcome, RetryLater
from pushd.upstream.h2batch import Reauthenticate
from pushd.upstream.h2pool import H2Pool
from pushd.upstream.h2types import Stream
from tests.test_h2recv import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    EchoBatch,
    Server,
    Shape,
    answer_body,
    exchange,
    frame,
)

RST_STREAM = 0x3


def reset(sid: int, code: ErrorCodes) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">L", code))


def refusing(refused: set[int]) -> Shape:
    """Refuses index 1, 4, 7, ... once (REFUSED_STREAM), cancels 2, 5, 8, ..., answers
    the rest."""

    def shape(conn: H2Connection, sid: int, body: bytes) -> bytes:
        index = int(body)
        if index % 3 == 1 and index not in refused:
            refused.add(index)
            return reset(sid, ErrorCodes.REFUSED_STREAM)
        if index % 3 == 2:
            return reset(sid, ErrorCodes.CANCEL)
        head = conn.encoder.encode([(b":status", b"200")])
        return frame(HEADERS, END_HEADERS, sid, head) + frame(
            DATA, END_STREAM, sid, answer_body(body)
        )

    return shape


def ended_in_continuation(conn: H2Connection, sid: int, body: bytes) -> bytes:
    """No body: END_STREAM on a HEADERS frame whose block goes on in CONTINUATION."""
    block = conn.encoder.encode([(b":status", b"204"), (b"retry-after", body)])
    return frame(HEADERS, END_STREAM, sid, block[:2]) + frame(
        CONTINUATION, END_HEADERS, sid, block[2:]
    )


class StatusBatch(EchoBatch):
    """Answers have no body: the outcome is the status."""

    def classify(self, stream: Stream) -> Outcome | Reauthenticate:
        self.streams[stream.index] = stream
        if stream.response_body():
            return RetryLater("unexpected body")
        return Delivered(str(stream.status))


async def send(pool: H2Pool, batch: EchoBatch, count: int) -> None:
    batch.pending.extend(range(count))
    with trio.fail_after(10):
        await pool.send_batch(batch, trio.current_time() + 10)


async def test_a_refused_stream_goes_again_and_a_reset_one_may_have_been_delivered(
    nursery: trio.Nursery, simulator_tls: ssl.SSLContext, ca_file: Path
) -> None:
    refused: set[int] = set()
    reports, _, pool = await exchange(
        nursery, simulator_tls, ca_file, Server(refusing(refused)), 30
    )
    assert refused == set(range(1, 30, 3))
    cancelled = RetryLater(f"stream reset by Test: {ErrorCodes.CANCEL!r}", kind="unknown")
    assert reports == {i: cancelled if i % 3 == 2 else Delivered(str(i)) for i in range(30)}
    assert pool.in_flight == 0


async def test_a_stream_ended_in_a_continued_header_block_is_answered(
    nursery: trio.Nursery, simulator_tls: ssl.SSLContext, ca_file: Path
) -> None:
    _, _, pool = await exchange(nursery, simulator_tls, ca_file, Server(ended_in_continuation), 0)
    reports: dict[int, Outcome] = {}
    batch = StatusBatch(pool, reports.__setitem__, 20)
    await send(pool, batch, 20)
    assert reports == {i: Delivered("204") for i in range(20)}
    assert [batch.streams[i].retry_after for i in range(20)] == [str(i) for i in range(20)]
    assert pool.in_flight == 0
