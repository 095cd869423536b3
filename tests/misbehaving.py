"""Small local servers that stand in for an upstream (APNs, FCM, a token endpoint) that
misbehaves on the connection, and what the tests against them share: each test says
only what one connection gets, this module listens, counts and wraps TLS."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

import trio
import trustme

from pushd.simulators.apns import ApnsSimulator
from tests.conftest import OTHER_TOPIC, TOPIC, PushdFactory, app_entry, token

#: The misbehaving app's device, and the healthy app's.
BROKEN_DEVICE = token(1)
HEALTHY_DEVICE = token(2)


class LocalServer:
    """A TCP server on 127.0.0.1 on a free port; ``accepted`` counts its connections."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0

    async def connection(self, tcp: trio.SocketStream) -> None:
        """What one accepted connection gets (subclasses say)."""
        raise NotImplementedError

    async def _accept(self, tcp: trio.SocketStream) -> None:
        self.accepted += 1
        await self.connection(tcp)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._accept, listeners)


class TlsServer(LocalServer):
    """A :class:`LocalServer` that completes TLS with ``context`` first; a client that
    goes away ends its connection quietly."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context

    async def over_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        """What one connection gets once TLS is up (subclasses say)."""
        raise NotImplementedError

    async def connection(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                await self.over_tls(stream)


def server_context(ca: trustme.CA, *, alpn_h2: bool = True) -> ssl.SSLContext:
    """A server context for 127.0.0.1 with a certificate from ``ca`` (pushd's tests
    trust it), offering HTTP/2 by ALPN unless ``alpn_h2`` is false."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if alpn_h2:
        context.set_alpn_protocols(["h2"])
    return context


async def send_alert(pushd: Any, app: str, device: str) -> dict[str, Any]:
    """One native push to ``device`` of ``app``; its one result."""
    answer = await pushd.send({"tokens": [device], "app": app, "alert": "hi"})
    result: dict[str, Any] = answer["results"][0]
    return result


async def broken_and_healthy(
    start_pushd: PushdFactory,
    broken: str,
    port: int,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    settings: dict[str, Any],
) -> Any:
    """pushd with app ``broken`` on the misbehaving server at ``port`` (its entry
    updated with ``settings``; a value None drops that key) and app ``healthy`` on the
    APNs simulator, a device registered with each
    (:data:`BROKEN_DEVICE`, :data:`HEALTHY_DEVICE`)."""
    entry = app_entry(broken, OTHER_TOPIC, f"https://127.0.0.1:{port}", key_file, ca_file)
    entry.update(settings)
    entry = {key: value for key, value in entry.items() if value is not None}
    healthy = app_entry("healthy", TOPIC, f"https://127.0.0.1:{simulator.port}", key_file, ca_file)
    pushd = await start_pushd(apps=[entry, healthy])
    await pushd.register("b", BROKEN_DEVICE, app=broken)
    await pushd.register("h", HEALTHY_DEVICE, app="healthy")
    return pushd
