"""A pool of long-lived HTTP/2 connections to one push service, and its batches.

Provider-neutral core of the APNs and FCM clients.  Usage (the client owns it)::

    pool = H2Pool(peer, name=..., host=..., port=..., ssl_context=..., connections=...)
    await nursery.start(pool.run)
    batch = MyBatch(pool, report, count, credential)   # a Batch subclass
    ...                                                # fill batch.pending
    await pool.send_batch(batch, deadline)

Connections are opened **lazily**: a pool slot connects only when a request is waiting
for a stream and no open connection has one free.  A quiet gateway therefore holds one
connection, a busy one grows to ``connections``, and a connection that died is
replaced on the next demand rather than in a loop.  Once open, connections stay open
(PING keeps them honest) because Apple treats connect/disconnect churn as abuse and
every new connection costs a TLS handshake.

A :class:`Batch` is one push to many tokens.  What differs per provider is a few hooks:
how the request of one index is built (APNs splices ``:path`` into shared headers, FCM
the token into a shared JSON body), how an answer is classified, and how credentials
are renewed when the service says they expired (APNs regenerates its JWT at once, in
the reader; FCM must fetch an access token, so the batch's own task does it).  The
batch takes as many stream slots as are free in one go, spread over the connections,
and writes all those requests with one flush.  Then the calling task sleeps on one
event while the connections' readers classify each answer and report it; no task,
event or cancel scope per request.  Requests that got no slot wait, as their batch, in
one FIFO queue: whenever streams end, SETTINGS raise a limit or a connection becomes
ready, the pool hands the free slots to the oldest waiting batch, which sends that many
at once.  Nobody polls.
"""

from __future__ import annotations

import collections
import contextlib
import ssl

import trio

from pushd.model import Failed, RetryLater
from pushd.upstream.h2batch import Batch
from pushd.upstream.h2batch import spread as spread  # re-exported: its home was here
from pushd.upstream.h2conn import PoolConnection
from pushd.upstream.h2connect import (
    RECONNECT_ON_DEMAND,
    Connector,
    reconnect_delay,
    refused_certificate,
    root_cause,
)
from pushd.upstream.h2outage import ConnectFailures
from pushd.upstream.h2types import ConnectionFailed, Peer, Stream
from pushd.upstream.proxy import Proxy

#: What a request that was sent but not answered in time reports.
TIMEOUT = "timeout"


class H2Pool:
    """Connections to one service for one app; see the module docstring for the design.

    ``recycle_after_timeouts``: replace a connection once that many batches in a row gave
    up on it by their deadline with no answer in between (a connection that stopped
    answering but still acknowledges PING, or a server wedged on it); None never does.
    ``proxy``: open every connection through this HTTP proxy's CONNECT tunnel; a proxy
    that is down or refuses is a failed connect like any other (backoff, then again).
    """

    def __init__(
        self,
        peer: Peer,
        *,
        name: str,
        label: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        connections: int,
        recycle_after_timeouts: int | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self._peer = peer
        self._log = peer.log
        self._name = name
        #: Log prefix, ``apns[app]``.
        self._label = f"{label}[{name}]"
        self._failures = ConnectFailures(self._log, self._label)
        self._connector = Connector(peer, host, port, ssl_context, proxy)
        self._connections = max(1, connections)
        self._recycle_after = recycle_after_timeouts
        self._conns: list[PoolConnection] = []
        self._waiters: collections.deque[Batch] = collections.deque()
        self._demand = trio.Event()
        self._closed = False
        #: Set while the server cannot be reached and no connection is open: sends fail at
        #: once as RetryLater instead of holding their caller for the whole timeout.
        self._unreachable: str | None = None
        #: What sends hear meanwhile instead of RetryLater when the server refused our
        #: client certificate (a credential failure: the app pauses).
        self._refused: Failed | None = None
        #: When a send last found the server unreachable, and the event that tells
        #: slots waiting out a backoff (replaced each time it is set).
        self._wanted_at = float("-inf")
        self._wanted = trio.Event()
        #: Connections opened since start, and replaced after timeouts, for metrics, tests.
        self.connections_opened = 0
        self.recycled = 0

    @property
    def authority(self) -> str:
        """``host[:port]``, the ``:authority`` of every request."""
        return self._connector.authority

    @property
    def closed(self) -> bool:
        """True once :meth:`run` has ended."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Streams open on all connections."""
        return sum(conn.reserved for conn in self._conns)

    @property
    def closed_reason(self) -> str:
        """What requests report once the pool has shut down."""
        return f"{self._peer.name} client closed"

    @property
    def no_connection(self) -> str:
        """What a request still waiting for a stream slot reports at its deadline."""
        return f"no {self._peer.name} connection available"

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pool until cancelled.  Reports started at once; connects on demand."""
        try:
            async with trio.open_nursery() as nursery:
                for index in range(self._connections):
                    nursery.start_soon(self._slot, index)
                task_status.started()
        finally:
            self._closed = True
            for conn in list(self._conns):
                conn.close()
            self._fail_waiters(self.closed_reason)

    async def send_batch(self, batch: Batch, deadline: float) -> None:
        """Send what ``batch`` has pending and wait until all is reported or ``deadline``.

        At the deadline whatever is unanswered is ``RetryLater("timeout")`` (the
        :attr:`no_connection` reason if it was still waiting for a slot) and its stream is
        reset.  If cancelled, indices not reported yet are never reported.  The first
        exception ``report`` raised is raised at the end.
        """
        started = trio.current_time()
        if batch.pending:
            if self._closed:
                batch.fail_pending(self.closed_reason)
            else:
                self.pump(batch)
        if batch.remaining:
            abandoned: list[tuple[PoolConnection, list[Stream]]] = []
            with trio.move_on_at(deadline):
                try:
                    while batch.remaining:
                        await batch.wake.wait()
                        batch.wake = trio.Event()
                        if batch.stale:
                            await batch.renew_stale()
                finally:
                    if batch.remaining:
                        abandoned = self._give_up(batch)
            if batch.remaining:  # the deadline passed (cancellation would have raised)
                self._time_out(batch, abandoned, started)
        batch.raise_error()

    def _give_up(self, batch: Batch) -> list[tuple[PoolConnection, list[Stream]]]:
        """The caller stops waiting: dequeue ``batch``, reset its streams, free the slots.

        Returns the streams reset, per connection.  Nothing is reported here: after a
        cancellation nothing is; after the deadline :meth:`_time_out` reports.
        """
        batch.closed = True
        if batch.waiting:
            batch.waiting = False
            with contextlib.suppress(ValueError):
                self._waiters.remove(batch)
        return [(conn, conn.abandon(batch)) for conn in batch.conns]

    def _time_out(
        self, batch: Batch, abandoned: list[tuple[PoolConnection, list[Stream]]], started: float
    ) -> None:
        """Report what ``batch`` still had at its deadline: sent or still waiting.

        A batch that waited for a slot all along retires every connection that allowed
        no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0) since before it started: such a
        connection never frees a slot by itself, and with one connection per app the
        pool would otherwise never open another (pushes waited until they expired).
        """
        timeout = RetryLater(TIMEOUT, kind="unknown")
        count = 0
        for conn, streams in abandoned:
            if streams:
                self._timed_out(conn)
            count += len(streams)
            for stream in streams:
                batch.finish(stream.index, timeout)
        self._log.debug(
            "%s: timeout: %d requests unanswered, %d without a stream",
            self._label,
            count,
            len(batch.pending) + len(batch.stale),
        )
        if batch.pending or batch.stale:
            for conn in list(self._conns):
                since = conn.no_streams_since
                if since is not None and since <= started and conn.accepting:
                    self._log.warning(
                        "%s connection %d: allowed no streams for %.1f s while requests "
                        "waited; replacing the connection",
                        self._label,
                        conn.index,
                        trio.current_time() - since,
                    )
                    conn.retire("allowed no streams")
        batch.fail_pending(self.no_connection)

    def _timed_out(self, conn: PoolConnection) -> None:
        """Count a batch that gave up on ``conn``; replace ``conn`` after too many.

        Each timeout also has ``conn`` PING at once: a connection that stopped reading
        is dropped when the ACK does not come, long before the idle PING.
        """
        conn.timeouts += 1
        conn.suspect()
        if self._recycle_after is None or conn.timeouts < self._recycle_after:
            return
        if not conn.accepting:
            return
        self.recycled += 1
        self._log.warning(
            "%s connection %d: %d requests in a row timed out; replacing the connection",
            self._label,
            conn.index,
            conn.timeouts,
        )
        conn.retire("replaced after timeouts")

    # --- stream slots -------------------------------------------------------------------

    def _pick(self) -> PoolConnection | None:
        """The connection with the most free stream slots, or None if all are full."""
        best = None
        best_free = 0
        for conn in self._conns:
            free = conn.free_slots
            if free > best_free:
                best, best_free = conn, free
        return best

    def pump(self, batch: Batch) -> None:
        """Send what ``batch`` has pending on free slots now; queue the rest in FIFO order.

        A batch already queued just waits its turn, and so does one that arrives while
        others wait: slots go to the oldest.  Fails what is pending at once when no
        slot can come soon (client closed, server unreachable with no connection open).
        """
        if batch.waiting:
            return
        pending = batch.pending
        if not self._waiters:
            conns = self._conns
            if len(conns) == 1:
                conn = conns[0]
                free = conn.free_slots
                if free > 0:
                    batch.send_on(conn, min(free, len(pending)))
            elif conns:
                for conn, count in spread(conns, len(pending)):
                    batch.send_on(conn, count)
            if not pending:
                return
        if self._closed:
            batch.fail_pending(self.closed_reason)
            return
        if self._unreachable is not None and not self._conns:
            batch.fail_pending(self._unreachable, self._refused)
            self._wanted_at = trio.current_time()
            wanted, self._wanted = self._wanted, trio.Event()
            wanted.set()
            return
        batch.waiting = True
        self._waiters.append(batch)
        if len(self._waiters) == 1:
            self._demand.set()

    def _on_capacity(self, conn: PoolConnection) -> None:
        """A connection may have free slots: hand them to waiting batches, oldest first."""
        waiters = self._waiters
        while waiters:
            target = conn if conn.free_slots > 0 else self._pick()
            if target is None:
                return
            batch = waiters[0]
            batch.send_on(target, min(target.free_slots, len(batch.pending)))
            if not batch.pending:
                waiters.popleft()
                batch.waiting = False

    def _fail_waiters(self, reason: str) -> None:
        """Fail every queued request with ``reason`` (no slot will come soon)."""
        while self._waiters:
            batch = self._waiters.popleft()
            batch.waiting = False
            batch.fail_pending(reason, self._refused)

    # --- connections --------------------------------------------------------------------

    async def _wait_for_demand(self) -> None:
        while not self._waiters:
            if self._demand.is_set():
                self._demand = trio.Event()
            await self._demand.wait()

    async def _slot(self, index: int) -> None:
        """Keep pool slot ``index`` connected while requests want it."""
        label = self._label
        log = self._log
        failures = 0
        while True:
            if self._unreachable is None:
                await self._wait_for_demand()
            # else: keep trying with backoff; sends fail fast meanwhile, so no waiter
            # would ever signal demand.
            try:
                conn = await self._connector.open(index, app=label, on_capacity=self._on_capacity)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ConnectionFailed) as exc:
                failures += 1
                delay = reconnect_delay(failures)
                cause = root_cause(exc)
                self._cannot_reach(type(cause).__name__, refused_certificate(cause))
                retry = f"retry in {delay:.1f} s"
                if delay > RECONNECT_ON_DEMAND:
                    retry += f" (or {RECONNECT_ON_DEMAND:.0f} s if sends want it)"
                error = f"{type(cause).__name__}: {cause}"
                self._failures.failed(index, self._connector.route, error, retry)
                await self._back_off(delay)
                continue
            self.connections_opened += 1
            self._unreachable = self._refused = None
            self._failures.connected()
            log.log(
                self._peer.connect_level,
                "%s connection %d: connected to %s, %d streams",
                label,
                index,
                self._connector.route,
                conn.max_streams,
            )
            self._conns.append(conn)
            self._on_capacity(conn)
            try:
                await conn.serve()
            finally:
                self._conns.remove(conn)
            log.log(
                self._peer.connect_level,
                "%s connection %d: closed (%s)",
                label,
                index,
                conn.lost_reason,
            )
            if conn.completed:
                failures = 0
            else:
                # Connected but never answered: a failed connect.  From the second in a
                # row sends fail at once: a server that accepted and dropped every
                # connection held each push for its whole request_timeout once the
                # backoff had grown past it.  After one (a blip) they wait for the next.
                failures += 1
                if failures > 1:
                    self._cannot_reach(conn.lost_reason or "closed")
                await self._back_off(reconnect_delay(failures))

    def _cannot_reach(self, reason: str, alert: str | None = None) -> None:
        """A connect failed (or closed unanswered): with no connection open, sends fail
        at once until one is; on the credential if the server refused our certificate
        with ``alert`` (the app pauses with an ALARM), else as unreachable."""
        if not self._conns:
            self._unreachable = f"{self._peer.name} unreachable: {reason}"
            self._refused = None
            if alert is not None:
                refused = f"{self._peer.name} refused the client certificate: {alert}"
                self._refused = Failed(refused, credential=True)
            self._fail_waiters(self._unreachable)

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` after a failed connect, or :data:`RECONNECT_ON_DEMAND` if a
        send wants a connection meanwhile (the server may be back)."""
        failed_at = trio.current_time()
        if delay <= RECONNECT_ON_DEMAND:
            await trio.sleep(delay)
            return
        await trio.sleep(RECONNECT_ON_DEMAND)
        with trio.move_on_at(failed_at + delay):
            while self._wanted_at <= failed_at:
                await self._wanted.wait()
