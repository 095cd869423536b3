"""The lean request path of our h2 connection: same frames and stream state as stock h2.

These tests talk to an in-memory h2 *server* connection, so they check what a peer
actually decodes, and compare the client's state with what h2's own ``send_headers`` +
``send_data`` leave behind.  They are the tripwire for h2 upgrades that change the
internals :meth:`LeanH2.send_request` relies on.
"""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, Event, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import NoAvailableStreamIDError, ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple

from pushd.upstream.h2proto import LeanH2
from pushd.upstream.h2types import Header

HEADERS: list[Header] = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"api.push.apple.com"),
    NeverIndexedHeaderTuple(b":path", b"/3/device/" + b"ab" * 32),
    (b"apns-topic", b"com.example.app"),
    (b"apns-push-type", b"alert"),
    NeverIndexedHeaderTuple(b"authorization", b"bearer x.y.z"),
]
BODY = b'{"aps":{"alert":"hi"}}'


class StockH2(H2Connection):  # type: ignore[misc]
    """h2 as shipped, configured like ours, for comparison."""

    def __init__(self) -> None:
        super().__init__(config=H2Configuration(client_side=True, header_encoding=None))


def connect(client: H2Connection, server_settings: dict[int, int] | None = None) -> H2Connection:
    server = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    if server_settings:
        server.update_settings(server_settings)
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return server


def request_events(server: H2Connection, data: bytes) -> list[Event]:
    events: list[Event] = server.receive_data(data)
    return events


def stream_state(conn: H2Connection, stream_id: int) -> tuple[object, ...]:
    stream = conn.streams[stream_id]
    return (
        stream.state_machine.state,
        stream.state_machine.client,
        stream.state_machine.headers_sent,
        stream.state_machine.stream_closed_by,
        stream.outbound_flow_control_window,
        stream.inbound_flow_control_window,
        stream.max_outbound_frame_size,
        stream.request_method,
        conn.outbound_flow_control_window,
        conn.highest_outbound_stream_id,
        conn.state_machine.state,
    )


def stock_request(conn: H2Connection, body: bytes) -> int:
    stream_id: int = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, HEADERS, end_stream=not body)
    if body:
        conn.send_data(stream_id, body, end_stream=True)
    return stream_id


def test_request_decodes_like_stock_and_leaves_the_same_state() -> None:
    ours, stock = LeanH2(), StockH2()
    server_ours, server_stock = connect(ours), connect(stock)
    for _ in range(3):
        stream_id, sent = ours.send_request(HEADERS, BODY)
        stock_id = stock_request(stock, BODY)
        assert (stream_id, sent) == (stock_id, len(BODY))
        ours.open_count += 1
        assert stream_state(ours, stream_id) == stream_state(stock, stock_id)
        got = request_events(server_ours, ours.data_to_send())
        want = request_events(server_stock, stock.data_to_send())
        assert [type(e) for e in got] == [type(e) for e in want]
        assert [type(e) for e in got] == [RequestReceived, DataReceived, StreamEnded]
        assert got[0].headers == want[0].headers == HEADERS
        assert got[1].data == want[1].data == BODY


def test_empty_body_ends_the_stream_on_headers() -> None:
    ours, stock = LeanH2(), StockH2()
    server = connect(ours)
    connect(stock)
    stream_id, sent = ours.send_request(HEADERS, b"")
    stock_id = stock_request(stock, b"")
    assert sent == 0
    assert stream_state(ours, stream_id) == stream_state(stock, stock_id)
    events = request_events(server, ours.data_to_send())
    assert [type(e) for e in events] == [RequestReceived, StreamEnded]


def test_body_beyond_the_window_is_cut_and_the_stream_stays_open() -> None:
    ours = LeanH2()
    server = connect(ours, {SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id, sent = ours.send_request(HEADERS, BODY)
    assert sent == 10
    assert ours.local_flow_control_window(stream_id) == 0
    events = request_events(server, ours.data_to_send())
    assert [type(e) for e in events] == [RequestReceived, DataReceived]
    assert events[1].data == BODY[:10]
    # The rest goes out through h2's own send_data once the window opens.
    server.increment_flow_control_window(100, stream_id)
    ours.receive_data(server.data_to_send())
    ours.send_data(stream_id, BODY[10:], end_stream=True)
    events = request_events(server, ours.data_to_send())
    assert [type(e) for e in events] == [DataReceived, StreamEnded]


def test_large_header_block_uses_continuation_frames() -> None:
    ours = LeanH2()
    server = connect(ours)
    big = [*HEADERS, (b"x-big", b"v" * 40_000)]
    stream_id, sent = ours.send_request(big, BODY)
    assert sent == len(BODY)
    events = request_events(server, ours.data_to_send())
    assert [type(e) for e in events] == [RequestReceived, DataReceived, StreamEnded]
    assert events[0].headers == big
    assert events[0].stream_id == stream_id


def test_stream_limit_is_enforced_and_nothing_is_queued() -> None:
    ours = LeanH2()
    connect(ours, {SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    ours.send_request(HEADERS, BODY)
    ours.open_count += 1
    ours.data_to_send()
    with pytest.raises(TooManyStreamsError):
        ours.send_request(HEADERS, BODY)
    assert ours.data_to_send() == b""
    assert len(ours.streams) == 1


def test_body_cut_by_the_window_leaves_the_same_state_as_stock() -> None:
    ours, stock = LeanH2(), StockH2()
    connect(ours, {SettingCodes.INITIAL_WINDOW_SIZE: 10})
    connect(stock, {SettingCodes.INITIAL_WINDOW_SIZE: 10})
    stream_id, sent = ours.send_request(HEADERS, BODY)
    stock_id = stock.get_next_available_stream_id()
    stock.send_headers(stock_id, HEADERS)
    stock.send_data(stock_id, BODY[:10])
    assert sent == 10
    assert stream_state(ours, stream_id) == stream_state(stock, stock_id)


def test_a_closed_connection_refuses_a_stream_as_stock_does() -> None:
    ours, stock = LeanH2(), StockH2()
    connect(ours)
    connect(stock)
    ours.close_connection()
    stock.close_connection()
    ours.data_to_send()
    with pytest.raises(ProtocolError) as raised:
        ours.send_request(HEADERS, BODY)
    with pytest.raises(ProtocolError) as stock_raised:
        stock_request(stock, BODY)
    assert type(raised.value) is type(stock_raised.value)
    assert ours.data_to_send() == b""
    assert not ours.streams


def test_no_stream_id_left_raises_and_queues_nothing() -> None:
    ours = LeanH2()
    connect(ours)
    ours.highest_outbound_stream_id = (1 << 31) - 1
    with pytest.raises(NoAvailableStreamIDError):
        ours.send_request(HEADERS, BODY)
    assert ours.data_to_send() == b""


def test_h2_reads_a_reset_of_a_stream_opened_the_lean_way() -> None:
    """Frames the fast path hands to h2 (a server's RST_STREAM here) find the stream
    as h2 would have built it."""
    ours = LeanH2()
    server = connect(ours)
    stream_id, _ = ours.send_request(HEADERS, BODY)
    ours.open_count += 1
    request_events(server, ours.data_to_send())
    server.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
    events = ours.receive_data(server.data_to_send())
    (reset,) = events
    assert isinstance(reset, StreamReset)
    assert reset.error_code == ErrorCodes.REFUSED_STREAM
    assert ours.streams[stream_id].closed
