"""Reading and writing a plain TCP client's socket without trio's stream layers.

Every request pays for one read and one write of its client's connection.  Through
``trio.SocketStream`` each is a conflict detector, an error-translating context manager,
a memoryview, the socket wrapper's ``_nonblocking_helper`` and an async context manager
that checks for cancellation before the system call and, when the call did not block,
yields to the scheduler after it: a full scheduler turn per write, and per read that found
its bytes waiting.  Here a read or write is the system call itself, and waits only when
the socket would block, on ``trio.lowlevel.wait_readable``/``wait_writable`` (which are
checkpoints).  pushd runs on Linux, where a TCP socket's file descriptor takes ``read``
and ``write`` as it takes ``recv`` and ``send``.

What the skipped turns gave, fairness, is kept by :meth:`SocketIO.turn`: a connection
whose requests keep arriving before it asks for them yields once every
:data:`REQUESTS_PER_TURN` of them, so a client pipelining requests to a handler that
never waits cannot hold the event loop.  TLS connections keep ``trio.SSLStream``.
"""

from __future__ import annotations

import os
from typing import Final

import attrs
import trio

#: Requests a connection may be served back to back, without its socket ever having
#: made it wait, before it yields to the other tasks once.
REQUESTS_PER_TURN: Final = 8


async def write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to the non-blocking descriptor ``fd``, waiting for room
    only when it would block; whether it had to wait.  Errors are the system's."""
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent == len(data):
        return False
    view = memoryview(data)
    while sent < len(view):
        await trio.lowlevel.wait_writable(fd)
        try:
            sent += os.write(fd, view[sent:])
        except BlockingIOError:
            continue
    return True


@attrs.define(eq=False)
class SocketIO:
    """The file descriptor of a connected, non-blocking TCP socket, read and written
    directly; errors are the system's (``OSError``), end of stream is ``b""``."""

    fd: int
    #: Requests served since this connection last waited or yielded.
    _unyielded: int = 0
    _answered: bool = False

    async def receive(self, max_bytes: int) -> bytes:
        """The bytes waiting on the socket, waiting for some if there are none."""
        fd = self.fd
        if self._answered:
            self._answered = False
            self._unyielded = 0
            await trio.lowlevel.wait_readable(fd)
        while True:
            try:
                return os.read(fd, max_bytes)
            except BlockingIOError:
                self._unyielded = 0
                await trio.lowlevel.wait_readable(fd)

    async def send_all(self, data: bytes) -> None:
        """Write all of ``data``, waiting for room in the socket's buffer as needed."""
        if await write_all(self.fd, data):
            self._unyielded = 0

    async def turn(self) -> None:
        """Called once per request served: yield to the other tasks if this
        connection has not waited for :data:`REQUESTS_PER_TURN` requests."""
        self._unyielded += 1
        self._answered = True
        if self._unyielded >= REQUESTS_PER_TURN:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()
