"""pushd's own TLS transport for upstream connections (:mod:`pushd.upstream.tlsio`),
against trio's TLS server over a real socket: what the upstream connection relies on
of a stream, where trio's ``SSLStream`` gave it before."""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
import trustme

from pushd.upstream.tlsio import TlsSocket
from tests.misbehaving import TlsServer, server_context

#: Far more than a socket's buffers hold: both directions fill and wait for room.
BIG = 8 * 1024 * 1024


class Scripted(TlsServer):
    """A TLS server whose connections run ``script``."""

    def __init__(
        self,
        context: ssl.SSLContext,
        script: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]],
    ) -> None:
        super().__init__(context)
        self.script = script

    async def over_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        await self.script(stream)


async def connect(
    nursery: trio.Nursery,
    ca: trustme.CA,
    script: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]],
    *,
    trusted: bool = True,
) -> TlsSocket:
    server = Scripted(server_context(ca), script)
    await nursery.start(server.serve)
    client = ssl.create_default_context()
    if trusted:
        ca.configure_trust(client)
    client.set_alpn_protocols(["h2"])
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
    sock = TlsSocket(tcp, client, "127.0.0.1")
    with trio.fail_after(5):
        await sock.do_handshake()
    return sock


async def echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)


async def test_megabytes_each_way_at_once_arrive_whole_and_in_order(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    """One task sends while another receives, as the h2 writer and reader do; neither
    side reads until the other's buffers are full, so writes wait for room."""
    sock = await connect(nursery, ca, echo)
    assert sock.selected_alpn_protocol() == "h2"
    sent = os.urandom(BIG)
    received = bytearray()

    async def send() -> None:
        for start in range(0, BIG, 1_000_000):
            await sock.send_all(sent[start : start + 1_000_000])

    with trio.fail_after(20):
        async with trio.open_nursery() as both:
            both.start_soon(send)
            while len(received) < BIG:
                data = await sock.receive_some(65536)
                assert data
                received += data
    assert hashlib.sha256(received).digest() == hashlib.sha256(sent).digest()
    await sock.aclose()


@pytest.mark.parametrize("close_notify", [True, False])
async def test_the_servers_end_of_stream_reads_as_empty(
    nursery: trio.Nursery, ca: trustme.CA, close_notify: bool
) -> None:
    """With ``close_notify`` or without (a peer that just closes, as HTTPS allows)."""

    async def answer_then_close(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.send_all(b"bye")
        if close_notify:
            await stream.aclose()
        else:
            await stream.transport_stream.aclose()

    sock = await connect(nursery, ca, answer_then_close)
    with trio.fail_after(5):
        assert await sock.receive_some() == b"bye"
        assert await sock.receive_some() == b""
        assert await sock.receive_some() == b""  # and stays at its end
    await sock.aclose()


async def test_a_certificate_that_does_not_verify_is_broken_with_the_ssl_error_as_cause(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    """How :func:`pushd.upstream.h2connect.root_cause` finds what failed."""

    async def nothing(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.receive_some()

    with pytest.raises(trio.BrokenResourceError) as caught:
        await connect(nursery, ca, nothing, trusted=False)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


async def test_a_server_that_closes_in_the_handshake_is_broken(ca: trustme.CA) -> None:
    async def close_at_once(tcp: trio.SocketStream) -> None:
        await tcp.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, close_at_once, listeners)
        client = ssl.create_default_context()
        ca.configure_trust(client)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        sock = TlsSocket(tcp, client, "127.0.0.1")
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await sock.do_handshake()
        await sock.aclose()
        nursery.cancel_scope.cancel()


async def test_a_write_after_the_peer_is_gone_is_broken(
    nursery: trio.Nursery, ca: trustme.CA
) -> None:
    async def close(stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.do_handshake()
        await stream.transport_stream.aclose()

    sock = await connect(nursery, ca, close)
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        while True:  # the first writes may still fit in the socket's buffer
            await sock.send_all(b"x" * 65536)
            await trio.sleep(0.01)
    with contextlib.suppress(trio.BrokenResourceError):
        await sock.aclose()
