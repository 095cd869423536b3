"""A TCP proxy between one pushd and PostgreSQL, to trouble that one link only.

:meth:`DbProxy.stall` stops forwarding in both directions while every socket stays
open: the kernel still acknowledges what pushd sends, so neither TCP keepalives nor
``tcp_user_timeout`` notice anything, as behind a hung proxy or connection pooler.
New connections wait too.  :meth:`DbProxy.resume` forwards again what was held.
"""

from __future__ import annotations

import contextlib

import attrs
import trio

#: Bytes read from one side per receive.
CHUNK = 65536


@attrs.define(eq=False)
class DbProxy:
    """Listens on 127.0.0.1 (``port`` once :meth:`serve` has started) and forwards
    to ``target``."""

    target: tuple[str, int]
    port: int = 0
    _flowing: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self._flowing.set()

    def stall(self) -> None:
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def _flow(self) -> None:
        while not self._flowing.is_set():
            await self._flowing.wait()  # an Event made by stall() while waiting

    def url_for(self, url: str) -> str:
        """``url`` (a libpq URL naming ``target``) through this proxy."""
        host, port = self.target
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        await self._flow()
        async with (
            client,
            await trio.open_tcp_stream(*self.target) as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(CHUNK):
                await self._flow()
                await sink.send_all(data)
        both.cancel()  # one side closed: close the other
