"""The provider-neutral pool against a bare h2 server: JSON bodies, GOAWAY, default streams.

The APNs and FCM clients are tested against their simulators; this server does what
neither simulator does (GOAWAY on an FCM-shaped connection, answers split over DATA
frames, SETTINGS without a stream limit, a connection that goes silent, PING ACKs
included) in a few lines of stock h2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from pathlib import Path

import attrs
import pytest
import trio
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes

from pushd.model import Delivered, Outcome, RetryLater
from pushd.upstream import h2conn
from pushd.upstream.h2batch import Batch, Reauthenticate, Report
from pushd.upstream.h2pool import H2Pool, spread
from pushd.upstream.h2types import Peer, Stream
from pushd.upstream.hpack import encode_fields

PEER = Peer("Test", logging.getLogger("pushd.test"), default_streams=7)


@attrs.define
class Server:
    """Answers every request 200 with ``{"name": <body>}`` in two DATA frames.

    On the first connection it sends GOAWAY after ``goaway_after`` requests, naming the
    first stream as the last it will process, then answers only that one.
    """

    goaway_after: int = 0
    #: The ``:status`` the first connection answers with (a middlebox's garbage).
    first_status: bytes = b"200"
    #: The first connection goes silent once it received this many requests: it reads
    #: nothing more and sends nothing, not even a PING ACK (0: never).
    mute_after: int = 0
    #: SETTINGS_MAX_CONCURRENT_STREAMS the first connection sends with its first answer.
    first_limit: int | None = None
    connections: int = 0
    bodies: list[bytes] = attrs.Factory(list)

    async def handle(self, sock: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.serve(sock)

    async def serve(self, sock: trio.SSLStream[trio.SocketStream]) -> None:
        self.connections += 1
        first = self.connections == 1
        config = H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False
        )
        conn = H2Connection(config)
        conn.initiate_connection()  # no MAX_CONCURRENT_STREAMS: the peer's default applies
        await sock.send_all(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        ended: list[int] = []
        while True:
            data = await sock.receive_some(1 << 16)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    bodies[event.stream_id] = b""
                elif isinstance(event, DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    ended.append(event.stream_id)
            if first and self.mute_after and len(bodies) >= self.mute_after:
                await trio.sleep_forever()
            goaway = first and self.goaway_after and len(ended) >= self.goaway_after
            if goaway:
                ended = ended[:1]
            for sid in ended:
                self.bodies.append(bodies[sid])
                answer = json.dumps({"name": bodies[sid].decode()}).encode()
                status = self.first_status if first else b"200"
                conn.send_headers(sid, [(b":status", status)])
                half = len(answer) // 2
                conn.send_data(sid, answer[:half])
                conn.send_data(sid, answer[half:], end_stream=True)
            if goaway:
                conn.close_connection(last_stream_id=ended[0])
            if first and ended and self.first_limit is not None:
                conn.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.first_limit})
                self.first_limit = None
            ended = []
            await sock.send_all(conn.data_to_send())


class EchoBatch(Batch):
    """A batch whose body per index is the index; the answer's ``name`` must echo it."""

    __slots__ = ("fields",)

    def __init__(self, pool: H2Pool, report: Report, count: int) -> None:
        super().__init__(pool, report, count, None)
        self.fields = encode_fields(
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", b"127.0.0.1"),
                (b":path", b"/echo"),
            ]
        )

    def build(self, index: int) -> tuple[bytes, bytes]:
        return self.fields, str(index).encode()

    def classify(self, stream: Stream) -> Outcome | Reauthenticate:
        name = json.loads(stream.response_body())["name"]
        if stream.status != 200 or name != str(stream.index):
            return RetryLater(f"bad answer {name!r}")
        return Delivered(name)


@pytest.fixture
async def server(nursery: trio.Nursery, simulator_tls: ssl.SSLContext) -> tuple[Server, int]:
    srv = Server()
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(tcp[0].socket.getsockname()[1])
    listeners = [trio.SSLListener(t, simulator_tls, https_compatible=True) for t in tcp]
    nursery.start_soon(trio.serve_listeners, srv.handle, listeners)
    return srv, port


async def start_pool(nursery: trio.Nursery, port: int, ca_file: Path) -> H2Pool:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.set_alpn_protocols(["h2"])
    pool = H2Pool(
        PEER, name="t", label="test", host="127.0.0.1", port=port, ssl_context=ctx, connections=1
    )
    await nursery.start(pool.run)
    return pool


async def send(pool: H2Pool, count: int, wait: float = 5) -> dict[int, Outcome]:
    reports: dict[int, Outcome] = {}

    def report(index: int, outcome: Outcome) -> None:
        assert index not in reports
        reports[index] = outcome

    batch = EchoBatch(pool, report, count)
    batch.pending.extend(range(count))
    with trio.fail_after(wait + 1):
        await pool.send_batch(batch, trio.current_time() + wait)
    return reports


async def test_bodies_are_collected_and_default_streams_apply(
    nursery: trio.Nursery, server: tuple[Server, int], ca_file: Path
) -> None:
    srv, port = server
    pool = await start_pool(nursery, port, ca_file)
    reports = await send(pool, 30)  # 7 streams at a time: slots are reused
    assert reports == {i: Delivered(str(i)) for i in range(30)}
    assert srv.connections == 1
    assert pool.in_flight == 0


async def test_goaway_resends_unprocessed_on_a_new_connection(
    nursery: trio.Nursery, server: tuple[Server, int], ca_file: Path
) -> None:
    srv, port = server
    srv.goaway_after = 5
    pool = await start_pool(nursery, port, ca_file)
    reports = await send(pool, 7)
    assert reports == {i: Delivered(str(i)) for i in range(7)}
    assert srv.connections == 2
    assert pool.connections_opened == 2
    assert len(srv.bodies) == 7  # the refused ones were sent again, none twice answered


@pytest.mark.parametrize("status", [b"abc", b"2x0", b"2000", b""])
async def test_an_unreadable_status_ends_that_connection_not_the_process(
    nursery: trio.Nursery, server: tuple[Server, int], ca_file: Path, status: bytes
) -> None:
    """``int()`` of a ``:status`` that is not three digits raised out of the reader and
    ended pushd, every app with it; now the peer's protocol error ends its connection,
    its pushes are retried, and the next connection serves."""
    srv, port = server
    srv.first_status = status
    pool = await start_pool(nursery, port, ca_file)
    first = await send(pool, 3)
    assert set(first) == {0, 1, 2}
    assert all(isinstance(outcome, RetryLater) for outcome in first.values()), first
    second = await send(pool, 3)
    assert second == {i: Delivered(str(i)) for i in range(3)}
    assert srv.connections == 2


@pytest.mark.parametrize("stalled", [True, False], ids=["silent-in-flight", "timed-out"])
async def test_a_silent_connection_is_replaced_within_seconds(
    nursery: trio.Nursery,
    server: tuple[Server, int],
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    stalled: bool,
) -> None:
    """A connection that reads nothing and ACKs no PING was noticed only by the idle
    PING, after 60 s of silence and 10 s more for its ACK (tester: 72 s, every push in
    between timing out).  Now it is PINGed once requests on it get no frame for a short
    while, or once one times out, and dropped when the ACK does not come: the next push
    goes out on a new connection."""
    srv, port = server
    srv.mute_after = 1
    monkeypatch.setattr(h2conn, "STALL_PING_TIMEOUT", 0.3)
    if not stalled:  # only the timeout can prompt the PING
        monkeypatch.setattr(h2conn, "STALL_PING_AFTER", 60.0)
    else:
        monkeypatch.setattr(h2conn, "STALL_PING_AFTER", 0.2)
    pool = await start_pool(nursery, port, ca_file)
    started = trio.current_time()
    (first,) = (await send(pool, 1, wait=0.5 if not stalled else 2.0)).values()
    assert isinstance(first, RetryLater)
    await trio.sleep(0.4)  # the PING's ACK is overdue by now
    second = await send(pool, 1, wait=2.0)
    assert second == {0: Delivered("0")}
    assert srv.connections == 2
    assert trio.current_time() - started < 2.0


async def test_a_connection_allowing_no_streams_is_replaced(
    nursery: trio.Nursery, server: tuple[Server, int], ca_file: Path
) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS 0 on the only connection left every push waiting
    for a slot until it expired (tester: attempt 0 for good, no second connection).  A
    connection that allows no streams through a whole request timeout while pushes wait
    is retired, and the next push goes out on a new one."""
    srv, port = server
    srv.first_limit = 0
    pool = await start_pool(nursery, port, ca_file)
    assert await send(pool, 1) == {0: Delivered("0")}  # its answer brings the 0
    (waited,) = (await send(pool, 1, wait=0.3)).values()
    assert waited == RetryLater(pool.no_connection, kind="unreachable")
    assert await send(pool, 2, wait=2.0) == {0: Delivered("0"), 1: Delivered("1")}
    assert srv.connections == 2


def test_spread_levels_free_slots() -> None:
    @attrs.define
    class Conn:
        free_slots: int

    conns = [Conn(5), Conn(1), Conn(3)]
    got = {conns.index(c): n for c, n in spread(conns, 4)}  # type: ignore[arg-type]
    assert got == {0: 3, 2: 1}
