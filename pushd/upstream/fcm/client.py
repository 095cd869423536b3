"""The FCM HTTP v1 client of one app: pushd's own pool of long-lived HTTP/2 connections.

Usage (the delivery engine owns the nursery)::

    client = FcmClient(settings)
    await nursery.start(client.run)
    outcome = await client.send(token, push)
    await client.send_many(tokens, push, report)   # report(index, outcome) per token

**Connections.**  The pool, its connections and batches are shared with the APNs client
(:mod:`pushd.upstream.h2pool`, :mod:`pushd.upstream.h2conn`): ``settings.connections``
connections opened on demand, each with as many streams as FCM's SETTINGS allow (100
assumed if it does not say), requests queued FIFO for free stream slots.  It replaced
httpx, which cost about 2 CPU-ms per send and much of pushd's memory (benchmarks/
fcm_client.py), and whose connection pool had to be worked around (one ``AsyncClient``
per connection, the shrink wedge).  A batch (:meth:`FcmClient.send_many`) encodes the
headers once and splices each token into the shared message
(:func:`~pushd.upstream.fcm.message.body_for`), so a request costs a few byte
concatenations.  Every call is bounded by ``settings.request_timeout``, and a connection
on which :data:`RECYCLE_AFTER_TIMEOUTS` calls in a row timed out with no answer in
between is replaced: the sign of a silently dead or wedged connection.

**Access tokens.**  One :class:`~pushd.upstream.fcm.oauth.AccessTokens` per client,
shared by all sends; the token endpoint stays on httpx (HTTP/1.1, about once an hour).
A batch fetches the token before it builds its headers.  A 401 ``UNAUTHENTICATED``
invalidates the token that was refused, and the batch's own task fetches a new one
(the readers cannot await) and resends each refused request once; a token endpoint that
is down makes sends ``RetryLater`` (it never raises into the app's lane).

**Alarms.**  Every answer goes through :mod:`pushd.upstream.fcm.alarms`: most sends
answering ``SENDER_ID_MISMATCH`` (a wrong project) raise an alarm and turn those answers
into ``Failed(credential=True)``, which pauses the app rather than deleting every token
it has; ``THIRD_PARTY_AUTH_ERROR`` (Firebase refusing the app's APNs credentials) fails
only that iOS or web delivery and logs a rate-limited ALARM.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import quote, urlsplit

import httpx
import trio
from hpack import NeverIndexedHeaderTuple

from pushd.model import Failed, FcmPush, Outcome, RetryLater, TokenDead
from pushd.upstream.fcm.alarms import MismatchWindow, ThirdPartyAlarm
from pushd.upstream.fcm.classify import Unauthenticated, classify
from pushd.upstream.fcm.message import InvalidToken, body_for
from pushd.upstream.fcm.oauth import TOKEN_REQUEST_TIMEOUT, AccessTokens, TokenUnavailable
from pushd.upstream.fcm.service_account import load_private_key
from pushd.upstream.fcm.settings import FcmSettings
from pushd.upstream.h2batch import REAUTHENTICATE, Batch, Reauthenticate, Report
from pushd.upstream.h2pool import H2Pool
from pushd.upstream.h2types import Peer, Stream
from pushd.upstream.hpack import encode_fields
from pushd.upstream.proxy import route

log = logging.getLogger("pushd.upstream.fcm")

#: Replace a connection after this many consecutive timeouts without any response:
#: the sign of a wedged or silently dead connection.
RECYCLE_AFTER_TIMEOUTS: Final = 3
#: Streams per connection when FCM's SETTINGS do not say (FCM's documented limit, and
#: what it sends today).
DEFAULT_STREAMS: Final = 100
#: How FCM looks to a connection: no message-id header (it is in the JSON body).
FCM_PEER: Final = Peer("FCM", log, default_streams=DEFAULT_STREAMS, connect_level=logging.DEBUG)
#: Log prefix of the pool's lines: ``fcm[app]``.
LOG_LABEL: Final = "fcm"
#: Bound on closing the token endpoint's client at shutdown.
CLOSE_TIMEOUT: Final = 5.0
UNAUTHENTICATED: Final = "UNAUTHENTICATED"
USER_AGENT: Final = "pushd"
NOT_RUNNING: Final = "FCM client not running"


def make_ssl_context(settings: FcmSettings, *, h2: bool = False) -> ssl.SSLContext:
    """TLS 1.2+ trusting the system store plus ``settings.ca_file``; ALPN h2 if ``h2``.

    The token endpoint's httpx client sets its own ALPN on the context it is given, so
    the two must not share one.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if h2:
        ctx.set_alpn_protocols(["h2"])
    if settings.ca_file:
        ctx.load_verify_locations(cafile=settings.ca_file)
    return ctx


def token_proxy(settings: FcmSettings) -> httpx.Proxy | None:
    """The proxy for the token endpoint's httpx client (``no_proxy`` may spare its host)."""
    host = urlsplit(settings.account.token_uri).hostname or ""
    proxy = route(settings.proxy, host)
    if proxy is None:
        return None
    auth = (proxy.username, proxy.password or "") if proxy.username is not None else None
    return httpx.Proxy(proxy.url, auth=auth)


class _FcmBatch(Batch):
    """One :meth:`FcmClient.send_many` call: shared encoded headers, per-token body."""

    __slots__ = ("bodies", "client", "fields", "tokens")

    def __init__(self, client: FcmClient, tokens: AccessTokens, report: Report, count: int) -> None:
        super().__init__(client.pool, report, count, None)
        self.client = client
        self.tokens = tokens
        self.fields = b""
        #: Request body per index (empty for tokens reported without sending).
        self.bodies: list[bytes] = []

    def set_credential(self, credential: str | None) -> None:
        """Encode the headers every request shares, for the access token ``credential``."""
        self.credential = credential
        self.fields = self.client.fields_for(credential or "")

    def build(self, index: int) -> tuple[bytes, bytes]:
        return self.fields, self.bodies[index]

    def classify(self, stream: Stream) -> Outcome | Reauthenticate:
        client = self.client
        verdict = classify(
            stream.status, stream.response_body(), stream.retry_after, now=client.clock()
        )
        if isinstance(verdict, Unauthenticated):
            return REAUTHENTICATE
        return client.observe(verdict)

    def credential_refused(self) -> Outcome:
        return Failed(UNAUTHENTICATED, credential=True)

    def renew(self, seen: str) -> str | None:
        """Forget the refused token (only the first 401 for it does); fetch in the task."""
        self.tokens.invalidate(seen)
        return None

    async def renew_async(self) -> str | Outcome:
        try:
            return await self.tokens.get()
        except TokenUnavailable as exc:
            return _token_failure(exc)


def _token_failure(exc: TokenUnavailable) -> Outcome:
    if exc.credential:
        return Failed(f"oauth: {exc.reason}", credential=True)
    return RetryLater(exc.reason, exc.retry_after, kind="unreachable")


class FcmClient:
    """Sends messages for one FCM app; see the module docstring for the design."""

    def __init__(self, settings: FcmSettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        url = urlsplit(settings.base_url)
        if url.scheme != "https" or not url.hostname:
            raise ValueError(f"FCM base_url must be https://host[:port], not {settings.base_url!r}")
        if not settings.project_id:
            raise ValueError("FCM project_id is empty")
        # Fail at start, not an hour later, if the key is unusable.
        load_private_key(settings.account.private_key_pem)
        self.pool = H2Pool(
            FCM_PEER,
            name=settings.name,
            label=LOG_LABEL,
            host=url.hostname,
            port=url.port or 443,
            ssl_context=make_ssl_context(settings, h2=True),
            connections=settings.connections,
            recycle_after_timeouts=RECYCLE_AFTER_TIMEOUTS,
            proxy=route(settings.proxy, url.hostname),
        )
        base_path = url.path.rstrip("/")
        path = f"{base_path}/v1/projects/{quote(settings.project_id, safe='')}/messages:send"
        #: Encoded headers before and after ``authorization``, shared by every request.
        self._prefix = encode_fields(
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":authority", self.pool.authority.encode("ascii")),
                (b":path", path.encode("ascii")),
                (b"content-type", b"application/json"),
                (b"user-agent", USER_AGENT.encode("ascii")),
            ]
        )
        #: (access token, its encoded headers): the token changes about once an hour.
        self._fields: tuple[str, bytes] = ("", b"")
        self._token_context = make_ssl_context(settings)
        self._token_http: httpx.AsyncClient | None = None
        self._tokens: AccessTokens | None = None
        self._mismatches = MismatchWindow(settings.name, settings.project_id)
        self._third_party = ThirdPartyAlarm(settings.name, settings.project_id)

    @property
    def access_tokens(self) -> AccessTokens | None:
        """The shared access-token holder while running (for tests and metrics)."""
        return self._tokens

    @property
    def in_flight(self) -> int:
        """Requests now on the wire."""
        return self.pool.in_flight

    @property
    def recycled(self) -> int:
        """Connections replaced after repeated timeouts, for metrics and tests."""
        return self.pool.recycled

    def clock(self) -> float:
        """Wall-clock seconds (an HTTP-date ``Retry-After`` is measured with it)."""
        return self._clock()

    def fields_for(self, access: str) -> bytes:
        """The encoded header fields of a request sent with ``access``, cached per token."""
        cached_token, fields = self._fields
        if access != cached_token:
            # Never indexed: a bearer token must not enter any HPACK table (RFC 7541 §7.1.3).
            auth = NeverIndexedHeaderTuple(b"authorization", b"Bearer " + access.encode("ascii"))
            fields = self._prefix + encode_fields([auth])
            self._fields = (access, fields)
        return fields

    # --- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connections until cancelled.  Reports started at once; connects on demand."""
        if self._tokens is not None:
            raise RuntimeError("FcmClient.run() called twice")
        settings = self._settings
        token_http = self._token_http = httpx.AsyncClient(
            verify=self._token_context,
            headers={"user-agent": USER_AGENT},
            proxy=token_proxy(settings),
            # The proxy is pushd.toml's to choose: no HTTPS_PROXY from the environment,
            # which would send token requests one way and sends another.
            trust_env=False,
        )
        try:
            async with trio.open_nursery() as nursery:
                # Token refreshes run in this nursery: a send's deadline never cuts one
                # short (see pushd.upstream.fcm.oauth).  A token request that takes longer
                # than a send may is no use to the send: a short request_timeout
                # shortens the token request's too.
                self._tokens = AccessTokens(
                    settings.account,
                    token_http,
                    clock=self._clock,
                    timeout=min(TOKEN_REQUEST_TIMEOUT, settings.request_timeout),
                    nursery=nursery,
                )
                await self.pool.run(task_status=task_status)
        finally:
            self._tokens = None
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                await token_http.aclose()

    # --- sending ----------------------------------------------------------------------

    async def send(self, token: str, push: FcmPush) -> Outcome:
        """Deliver one message and say what happened: :meth:`send_many` of one."""
        outcomes: list[Outcome] = []
        await self.send_many((token,), push, lambda _index, outcome: outcomes.append(outcome))
        return outcomes[0]

    async def send_many(
        self, tokens: Sequence[str], push: FcmPush, report: Callable[[int, Outcome], None]
    ) -> None:
        """Send ``push`` to every token at once; call ``report(index, outcome)`` exactly once
        per index, as each answer arrives; return when every index has been reported.

        Never raises for network, FCM or token-endpoint trouble (those are
        :class:`RetryLater`); only cancellation and programming errors escape.  The whole
        call, token refresh and waiting for stream slots included, is bounded by
        ``settings.request_timeout``: whatever is unanswered then is
        ``RetryLater("timeout")`` and its stream is reset.

        * A token that cannot be a registration token is never sent:
          ``TokenDead("INVALID_ARGUMENT")``, as FCM would answer (``Failed`` if empty).
        * 401 ``UNAUTHENTICATED``: the access token is refreshed (once, however many
          requests saw it) and each refused message resent once; a second 401 is
          ``Failed(credential=True)``.
        * The token endpoint refusing the account (``invalid_grant``...) is
          ``Failed(credential=True)``; the endpoint being down is ``RetryLater``.
        * A request FCM certainly did not process (GOAWAY above it, REFUSED_STREAM) is
          resent on another connection; one whose connection failed after it was
          written is ``RetryLater("connection lost: ...")``.

        ``report`` is called from whichever task sees the answer (usually a connection's
        reader), so it must be quick and must not block.  If it raises, the other
        indices are still reported and the first exception is raised at the end.  If
        the call is cancelled, indices not reported yet are never reported.
        """
        await self.send_mixed(((tokens, push),), report)

    async def send_mixed(
        self,
        groups: Sequence[tuple[Sequence[str], FcmPush]],
        report: Callable[[int, Outcome], None],
    ) -> None:
        """:meth:`send_many` for several pushes at once, each to its tokens: one batch,
        so one access-token read, one wait, one deadline and one flush for all of them
        (the one-device pushes of concurrent requests, :mod:`pushd.outbox`), where one
        ``send_many`` each took a task of its own.  Indices count across the groups in
        order; everything said of :meth:`send_many` holds per index.
        """
        deadline = trio.current_time() + self._settings.request_timeout
        holder = self._tokens
        count = sum(len(tokens) for tokens, _ in groups)
        if holder is None:
            for index in range(count):
                report(index, RetryLater(NOT_RUNNING, kind="unreachable"))
            return
        batch = _FcmBatch(self, holder, report, count)
        bodies = batch.bodies
        pending = batch.pending
        index = 0
        for tokens, push in groups:
            for token in tokens:
                try:
                    bodies.append(body_for(token, push))
                except InvalidToken as exc:
                    bodies.append(b"")
                    outcome = TokenDead("INVALID_ARGUMENT") if token else Failed(str(exc))
                    batch.finish(index, outcome)
                else:
                    pending.append(index)
                index += 1
        if pending:
            failure: Outcome = RetryLater("timeout", kind="unreachable")  # no access token
            access = None
            with trio.move_on_at(deadline):
                try:
                    access = await holder.get()
                except TokenUnavailable as exc:
                    failure = _token_failure(exc)
            if access is None:
                while pending:
                    batch.finish(pending.popleft(), failure)
            else:
                batch.first_credential = access
                batch.set_credential(access)
        await self.pool.send_batch(batch, deadline)

    # --- alarms ---------------------------------------------------------------------

    @property
    def mismatch_alarm(self) -> bool:
        """Whether the SENDER_ID_MISMATCH alarm is raised."""
        return self._mismatches.raised

    def observe(self, outcome: Outcome) -> Outcome:
        """Feed an answer to the app's alarms; return the outcome to report."""
        self._third_party.observe(outcome, trio.current_time())
        return self._mismatches.observe(outcome)
