"""Routes, access control and delivery of the Mattermost push proxy.

Access control: Mattermost sends no credentials, but keeps the path of its configured
push server URL, so each ``[[mattermost.servers]]`` entry has a secret path prefix
(compared in constant time), optionally narrowed to source networks and ``server_id``
values.  Un-prefixed paths are not served: without a secret no server is identified.
A refused request gets MPNS's own FAIL answer (the server logs its text) and is
counted in :attr:`MattermostProxy.rejected`.

Delivery: ``send_push`` is synchronous and a Mattermost server never retries a FAIL,
so pushd answers as soon as the push is safe: delivered (OK), dead (REMOVE), refused
for good (FAIL), or, after a transient failure or no answer within
:data:`ANSWER_WITHIN` (or ``[server] first_attempt_deadline`` if shorter), written
to the durable spool (OK) and sent again in the
background until it is delivered or expires.

Where pushd differs from MPNS: MPNS retries APNs only after a transport error, within
the request, and answers FAIL on any HTTP error status (a 500, a 503, a rate limit),
which loses the push.  pushd keeps such a push and answers OK once it is spooled: the
server's 30 s patience is never in question, and the push still arrives.  A dead token
found by a retry after the answer is reported as REMOVE the next time the server
pushes to it (without sending), as MPNS would have on the first answer.
"""

from __future__ import annotations

import collections
import hmac
import logging
from typing import Final

import attrs
import trio

from pushd import __version__, jsonutil
from pushd.activity import Activity
from pushd.config import AppConfig, Config, MattermostServer
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import (
    Network,
    Reply,
    Request,
    Route,
    in_networks,
    json_reply,
    parse_networks,
)
from pushd.frontends.mattermost import payloads, wire
from pushd.frontends.ratelimit import RateLimit
from pushd.model import Delivery, Push, mask_token
from pushd.store import Store

log = logging.getLogger(__name__)

#: How long ``send_push`` waits for the first attempt before the push is spooled and
#: answered OK: well within the server's 30 s timeout.
ANSWER_WITHIN: Final = 10.0
#: Dead-token reasons MPNS answers REMOVE for (notes §1.9).  Others pushd deems dead
#: (APNs ``ExpiredToken``, FCM ``INVALID_ARGUMENT``) are a FAIL there, so here too.
APNS_REMOVE_REASONS: Final = frozenset(
    {"BadDeviceToken", "Unregistered", "MissingDeviceToken", "DeviceTokenNotForTopic"}
)
FCM_REMOVE_REASONS: Final = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
#: MPNS's FAIL texts for APNs (the reason is appended in parentheses).
APNS_RESPONSE_ERROR: Final = "unknown send response error"
#: pushd's build identity for ``/version`` (MPNS reports its git hash).
BUILD_HASH: Final = "pushd"
#: Outcomes logged at debug, not info: a push that went out is counted by the metrics;
#: one spooled, removed or failed is what an operator reads the log for.
_QUIET_STATUSES: Final = frozenset({"delivered"})


def late_ref(server: str, app: str, token: str) -> str:
    """The name a dead verdict for this device is kept under until the server's next
    push to it (JSON: no choice of the strings can name another device's verdict)."""
    return jsonutil.key_text("mattermost", server, app, token)


class Refused(Exception):
    """Access control refused the request; ``kind`` is the counter, ``str()`` the text."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@attrs.frozen
class _Server:
    """A configured Mattermost server with its networks parsed once."""

    config: MattermostServer
    networks: tuple[Network, ...]


class MattermostProxy:
    """Serves Mattermost servers as mattermost-push-proxy does."""

    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        *,
        activity: Activity | None = None,
    ) -> None:
        self.config = config
        self.activity = activity or Activity()
        #: The operator's first_attempt_deadline holds here too, when it is shorter.
        self.answer_within = min(ANSWER_WITHIN, config.server.first_attempt_deadline)
        #: Only for verdicts found after an answer: the token comes in every push.
        self.store = store
        self.dispatcher = dispatcher
        self.servers = tuple(
            _Server(
                server,
                parse_networks(server.allowed_networks),
            )
            for server in config.mattermost.servers
        )
        self.apps: dict[str, AppConfig] = {
            app.mattermost_type: app for app in config.apps if app.mattermost_type is not None
        }
        self.throttle = RateLimit(
            "mattermost", config.mattermost.throttle_per_second, wire.THROTTLE_WINDOW
        )
        #: Refused requests by kind (``path``, ``network``, ``server_id``, ``throttled``).
        self.rejected: collections.Counter[str] = collections.Counter()

    def routes(self) -> list[Route]:
        if not self.servers:
            return []
        errors = wire.serving_error_reply
        return [
            Route(
                "POST",
                "/{secret}/api/v1/send_push",
                self.send_push,
                "mattermost_send_push",
                max_body_bytes=wire.MAX_BODY_BYTES,
                error_reply=errors,
            ),
            Route("POST", "/{secret}/api/v1/ack", self.ack, "mattermost_ack", error_reply=errors),
            Route(
                "GET", "/{secret}/version", self.version, "mattermost_version", error_reply=errors
            ),
        ]

    # --- access control -----------------------------------------------------------------

    def _server(self, request: Request) -> _Server:
        """The server ``request`` is from, or :class:`Refused`."""
        source = request.client or "-"
        secret = request.params.get("secret", "").encode()
        found: _Server | None = None
        for server in self.servers:  # no early exit: the time says nothing
            if hmac.compare_digest(secret, server.config.path_secret.encode()):
                found = server
        if found is None:
            raise self._refuse("path", "unknown push proxy path", source)
        if found.networks and not in_networks(request.client, found.networks):
            raise self._refuse(
                "network", f"source address not allowed for {found.config.name}", source
            )
        self.activity.seen("mattermost", found.config.name)
        return found

    def _refuse(self, kind: str, message: str, source: str) -> Refused:
        self.rejected[kind] += 1
        log.warning("mattermost: refused a request from %s: %s", source, message)
        return Refused(kind, f"pushd: {message}")

    def _guarded(self, request: Request) -> _Server | Reply:
        """The server, or the answer to a refused request (429 or FAIL).

        The throttle comes first, as in MPNS, where it wraps every route: a flood of
        wrong secrets costs a comparison loop and a log line only up to the limit.
        """
        retry_after = self.throttle.check(request.client or "-", trio.current_time())
        if retry_after is not None:
            self.rejected["throttled"] += 1
            return wire.throttled_reply(self.config.mattermost.throttle_per_second, retry_after)
        try:
            return self._server(request)
        except Refused as refused:
            return wire.fail(str(refused))

    # --- handlers -----------------------------------------------------------------------

    async def version(self, request: Request) -> Reply:
        server = self._guarded(request)
        if isinstance(server, Reply):
            # Not called by Mattermost servers: a prober gets a plain refusal.
            return server if server.status == 429 else attrs.evolve(server, status=403)
        return json_reply(200, {"hash": BUILD_HASH, "version": __version__})

    async def ack(self, request: Request) -> Reply:
        server = self._guarded(request)
        if isinstance(server, Reply):
            return server
        try:
            ack = wire.parse_ack(request.body)
        except wire.BadRequest as error:
            return wire.fail(str(error))
        log.debug(  # %r: the server's strings, which may hold line breaks
            "mattermost: acknowledged delivery receipt server=%s platform=%r type=%r",
            server.config.name,
            ack.platform,
            ack.type,
        )
        return wire.answer("OK")

    async def send_push(self, request: Request) -> Reply:
        server = self._guarded(request)
        if isinstance(server, Reply):
            return server
        try:
            push = wire.parse_push(request.body)
        except wire.BadRequest as error:
            return wire.fail(str(error))
        allowed_ids = server.config.server_ids
        if allowed_ids and push.server_id not in allowed_ids:
            refused = self._refuse(
                "server_id",
                f"server_id not allowed for {server.config.name}",
                request.client or "-",
            )
            return wire.fail(str(refused))
        kind, app_version = wire.split_platform(push.platform)
        app = self.apps.get(kind)
        if app is None:
            return wire.fail(
                "Did not send message because of missing platform property "
                f"type={kind} serverId={push.server_id}"
            )
        push = payloads.for_content(push, app)
        try:
            built: Push = (
                payloads.fcm_push(push, app)
                if app.provider == "fcm"
                else payloads.apns_push(push, app_version)
            )
        except wire.BadRequest as error:
            return wire.fail(str(error))
        return await self._deliver(server.config, app, push, built)

    # --- delivery -----------------------------------------------------------------------

    async def _deliver(
        self, server: MattermostServer, app: AppConfig, push: wire.PushNotification, built: Push
    ) -> Reply:
        """Send, or answer from a verdict found since the last push to this device."""
        ref = late_ref(server.name, app.name, push.device_id)
        verdict = (await self.dispatcher.verdicts.late_verdicts([ref])).get(ref)
        if verdict is not None:
            # A test push's REMOVE is only shown to the admin: SendTestPushNotification
            # keeps the device, so the verdict waits for a push that detaches it.
            if push.type != payloads.TYPE_TEST:
                await self.dispatcher.verdicts.forget([ref])
            log.info(
                "mattermost: %s was found dead after an earlier answer (%s); told now",
                mask_token(push.device_id),
                verdict.reason,
            )
            report = Report(
                Delivery(app.name, push.device_id, built, ref=ref, protocol="mattermost"),
                "removed",
                verdict.reason,
            )
            return self._answer(app, report)
        delivery = Delivery(
            app=app.name, token=push.device_id, push=built, ref=ref, protocol="mattermost"
        )
        (report,) = await self.dispatcher.deliver([delivery], deadline=self.answer_within)
        # A line per push only at debug when it went out (the metrics count those): at
        # thousands a second an info line each is most of the log and ~5 % of the CPU.
        log.log(
            logging.DEBUG if report.status in _QUIET_STATUSES else logging.INFO,
            "mattermost: %s push to %s via %s: %s%s",
            push.type or "-",
            mask_token(push.device_id),
            app.name,
            report.status,
            f" ({report.reason})" if report.reason else "",
        )
        return self._answer(app, report)

    def _answer(self, app: AppConfig, report: Report) -> Reply:
        reason = report.reason or ""
        apns = app.provider == "apns"
        if report.status in ("delivered", "retrying"):  # retrying: spooled, pushd's now
            return wire.answer("OK")
        if report.status == "removed":
            if reason in (APNS_REMOVE_REASONS if apns else FCM_REMOVE_REASONS):
                return wire.answer("REMOVE")
            return wire.fail(f"{APNS_RESPONSE_ERROR} ({reason})" if apns else reason)
        if not apns:
            return wire.fail(reason)
        return wire.fail(f"{APNS_RESPONSE_ERROR} ({reason})")
