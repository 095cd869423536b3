"""Upstreams that misbehave on the connection: one that accepts every connection (TLS,
HTTP/2 SETTINGS) and drops it at once, one whose answers never end.  Their app's pushes
are answered soon, memory stays bounded, and the other apps deliver (over HTTP, against
the APNs simulator and small HTTP/2 servers on real TLS)."""

from __future__ import annotations

from pathlib import Path

import h2.config
import h2.connection
import h2.events
import trio
import trustme

from pushd.simulators.apns import ApnsSimulator
from tests.conftest import PushdFactory
from tests.misbehaving import (
    BROKEN_DEVICE,
    HEALTHY_DEVICE,
    TlsServer,
    broken_and_healthy,
    send_alert,
    server_context,
)

#: The dropping app's request_timeout: short, so a push that waits it out shows quickly.
REQUEST_TIMEOUT = 1.0
#: Pushes sent to the dropping app, one after another.
SENDS = 8
#: What a push that waited its whole request_timeout for a connection hears.
NO_CONNECTION = "no APNs connection available"


class Dropper(TlsServer):
    """Completes TLS and the HTTP/2 preface, then closes the connection."""

    async def over_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        conn.receive_data(await stream.receive_some())
        await stream.send_all(conn.data_to_send())


async def test_an_upstream_that_drops_every_connection_fails_its_pushes_at_once(
    nursery: trio.Nursery,
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    ca: trustme.CA,
    key_file: Path,
    ca_file: Path,
) -> None:
    """A connection that closed before answering anything was counted as a failed
    connect, but its backoff was slept out with sends waiting for the next connection:
    once the backoff passed the app's request_timeout, every push waited all of it and
    was spooled as "no APNs connection available" (probe: p50 4.4 s, p99 10 s, where a
    refused connect answers in tens of ms).  From the second such connection on, the
    app is unreachable until one answers: its pushes are spooled at once, as for a
    refused connect, and the healthy app delivers."""
    dropper = Dropper(server_context(ca))
    await nursery.start(dropper.serve)
    pushd = await broken_and_healthy(
        start_pushd, "dropping", dropper.port, simulator, key_file, ca_file,
        {"connections": 1, "request_timeout": REQUEST_TIMEOUT},
    )  # fmt: skip

    results = []
    for _ in range(SENDS):
        results.append(await send_alert(pushd, "dropping", BROKEN_DEVICE))
        assert (await send_alert(pushd, "healthy", HEALTHY_DEVICE))["status"] == "delivered"
    assert [result["status"] for result in results] == ["retrying"] * SENDS
    # None waited out its request_timeout for a connection that never came.
    assert not any(result["reason"] == NO_CONNECTION for result in results), results
    assert "unreachable" in results[-1]["reason"], results


class Endless(TlsServer):
    """Answers every request ``400`` and then a body that never ends."""

    async def over_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        answering: set[int] = set()
        more = trio.Event()

        async def read() -> None:
            nonlocal more
            while data := await stream.receive_some():
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        conn.send_headers(event.stream_id, [(":status", "400")])
                        answering.add(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset):
                        answering.discard(event.stream_id)
                more.set()  # the writer sends what h2 has to say

        async def write() -> None:
            nonlocal more
            while True:
                for sid in list(answering):
                    size = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    if size > 0:
                        conn.send_data(sid, b" " * size)
                if data := conn.data_to_send():
                    await stream.send_all(data)
                else:
                    await more.wait()
                    more = trio.Event()

        async with trio.open_nursery() as nursery:
            conn.initiate_connection()
            await stream.send_all(conn.data_to_send())
            nursery.start_soon(write)
            await read()
            nursery.cancel_scope.cancel()


async def test_an_answer_without_end_is_cut_and_read_by_its_status(
    nursery: trio.Nursery,
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    ca: trustme.CA,
    key_file: Path,
    ca_file: Path,
) -> None:
    """An upstream that answered with a body that never ended had all of it kept until
    the request timed out: pushd's memory grew by about 20 MiB a second per request in
    flight (probe: 70 -> 261 MiB in 11 s, and on with each retry), shared by every app.
    Now a response body is kept up to MAX_RESPONSE_BODY: the stream is reset there and
    the answer read by its status (400: failed), and the healthy app delivers."""
    endless = Endless(server_context(ca))
    await nursery.start(endless.serve)
    pushd = await broken_and_healthy(
        start_pushd, "streaming", endless.port, simulator, key_file, ca_file,
        {"connections": 1, "request_timeout": REQUEST_TIMEOUT},
    )  # fmt: skip
    answer = await pushd.send({"tokens": [BROKEN_DEVICE], "app": "streaming", "alert": "hi"})
    assert answer["results"][0] == {
        "token": BROKEN_DEVICE,
        "app": "streaming",
        "status": "failed",
        "reason": "HTTP 400",
    }
    answer = await pushd.send({"tokens": [HEALTHY_DEVICE], "app": "healthy", "alert": "hi"})
    assert answer["results"][0]["status"] == "delivered"
