"""pushd's own JSON API under ``/v1``, for chat servers written against pushd itself.

Authentication: ``Authorization: Bearer <key>``, one key per chat server (``pushd server
add``).  Every route takes a JSON body, device tokens included, so tokens never appear
in URLs and so never in a reverse proxy's access log.

Errors are ``{"error": {"code": ..., "message": ..., "field": ...}}`` with a 4xx status;
``field`` names the offending key path when there is one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from pushd import jsonutil
from pushd.activity import Activity
from pushd.config import AppConfig, Config
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request, Route, has_lone_surrogate, json_reply
from pushd.frontends.ratelimit import RateLimit, retry_after_seconds
from pushd.model import (
    APNS_PRIORITIES,
    APNS_PUSH_TYPES,
    ApnsPush,
    Delivery,
    FcmPush,
    Push,
    normalize_apns_token,
)
from pushd.store import Registration, Server, Store
from pushd.typed import WIRE_CONVERTER, describe_error, first_key
from pushd.upstream.apns.request import COLLAPSE_ID_LIMIT, payload_limit
from pushd.upstream.fcm import message as fcm_message

log = logging.getLogger(__name__)

#: Longest user id accepted: chat servers use numbers, UUIDs or e-mail-like ids.
MAX_USER_ID_LENGTH = 256
#: Most tokens one send may list.
MAX_TOKENS_PER_SEND = 1000
#: Native priorities mapped onto FCM's Android ones.
FCM_PRIORITY = {10: "high", 5: "normal", 1: "normal"}
#: Priority used when the caller names none (APNs' own default for alerts is 10;
#: background pushes must use 5).
DEFAULT_PRIORITY = {"background": 5}


class ApiError(Exception):
    """A request the API refuses; becomes a JSON error reply."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def reply(self) -> Reply:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        headers = self.headers
        if self.status == 401:
            headers = (("www-authenticate", 'Bearer realm="pushd"'),)
        return json_reply(self.status, {"error": error}, headers)


# --- wire models ------------------------------------------------------------------------


@attrs.frozen
class RegisterBody:
    user: str
    token: str
    app: str


@attrs.frozen
class UnregisterBody:
    token: str
    app: str | None = None


@attrs.frozen
class UserBody:
    user: str


@attrs.frozen
class Alert:
    title: str | None = None
    subtitle: str | None = None
    body: str | None = None


ALERT_FIELDS = frozenset(field.name for field in attrs.fields(Alert))


@attrs.frozen
class SendBody:
    user: str | None = None
    tokens: tuple[str, ...] | None = None
    app: str | None = None
    alert: Any = None  # a string or an Alert object; checked by hand (a union)
    badge: int | None = None
    sound: str | None = None
    data: dict[str, Any] | None = None
    thread_id: str | None = None
    category: str | None = None
    content_available: bool = False
    mutable_content: bool = False
    push_type: str = "alert"
    priority: int | None = None
    #: Seconds the upstream should keep trying; 0 = now or never; default: its own.
    ttl: int | None = None
    collapse_id: str | None = None


def _parse(body: bytes, model: type[Any]) -> Any:
    try:
        value = jsonutil.loads(body)
    except RecursionError:
        raise ApiError(400, "malformed_json", "the body is nested too deeply") from None
    except ValueError as error:  # bad JSON, bad UTF-8, NaN, huge numbers
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    if has_lone_surrogate(body, value):
        raise ApiError(400, "malformed_json", "the body holds a lone UTF-16 surrogate escape")
    try:
        return WIRE_CONVERTER.structure(value, model)
    except Exception as error:  # cattrs' error tree: report the first key, list them all
        problems = describe_error(error)
        raise ApiError(
            400, "invalid_request", "; ".join(problems), first_key(problems[0])
        ) from None


def _check_user(user: str, field: str = "user") -> str:
    if not user or len(user) > MAX_USER_ID_LENGTH:
        raise ApiError(
            400, "invalid_request", f"must be 1 to {MAX_USER_ID_LENGTH} characters", field
        )
    return user


def check_token(token: str, provider: str, field: str = "token") -> str:
    """The stored form of a device token of ``provider``; ApiError if it is not one."""
    if provider == "fcm":
        try:
            fcm_message.check_token(token)
        except fcm_message.InvalidToken:
            raise ApiError(400, "invalid_token", "not an FCM registration token", field) from None
        return token
    normalized = normalize_apns_token(token)
    if normalized is None:
        raise ApiError(
            400,
            "invalid_token",
            "an APNs device token is an even number of hex digits (64 to 200)",
            field,
        )
    return normalized


def _token_forms(token: str, field: str) -> list[str]:
    """The forms ``token`` may be stored in, whatever its kind (APNs tokens in lower case)."""
    lowered = normalize_apns_token(token)
    if lowered is None:
        try:
            fcm_message.check_token(token)
        except fcm_message.InvalidToken:
            raise ApiError(400, "invalid_token", "not an APNs or FCM token", field) from None
    return [token] if lowered is None or lowered == token else [token, lowered]


def _alert(value: Any) -> str | dict[str, str] | None:
    """A string, or an object with :class:`Alert`'s string fields (checked by hand: this
    runs on every send, and a union is awkward for cattrs)."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "must be a string or an object", "alert")
    for key, item in value.items():
        if key not in ALERT_FIELDS:
            raise ApiError(400, "invalid_request", "unknown key", f"alert.{key}")
        if not isinstance(item, str):
            raise ApiError(400, "invalid_request", "must be a string", f"alert.{key}")
    return value


def for_content(send: SendBody, app: AppConfig) -> SendBody:
    """``send`` as the app's ``content`` mode allows (``full``: unchanged).

    ``redacted``: the alert is ``redacted_text`` alone (a title or subtitle may name the
    sender); ``id_only``: no alert at all.  ``data`` is the caller's own and passes
    unchanged in every mode: it is where the ids the app fetches by belong.
    """
    if app.content == "full" or send.alert is None:
        return send
    if app.content == "id_only":
        return attrs.evolve(send, alert=None)
    text = app.redacted_text
    return attrs.evolve(send, alert=text if isinstance(send.alert, str) else {"body": text})


def build_apns_push(send: SendBody, now: float) -> ApnsPush:
    """The APNs notification a send asks for; raises ApiError naming the bad field."""
    if send.push_type not in APNS_PUSH_TYPES:
        known = ", ".join(sorted(APNS_PUSH_TYPES))
        raise ApiError(400, "invalid_request", f"must be one of {known}", "push_type")
    priority = send.priority
    if priority is None:
        priority = DEFAULT_PRIORITY.get(send.push_type)
    elif priority not in APNS_PRIORITIES:
        raise ApiError(400, "invalid_request", "must be 1, 5 or 10", "priority")
    if send.push_type == "background" and priority == 10:
        raise ApiError(
            400, "invalid_request", "background pushes must use priority 5 or 1", "priority"
        )
    if send.ttl is not None and send.ttl < 0:
        raise ApiError(400, "invalid_request", "must be 0 or more seconds", "ttl")
    if send.collapse_id is not None and len(send.collapse_id.encode()) > COLLAPSE_ID_LIMIT:
        raise ApiError(
            400, "invalid_request", f"must be at most {COLLAPSE_ID_LIMIT} bytes", "collapse_id"
        )
    if send.data is not None and "aps" in send.data:
        raise ApiError(400, "invalid_request", "'aps' is reserved for APNs", "data.aps")

    aps: dict[str, Any] = {}
    alert = _alert(send.alert)
    if alert is not None:
        aps["alert"] = alert
    if send.badge is not None:
        if send.badge < 0:
            raise ApiError(400, "invalid_request", "must be 0 or more", "badge")
        aps["badge"] = send.badge
    if send.sound is not None:
        aps["sound"] = send.sound
    if send.thread_id is not None:
        aps["thread-id"] = send.thread_id
    if send.category is not None:
        aps["category"] = send.category
    if send.content_available or send.push_type == "background":
        aps["content-available"] = 1
    if send.mutable_content:
        aps["mutable-content"] = 1
    body = {"aps": aps, **(send.data or {})}
    try:
        payload = jsonutil.dumpb(body)
    except ValueError:  # NaN or a lone surrogate: only from a caller that skipped _parse
        raise ApiError(400, "invalid_request", "not encodable as JSON", "payload") from None
    limit = payload_limit(send.push_type)
    if len(payload) > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"the APNs payload would be {len(payload)} bytes, over the {limit}-byte limit "
            f"for {send.push_type} pushes: shorten the alert or the data",
            "payload",
        )
    expiration = None
    if send.ttl is not None:
        expiration = 0 if send.ttl == 0 else int(now) + send.ttl
    return ApnsPush(
        payload=payload,
        push_type=send.push_type,
        priority=priority,
        expiration=expiration,
        collapse_id=send.collapse_id,
    )


def _fcm_data(data: Mapping[str, Any] | None) -> dict[str, str] | None:
    """FCM data values are strings: strings pass, anything else is sent as its JSON."""
    if data is None:
        return None
    return {
        key: value if isinstance(value, str) else jsonutil.dumps(value)
        for key, value in data.items()
    }


def build_fcm_push(send: SendBody, app: AppConfig, now: float) -> FcmPush:
    """The FCM message a send asks for, with the app's Android and iOS-via-FCM defaults."""
    alert = _alert(send.alert)
    notification = None
    if send.push_type != "background" and alert is not None:
        if isinstance(alert, str):
            notification = fcm_message.Notification(body=alert)
        else:
            notification = fcm_message.Notification(
                title=alert.get("title"), body=alert.get("body")
            )
    priority = app.android_priority
    if send.priority is not None:
        priority = "high" if FCM_PRIORITY.get(send.priority) == "high" else "normal"
    aps: dict[str, Any] = dict(app.fcm_apns.aps) if app.fcm_apns else {}
    for key, value in (
        ("badge", send.badge),
        ("sound", send.sound),
        ("thread-id", send.thread_id),
        ("category", send.category),
        ("content-available", 1 if send.content_available else None),
        ("mutable-content", 1 if send.mutable_content else None),
    ):
        if value is not None:
            aps[key] = value
    apns = None
    if aps or (app.fcm_apns and app.fcm_apns.headers):
        headers = dict(app.fcm_apns.headers) if app.fcm_apns else {}
        apns = fcm_message.ApnsOptions(headers=headers, payload={"aps": aps} if aps else None)
    try:
        return fcm_message.build_push(
            data=_fcm_data(send.data),
            notification=notification,
            android=fcm_message.AndroidOptions(
                priority=priority,
                ttl=app.android_ttl if send.ttl is None else send.ttl,
                collapse_key=send.collapse_id or app.android_collapse_key,
            ),
            apns=apns,
            now=now,
        )
    except fcm_message.InvalidMessage as error:
        text = str(error)
        field = text.split(":", 1)[0]
        if "too big" in text or "bytes" in text:
            raise ApiError(413, "payload_too_large", text, "payload") from None
        raise ApiError(400, "invalid_request", text, field) from None


def _result(report: Report) -> dict[str, Any]:
    result: dict[str, Any] = {
        "token": report.delivery.token,
        "app": report.delivery.app,
        "status": report.status,
    }
    if report.reason is not None:
        result["reason"] = report.reason
    return result


def _registration_json(registration: Registration) -> dict[str, Any]:
    return {
        "user": registration.user_id,
        "token": registration.token,
        "app": registration.app,
        "environment": registration.environment,
        "registered_at": registration.registered_at,
    }


class NativeApi:
    """The ``/v1`` handlers."""

    def __init__(
        self,
        config: Config,
        store: Store,
        dispatcher: Dispatcher,
        *,
        openapi: Mapping[str, Any],
        clock: Callable[[], float] = time.time,
        activity: Activity | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.activity = activity or Activity()
        self._openapi = json_reply(200, openapi)
        #: Per chat server, counted after authentication: a wrong key is a cheap 401.
        #: Counted in the database when instances share it (see ratelimit's docstring).
        self.rate_limit = RateLimit(
            "native", config.native.rate_limit, shared=store if store.shared else None
        )

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/devices", self._guarded(self.register), "native_register"),
            Route(
                "POST",
                "/v1/devices/unregister",
                self._guarded(self.unregister),
                "native_unregister",
            ),
            Route(
                "POST",
                "/v1/users/unregister",
                self._guarded(self.unregister_user),
                "native_unregister_user",
            ),
            Route("POST", "/v1/users/devices", self._guarded(self.list_devices), "native_list"),
            Route("POST", "/v1/notifications", self._guarded(self.send), "native_send"),
            Route("GET", "/v1/openapi.json", self.openapi, "native_openapi"),
        ]

    async def openapi(self, request: Request) -> Reply:
        return self._openapi

    def _guarded(self, handler: Callable[[Request, Server], Any]) -> Callable[[Request], Any]:
        async def guarded(request: Request) -> Reply:
            try:
                server = await self._authenticate(request)
                await self._check_rate(server)
                reply: Reply = await handler(request, server)
            except ApiError as error:
                return error.reply()
            return reply

        return guarded

    async def _authenticate(self, request: Request) -> Server:
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <server key>")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <server key>")
        server = await self.store.authenticate(key.strip())
        if server is None:
            raise ApiError(401, "unauthorized", "unknown server key")
        if not server.active:
            raise ApiError(403, "forbidden", f"server {server.name!r} is deactivated")
        self.activity.seen("native", server.name)
        return server

    async def _check_rate(self, server: Server) -> None:
        retry_after = await self.rate_limit.acquire(f"server {server.name}", self.clock())
        if retry_after is not None:
            seconds = retry_after_seconds(retry_after)
            raise ApiError(
                429,
                "rate_limited",
                f"more than {self.rate_limit.limit} requests a minute: retry in {seconds} s",
                headers=(("retry-after", str(seconds)),),
            )

    def _app(self, name: str, field: str = "app") -> str:
        if self.config.app(name) is None:
            raise ApiError(400, "unknown_app", f"no app named {name!r} is configured", field)
        return name

    # --- handlers -----------------------------------------------------------------------

    async def register(self, request: Request, server: Server) -> Reply:
        body: RegisterBody = _parse(request.body, RegisterBody)
        user = _check_user(body.user)
        app = self.config.app(self._app(body.app))
        assert app is not None
        token = check_token(body.token, app.provider)
        environment = app.environment if app.provider == "apns" else "production"
        registration, new = await self.store.register(
            server.id, user, token, app.name, environment, app.provider
        )
        return json_reply(201 if new else 200, _registration_json(registration))

    async def unregister(self, request: Request, server: Server) -> Reply:
        body: UnregisterBody = _parse(request.body, UnregisterBody)
        forms = _token_forms(body.token, "token")
        app = None if body.app is None else self._app(body.app)
        removed = await self.store.unregister(server.id, forms, app)
        return json_reply(200, {"removed": removed})

    async def unregister_user(self, request: Request, server: Server) -> Reply:
        body: UserBody = _parse(request.body, UserBody)
        removed = await self.store.unregister_user(server.id, _check_user(body.user))
        return json_reply(200, {"removed": removed})

    async def list_devices(self, request: Request, server: Server) -> Reply:
        body: UserBody = _parse(request.body, UserBody)
        registrations = await self.store.user_registrations(server.id, _check_user(body.user))
        return json_reply(200, {"devices": [_registration_json(r) for r in registrations]})

    async def send(self, request: Request, server: Server) -> Reply:
        body: SendBody = _parse(request.body, SendBody)
        if (body.user is None) == (body.tokens is None):
            raise ApiError(400, "invalid_request", "give either user or tokens", "user")
        app_filter = None if body.app is None else self._app(body.app)
        now = self.clock()
        # Validate for APNs whatever the devices: a bad request is refused the same way
        # whether or not the user happens to have an iPhone registered.
        apns_push = build_apns_push(body, now)
        pushes: dict[str, Push] = {}

        missing: list[str] = []
        if body.user is not None:
            registrations = await self.store.user_registrations(server.id, _check_user(body.user))
        else:
            assert body.tokens is not None
            if not body.tokens or len(body.tokens) > MAX_TOKENS_PER_SEND:
                raise ApiError(
                    400, "invalid_request", f"list 1 to {MAX_TOKENS_PER_SEND} tokens", "tokens"
                )
            forms = {
                form: token
                for i, token in enumerate(body.tokens)
                for form in _token_forms(token, f"tokens[{i}]")
            }
            registrations = await self.store.token_registrations(server.id, forms)
            known = {forms[r.token] for r in registrations}
            missing = [t for t in dict.fromkeys(body.tokens) if t not in known]
        if app_filter is not None:
            registrations = [r for r in registrations if r.app == app_filter]

        deliveries = []
        for r in registrations:
            push = pushes.get(r.app)
            if push is None:
                app = self.config.app(r.app)
                if app is None:  # removed from the config since it was registered
                    push = apns_push
                elif app.provider == "fcm":
                    push = build_fcm_push(for_content(body, app), app, now)
                elif app.content != "full":
                    push = build_apns_push(for_content(body, app), now)
                else:
                    push = apns_push
                pushes[r.app] = push
            deliveries.append(
                Delivery(
                    app=r.app,
                    token=r.token,
                    push=push,
                    registered_at=r.registered_at,
                    protocol="native",
                )
            )
        reports = await self.dispatcher.deliver(deliveries)
        results = [_result(report) for report in reports]
        results += [
            {"token": t, "app": None, "status": "failed", "reason": "not registered"}
            for t in missing
        ]
        return json_reply(200, {"results": results, "summary": _summary(results)})


def _summary(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    summary = dict.fromkeys(("delivered", "removed", "retrying", "failed"), 0)
    for result in results:
        summary[result["status"]] += 1
    return summary
