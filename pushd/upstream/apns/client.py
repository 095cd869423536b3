"""The APNs client of one app: a pool of long-lived HTTP/2 connections.

Usage (the delivery engine owns the nursery)::

    client = ApnsClient(settings)
    await nursery.start(client.run)
    outcome = await client.send(token, push)
    await client.send_many(tokens, push, report)   # report(index, outcome) per token

Connections are opened **lazily**: a pool slot connects only when a request is waiting
for a stream and no open connection has one free.  A quiet gateway therefore holds one
connection, a busy one grows to ``settings.connections``, and a connection that died is
replaced on the next demand rather than in a loop.  Once open, connections stay open
(PING keeps them honest) because Apple treats connect/disconnect churn as abuse.

A call to :meth:`ApnsClient.send_many` is a **batch**: one push to many tokens.  Its
headers are built and encoded once (only ``:path`` differs per token), it takes as many
stream slots as are free in one go, spread over the connections, and writes all those
requests with one flush.  Then the calling task sleeps on one event while the
connections' readers classify each answer and report it; no task, event or cancel scope
per request.  Requests that got no slot wait, as their batch, in one FIFO queue: whenever
streams end, SETTINGS raise a limit or a connection becomes ready, the pool hands the
free slots to the oldest waiting batch, which sends that many at once.  Nobody polls.
:meth:`ApnsClient.send` is a batch of one.
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
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pushd.model import ApnsPush, Delivered, Failed, Outcome, RetryLater, TokenDead
from pushd.upstream.apns.classify import ProviderTokenExpired, classify
from pushd.upstream.apns.connection import (
    ApnsConnection,
    ConnectionFailed,
    Failure,
    Stream,
    Unprocessed,
)
from pushd.upstream.apns.hpack import encode_field, encode_fields
from pushd.upstream.apns.jwt import ProviderToken
from pushd.upstream.apns.request import (
    InvalidDeviceToken,
    InvalidPush,
    build_request,
    device_path,
    request_template,
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


#: The :func:`encode_field` arguments of ``:path``: a never-indexed literal, as Apple asks.
_PATH = b":path"
_PATH_SENSITIVE = True
#: What a request still waiting for a stream slot reports when the batch's time is up.
NO_CONNECTION = "no APNs connection available"
#: What a request that was sent but not answered in time reports.
TIMEOUT = "timeout"

Report = Callable[[int, Outcome], None]


class _Batch:
    """One :meth:`ApnsClient.send_many` call: its shared request parts and progress.

    It is the :class:`~pushd.upstream.apns.connection.StreamOwner` of its streams, so the
    readers call it per answer; it classifies, resends (unprocessed, expired JWT) and
    reports, and sets :attr:`done` when every index is reported.
    """

    __slots__ = (
        "body",
        "client",
        "closed",
        "conns",
        "done",
        "error",
        "first_jwt",
        "jwt",
        "paths",
        "pending",
        "prefix",
        "refreshed",
        "remaining",
        "report",
        "resends",
        "sent_jwt",
        "suffix",
        "template",
        "waiting",
    )

    def __init__(
        self,
        client: ApnsClient,
        report: Report,
        template: tuple[str, ApnsPush],
        jwt: str | None,
        count: int,
    ) -> None:
        self.client = client
        self.report = report
        #: (topic, push), to rebuild the headers after a JWT regeneration.
        self.template = template
        self.jwt = jwt
        self.first_jwt = jwt
        self.prefix = b""
        self.suffix = b""
        self.body = b""
        #: Encoded ``:path`` field per index (empty for tokens reported without sending).
        self.paths: list[bytes] = []
        #: Indices to send as soon as slots are free, oldest first.
        self.pending: collections.deque[int] = collections.deque()
        #: Indices not yet reported; :attr:`done` is set when it reaches 0.
        self.remaining = count
        self.done = trio.Event()
        #: In the pool's waiter queue.
        self.waiting = False
        #: The caller gave up (timeout or cancellation): ignore everything from now on.
        self.closed = False
        #: Connections that got streams of this batch (to reset them if it gives up).
        self.conns: set[ApnsConnection] = set()
        #: Unprocessed resends so far, per index (only indices that had one).
        self.resends: dict[int, int] = {}
        #: Indices already resent after ExpiredProviderToken (only once each).
        self.refreshed: set[int] = set()
        #: The JWT each index was last sent with, once the batch's JWT has changed.
        self.sent_jwt: dict[int, str | None] | None = None
        #: The first exception ``report`` raised, re-raised by send_many at the end.
        self.error: Exception | None = None

    def set_headers(self, jwt: str | None) -> None:
        """Build and encode the headers shared by every request for ``jwt``."""
        topic, push = self.template
        client = self.client
        prefix, suffix, body = request_template(topic, push, jwt, authority=client.authority)
        self.jwt = jwt
        self.prefix = encode_fields(prefix)
        self.suffix = encode_fields(suffix)
        self.body = body

    # --- reporting ----------------------------------------------------------------------

    def finish(self, index: int, outcome: Outcome) -> None:
        """Report ``index`` (exactly once); wake the caller after the last one.

        ``report`` runs in whichever task got the answer (usually a connection's
        reader): an exception from it must not kill a connection other batches share,
        so it is kept and raised by :meth:`ApnsClient.send_many` at the end.
        """
        self.remaining -= 1
        try:
            self.report(index, outcome)
        except Exception as exc:
            if self.error is None:
                self.error = exc
        if self.remaining == 0:
            self.done.set()

    def fail_pending(self, reason: str) -> None:
        """Report every request still waiting for a slot as ``RetryLater(reason)``."""
        pending = self.pending
        outcome = RetryLater(reason)
        while pending:
            self.finish(pending.popleft(), outcome)

    # --- sending ------------------------------------------------------------------------

    def send_on(self, conn: ApnsConnection, count: int) -> None:
        """Send the ``count`` oldest pending requests on ``conn``, which has the slots."""
        pending = self.pending
        if count >= len(pending):
            indices = list(pending)
            pending.clear()
        else:
            indices = [pending.popleft() for _ in range(count)]
        self.conns.add(conn)
        if self.sent_jwt is not None:
            for index in indices:
                self.sent_jwt[index] = self.jwt
        opened, failure = conn.open_streams(
            self, indices, self.paths, self.prefix, self.suffix, self.body
        )
        if failure is not None:
            # Never sent: count it as a resend, as send() always has, and queue it again.
            for index in indices[opened:]:
                self.unprocessed(index, failure)

    def unprocessed(self, index: int, reason: str) -> None:
        """APNs did not act on ``index``: queue it again, or give up after MAX_RESENDS."""
        resends = self.resends.get(index, 0) + 1
        if resends > MAX_RESENDS:
            self.finish(index, RetryLater(reason))
            return
        self.resends[index] = resends
        self.pending.append(index)

    # --- StreamOwner --------------------------------------------------------------------

    def stream_answered(self, stream: Stream) -> None:
        if self.closed:
            return
        status = stream.status
        if status == 200:
            self.finish(stream.index, Delivered(stream.apns_id))
            return
        outcome = classify(status, stream.response_body(), stream.retry_after, stream.apns_id)
        if isinstance(outcome, ProviderTokenExpired):
            self.provider_token_expired(stream.index)
        else:
            self.finish(stream.index, outcome)

    def stream_failed(self, stream: Stream, failure: Failure) -> None:
        if self.closed:
            return
        if isinstance(failure, Unprocessed):
            self.unprocessed(stream.index, failure.reason)
            self.client.pump(self)
        else:
            self.finish(stream.index, RetryLater(failure.reason))

    def provider_token_expired(self, index: int) -> None:
        """Regenerate the shared JWT (once per rejected token) and resend ``index`` once."""
        client = self.client
        provider = client.provider
        if provider is None or self.jwt is None or index in self.refreshed:
            self.finish(index, Failed("ExpiredProviderToken", credential=True))
            return
        self.refreshed.add(index)
        seen = self.jwt if self.sent_jwt is None else self.sent_jwt.get(index, self.first_jwt)
        assert seen is not None
        now = client.clock()
        jwt = provider.expired(seen, now)
        if jwt != self.jwt:
            if provider.is_young(now):
                log.warning(
                    "apns[%s]: APNs rejected a young provider token as expired "
                    "(clock skew?); regenerating",
                    client.name,
                )
            if self.sent_jwt is None:
                # From now on requests may carry different JWTs: remember which.
                self.sent_jwt = {}
            self.set_headers(jwt)
        self.pending.append(index)
        client.pump(self)


def spread(conns: Sequence[ApnsConnection], wanted: int) -> list[tuple[ApnsConnection, int]]:
    """How many of ``wanted`` slots to take from each connection, in one go.

    The result is what taking one slot at a time from the connection with the most free
    slots would give: the free counts are levelled from the top, so load spreads evenly.
    """
    frees = sorted(
        ((conn.free_slots, n) for n, conn in enumerate(conns) if conn.free_slots > 0),
        reverse=True,
    )
    wanted = min(wanted, sum(free for free, _ in frees))
    takes = [0] * len(frees)
    top = 1  # frees[:top] are levelled down to ``level`` by the takes so far
    level = frees[0][0] if frees else 0
    while wanted > 0:
        below = frees[top][0] if top < len(frees) else 0
        step = level - below
        if step * top <= wanted:
            for i in range(top):
                takes[i] += step
            wanted -= step * top
            level = below
            top += 1
        else:
            share, extra = divmod(wanted, top)
            for i in range(top):
                takes[i] += share + (i < extra)
            wanted = 0
    return [(conns[n], take) for (_, n), take in zip(frees, takes, strict=True) if take]


def _raise_report_error(batch: _Batch) -> None:
    """Re-raise, in the caller's task, the first exception its ``report`` raised."""
    if batch.error is not None:
        raise batch.error


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
        self._waiters: collections.deque[_Batch] = collections.deque()
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
        """Deliver one notification and say what happened: :meth:`send_many` of one."""
        outcomes: list[Outcome] = []
        await self.send_many((token,), push, lambda _index, outcome: outcomes.append(outcome))
        return outcomes[0]

    async def send_many(
        self, tokens: Sequence[str], push: ApnsPush, report: Callable[[int, Outcome], None]
    ) -> None:
        """Send ``push`` to every token at once; call ``report(index, outcome)`` exactly once per
        index, as each answer arrives; return when every index has been reported.

        Never raises for network or APNs trouble (those are :class:`RetryLater`); only
        cancellation and programming errors escape.  The whole call, including waiting
        for stream slots, is bounded by ``settings.request_timeout``: whatever is
        unanswered then is ``RetryLater("timeout")`` (``"no APNs connection available"``
        if it was still waiting for a slot) and its stream is reset.

        * A push APNs would reject as malformed is :class:`Failed` without being sent; a
          token that is not hex is :class:`TokenDead` ("BadDeviceToken"), as APNs would say.
        * A request APNs certainly did not process (GOAWAY above it, REFUSED_STREAM) is
          resent on another connection, up to :data:`MAX_RESENDS` times.
        * A request whose connection failed after it was written is
          ``RetryLater("connection lost: ...")``: it may have been delivered, so the
          caller decides whether to retry.
        * ``ExpiredProviderToken`` regenerates the shared JWT (once for the batch) and
          resends each affected request once; a second one is ``Failed(credential=True)``.
        * While APNs is unreachable and no connection is open, requests that find no
          slot are ``RetryLater("APNs unreachable: ...")`` at once.

        ``report`` is called from whichever task sees the answer (usually a connection's
        reader), so it must be quick and must not block.  If it raises, the other
        indices are still reported and the first exception is raised at the end.  If
        the call is cancelled, indices not reported yet are never reported and their
        streams are reset, as :meth:`send` gives no outcome when cancelled.
        """
        settings = self._settings
        provider = self._provider
        jwt = provider.current(self._clock()) if provider is not None else None
        batch = _Batch(self, report, (settings.topic, push), jwt, len(tokens))
        try:
            topic = topic_for(settings.topic, push.push_type)
            batch.template = (topic, push)
            batch.set_headers(jwt)
        except InvalidPush:
            # The push itself is bad; build each request for the exact reason (a bad token
            # can win over a bad header, as APNs checks in that order).
            for index, token in enumerate(tokens):
                batch.finish(index, self._rejected(token, push, jwt))
            _raise_report_error(batch)
            return
        paths = batch.paths
        pending = batch.pending
        for index, token in enumerate(tokens):
            try:
                path = device_path(token)
            except InvalidDeviceToken as exc:
                paths.append(b"")
                # A non-hex token: APNs would say BadDeviceToken, so it is dead.
                batch.finish(index, TokenDead("BadDeviceToken") if token else Failed(str(exc)))
                continue
            paths.append(encode_field(_PATH, path, _PATH_SENSITIVE))
            pending.append(index)
        if pending:
            if self._closed:
                batch.fail_pending("APNs client closed")
            else:
                self.pump(batch)
        if batch.remaining:
            abandoned: list[int] = []
            with trio.move_on_after(settings.request_timeout):
                try:
                    await batch.done.wait()
                finally:
                    if batch.remaining:
                        abandoned = self._give_up(batch)
            if batch.remaining:  # the deadline passed (cancellation would have raised)
                self._time_out(batch, abandoned)
        _raise_report_error(batch)

    def _rejected(self, token: str, push: ApnsPush, jwt: str | None) -> Outcome:
        """The outcome of a request that cannot be built (``push`` is invalid)."""
        try:
            topic = topic_for(self._settings.topic, push.push_type)
            build_request(topic, token, push, jwt, authority=self._authority)
        except InvalidDeviceToken as exc:
            return TokenDead("BadDeviceToken") if token else Failed(str(exc))
        except InvalidPush as exc:
            return Failed(str(exc))
        raise AssertionError("a push that fails as a template builds for a token")

    def _give_up(self, batch: _Batch) -> list[int]:
        """The caller stops waiting: dequeue ``batch``, reset its streams, free the slots.

        Returns the indices whose streams were reset.  Nothing is reported here: after a
        cancellation nothing is; after the deadline :meth:`_time_out` reports.
        """
        batch.closed = True
        if batch.waiting:
            batch.waiting = False
            with contextlib.suppress(ValueError):
                self._waiters.remove(batch)
        return [stream.index for conn in batch.conns for stream in conn.abandon(batch)]

    def _time_out(self, batch: _Batch, abandoned: list[int]) -> None:
        """Report what ``batch`` still had at its deadline: sent or still waiting."""
        log.debug(
            "apns[%s]: timeout: %d requests unanswered, %d without a stream",
            self._settings.name,
            len(abandoned),
            len(batch.pending),
        )
        timeout = RetryLater(TIMEOUT)
        for index in abandoned:
            batch.finish(index, timeout)
        batch.fail_pending(NO_CONNECTION)

    # --- stream slots -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The app's name, for log lines."""
        return self._settings.name

    @property
    def authority(self) -> str:
        """``host[:port]`` of APNs, the ``:authority`` of every request."""
        return self._authority

    @property
    def provider(self) -> ProviderToken | None:
        """The shared JWT source (token auth), or None (certificate auth)."""
        return self._provider

    def clock(self) -> float:
        """Wall-clock seconds, as the JWT's ``iat`` needs them."""
        return self._clock()

    def _pick(self) -> ApnsConnection | None:
        """The connection with the most free stream slots, or None if all are full."""
        best = None
        best_free = 0
        for conn in self._conns:
            free = conn.free_slots
            if free > best_free:
                best, best_free = conn, free
        return best

    def pump(self, batch: _Batch) -> None:
        """Send what ``batch`` has pending on free slots now; queue the rest in FIFO order.

        A batch already queued just waits its turn, and so does one that arrives while
        others wait: slots go to the oldest.  Fails what is pending at once when no
        slot can come soon (client closed, APNs unreachable with no connection open).
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
            batch.fail_pending("APNs client closed")
            return
        if self._unreachable is not None and not self._conns:
            batch.fail_pending(self._unreachable)
            return
        batch.waiting = True
        self._waiters.append(batch)
        if len(self._waiters) == 1:
            self._demand.set()

    def _on_capacity(self, conn: ApnsConnection) -> None:
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
            batch.fail_pending(reason)

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
