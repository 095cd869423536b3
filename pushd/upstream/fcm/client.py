"""The FCM HTTP v1 client of one app: long-lived HTTP/2 connections through httpx.

Usage (the delivery engine owns the nursery)::

    client = FcmClient(settings)
    await nursery.start(client.run)
    outcome = await client.send(token, push)

**Connections.**  httpx (httpcore 1.0.9) caps one HTTP/2 connection at 100 concurrent
streams and never opens a second connection to the same origin while the first is
usable: extra requests queue on the connection's semaphore (protocol notes §1.6).  So
the client runs ``settings.connections`` separate ``AsyncClient`` s, each holding one
connection, and sends each request through the least busy one: 2 clients carry up to
200 requests in flight.

**The shrink wedge.**  httpcore applies a *lowered* ``SETTINGS_MAX_CONCURRENT_STREAMS``
by acquiring semaphore permits while holding its read lock; if a server drops the limit
below the streams in flight, the connection can stop reading (§1.6).  FCM is not known
to do this, but a wedged connection must not hold sends forever: every send is bounded
by ``settings.request_timeout`` (a trio cancel scope, which also covers waiting on that
semaphore, which httpx's own timeouts do not), and a connection whose requests time
out :data:`RECYCLE_AFTER_TIMEOUTS` times in a row is replaced by a fresh client.

**Access tokens.**  One :class:`~pushd.upstream.fcm.oauth.AccessTokens` per client,
shared by all sends.  A 401 ``UNAUTHENTICATED`` invalidates the token that was refused
and resends once with a new one; a token endpoint that is down makes sends
``RetryLater`` (it never raises into the app's lane).

**A project that does not match.**  ``SENDER_ID_MISMATCH`` means the token belongs to
another Firebase project: for one token, it is dead.  When most recent sends of the app
fail that way, the app's configuration is wrong instead (the service account's project
is not the one the mobile app registers with), so the client logs an alarm once and,
while the alarm holds, answers mismatches with ``Failed(credential=True)`` so that the
delivery engine pauses the app rather than deleting every token it has.
"""

from __future__ import annotations

import collections
import logging
import ssl
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import quote, urlsplit

import attrs
import h2.exceptions
import httpx
import trio

from pushd.model import Failed, FcmPush, Outcome, RetryLater, TokenDead, mask_token
from pushd.upstream.fcm.classify import Unauthenticated, classify
from pushd.upstream.fcm.message import InvalidToken, body_for
from pushd.upstream.fcm.oauth import AccessTokens, TokenUnavailable
from pushd.upstream.fcm.service_account import load_private_key
from pushd.upstream.fcm.settings import FcmSettings

log = logging.getLogger("pushd.upstream.fcm")

#: Replace a connection after this many consecutive timeouts without any response:
#: the sign of a wedged (§1.6) or silently dead connection.
RECYCLE_AFTER_TIMEOUTS: Final = 3
#: Idle HTTP/2 connections are kept this long (httpx's default is 5 s, which would mean
#: a new TLS handshake for most pushes of a quiet gateway).
KEEPALIVE_EXPIRY: Final = 300.0
#: Bound on closing the clients at shutdown.
CLOSE_TIMEOUT: Final = 5.0
#: SENDER_ID_MISMATCH alarm: over the last ALARM_WINDOW answered sends, at least
#: ALARM_MIN_SENDS of them, more than ALARM_RATIO mismatches raise it; it clears (and
#: may be raised again) below ALARM_CLEAR_RATIO, so a ratio hovering near the threshold
#: does not log on every send.
ALARM_WINDOW: Final = 100
ALARM_MIN_SENDS: Final = 20
ALARM_RATIO: Final = 0.5
ALARM_CLEAR_RATIO: Final = 0.25
SENDER_ID_MISMATCH: Final = "SENDER_ID_MISMATCH"
USER_AGENT: Final = "pushd"


@attrs.define(eq=False)
class _Slot:
    """One httpx client (one HTTP/2 connection) and how busy and healthy it is."""

    index: int
    http: httpx.AsyncClient
    in_flight: int = 0
    #: Consecutive timeouts since the last response on this slot.
    timeouts: int = 0


def make_ssl_context(settings: FcmSettings) -> ssl.SSLContext:
    """TLS 1.2+ trusting the system store plus ``settings.ca_file``.

    httpcore sets ALPN on the context it is given, so HTTP/2 and HTTP/1.1 clients must
    not share one: call this once per kind.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca_file:
        ctx.load_verify_locations(cafile=settings.ca_file)
    return ctx


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
        self._url = httpx.URL(
            settings.base_url.rstrip("/")
            + f"/v1/projects/{quote(settings.project_id, safe='')}/messages:send"
        )
        self._h2_context = make_ssl_context(settings)
        self._token_context = make_ssl_context(settings)
        self._slots: list[_Slot] = []
        self._retired: list[httpx.AsyncClient] = []
        self._token_http: httpx.AsyncClient | None = None
        self._tokens: AccessTokens | None = None
        self._nursery: trio.Nursery | None = None
        #: Answered sends, newest last: True for a SENDER_ID_MISMATCH.
        self._recent: collections.deque[bool] = collections.deque(maxlen=ALARM_WINDOW)
        self._mismatches = 0
        #: Whether the SENDER_ID_MISMATCH alarm is raised.
        self.mismatch_alarm = False
        #: Connections replaced after repeated timeouts, for metrics and tests.
        self.recycled = 0

    @property
    def access_tokens(self) -> AccessTokens | None:
        """The shared access-token holder while running (for tests and metrics)."""
        return self._tokens

    @property
    def in_flight(self) -> int:
        """Requests now on the wire or queued in httpx."""
        return sum(slot.in_flight for slot in self._slots)

    # --- lifecycle --------------------------------------------------------------------

    def _new_http2(self) -> httpx.AsyncClient:
        settings = self._settings
        return httpx.AsyncClient(
            http2=True,
            verify=self._h2_context,
            timeout=httpx.Timeout(settings.request_timeout),
            # One connection per client (see the module docstring); room for a second
            # only while the first drains after a GOAWAY.
            limits=httpx.Limits(
                max_connections=2, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_EXPIRY
            ),
            headers={"user-agent": USER_AGENT},
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the HTTP clients until cancelled.  Reports started at once; connects on demand."""
        if self._nursery is not None or self._slots:
            raise RuntimeError("FcmClient.run() called twice")
        settings = self._settings
        self._token_http = httpx.AsyncClient(
            verify=self._token_context, headers={"user-agent": USER_AGENT}
        )
        self._tokens = AccessTokens(settings.account, self._token_http, clock=self._clock)
        self._slots = [_Slot(i, self._new_http2()) for i in range(max(1, settings.connections))]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            clients = [slot.http for slot in self._slots] + self._retired
            clients.append(self._token_http)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                for client in clients:
                    await client.aclose()

    # --- sending ----------------------------------------------------------------------

    async def send(self, token: str, push: FcmPush) -> Outcome:
        """Deliver one message and say what happened.

        Never raises for network, FCM or token-endpoint trouble (those are
        :class:`RetryLater`); only cancellation and programming errors escape.  The whole
        call, token refresh included, is bounded by ``settings.request_timeout``.

        * A token that cannot be a registration token is never sent:
          ``TokenDead("INVALID_ARGUMENT")``, as FCM would answer (``Failed`` if empty).
        * 401 ``UNAUTHENTICATED``: the access token is refreshed and the message resent
          once; a second 401 is ``Failed(credential=True)``.
        * The token endpoint refusing the account (``invalid_grant``...) is
          ``Failed(credential=True)``; the endpoint being down is ``RetryLater``.
        """
        try:
            body = body_for(token, push)
        except InvalidToken as exc:
            return TokenDead("INVALID_ARGUMENT") if token else Failed(str(exc))
        tokens = self._tokens
        if tokens is None or self._nursery is None:
            return RetryLater("FCM client not running")

        slot: _Slot | None = None
        refreshed = False
        with trio.move_on_after(self._settings.request_timeout):
            while True:
                try:
                    access = await tokens.get()
                except TokenUnavailable as exc:
                    if exc.credential:
                        return Failed(f"oauth: {exc.reason}", credential=True)
                    return RetryLater(exc.reason, exc.retry_after)
                slot = min(self._slots, key=_busy)
                slot.in_flight += 1
                try:
                    response = await slot.http.post(
                        self._url,
                        content=body,
                        headers={
                            "authorization": "Bearer " + access,
                            "content-type": "application/json",
                        },
                    )
                except httpx.TimeoutException:
                    break
                except (httpx.HTTPError, h2.exceptions.H2Error) as exc:
                    return RetryLater(f"connection: {type(exc).__name__}")
                finally:
                    slot.in_flight -= 1
                slot.timeouts = 0
                verdict = classify(
                    response.status_code,
                    response.content,
                    response.headers.get("retry-after"),
                    now=self._clock(),
                )
                if isinstance(verdict, Unauthenticated):
                    if refreshed:
                        return Failed("UNAUTHENTICATED", credential=True)
                    refreshed = True
                    tokens.invalidate(access)
                    slot = None
                    continue
                return self._observe(verdict)
        if slot is not None:
            self._timed_out(slot)
        log.debug("fcm[%s]: timeout for %s", self._settings.name, mask_token(token))
        return RetryLater("timeout")

    def _timed_out(self, slot: _Slot) -> None:
        """Count a timeout on ``slot``; replace its connection after too many in a row."""
        slot.timeouts += 1
        nursery = self._nursery
        if slot.timeouts < RECYCLE_AFTER_TIMEOUTS or nursery is None:
            return
        old = slot.http
        slot.http = self._new_http2()
        slot.timeouts = 0
        self.recycled += 1
        self._retired.append(old)
        log.warning(
            "fcm[%s] connection %d: %d requests in a row timed out; replacing the connection",
            self._settings.name,
            slot.index,
            RECYCLE_AFTER_TIMEOUTS,
        )
        nursery.start_soon(self._retire, old)

    async def _retire(self, old: httpx.AsyncClient) -> None:
        # Requests still on the old connection end by their own timeout; then close it.
        await trio.sleep(self._settings.request_timeout)
        self._retired.remove(old)
        await old.aclose()

    # --- SENDER_ID_MISMATCH alarm -----------------------------------------------------

    def _observe(self, outcome: Outcome) -> Outcome:
        """Feed an answered send into the mismatch window; return the outcome to report."""
        if isinstance(outcome, RetryLater):  # says nothing about the tokens
            return outcome
        mismatch = isinstance(outcome, TokenDead) and outcome.reason == SENDER_ID_MISMATCH
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._mismatches -= 1
        recent.append(mismatch)
        self._mismatches += mismatch
        count = len(recent)
        if not self.mismatch_alarm:
            if count >= ALARM_MIN_SENDS and self._mismatches > ALARM_RATIO * count:
                self.mismatch_alarm = True
                log.error(
                    "ALARM fcm[%s]: %d of the last %d sends failed with SENDER_ID_MISMATCH: "
                    "the service account's project (%s) does not match the app's tokens; "
                    "check project_id and the service-account file",
                    self._settings.name,
                    self._mismatches,
                    count,
                    self._settings.project_id,
                )
        elif self._mismatches < ALARM_CLEAR_RATIO * count:
            self.mismatch_alarm = False
            log.warning("fcm[%s]: SENDER_ID_MISMATCH alarm cleared", self._settings.name)
        if mismatch and self.mismatch_alarm:
            return Failed(SENDER_ID_MISMATCH, credential=True)
        return outcome


def _busy(slot: _Slot) -> int:
    return slot.in_flight
