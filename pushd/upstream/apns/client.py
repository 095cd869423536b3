"""The APNs client of one app: a pool of long-lived HTTP/2 connections.

Usage (the delivery engine owns the nursery)::

    client = ApnsClient(settings)
    await nursery.start(client.run)
    outcome = await client.send(token, push)
    await client.send_many(tokens, push, report)   # report(index, outcome) per token

The pool, its connections and the batch machinery are provider-neutral and live in
:mod:`pushd.upstream.h2pool` and :mod:`pushd.upstream.h2conn` (the FCM client uses them
too); see there for lazy connections, stream slots and waiting batches.  What is APNs'
own is here: a batch's headers are built and encoded once (only ``:path`` differs per
token) and its body is shared; answers are read with
:func:`pushd.upstream.apns.classify.classify`; an ``ExpiredProviderToken`` regenerates
the JWT at once, in the reader that saw it.  :meth:`ApnsClient.send` is a batch of one.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import trio

from pushd.model import ApnsPush, Delivered, Failed, Outcome, TokenDead
from pushd.upstream.apns.certificate import load_client_certificate
from pushd.upstream.apns.classify import (
    ProviderTokenExpired,
    classify,
    connection_closing,
    goaway_outcome,
)
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
from pushd.upstream.h2batch import REAUTHENTICATE, Batch, Reauthenticate, Report
from pushd.upstream.h2pool import H2Pool
from pushd.upstream.h2types import Peer, Stream
from pushd.upstream.hpack import encode_field, encode_fields
from pushd.upstream.proxy import route

log = logging.getLogger("pushd.upstream.apns")

#: How APNs looks to a connection: the ``apns-id`` header names each answer; APNs always
#: sends SETTINGS_MAX_CONCURRENT_STREAMS (1 on a token-auth connection until the first
#: authenticated request, then its real limit), so no default is assumed; a ``Shutdown``
#: answer retires its connection.
APNS_PEER = Peer("APNs", log, id_header=b"apns-id", retiring=connection_closing)
#: Log prefix of the pool's lines: ``apns[app]``.
LOG_LABEL = "apns"
#: Replace a connection after this many sends in a row timed out on it with no answer
#: in between: a connection that stopped answering but still ACKs PING (so the pinger
#: keeps it) would otherwise take every push to its deadline for as long as it lives.
RECYCLE_AFTER_TIMEOUTS: Final = 3
#: The :func:`encode_field` arguments of ``:path``: a never-indexed literal, as Apple asks.
_PATH = b":path"
_PATH_SENSITIVE = True
#: The status of a delivered notification (its body is empty).
_OK = 200


class _ApnsBatch(Batch):
    """One :meth:`ApnsClient.send_mixed` call (``send_many`` is one push of it): each
    push's headers encoded once, each token's ``:path`` spliced between them."""

    __slots__ = ("bodies", "client", "kinds", "paths", "prefixes", "suffixes", "templates")

    def __init__(self, client: ApnsClient, report: Report, jwt: str | None, count: int) -> None:
        super().__init__(client.pool, report, count, jwt)
        self.client = client
        #: (topic, push) per valid push, to rebuild the headers after a JWT regeneration.
        self.templates: list[tuple[str, ApnsPush]] = []
        self.prefixes: list[bytes] = []
        self.suffixes: list[bytes] = []
        self.bodies: list[bytes] = []
        #: The template of each index (-1 for tokens reported without sending).
        self.kinds: list[int] = []
        #: Encoded ``:path`` field per index (empty for tokens reported without sending).
        self.paths: list[bytes] = []

    def add_template(self, topic: str, push: ApnsPush) -> int:
        """Encode ``push``'s headers for the current JWT; its template number.

        :class:`InvalidPush` if APNs would refuse it whatever the token."""
        self.prefixes.append(b"")
        self.suffixes.append(b"")
        self.bodies.append(b"")
        self.templates.append((topic, push))
        kind = len(self.templates) - 1
        try:
            self._encode(kind, self.credential)
        except InvalidPush:
            for parts in (self.prefixes, self.suffixes, self.bodies, self.templates):
                parts.pop()
            raise
        return kind

    def _encode(self, kind: int, credential: str | None) -> None:
        topic, push = self.templates[kind]
        prefix, suffix, body = request_template(
            topic, push, credential, authority=self.pool.authority
        )
        self.prefixes[kind] = encode_fields(prefix)
        self.suffixes[kind] = encode_fields(suffix)
        self.bodies[kind] = body

    def set_credential(self, credential: str | None) -> None:
        """Build and encode every push's headers for the JWT ``credential``."""
        self.credential = credential
        for kind in range(len(self.templates)):
            self._encode(kind, credential)

    def build(self, index: int) -> tuple[bytes, bytes]:
        kind = self.kinds[index]
        return self.prefixes[kind] + self.paths[index] + self.suffixes[kind], self.bodies[kind]

    def classify(self, stream: Stream) -> Outcome | Reauthenticate:
        status = stream.status
        if status == _OK:
            return Delivered(stream.upstream_id)
        outcome = classify(status, stream.response_body(), stream.retry_after, stream.upstream_id)
        if isinstance(outcome, ProviderTokenExpired):
            return REAUTHENTICATE
        return outcome

    def goaway_outcome(self, reason: str) -> Outcome | Reauthenticate | None:
        outcome = goaway_outcome(reason)
        if isinstance(outcome, ProviderTokenExpired):
            return REAUTHENTICATE
        return outcome

    def credential_refused(self) -> Outcome:
        return Failed("ExpiredProviderToken", credential=True)

    def renew(self, seen: str) -> str | None:
        """Regenerate the JWT now (once per rejected one: :meth:`ProviderToken.expired`)."""
        client = self.client
        provider = client.provider
        if provider is None:  # certificate auth has no credential to renew
            return self.credential
        now = client.clock()
        jwt = provider.expired(seen, now)
        if jwt != self.credential and provider.is_young(now):
            log.warning(
                "apns[%s]: APNs rejected a young provider token as expired "
                "(clock skew?); regenerating",
                client.name,
            )
        return jwt


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
        self._provider: ProviderToken | None = None
        if isinstance(settings.auth, TokenAuth):
            self._provider = ProviderToken.from_auth(settings.auth)
        self.pool = H2Pool(
            APNS_PEER,
            name=settings.name,
            label=LOG_LABEL,
            host=url.hostname,
            port=url.port or 443,
            ssl_context=make_ssl_context(settings),
            connections=settings.connections,
            recycle_after_timeouts=RECYCLE_AFTER_TIMEOUTS,
            proxy=route(settings.proxy, url.hostname),
        )

    @property
    def connections_opened(self) -> int:
        """Connections opened since start, for metrics and tests."""
        return self.pool.connections_opened

    @property
    def recycled(self) -> int:
        """Connections replaced after :data:`RECYCLE_AFTER_TIMEOUTS` timeouts in a row."""
        return self.pool.recycled

    # --- public -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the pool until cancelled.  Reports started at once; connects on demand."""
        await self.pool.run(task_status=task_status)

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
          resent on another connection, up to :data:`~pushd.upstream.h2batch.MAX_RESENDS`
          times.
        * A request whose connection failed after it was written is
          ``RetryLater("connection lost: ...")``: it may have been delivered, so the
          caller decides whether to retry.
        * ``ExpiredProviderToken`` regenerates the shared JWT (once for the batch) and
          resends each affected request once; a second one is ``Failed(credential=True)``.
        * A GOAWAY naming a credential reason (``InvalidProviderToken``...) is, for the
          requests it left unprocessed, the answer that reason would be: not resent.
        * While APNs is unreachable and no connection is open, requests that find no
          slot are ``RetryLater("APNs unreachable: ...")`` at once.

        ``report`` is called from whichever task sees the answer (usually a connection's
        reader), so it must be quick and must not block.  If it raises, the other
        indices are still reported and the first exception is raised at the end.  If
        the call is cancelled, indices not reported yet are never reported and their
        streams are reset, as :meth:`send` gives no outcome when cancelled.
        """
        await self.send_mixed(((tokens, push),), report)

    async def send_mixed(
        self,
        groups: Sequence[tuple[Sequence[str], ApnsPush]],
        report: Callable[[int, Outcome], None],
    ) -> None:
        """:meth:`send_many` for several pushes at once, each to its tokens: one batch,
        so one wait, one deadline and one flush for all of them.  Indices count across
        the groups in order; everything said of :meth:`send_many` holds per index (a
        push APNs would refuse fails its own indices only).
        """
        settings = self._settings
        deadline = trio.current_time() + settings.request_timeout
        provider = self._provider
        jwt = provider.current(self._clock()) if provider is not None else None
        batch = _ApnsBatch(self, report, jwt, sum(len(tokens) for tokens, _ in groups))
        paths = batch.paths
        kinds = batch.kinds
        pending = batch.pending
        index = 0
        for tokens, push in groups:
            try:
                kind = batch.add_template(topic_for(settings.topic, push.push_type), push)
            except InvalidPush:
                # The push itself is bad; build each request for the exact reason (a bad
                # token can win over a bad header, as APNs checks in that order).
                for token in tokens:
                    paths.append(b"")
                    kinds.append(-1)
                    batch.finish(index, self._rejected(token, push, jwt))
                    index += 1
                continue
            for token in tokens:
                kinds.append(kind)
                try:
                    path = device_path(token)
                except InvalidDeviceToken as exc:
                    paths.append(b"")
                    # A non-hex token: APNs would say BadDeviceToken, so it is dead.
                    batch.finish(index, TokenDead("BadDeviceToken") if token else Failed(str(exc)))
                else:
                    paths.append(encode_field(_PATH, path, _PATH_SENSITIVE))
                    pending.append(index)
                index += 1
        await self.pool.send_batch(batch, deadline)

    def _rejected(self, token: str, push: ApnsPush, jwt: str | None) -> Outcome:
        """The outcome of a request that cannot be built (``push`` is invalid)."""
        try:
            topic = topic_for(self._settings.topic, push.push_type)
            build_request(topic, token, push, jwt, authority=self.pool.authority)
        except InvalidDeviceToken as exc:
            return TokenDead("BadDeviceToken") if token else Failed(str(exc))
        except InvalidPush as exc:
            return Failed(str(exc))
        raise AssertionError("a push that fails as a template builds for a token")

    @property
    def name(self) -> str:
        """The app's name, for log lines."""
        return self._settings.name

    @property
    def authority(self) -> str:
        """``host[:port]`` of APNs, the ``:authority`` of every request."""
        return self.pool.authority

    @property
    def provider(self) -> ProviderToken | None:
        """The shared JWT source (token auth), or None (certificate auth)."""
        return self._provider

    def clock(self) -> float:
        """Wall-clock seconds, as the JWT's ``iat`` needs them."""
        return self._clock()


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
