"""The FCM simulator's own HTTP/2 loop: one TLS connection that chose ``h2`` by ALPN.

Why not hypercorn for HTTP/2 (it still serves HTTP/1.1): hypercorn runs an ASGI task per
request and writes each response's HEADERS and DATA as separate sends, one response at a
time, so the simulator cost more CPU per send than the gateway it tests and set the pace
of the fan-out benchmark, and its many small TLS records made the client wake and read
several times per answer.  Production front ends (Google's GFE) answer many streams per
write.  This loop, like the APNs simulator's, has one reader task that feeds the ``h2``
state machine and answers complete requests on the spot, and one writer task that sends
whatever ``h2`` has queued once per wake-up: answers ready together leave in one write.

What a request means (endpoints, scripted faults, ``goaway_after``, delays, recording)
stays with the simulator (:class:`Owner`); this module knows only HTTP/2: streams, request
bodies and their flow control, answers and their flow control, GOAWAY, reset, idle
timeout.  A reply with a delay, ``drop`` or ``goaway`` runs as a task of its own, with a
cancel scope that a client's RST_STREAM or our GOAWAY cancels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from pushd.simulators.fcm.answers import Answer
from pushd.simulators.fcm.constants import (
    CLOSE_LINGER,
    H2_CONNECTION_WINDOW,
    H2_RECEIVE_SIZE,
    H2_STREAM_WINDOW,
    KEEP_ALIVE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    MAX_REQUEST_BODY,
)
from pushd.simulators.h2loop import read_loop, write_loop
from pushd.simulators.sockets import set_linger_zero

#: The largest header list a client may send (hypercorn's default, which FCM's clients met).
MAX_HEADER_LIST_SIZE = 1 << 16
#: h2's initial connection window, which :data:`H2_CONNECTION_WINDOW` is raised from.
_DEFAULT_WINDOW = 65535


class Owner(Protocol):
    """What a connection needs of the simulator that accepted it (:class:`FcmSimulator`).

    A protocol rather than the class itself, so that this module does not import the
    simulator that imports it.
    """

    def _log(self, message: str) -> None: ...

    def _h2_request(self, conn: H2Served, request: Request) -> None: ...


class Request:
    """One request being received, or complete and waiting for its answer."""

    __slots__ = ("chunks", "headers", "method", "path", "scope", "size", "stream_id")

    def __init__(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.method = headers.get(b":method", b"").decode("latin-1")
        raw_path = headers.get(b":path", b"").partition(b"?")[0]
        #: Decoded and without the query, as an ASGI server gives it.
        self.path = unquote(raw_path.decode("latin-1"))
        self.chunks: list[bytes] = []
        self.size = 0
        #: Set while a delayed or scripted answer runs as a task.
        self.scope: trio.CancelScope | None = None

    @property
    def body(self) -> bytes:
        """The body; beyond :data:`MAX_REQUEST_BODY` only its size matters (the chunk that
        crosses the limit is kept, so a body over it is longer than the limit)."""
        return b"".join(self.chunks)


class H2Served:
    """One HTTP/2 connection: ``h2``'s state machine, its open requests, and the reader,
    writer and idle-watch tasks.

    Offers what the simulator's scripted faults call on any connection: ``closing``,
    ``dropped``, ``taken``, :meth:`goaway` and :meth:`drop`.
    """

    def __init__(self, owner: Owner, stream: trio.abc.Stream) -> None:
        self.owner = owner
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: H2_STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        #: Requests received and not yet answered, by stream id.
        self.active: dict[int, Request] = {}
        #: Answer bodies waiting for the client's flow-control window, by stream id.
        self.unsent: dict[int, bytes] = {}
        #: Requests taken on this connection (for ``goaway_after``).
        self.taken = 0
        #: Set once GOAWAY went out (or the connection is ending): nothing more is
        #: answered or recorded on it.
        self.closing = False
        #: Set by a scripted ``drop``: the connection is reset, not closed.
        self.dropped = False
        self.last_activity = trio.current_time()
        self.wake = trio.Event()
        self.done = trio.Event()
        self.reader_done = trio.Event()
        self.nursery: trio.Nursery | None = None

    # -- serving --

    async def serve(self) -> None:
        """Serve until the client hangs up, a GOAWAY has been read, or a drop."""
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(H2_CONNECTION_WINDOW - _DEFAULT_WINDOW)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._writer)
            nursery.start_soon(self._reader)
            nursery.start_soon(self._idle_watch)
            self.kick()
            await self.done.wait()
            if not self.dropped:
                with trio.move_on_after(CLOSE_LINGER):
                    await self.reader_done.wait()
            nursery.cancel_scope.cancel()

    def kick(self) -> None:
        """Ask the writer task to send whatever h2 has queued."""
        self.wake.set()

    def close(self) -> None:
        """Flush what is queued (e.g. a GOAWAY), then end the connection."""
        self.closing = True
        self.wake.set()

    def start_soon(self, request: Request, answer_later: Callable[[], Awaitable[None]]) -> None:
        """Run ``answer_later`` for ``request`` as a task that a reset or GOAWAY cancels."""
        assert self.nursery is not None
        scope = request.scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await answer_later()

        self.nursery.start_soon(run)

    def respond(self, request: Request, answer: Answer) -> None:
        """Queue ``answer`` (HEADERS and DATA) and wake the writer; the next write takes
        it along with every other answer queued by then."""
        sid = request.stream_id
        if self.active.pop(sid, None) is None:
            return  # reset by the client, or GOAWAY went out meanwhile
        body = answer.body
        headers = [
            (b":status", str(answer.status).encode()),
            *answer.headers,
            (b"content-length", str(len(body)).encode()),
        ]
        try:
            self.h2.send_headers(sid, headers, end_stream=not body)
            if body:
                self._send_body(sid, body)
        except h2.exceptions.ProtocolError:
            return  # the client reset the stream meanwhile; nobody to tell
        self.last_activity = trio.current_time()
        self.kick()

    def _send_body(self, sid: int, body: bytes) -> None:
        """Send as much of ``body`` as the client's window allows; keep the rest."""
        room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
        while body and room > 0:
            chunk, body = body[:room], body[room:]
            self.h2.send_data(sid, chunk, end_stream=not body)
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
        if body:
            self.unsent[sid] = body

    def _window_opened(self) -> None:
        for sid, body in list(self.unsent.items()):
            del self.unsent[sid]
            with contextlib.suppress(h2.exceptions.ProtocolError):  # the stream is gone
                self._send_body(sid, body)

    # -- scripted faults --

    async def goaway(self, reason: str) -> None:
        """:meth:`start_goaway`; the connection closes once the client has read it."""
        self.start_goaway(reason)
        await trio.lowlevel.checkpoint()

    def start_goaway(self, reason: str) -> None:
        """Send GOAWAY with ``reason`` as debug data, then close.

        Every stream not yet answered lies above the GOAWAY's last stream id, so the
        client knows none of them was processed; none of them is answered afterwards.
        """
        if self.closing:
            return
        last = min(self.active) - 2 if self.active else self.h2.highest_inbound_stream_id
        for request in self.active.values():
            if request.scope is not None:
                request.scope.cancel()
        self.active.clear()
        self.unsent.clear()
        # A ProtocolError means h2 has closed the connection already (the client's GOAWAY).
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(
                error_code=ErrorCodes.NO_ERROR,
                additional_data=reason.encode(),
                last_stream_id=max(last, 0),
            )
        self.close()

    def drop(self) -> None:
        """Reset the connection now (RST on close), leaving every stream unanswered."""
        self.dropped = True
        self.closing = True
        set_linger_zero(self.stream)
        self.done.set()

    # -- tasks --

    async def _writer(self) -> None:
        """The only task that sends (see :mod:`pushd.simulators.h2loop`)."""
        try:
            await write_loop(self)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closing = True
        self.done.set()

    async def _reader(self) -> None:
        try:
            await read_loop(
                self,
                H2_RECEIVE_SIZE,
                self._handle,
                lambda exc: self.owner._log(f"HTTP/2 protocol error: {exc}"),
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closing = True
            self.done.set()
        finally:
            self.reader_done.set()

    async def _idle_watch(self) -> None:
        """Send GOAWAY once no request has been open for :data:`KEEP_ALIVE_TIMEOUT`."""
        while True:
            await trio.sleep_until(self.last_activity + KEEP_ALIVE_TIMEOUT)
            if self.active:
                self.last_activity = trio.current_time()
            elif trio.current_time() >= self.last_activity + KEEP_ALIVE_TIMEOUT:
                self.start_goaway("idle")
                return

    # -- h2 events --

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            request = self.active.get(event.stream_id or 0)
            if request is not None and event.data:
                if request.size <= MAX_REQUEST_BODY:
                    request.chunks.append(event.data)
                request.size += len(event.data)
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            assert sid is not None
            headers = {
                bytes(name): bytes(value) for name, value in event.headers or ()
            }  # h2 checked: lower case
            self.active[sid] = Request(sid, headers)
            self.last_activity = trio.current_time()
        elif isinstance(event, h2.events.StreamEnded):
            request = self.active.get(event.stream_id or 0)
            if request is not None:
                self.owner._h2_request(self, request)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            if self.unsent:  # a window grew: by WINDOW_UPDATE, or by INITIAL_WINDOW_SIZE
                self._window_opened()
        elif isinstance(event, h2.events.StreamReset):
            self.unsent.pop(event.stream_id or 0, None)
            request = self.active.pop(event.stream_id or 0, None)
            if request is not None and request.scope is not None:
                request.scope.cancel()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()
