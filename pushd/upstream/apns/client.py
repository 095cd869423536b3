"""The APNs client of one app: a pool of long-lived HTTP/2 connections.

Usage (the delivery engine owns the nursery)::

    client = ApnsClient(settings)
    await nursery.start(client.run)
    outcome = await client.send(token, push)

Connections are opened **lazily**: a pool slot connects only when a request is waiting
for a stream and no open connection has one free.  A quiet gateway therefore holds one
connection, a busy one grows to ``settings.connections``, and a connection that died is
replaced on the next demand rather than in a loop.  Once open, connections stay open
(PING keeps them honest) because Apple treats connect/disconnect churn as abuse.

Requests wait for a free stream in one FIFO queue: whenever a stream ends, SETTINGS
raise a limit or a connection becomes ready, the pool hands free slots to the oldest
waiters, picking the connection with the most free slots to spread load.  Nobody polls.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import ssl
import tempfile
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pushd.model import ApnsPush, Failed, Outcome, RetryLater, TokenDead, mask_token
from pushd.upstream.apns.classify import ProviderTokenExpired, classify
from pushd.upstream.apns.connection import (
    ApnsConnection,
    ConnectionFailed,
    Lost,
    Unprocessed,
)
from pushd.upstream.apns.jwt import ProviderToken
from pushd.upstream.apns.request import (
    InvalidDeviceToken,
    InvalidPush,
    build_request,
    topic_for,
)
from pushd.upstream.apns.settings import ApnsSettings, CertAuth, TokenAuth

log = logging.getLogger("pushd.upstream.apns")

#: TCP + TLS + first SETTINGS must complete within this many seconds.
CONNECT_TIMEOUT = 10.0
#: Reconnect backoff after failures: BASE * 2**(n-1), capped, times a jitter factor in
#: [1 - JITTER, 1], so many gateways restarting together do not reconnect in step.
RECONNECT_BACKOFF_BASE = 0.5
RECONNECT_BACKOFF_MAX = 60.0
RECONNECT_JITTER = 0.5
#: How often one request may be moved to another connection because APNs did not
#: process it (GOAWAY above it, REFUSED_STREAM) before it is reported as RetryLater.
MAX_RESENDS = 5


class _Waiter:
    """A request queued for a stream slot; the pool fills ``conn`` and sets ``event``."""

    __slots__ = ("conn", "event", "failure")

    def __init__(self) -> None:
        self.conn: ApnsConnection | None = None
        self.event = trio.Event()
        #: Why no slot came (``conn`` is None): APNs unreachable, or the client closed.
        self.failure: str | None = None


class _NoStream(Exception):
    """No stream slot can be had now; the message says why."""


def reconnect_delay(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` consecutive failed connects (>= 1)."""
    delay = min(RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_BASE * 2.0 ** min(failures - 1, 30))
    return delay * (1 - RECONNECT_JITTER * rng())


class ApnsClient:
    """Sends notifications for one APNs app; see the module docstring for the design."""

    def __init__(self, settings: ApnsSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        url = urlsplit(settings.base_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(
                f"APNs base_url must be https://host[:port], not {settings.base_url!r}"
            )
        self._host = url.hostname
        self._port = url.port or 443
        self._authority = self._host if self._port == 443 else f"{self._host}:{self._port}"
        self._provider: ProviderToken | None = None
        if isinstance(settings.auth, TokenAuth):
            self._provider = ProviderToken.from_auth(settings.auth)
        self._ssl_context = make_ssl_context(settings)
        self._conns: list[ApnsConnection] = []
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._demand = trio.Event()
        self._running = False
        self._closed = False
        #: Set while APNs cannot be reached and no connection is open: sends fail at once
        #: as RetryLater instead of holding their caller for the whole request timeout.
        self._unreachable: str | None = None
        #: Connections opened since start, for metrics and tests.
        self.connections_opened = 0

    # --- public -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pool until cancelled.  Reports started at once; connects on demand."""
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                for index in range(max(1, self._settings.connections)):
                    nursery.start_soon(self._slot, index)
                task_status.started()
        finally:
            self._closed = True
            for conn in list(self._conns):
                conn.close()
            self._fail_waiters("APNs client closed")

    async def send(self, token: str, push: ApnsPush) -> Outcome:
        """Deliver one notification and say what happened.

        Never raises for network or APNs trouble (those are :class:`RetryLater`); only
        cancellation and programming errors escape.  The whole call, including waiting
        for a stream, is bounded by ``settings.request_timeout``.

        * A push APNs would reject as malformed is :class:`Failed` without being sent; a
          token that is not hex is :class:`TokenDead` ("BadDeviceToken"), as APNs would say.
        * A request APNs certainly did not process (GOAWAY above it, REFUSED_STREAM) is
          resent on another connection, up to :data:`MAX_RESENDS` times.
        * A request whose connection failed after it was written is
          ``RetryLater("connection lost: ...")``: it may have been delivered, so the
          caller decides whether to retry.
        * ``ExpiredProviderToken`` regenerates the shared JWT and resends once; a second
          one is ``Failed(credential=True)``.
        """
        settings = self._settings
        provider = self._provider
        jwt = provider.current(self._clock()) if provider is not None else None
        try:
            topic = topic_for(settings.topic, push.push_type)
            _, headers, body = build_request(topic, token, push, jwt, authority=self._authority)
        except InvalidDeviceToken as exc:
            if token:  # a non-hex token: APNs would say BadDeviceToken, so it is dead
                return TokenDead("BadDeviceToken")
            return Failed(str(exc))
        except InvalidPush as exc:
            return Failed(str(exc))
        if self._closed:
            return RetryLater("APNs client closed")

        resends = 0
        refreshed = False
        sent = False
        with trio.move_on_after(settings.request_timeout):
            while True:
                try:
                    conn = await self._acquire()
                except _NoStream as exc:
                    return RetryLater(str(exc))
                sent = True
                result = await conn.request(headers, body)
                if isinstance(result, Unprocessed):
                    resends += 1
                    if resends > MAX_RESENDS:
                        return RetryLater(result.reason)
                    sent = False
                    continue
                if isinstance(result, Lost):
                    return RetryLater(result.reason)
                outcome = classify(result.status, result.body, result.retry_after, result.apns_id)
                if not isinstance(outcome, ProviderTokenExpired):
                    return outcome
                if provider is None or jwt is None or refreshed:
                    return Failed("ExpiredProviderToken", credential=True)
                refreshed = True
                now = self._clock()
                if provider.is_young(now):
                    log.warning(
                        "apns[%s]: APNs rejected a young provider token as expired "
                        "(clock skew?); regenerating",
                        settings.name,
                    )
                jwt = provider.expired(jwt, now)
                _, headers, body = build_request(topic, token, push, jwt, authority=self._authority)
        log.debug("apns[%s]: timeout for %s", settings.name, mask_token(token))
        return RetryLater("timeout" if sent else "no APNs connection available")

    # --- stream slots -----------------------------------------------------------------

    def _pick(self) -> ApnsConnection | None:
        """The connection with the most free stream slots, or None if all are full."""
        best = None
        best_free = 0
        for conn in self._conns:
            free = conn.free_slots
            if free > best_free:
                best, best_free = conn, free
        return best

    async def _acquire(self) -> ApnsConnection:
        """Reserve a stream slot; wait in FIFO order if there is none.

        Raises :class:`_NoStream` when the client is closed or APNs is unreachable.
        """
        if not self._waiters:
            conn = self._pick()
            if conn is not None:
                conn.reserved += 1
                return conn
        if self._closed:
            raise _NoStream("APNs client closed")
        if self._unreachable is not None and not self._conns:
            raise _NoStream(self._unreachable)
        waiter = _Waiter()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._demand.set()
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.conn is not None:  # a slot was handed over just as we gave up
                waiter.conn.reserved -= 1
                self._on_capacity(waiter.conn)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        if waiter.conn is None:
            raise _NoStream(waiter.failure or "APNs client closed")
        return waiter.conn

    def _on_capacity(self, conn: ApnsConnection) -> None:
        """A connection may have free slots: hand them to waiters, oldest first."""
        waiters = self._waiters
        while waiters:
            target = conn if conn.free_slots > 0 else self._pick()
            if target is None:
                return
            waiter = waiters.popleft()
            target.reserved += 1
            waiter.conn = target
            waiter.event.set()

    def _fail_waiters(self, reason: str) -> None:
        """Release every queued request with ``reason`` (no slot will come soon)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.failure = reason
            waiter.event.set()

    # --- connections ------------------------------------------------------------------

    async def _wait_for_demand(self) -> None:
        while not self._waiters:
            if self._demand.is_set():
                self._demand = trio.Event()
            await self._demand.wait()

    async def _slot(self, index: int) -> None:
        """Keep pool slot ``index`` connected while requests want it."""
        name = self._settings.name
        failures = 0
        while True:
            if self._unreachable is None:
                await self._wait_for_demand()
            # else: keep trying with backoff; sends fail fast meanwhile, so no waiter
            # would ever signal demand.
            try:
                conn = await self._connect(index)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ConnectionFailed) as exc:
                failures += 1
                delay = reconnect_delay(failures)
                if not self._conns:
                    self._unreachable = f"APNs unreachable: {type(exc).__name__}"
                    self._fail_waiters(self._unreachable)
                log.warning(
                    "apns[%s] connection %d: connect to %s failed (%s: %s); retry in %.1f s",
                    name,
                    index,
                    self._authority,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                continue
            self.connections_opened += 1
            self._unreachable = None
            log.info(
                "apns[%s] connection %d: connected to %s, %d streams",
                name,
                index,
                self._authority,
                conn.max_streams,
            )
            self._conns.append(conn)
            self._on_capacity(conn)
            try:
                await conn.serve()
            finally:
                self._conns.remove(conn)
            log.info("apns[%s] connection %d: closed (%s)", name, index, conn.lost_reason)
            if conn.completed:
                failures = 0
            else:
                # Connected but never answered: treat like a failed connect, or a server
                # that accepts and drops would be hammered.
                failures += 1
                await trio.sleep(reconnect_delay(failures))

    async def _connect(self, index: int) -> ApnsConnection:
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(self._host, self._port)
            sock = trio.SSLStream(
                tcp, self._ssl_context, server_hostname=self._host, https_compatible=True
            )
            try:
                await sock.do_handshake()
                if sock.selected_alpn_protocol() != "h2":
                    raise ConnectionFailed("server did not negotiate HTTP/2 (ALPN h2)")
                conn = ApnsConnection(
                    sock, app=self._settings.name, index=index, on_capacity=self._on_capacity
                )
                await conn.start()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(sock)
                raise
        return conn


# --- TLS --------------------------------------------------------------------------------


def make_ssl_context(settings: ApnsSettings) -> ssl.SSLContext:
    """TLS 1.2+, ALPN h2, system trust plus ``ca_file``, and the client cert if any."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    if settings.ca_file:
        ctx.load_verify_locations(cafile=settings.ca_file)
    if isinstance(settings.auth, CertAuth):
        load_client_certificate(ctx, settings.auth)
    return ctx


def load_client_certificate(ctx: ssl.SSLContext, auth: CertAuth) -> None:
    """Load a PEM (certificate + key) or PKCS#12 client certificate into ``ctx``.

    :mod:`ssl` only loads PEM files, so a PKCS#12 bundle is converted with
    ``cryptography`` into a private temporary file (mode 0600, key encrypted with a
    one-off passphrase) that is deleted as soon as it is loaded.
    """
    with open(auth.cert_file, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        ctx.load_cert_chain(auth.cert_file, password=auth.password)
        return
    key, cert, extra = pkcs12.load_key_and_certificates(data, auth.password)
    if key is None or cert is None:
        raise ValueError(f"{auth.cert_file}: PKCS#12 file lacks a certificate or a key")
    passphrase = os.urandom(24).hex().encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    pem += cert.public_bytes(serialization.Encoding.PEM)
    for extra_cert in extra or ():
        pem += extra_cert.public_bytes(serialization.Encoding.PEM)
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path, password=passphrase)
    finally:
        os.unlink(path)
