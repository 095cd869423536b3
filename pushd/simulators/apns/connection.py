"""One client connection: the h2 state machine, the stream limit APNs changes while a
connection lives, and the reader, writer and idle-watch tasks."""

from __future__ import annotations

import contextlib
import json
from typing import Protocol

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from pushd.simulators.apns.constants import (
    INITIAL_WINDOW_SIZE,
    MAX_KEPT_BODY,
    RECEIVE_SIZE,
)
from pushd.simulators.apns.jwt import TokenInfo
from pushd.simulators.h2loop import read_loop, write_loop


class Owner(Protocol):
    """What a connection needs of the simulator that accepted it (:class:`ApnsSimulator`).

    A protocol rather than the class itself, so that this module does not import the
    simulator that imports it.
    """

    max_streams: int
    initial_max_streams: int
    require_token_auth: bool
    idle_timeout: float | None
    goaways_sent: int
    streams_refused: int
    max_in_flight: dict[int, int]

    def _log(self, message: str) -> None: ...

    def _process(self, conn: Connection, st: Stream) -> None: ...


class _AdvertisedOnlySettings(h2.settings.Settings):
    """Local settings whose stream limit h2 advertises but does not enforce.

    h2 answers a stream beyond ``MAX_CONCURRENT_STREAMS`` by tearing down the whole
    connection (GOAWAY PROTOCOL_ERROR).  RFC 9113 §5.1.2 also allows a stream error,
    ``REFUSED_STREAM``, which tells the client the request was not processed and can be
    retried; that is the kinder behaviour a client's pool has to handle, so the simulator
    enforces the limit itself.  h2 reads the limit through this property and writes the
    SETTINGS frame from the stored values, so only enforcement is switched off.
    """

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[SettingCodes.MAX_CONCURRENT_STREAMS] = value


class Stream:
    """One request being received or waiting for its answer."""

    __slots__ = ("body", "body_len", "duplicate", "headers", "scope", "stream_id")

    def __init__(self, stream_id: int, headers: dict[bytes, bytes], duplicate: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.duplicate = duplicate
        self.body = bytearray()
        self.body_len = 0
        self.scope: trio.CancelScope | None = None


class Connection:
    """State of one client connection: h2 machine, stream limit, provider token."""

    def __init__(self, sim: Owner, connection_id: int, stream: trio.abc.Stream) -> None:
        self.sim = sim
        self.id = connection_id
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.target = sim.max_streams if not sim.require_token_auth else sim.initial_max_streams
        self.advertised = self.target
        self.h2.local_settings = _AdvertisedOnlySettings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.target,
                SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW_SIZE,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.h2.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.active: dict[int, Stream] = {}
        self.max_in_flight = 0
        #: Complete requests taken on this connection (for ``goaway_after``).
        self.taken = 0
        self.authenticated = not sim.require_token_auth
        self.shrunk = False
        self.jwt_cache: dict[bytes, TokenInfo] = {}
        self.jwt: bytes | None = None
        self.jwt_iat = 0.0
        self.team: str | None = None
        self.last_activity = trio.current_time()
        self.closing = False
        self.dropped = False
        self.wake = trio.Event()
        self.done = trio.Event()
        self.reader_done = trio.Event()
        self.nursery: trio.Nursery | None = None

    # -- plumbing --

    def kick(self) -> None:
        """Ask the writer task to send whatever h2 has queued."""
        self.wake.set()

    def close(self) -> None:
        """Flush what is queued (e.g. a GOAWAY), then close the connection."""
        self.closing = True
        self.wake.set()

    def drop(self) -> None:
        """Reset the connection now, leaving every stream unanswered."""
        self.dropped = True
        self.closing = True
        self.done.set()

    def goaway(self, reason: str, last_stream_id: int | None = None) -> None:
        """Send GOAWAY with APNs' JSON debug data and close.

        h2 can neither send nor receive on a connection after its GOAWAY, so unanswered
        streams stay unanswered; ``last_stream_id`` defaults to just below the oldest of
        them, telling the client all of them are safe to retry.
        """
        if self.closing:
            return
        if last_stream_id is None:
            last_stream_id = (
                min(self.active) - 2 if self.active else self.h2.highest_inbound_stream_id
            )
        for st in self.active.values():
            if st.scope is not None:
                st.scope.cancel()
        self.active.clear()
        debug = json.dumps({"reason": reason}).encode()
        # A ProtocolError means h2 already closed the connection (client GOAWAY).
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(
                error_code=ErrorCodes.NO_ERROR,
                additional_data=debug,
                last_stream_id=max(last_stream_id, 0),
            )
        self.sim.goaways_sent += 1
        self.sim._log(f"connection {self.id}: GOAWAY {reason}")
        self.close()

    def advertise(self, limit: int) -> None:
        if limit != self.advertised and not self.closing:
            self.advertised = limit
            self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
            self.kick()

    # -- tasks --

    async def writer(self) -> None:
        """The only task that sends (see :mod:`pushd.simulators.h2loop`)."""
        try:
            await write_loop(self)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped = True
        self.done.set()

    async def reader(self) -> None:
        try:
            await read_loop(
                self,
                RECEIVE_SIZE,
                self.handle_event,
                lambda exc: self.sim._log(f"connection {self.id}: protocol error: {exc}"),
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop()
        finally:
            self.reader_done.set()
        self.close()

    async def idle_watch(self, idle: float) -> None:
        """Send GOAWAY ``IdleTimeout`` once no request has been open for ``idle`` s."""
        while True:
            await trio.sleep_until(self.last_activity + idle)
            if self.active:
                self.last_activity = trio.current_time()
            elif trio.current_time() >= self.last_activity + idle:
                self.goaway("IdleTimeout")
                return

    # -- h2 events --

    def handle_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            st = self.active.get(sid)
            if st is not None and event.data is not None:
                st.body_len += len(event.data)
                room = MAX_KEPT_BODY - len(st.body)
                if room > 0:
                    st.body += event.data[:room]
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.active.get(event.stream_id)
            if st is not None:
                self.sim._process(self, st)
        elif isinstance(event, h2.events.StreamReset):
            st = self.active.pop(event.stream_id, None)
            if st is not None and st.scope is not None:
                st.scope.cancel()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        assert sid is not None
        limit = self.h2.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS]
        if len(self.active) >= limit:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self.sim.streams_refused += 1
            return
        headers: dict[bytes, bytes] = {}
        duplicate = False
        for name, value in event.headers or ():
            key = bytes(name)
            if key in headers:
                duplicate = True
            headers[key] = bytes(value)
        self.active[sid] = Stream(sid, headers, duplicate)
        if len(self.active) > self.max_in_flight:
            self.max_in_flight = len(self.active)
            self.sim.max_in_flight[self.id] = self.max_in_flight
        if self.sim.idle_timeout is not None:
            self.last_activity = trio.current_time()
