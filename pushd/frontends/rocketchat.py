"""The Rocket.Chat push gateway API (``/push/apn/send``, ``/push/gcm/send``).

A Rocket.Chat server whose ``Push_gateway`` setting points at pushd sends one request per
device token (protocol notes §3.2): ``{"token": ..., "options": {...}}``.  pushd stores
no registration for this protocol: the token comes with every push, and Rocket.Chat
deletes it itself when told so.

Authentication: Rocket.Chat sends its Rocket.Chat Cloud workspace token in
``Authorization``, which cannot be verified offline, so each configured server lists
the exact header values it sends (``tokens``), or owns a secret path prefix
(``/<path_secret>/push/...``; Rocket.Chat keeps a prefix in its gateway URL).

Answers (§3.3) decide what Rocket.Chat does next, so they follow its reading exactly:
2xx delivered; 406 the token is dead (the server deletes it); 422 bad input (never
retried); 401 not authorized; 503 with ``Retry-After`` for transient trouble, and 429
with ``Retry-After`` past a server's ``[rocketchat] rate_limit``, both of which
Rocket.Chat retries after 1, 2, 4, 8 and 16 minutes.  Rocket.Chat awaits each token in
turn, so pushd answers within :data:`DELIVER_DEADLINE` instead of holding the request
through retries of its own.

The body is parsed by :mod:`pushd.frontends.rocketchat_wire`; the APNs and FCM
messages, VoIP pushes and the apps' ``content`` modes are
:mod:`pushd.frontends.rocketchat_payloads`'s.

No double deliveries.  Rocket.Chat retries every non-2xx, so once a push is pushd's (in
the durable spool after a transient failure or no answer in time) the answer is 200
and pushd sends it until it is final; a 503 would make Rocket.Chat send it again.  A
dead token found after the answer is answered 406, without sending, the next time
this server pushes to it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import attrs

from pushd import jsonutil
from pushd.activity import Activity
from pushd.config import AppConfig, Config, RocketChatServer
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.frontends.ratelimit import RateLimit, retry_after_seconds
from pushd.frontends.rocketchat_payloads import (
    VOIP_SUFFIX,
    GatewayPush,
    PayloadError,
    build_apns_push,
    build_fcm_push,
    for_content,
)
from pushd.frontends.rocketchat_wire import GatewayError, bad, parse_body
from pushd.model import Delivery, Failed, RetryLater, mask_token
from pushd.store import Store

log = logging.getLogger(__name__)

Provider = Literal["apn", "gcm"]

#: How long a request waits for the upstream's first answer.  Rocket.Chat aborts after
#: about 20 s and awaits each device in turn: a slow answer delays the user's other
#: devices, and an abort skips them (§3.3).  A few seconds covers a healthy upstream.
DELIVER_DEADLINE = 5.0
#: ``Retry-After`` on a 503.  Rocket.Chat ignores it (its own schedule starts at one
#: minute), but it is the honest answer for other clients and proxies.
RETRY_AFTER_SECONDS = 60
#: Largest request body.  A push is a few hundred bytes of options plus the ``payload``
#: that becomes ``ejson``; whatever the upstream can carry (4 KiB) fits with room.
MAX_BODY_BYTES = 32 * 1024


def late_ref(server: str, app: str, token: str) -> str:
    """The name a dead verdict for this device is kept under until the server's next
    push to it (JSON: no choice of the strings can name another device's verdict)."""
    return jsonutil.key_text("rocketchat", server, app, token)


def error_reply(status: int, message: str, error_id: str, *, retry_after: bool = False) -> Reply:
    """The official gateway's error shape (``{"error", "errorId", "status"}``, issue #15296).

    Rocket.Chat only logs the body; ``errorId`` is pushd's request id, so an admin can
    find the matching pushd log line.
    """
    headers = (("retry-after", str(RETRY_AFTER_SECONDS)),) if retry_after else ()
    body = {"error": message, "errorId": error_id, "status": status}
    return json_reply(status, body, headers)


def rate_limited_reply(retry_after: float, error_id: str) -> Reply:
    """429 with ``Retry-After``: Rocket.Chat retries it on its own schedule (§3.3)."""
    seconds = retry_after_seconds(retry_after)
    reply = error_reply(429, f"too many requests: retry in {seconds} s", error_id)
    return attrs.evolve(reply, headers=(("retry-after", str(seconds)),))


def serving_error_reply(status: int, code: str, message: str) -> Reply:
    """Errors the serving layer raises (413, 405), worded for Rocket.Chat.

    An oversized body is bad input: 422, not 413, which Rocket.Chat would retry five
    times over half an hour.
    """
    return error_reply(422 if status == 413 else status, message, code)


# --- the handlers ------------------------------------------------------------------------


def _matches(given: bytes, accepted: str) -> bool:
    return hmac.compare_digest(given, accepted.encode())


class RocketChatGateway:
    """Serves Rocket.Chat servers as Rocket.Chat's cloud push gateway does."""

    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.time,
        activity: Activity | None = None,
    ) -> None:
        self.config = config
        self.store = store  # verdicts found after an answer; shared rate windows
        self.dispatcher = dispatcher
        self.clock = clock
        self.activity = activity or Activity()
        self.deadline = min(DELIVER_DEADLINE, config.server.first_attempt_deadline)
        #: Per configured server, counted once it has authenticated.
        self.rate_limit = RateLimit(
            "rocketchat", config.rocketchat.rate_limit, shared=store if store.shared else None
        )

    def routes(self) -> list[Route]:
        routes = []
        for provider in ("apn", "gcm"):
            for prefixed in (False, True):
                path = f"/push/{provider}/send"
                routes.append(
                    Route(
                        "POST",
                        "/{path_secret}" + path if prefixed else path,
                        self._handler(provider, prefixed=prefixed),
                        f"rocketchat_{provider}{'_prefixed' if prefixed else ''}",
                        max_body_bytes=MAX_BODY_BYTES,
                        error_reply=serving_error_reply,
                    )
                )
        return routes

    def _handler(
        self, provider: Provider, *, prefixed: bool
    ) -> Callable[[Request], Awaitable[Reply]]:
        async def handle(request: Request) -> Reply:
            try:
                server = self.authenticate(request, prefixed=prefixed)
                retry_after = await self.rate_limit.acquire(f"server {server.name}", self.clock())
                if retry_after is not None:
                    return rate_limited_reply(retry_after, request.request_id)
                return await self.send(request, server, provider)
            except GatewayError as error:
                return error_reply(
                    error.status, error.message, request.request_id, retry_after=error.retry_after
                )

        return handle

    def authenticate(self, request: Request, *, prefixed: bool) -> RocketChatServer:
        """The configured server this request comes from, or GatewayError(401).

        Every configured value is compared, in constant time, so the answer's timing
        says nothing about how close a guess was.
        """
        found: RocketChatServer | None = None
        if prefixed:
            given = request.params.get("path_secret", "").encode()
            for server in self.config.rocketchat.servers:
                if server.path_secret and _matches(given, server.path_secret) and found is None:
                    found = server
        else:
            header = request.headers.get("authorization")
            given = header.encode("latin-1") if header else b""
            for server in self.config.rocketchat.servers:
                for token in server.tokens:
                    if given and token and _matches(given, token) and found is None:
                        found = server
        if found is None:
            log.warning(
                "%s: Rocket.Chat request refused: %s",
                request.request_id,
                "unknown path secret" if prefixed else "Authorization matches no server",
            )
            raise GatewayError(401, "not authorized")
        self.activity.seen("rocketchat", found.name)
        return found

    def _app(
        self, push: GatewayPush, server: RocketChatServer, provider: Provider
    ) -> tuple[AppConfig, bool]:
        """``(app, voip)``: the app to send through, by ``options.topic`` for APNs (a
        ``<bundle id>.voip`` topic is a VoIP push of the bundle id's app), by config
        for FCM."""
        if provider == "apn":
            if not push.topic:
                raise bad("options.topic: missing")
            apps = [app for app in self.config.apps if app.provider == "apns"]
            for app in apps:
                if app.topic == push.topic:
                    return app, False
            if push.topic.endswith(VOIP_SUFFIX):
                bundle = push.topic.removesuffix(VOIP_SUFFIX)
                for app in apps:
                    if app.topic == bundle:
                        return app, True
            log.warning("Rocket.Chat server %s: no APNs app has this topic", server.name)
            raise bad("options.topic: no app with this topic is configured")
        name = server.fcm_app or self.config.rocketchat.fcm_app
        fcm_app = None if name is None else self.config.app(name)
        if fcm_app is None:
            log.warning("Rocket.Chat server %s: no FCM app is configured for it", server.name)
            raise bad("no FCM app is configured for this server")
        return fcm_app, False

    async def send(self, request: Request, server: RocketChatServer, provider: Provider) -> Reply:
        push = parse_body(request.body)
        app, voip = self._app(push, server, provider)
        push = for_content(push, app)
        now = self.clock()
        try:
            upstream = (
                build_apns_push(push, now, voip=voip)
                if provider == "apn"
                else build_fcm_push(push, app, now)
            )
        except PayloadError as error:
            raise bad(str(error)) from None
        ref = late_ref(server.name, app.name, push.token)
        verdict = (await self.dispatcher.verdicts.late_verdicts([ref])).get(ref)
        if verdict is not None:
            await self.dispatcher.verdicts.forget([ref])
            log.info(
                "%s: Rocket.Chat server %s: token %s was found dead after an earlier "
                "answer (%s); told now",
                request.request_id,
                server.name,
                mask_token(push.token),
                verdict.reason,
            )
            raise GatewayError(406, "the device token is no longer valid")
        delivery = Delivery(
            app=app.name, token=push.token, push=upstream, ref=ref, protocol="rocketchat"
        )
        [report] = await self.dispatcher.deliver([delivery], deadline=self.deadline)
        status = self._status(report)
        # Debug for a push that went out (the metrics count those), info for the rest:
        # an info line per push would be most of a busy gateway's log and CPU.
        log.log(
            logging.DEBUG if report.status == "delivered" else logging.INFO,
            "%s: Rocket.Chat server %s, app %s, token %s: %s (%s) -> %d",
            request.request_id,
            server.name,
            app.name,
            mask_token(push.token),
            report.status,
            report.reason or "ok",
            status,
        )
        if status == 200:
            return json_reply(200, {})
        if status == 503:
            raise GatewayError(503, "temporary failure, try again later", retry_after=True)
        if status == 406:
            raise GatewayError(406, "the device token is no longer valid")
        raise GatewayError(422, f"the push service refused the notification: {report.reason}")

    def _status(self, report: Report) -> int:
        """The HTTP status that makes Rocket.Chat do the right thing with ``report``.

        ``retrying`` means spooled: pushd owns the push now and sends it until it is
        final, so Rocket.Chat must not send it again (it retries every non-2xx).
        """
        if report.status in ("delivered", "retrying"):
            return 200
        if report.status == "removed":
            return 406
        outcome = report.outcome
        if isinstance(outcome, RetryLater):
            return 503  # given up (it expired, or the spool is full): let Rocket.Chat try
        if isinstance(outcome, Failed) and outcome.credential:
            # pushd's credentials, not the message: Rocket.Chat's retries may succeed
            # once the key is fixed.
            return 503
        return 422
