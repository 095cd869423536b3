"""TLS on an upstream connection, run over its socket's descriptor without trio's stream
layers.

Every upstream read and write went through ``trio.SSLStream`` and the
``trio.SocketStream`` beneath it: locks and conflict detectors, a cancellation check
before each call and a scheduler turn after each one that did not block, on both
layers.  When notifications arrive alone (a gateway's usual load) each pays for its own
upstream write and read, and a ``py-spy`` profile at 1,250 notifications/s put 15 % of
pushd's CPU in those layers.  Here a read or write is ``ssl.SSLObject`` on memory BIOs
plus the system call, waiting on ``trio.lowlevel.wait_readable``/``wait_writable`` only
when the socket would block.

What ``trio.SSLStream`` gave that a connection needs is kept: a TLS failure is a
``trio.BrokenResourceError`` whose ``__cause__`` is the ``ssl.SSLError`` (how a server
refusing the client certificate is told apart, :mod:`pushd.upstream.h2connect`); the end
of the stream with or without ``close_notify`` reads as ``b""`` (``https_compatible``);
and the bytes TLS writes go out in order even when the reader must answer the server
(a TLS 1.3 key update) while the writer's own write waits for room in the socket.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from typing import Final

import trio

from pushd.rawsocket import write_all

#: Bytes read from the socket at a time (the h2 reader's own read size is what it asks).
READ_BYTES: Final = 64 * 1024


class TlsSocket(trio.abc.AsyncResource):
    """The client side of TLS over a connected TCP stream; :meth:`do_handshake` first.

    Its ``send_all``, ``receive_some`` and ``aclose`` are what the upstream connection
    uses of a trio stream.  One task may receive while another sends.
    """

    def __init__(
        self, transport: trio.SocketStream, context: ssl.SSLContext, server_hostname: str
    ) -> None:
        self.transport = transport
        self._fd = transport.socket.fileno()
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname
        )
        #: Whether a task is writing the outgoing bytes now; others wait in ``_turn``.
        self._writing = False
        self._turn = trio.lowlevel.ParkingLot()
        #: Whether the socket reached its end (told to TLS).
        self._ended = False

    def selected_alpn_protocol(self) -> str | None:
        """The protocol the server chose (after the handshake)."""
        return self._tls.selected_alpn_protocol()

    async def do_handshake(self) -> None:
        """Complete the handshake (certificate checks included); the caller bounds time."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("closed during the TLS handshake") from None
            except ssl.SSLError as exc:
                await self._flush_quietly()  # the alert we send, if any
                raise trio.BrokenResourceError from exc
        await self._flush()

    async def send_all(self, data: bytes) -> None:
        """Encrypt ``data`` and write all of it."""
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError from exc
        await self._flush()

    async def receive_some(self, max_bytes: int = READ_BYTES) -> bytes:
        """Some decrypted bytes, waiting for them; ``b""`` at the end of the stream."""
        while True:
            try:
                return self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""  # close_notify, or the peer just closed (as HTTPS tolerates)
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError from exc
            if self._ended:
                return b""
            if self._outgoing.pending:  # TLS answered something the server sent
                await self._flush()
            if not await self._fill():
                self._ended = True
                self._incoming.write_eof()

    async def aclose(self) -> None:
        """Close the socket (no ``close_notify``: the connection is given up)."""
        await self.transport.aclose()

    async def _fill(self) -> bool:
        """Read what the socket has into TLS, waiting for some; False at its end."""
        fd = self._fd
        while True:
            try:
                data = os.read(fd, READ_BYTES)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:
                raise trio.BrokenResourceError from exc
        if not data:
            return False
        self._incoming.write(data)
        return True

    async def _flush(self) -> None:
        """Write every byte TLS has produced, in order, one task at a time."""
        while self._writing:
            await self._turn.park()
        if not self._outgoing.pending:
            return
        self._writing = True
        try:
            while self._outgoing.pending:
                try:
                    await write_all(self._fd, self._outgoing.read())
                except OSError as exc:
                    raise trio.BrokenResourceError from exc
        finally:
            self._writing = False
            self._turn.unpark()

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await self._flush()
