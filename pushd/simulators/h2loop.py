"""The server side of an HTTP/2 connection both simulators share: one reader, one writer.

The APNs and FCM simulators answer differently but move bytes the same way: a reader feeds
the ``h2`` state machine and hands each event to the simulator, and a single writer sends
whatever ``h2`` has queued once per wake-up, so answers ready together leave in one write
(as production front ends send them) and never interleave mid-frame.  What differs, how an
event is answered and what a broken connection means, stays with each simulator: these
loops return when the client hangs up and let ``trio.BrokenResourceError`` and
``trio.ClosedResourceError`` reach their caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import h2.connection
import h2.events
import h2.exceptions
import trio


class Served(Protocol):
    """What the loops need of a simulator's connection."""

    h2: h2.connection.H2Connection
    stream: trio.abc.Stream
    wake: trio.Event
    closing: bool

    def kick(self) -> None: ...

    def close(self) -> None: ...


async def write_loop(conn: Served) -> None:
    """Send what ``h2`` has queued each time ``conn.wake`` is set; return after the round
    that found ``conn.closing`` set."""
    while True:
        await conn.wake.wait()
        conn.wake = trio.Event()
        # Read the flag before taking the data: whatever was queued before close()
        # (a GOAWAY) goes out in this round or the next.
        closing = conn.closing
        data = conn.h2.data_to_send()
        if data:
            await conn.stream.send_all(data)
        if closing:
            return


async def read_loop(
    conn: Served,
    receive_size: int,
    handle: Callable[[h2.events.Event], None],
    protocol_error: Callable[[h2.exceptions.ProtocolError], None],
) -> None:
    """Feed ``h2`` until the client hangs up; once closing, read only to discard (``h2``
    takes nothing after GOAWAY, and the client's late frames must not reset it)."""
    while True:
        data = await conn.stream.receive_some(receive_size)
        if not data:
            return
        if conn.closing:
            continue
        try:
            events = conn.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued a GOAWAY naming the error; send it and hang up.
            protocol_error(exc)
            conn.close()
            continue
        for event in events:
            handle(event)
            if conn.closing:
                break
        conn.kick()
