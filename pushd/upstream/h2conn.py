"""One long-lived HTTP/2 connection to a push service: h2 state, a reader, a writer, a pinger.

Provider-neutral: APNs and FCM both take one POST per device over long-lived HTTP/2
connections, and differ only in what a request carries and how an answer is read, which
is the owners' business (:mod:`pushd.upstream.h2pool`).  What the connection needs to
know of its peer is a :class:`Peer`: a name for log lines and failure reasons, the
response header that carries a message id, and how many streams to assume.

The pool (:mod:`pushd.upstream.h2pool`) decides *which* connection a request uses
and reserves a stream slot on it; this module runs the protocol.  Three tasks per
connection and nothing per request:

* the **reader** feeds received bytes to h2 and hands each event to the waiting request;
* the **writer** sends whatever h2 has queued, so requests that arrive while a write is in
  progress go out together in the next one (one ``send_all`` for many requests);
* the **pinger** sends a PING on an idle connection only after :data:`PING_INTERVAL` of
  silence and drops the connection if no ACK arrives within :data:`PING_TIMEOUT`.
  Healthy idle connections are never closed: Apple wants them kept for hours (unlike
  aioapns' 10 s idle close), and for FCM a new connection costs a TLS handshake the next
  push would wait for.  A connection with requests waiting on it is another matter:
  there silence is suspect, so it PINGs after :data:`STALL_PING_AFTER` without a frame,
  or at once when a request timed out (:meth:`PoolConnection.suspect`), and drops the
  connection if the ACK takes :data:`STALL_PING_TIMEOUT`.  A connection that went silent
  (a NAT that forgot it, a server that stopped reading) was otherwise kept for over a
  minute, every push on it timing out, before the idle PING found it dead.

Requests are opened in groups (:meth:`PoolConnection.open_streams`: one batch's requests
that share every header but ``:path``), and nothing waits per request: the reader tells
each stream's :class:`StreamOwner` how it ended, which is exactly one of an answer,
:class:`Unprocessed` (the server certainly did not act on it: safe to resend elsewhere) or
:class:`Lost` (it may have been delivered: report, do not resend).

The connection is three layers, one module each, each a subclass of the one below:
:mod:`pushd.upstream.h2streams` (the open streams, their slots, the send side),
:mod:`pushd.upstream.h2answers` (the receive side) and this one (the connection's life:
the preface, the three tasks, the end).  Subclassing keeps the hot path's calls plain
method calls on one object, as they were when this was one module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import trio
from h2.exceptions import H2Error

from pushd.upstream.h2answers import AnswerReader
from pushd.upstream.h2streams import CONNECTION_WINDOW
from pushd.upstream.h2types import ConnectionFailed, Peer
from pushd.upstream.tlsio import TlsSocket

log = logging.getLogger(__name__)

#: Send a PING after this many seconds without any frame from the server.
PING_INTERVAL = 60.0
#: Drop the connection if the PING ACK takes longer than this (seconds).
PING_TIMEOUT = 10.0
#: With requests in flight, send a PING after this many seconds without any frame from
#: the server: far below any request timeout, and a PING is 17 bytes.
STALL_PING_AFTER = 2.0
#: Drop a connection whose PING (sent with requests in flight, or because one timed out)
#: is not ACKed within this many seconds: a live server ACKs at once, even when slow to
#: answer requests, so a few seconds leave room for a slow link and still replace a dead
#: connection within seconds rather than a minute.
STALL_PING_TIMEOUT = 5.0
#: Bytes asked of the TLS stream per read.
READ_SIZE = 1 << 16


class PoolConnection(AnswerReader):
    """One HTTP/2 connection.  Create, :meth:`start`, then run :meth:`serve`.

    What the pool uses of it otherwise (:attr:`free_slots`, :meth:`open_streams`,
    :meth:`abandon`, :meth:`retire`, :meth:`close`) is the stream table's
    (:class:`~pushd.upstream.h2streams.StreamTable`).
    """

    def __init__(
        self,
        sock: TlsSocket,
        *,
        peer: Peer,
        app: str,
        index: int,
        on_capacity: Callable[[PoolConnection], None],
    ) -> None:
        super().__init__(peer=peer, app=app, index=index, on_capacity=on_capacity)
        self._sock = sock
        self._last_received = trio.current_time()

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Send the preface and wait for the server's SETTINGS (the caller bounds time)."""
        h2 = self._h2
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65_535)
        await self._sock.send_all(h2.data_to_send())
        while not self.ready:
            data = await self._sock.receive_some(READ_SIZE)
            if not data:
                raise ConnectionFailed("closed before sending SETTINGS")
            try:
                self._receive(data)
            except H2Error as exc:
                raise ConnectionFailed(f"HTTP/2 error: {exc}") from None
        pending = h2.data_to_send()
        if pending:
            await self._sock.send_all(pending)

    async def serve(self) -> None:
        """Run until the connection ends: drained after GOAWAY, failed, or cancelled.

        On return every stream that was on the connection has been reported to its owner.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                nursery.start_soon(self._pinger)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self.accepting = False
            self._fail_all(self.lost_reason or "connection closed")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._sock)

    # --- tasks ------------------------------------------------------------------------

    async def _reader(self) -> None:
        sock = self._sock
        while True:
            try:
                data = await sock.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._die(f"read failed: {type(exc).__name__}")
                return
            if not data:
                self._die(f"closed by {self._peer.name}")
                return
            self._last_received = trio.current_time()
            try:
                self._receive(data)
            except H2Error as exc:
                self._die(f"HTTP/2 protocol error: {type(exc).__name__}")
                return
            except Exception:  # a bug reading what the peer sent: this connection only
                log.exception(
                    "%s: failed to read an answer; closing the connection", self._peer.name
                )
                self._die("unreadable answer")
                return

    async def _writer(self) -> None:
        sock = self._sock
        h2 = self._h2
        while True:
            await self._write_wanted.wait()
            self._write_wanted = trio.Event()
            data = h2.data_to_send()
            if data:
                try:
                    await sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._die(f"write failed: {type(exc).__name__}")
                    return

    async def _pinger(self) -> None:
        while True:
            wake = self._pinger_wake = trio.Event()
            urgent = self._ping_wanted
            if not urgent:
                due = self._ping_due()
                if trio.current_time() < due:
                    with trio.move_on_at(due):
                        await wake.wait()
                    continue  # woken (streams opened, a timeout) or due: look again
            self._ping_wanted = False
            timeout = STALL_PING_TIMEOUT if urgent or self._streams else PING_TIMEOUT
            ack = self._ping_ack = trio.Event()
            try:
                self._h2.ping(os.urandom(8))
            except H2Error:
                return
            self._flush()
            with trio.move_on_after(timeout):
                await ack.wait()
            if not ack.is_set():
                self._log.warning(
                    "%s connection %d: no PING ACK within %.0f s (%d requests in flight), closing",
                    self._app,
                    self.index,
                    timeout,
                    len(self._streams),
                )
                self._die("no PING ACK")
                return

    def _ping_due(self) -> float:
        """When the next PING is due: after :data:`STALL_PING_AFTER` of silence while
        requests are in flight, else after :data:`PING_INTERVAL`."""
        if self._streams:
            return max(self._last_received, self._busy_since) + STALL_PING_AFTER
        return self._last_received + PING_INTERVAL

    def suspect(self) -> None:
        """A request here went unanswered past its deadline: PING now (the pool calls
        this), so that a dead connection is found in seconds, not at the next idle PING."""
        self._ping_wanted = True
        self._pinger_wake.set()
