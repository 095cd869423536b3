"""The floor: the least a trio HTTP/1.1 server can do per request, measured like pushd.

A number like "0.3 CPU-ms per request" means little on a shared 2-core machine whose
speed drifts with its neighbours: the same code measures 25 % apart from one run to
the next.  So the runner also measures this server, in the same invocation, with the
same load driver at the same concurrency, and every row gives pushd's cost as a ratio
to it.  The floor does only what any HTTP/1.1 server on trio must: accept, read until
the head is in, read ``Content-Length`` bytes of body, and write a fixed answer (the
empty endpoint's ``{}``, so the driver checks it as it checks pushd's), on kept-alive
connections, one task per connection.  No parser, no router, no timeouts: what pushd
costs above it is its own, and the ratio carries over between noisy runs far better
than the absolute figure.

Prints ``READY <port>`` once listening; exits when its stdin closes (see
``common.wait_for_stdin_eof``).
"""

from __future__ import annotations

import contextlib
import functools
import sys

import trio
from common import READY_PREFIX, wait_for_stdin_eof

#: Bytes asked of the socket per read, as pushd asks (``pushd.http1conn.RECEIVE_BYTES``).
RECEIVE_BYTES = 64 * 1024
#: Where the floor listens, as pushd does in the benchmark.
LOOPBACK = "127.0.0.1"
HEADER_END = b"\r\n\r\n"
CONTENT_LENGTH = b"\r\ncontent-length:"
#: The one answer: what pushd's empty endpoint answers, byte for byte in its meaning.
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def serve_connection(stream: trio.SocketStream) -> None:
    """Answer every request on one kept-alive connection until the client closes it."""
    buffer = bytearray()
    async with stream:
        while True:
            while (end := buffer.find(HEADER_END)) < 0:
                chunk = await stream.receive_some(RECEIVE_BYTES)
                if not chunk:
                    return
                buffer += chunk
            head = bytes(buffer[:end]).lower()
            at = head.find(CONTENT_LENGTH)
            length = 0
            if at >= 0:
                start = at + len(CONTENT_LENGTH)
                stop = head.find(b"\r\n", start)
                length = int(head[start : stop if stop >= 0 else len(head)])
            need = end + len(HEADER_END) + length
            while len(buffer) < need:
                chunk = await stream.receive_some(RECEIVE_BYTES)
                if not chunk:
                    return
                buffer += chunk
            del buffer[:need]
            await stream.send_all(ANSWER)


async def _main() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, host=LOOPBACK), _guarded, 0
        )
        port = listeners[0].socket.getsockname()[1]
        print(f"{READY_PREFIX}{port}", flush=True)
        await wait_for_stdin_eof()
        nursery.cancel_scope.cancel()


async def _guarded(stream: trio.SocketStream) -> None:
    """One connection; a client that breaks it ends that connection only."""
    with contextlib.suppress(trio.BrokenResourceError, OSError):
        await serve_connection(stream)


def main() -> int:
    trio.run(_main)
    return 0


if __name__ == "__main__":
    sys.exit(main())
