"""Routes, app matching, access control and delivery of the Matrix push gateway.

What a homeserver observes is Sygnal's (protocol notes §5.1); how pushd gets there is
not (§5.2):

- every device of a request goes upstream at once, and each gets its own verdict: the
  answer is 200 with the pushkeys to delete unless the request itself is malformed;
- the first attempt runs under ``[matrix] answer_within`` (3 s), far below Synapse's
  60 s, because Synapse sends one pusher's pushes one after another: what has not
  answered by then, or failed transiently, is retried by the dispatcher in the
  background, and never makes the homeserver wait or retry;
- a dead verdict is kept in the store under the delivery's ``ref`` (app_id and
  pushkey) and reported in ``rejected`` whenever a request carries that pushkey, which
  is then not sent, until an event's notify has told it (a badge update's answer is
  not read by Synapse): a token found dead by a background retry is not lost, nor one
  whose rejection the homeserver never received (it repeats the request);
- a homeserver's retry of an event already sent (same app_id, pushkey and event_id
  within ``dedupe_seconds``) is answered 200 and not sent again, whichever instance
  it reaches (:mod:`.dedupe`: shared through the store on PostgreSQL).

Access: the API has no credentials and a fixed path, so the only control is a list of
source networks (``[matrix] allowed_networks``), and only configured app ids are
served: an unknown or ambiguous app id is rejected, as Sygnal does, so the homeserver
stops pushing to it.  Each source address gets ``[matrix] rate_limit`` notifies a
minute, counted before anything else, so a flood from one address also costs at most
that many refusal log lines.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Final

import attrs

from pushd import jsonutil
from pushd.activity import MATRIX_HOMESERVERS, Activity
from pushd.config import AppConfig, Config, MatrixAppOptions
from pushd.dispatch import Dispatcher
from pushd.frontends.http import Reply, Request, Route, in_networks, parse_networks
from pushd.frontends.matrix import payloads, wire
from pushd.frontends.matrix.dedupe import dedupe_for
from pushd.frontends.matrix.same_push import SamePush
from pushd.frontends.ratelimit import RateLimit
from pushd.model import Delivery, Push, mask_token
from pushd.store import LateVerdict, Store

log = logging.getLogger(__name__)

NOTIFY_PATH: Final = "/_matrix/push/v1/notify"
#: Unknown paths up to this many segments below ``/_matrix/`` get a Matrix 404.
MAX_UNKNOWN_DEPTH: Final = 5
#: How much of an unknown app id a log line shows (the client API caps it at 64).
LOGGED_APP_ID_CHARS: Final = 64


def late_ref(app_id: str, pushkey: str) -> str:
    """The name a dead verdict for this pusher is kept under in the store.

    JSON, not a separator: both strings come from the homeserver, and no choice of them
    may name another pusher's verdict.
    """
    return jsonutil.key_text("matrix", app_id, pushkey)


def _glob(pattern: str) -> re.Pattern[str]:
    """Sygnal's app id globs: ``*`` any run, ``?`` one character, the rest literal."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def _is_glob(app_id: str) -> bool:
    return "*" in app_id or "?" in app_id


@attrs.frozen
class _App:
    config: AppConfig
    options: MatrixAppOptions


#: What a request's devices got so far, by app, default payload and sound.
_Pushes = SamePush[_App, "Push | payloads.PayloadError | None"]


@attrs.define
class MatrixStats:
    """Counters for /healthz."""

    notifications: int = 0
    rejected: int = 0
    deduplicated: int = 0
    nothing_to_send: int = 0
    payload_errors: int = 0
    refused: int = 0
    rate_limited: int = 0


class MatrixGateway:
    """Serves Matrix homeservers as Sygnal does, with pushd's delivery."""

    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        *,
        activity: Activity | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self.activity = activity or Activity()
        self.exact: dict[str, _App] = {}
        self.globs: list[tuple[re.Pattern[str], _App]] = []
        for app in config.apps:
            if app.matrix is None:
                continue
            entry = _App(app, app.matrix)
            for app_id in app.matrix.app_ids:
                if _is_glob(app_id):
                    self.globs.append((_glob(app_id), entry))
                else:
                    self.exact.setdefault(app_id, entry)
        self.networks = parse_networks(config.matrix.allowed_networks)
        self.dedupe = dedupe_for(store, config.matrix.dedupe_seconds)
        self.stats = MatrixStats()
        self.rate_limit = RateLimit("matrix", config.matrix.rate_limit)

    @property
    def enabled(self) -> bool:
        return bool(self.exact or self.globs)

    def routes(self) -> list[Route]:
        """Notify, and a Matrix 404 for other ``/_matrix/`` paths; nothing if no app
        serves Matrix (a homeserver then hears 404 and keeps its pushers, where an
        answer would have rejected, and so deleted, every one)."""
        if not self.enabled:
            return []
        errors = wire.serving_error_reply
        routes = [
            Route(
                "POST",
                NOTIFY_PATH,
                self.notify,
                "matrix_notify",
                max_body_bytes=wire.MAX_BODY_BYTES,
                error_reply=errors,
            )
        ]
        for depth in range(1, MAX_UNKNOWN_DEPTH + 1):
            path = "/_matrix/" + "/".join(f"{{p{n}}}" for n in range(depth))
            for method in ("GET", "POST", "PUT"):
                routes.append(
                    Route(
                        method,
                        path,
                        self.not_found,
                        f"matrix_unknown_{method}{depth}",
                        error_reply=errors,
                    )
                )
        return routes

    async def not_found(self, request: Request) -> Reply:
        return wire.error_reply(404, "M_UNRECOGNIZED", "Unrecognized request")

    # --- app matching -------------------------------------------------------------------

    def match(self, app_id: str) -> _App | None:
        """The app serving ``app_id``: an exact id first, else the one app whose globs
        match; None if none or several apps match (the pushkey is then rejected)."""
        exact = self.exact.get(app_id)
        if exact is not None:
            return exact
        found: _App | None = None
        for pattern, app in self.globs:
            if pattern.fullmatch(app_id) and app is not found:
                if found is not None:
                    log.warning(
                        "matrix: app_id %r matches apps %s and %s; rejecting its pushkey",
                        app_id[:LOGGED_APP_ID_CHARS],
                        found.config.name,
                        app.config.name,
                    )
                    return None
                found = app
        return found

    # --- the request --------------------------------------------------------------------

    async def notify(self, request: Request) -> Reply:
        retry_after = self.rate_limit.check(request.client or "-", time.time())
        if retry_after is not None:
            self.stats.rate_limited += 1
            return wire.rate_limited_reply(retry_after)
        if self.networks and not in_networks(request.client, self.networks):
            self.stats.refused += 1
            log.warning("matrix: refused a notify from %s (not allowed)", request.client or "-")
            return wire.error_reply(403, "M_FORBIDDEN", "source address not allowed")
        self.activity.seen("matrix", MATRIX_HOMESERVERS)
        try:
            notification = wire.parse_notify(request.body)
        except wire.BadRequest as error:
            return wire.error_reply(400, error.errcode, str(error))
        # A failing store raises StoreUnavailable: a 503 the homeserver retries (routing).
        rejected = await self._deliver(request, notification)
        self.stats.notifications += 1
        self.stats.rejected += len(rejected)
        return wire.rejected_reply(rejected)

    async def _deliver(self, request: Request, notification: wire.Notification) -> list[str]:
        """Send every device at once; return the pushkeys to reject, in request order."""
        devices = notification.devices
        apps = [self.match(device.app_id) for device in devices]
        refs = [late_ref(device.app_id, device.pushkey) for device in devices]
        verdicts, repeats = await self._checks(request, notification, apps, refs)
        #: Per device (request order): its pushkey when rejected, else None.
        rejected: list[str | None] = [None] * len(devices)
        told: list[str] = []
        deliveries: list[Delivery] = []
        positions: list[int] = []
        pushes: _Pushes = SamePush()
        for position, (device, app, ref) in enumerate(zip(devices, apps, refs, strict=True)):
            if app is None:
                log.info(
                    "matrix %s: no app serves app_id %r; rejecting %s",
                    request.request_id,
                    device.app_id[:LOGGED_APP_ID_CHARS],
                    mask_token(device.pushkey),
                )
                rejected[position] = device.pushkey
                continue
            verdict = verdicts.get(ref)
            if verdict is not None:
                told.append(ref)
                if self._still_dead(device, verdict):
                    log.info(
                        "matrix %s: %s was found dead earlier (%s); rejecting it",
                        request.request_id,
                        mask_token(device.pushkey),
                        verdict.reason,
                    )
                    rejected[position] = device.pushkey
                    continue
            delivery = self._delivery(request, notification, device, app, ref, pushes)
            if isinstance(delivery, str):  # a pushkey that can never work: said each time
                rejected[position] = delivery
            elif delivery is not None and position not in repeats:
                deliveries.append(delivery)
                positions.append(position)
        if deliveries:
            reports = await self.dispatcher.deliver(
                deliveries, deadline=self.config.matrix.answer_within
            )
            for position, report in zip(positions, reports, strict=True):
                pushkey = devices[position].pushkey
                if report.status == "removed":
                    rejected[position] = pushkey
                elif report.status == "failed":
                    log.info(
                        "matrix %s: push to %s via %s failed: %s",
                        request.request_id,
                        mask_token(pushkey),
                        report.delivery.app,
                        report.reason,
                    )
        # Forgotten last: if anything above fails (a 503), the next try hears them still.
        # Not on a badge update (no event id): Synapse discards that answer
        # (httppusher._send_badge), so the next event's notify must tell it again.
        if told and notification.event_id:
            await self.dispatcher.verdicts.forget(told)
        return list(dict.fromkeys(key for key in rejected if key is not None))

    async def _checks(
        self,
        request: Request,
        notification: wire.Notification,
        apps: list[_App | None],
        refs: list[str],
    ) -> tuple[dict[str, LateVerdict], set[int]]:
        """The kept verdicts of the devices an app serves, and the positions of those
        whose event was sent recently (a homeserver's retry: not sent again), recorded
        now for the devices no verdict rejects (see :mod:`.dedupe`; on a shared store
        one store call for both)."""
        devices = notification.devices
        known = [n for n, app in enumerate(apps) if app is not None]
        wanted = [refs[n] for n in known]
        event_id = notification.event_id
        if not event_id:  # a badge update: nothing to tell apart
            return await self.dispatcher.verdicts.late_verdicts(wanted), set()
        keys = [(devices[n].app_id, devices[n].pushkey, event_id) for n in known]

        def rejected(verdicts: Mapping[str, LateVerdict]) -> list[bool]:
            """Per known device: whether a kept verdict rejects it (as the loop will)."""
            found = ((n, verdicts.get(refs[n])) for n in known)
            return [v is not None and self._still_dead(devices[n], v) for n, v in found]

        verdicts, seen = await self.dedupe.verdicts_and_seen(
            self.dispatcher.verdicts, wanted, keys, rejected
        )
        repeats = {n for n, repeat in zip(known, seen, strict=True) if repeat}
        if repeats:
            self.stats.deduplicated += len(repeats)
            log.debug(
                "matrix %s: %d repeats of an event already sent; not sent again",
                request.request_id,
                len(repeats),
            )
        return verdicts, repeats

    @staticmethod
    def _still_dead(device: wire.Device, verdict: LateVerdict) -> bool:
        """Whether a kept verdict applies to this pusher: not if the pusher was set
        after the verdict (the app registered the pushkey again, as a new pusher)."""
        return device.pushkey_ts is None or device.pushkey_ts <= verdict.found_at

    def _delivery(
        self,
        request: Request,
        notification: wire.Notification,
        device: wire.Device,
        app: _App,
        ref: str,
        pushes: _Pushes,
    ) -> Delivery | str | None:
        """The delivery for ``device``; its pushkey (a str) to reject; or None when
        there is nothing to send (a badge update FCM would not show, a repeat).
        ``pushes``: what the request's earlier devices got (see :mod:`.same_push`)."""
        default = payloads.default_payload(device)
        if default is None:
            log.info(
                "matrix %s: %s has a default_payload that is not an object; rejecting it",
                request.request_id,
                mask_token(device.pushkey),
            )
            return device.pushkey
        options = app.options
        token: str | None
        apns = app.config.provider == "apns"
        if apns:
            token = payloads.apns_token(device.pushkey, options.convert_pushkey_to_hex)
            if token is None:
                log.info(
                    "matrix %s: pushkey %s of %r is not an APNs token%s; rejecting it",
                    request.request_id,
                    mask_token(device.pushkey),
                    device.app_id,
                    " in base64" if options.convert_pushkey_to_hex else "",
                )
                return device.pushkey
        elif not device.pushkey:  # FCM would refuse it; there is nothing to send it to
            log.info(
                "matrix %s: an empty pushkey of %r; rejecting it", request.request_id, device.app_id
            )
            return device.pushkey
        else:
            token = device.pushkey
        sound = device.tweaks.get("sound") if apns and options.sound_from_tweaks else None
        found, push = pushes.find(app, default, sound)
        if not found:
            push = self._push(notification, device, app)
            pushes.keep(app, default, sound, push)
        if isinstance(push, payloads.PayloadError):
            self.stats.payload_errors += 1
            log.warning(
                "matrix %s: cannot build a push for %s via %s: %s",
                request.request_id,
                mask_token(device.pushkey),
                app.config.name,
                push,
            )
            return None
        if push is None:
            self.stats.nothing_to_send += 1
            return None
        return Delivery(
            app=app.config.name,
            token=token,
            push=push,
            registered_at=None if device.pushkey_ts is None else float(device.pushkey_ts),
            ref=ref,
            protocol="matrix",
        )

    @staticmethod
    def _push(
        notification: wire.Notification, device: wire.Device, app: _App
    ) -> Push | payloads.PayloadError | None:
        """What ``device`` is sent through ``app``: the push, why none can be built, or
        None when there is nothing to send."""
        content, redacted_text = app.config.content, app.config.redacted_text
        # id_only forces event_id_only, whatever the pusher's data.format asked for.
        notification = payloads.for_content(notification, content, redacted_text)
        try:
            if app.config.provider == "apns":
                redacted = redacted_text if content == "redacted" else None
                return payloads.apns_push(notification, device, app.options, redacted)
            return payloads.fcm_push(notification, device, app.options)
        except payloads.PayloadError as error:
            return error
