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
from typing import Any, Final

from pushd.activity import Activity
from pushd.config import Config
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.frontends.native_wire import (
    ALERT_FIELDS,
    DEFAULT_PRIORITY,
    FCM_PRIORITY,
    MAX_TOKENS_PER_SEND,
    MAX_USER_ID_LENGTH,
    Alert,
    ApiError,
    RegisterBody,
    SendBody,
    UnregisterBody,
    UserBody,
    build_apns_push,
    build_fcm_push,
    check_token,
    check_user,
    for_content,
    parse_body,
    token_forms,
)
from pushd.frontends.ratelimit import RateLimit, retry_after_seconds
from pushd.model import Delivery, Push
from pushd.store import Registration, Server, Store

__all__ = [
    "ALERT_FIELDS",
    "DEFAULT_PRIORITY",
    "FCM_PRIORITY",
    "MAX_TOKENS_PER_SEND",
    "MAX_USER_ID_LENGTH",
    "Alert",
    "ApiError",
    "NativeApi",
    "RegisterBody",
    "SendBody",
    "UnregisterBody",
    "UserBody",
    "build_apns_push",
    "build_fcm_push",
    "check_token",
    "for_content",
]

log = logging.getLogger(__name__)

#: What a chat server's rate-limit identity starts with (its name follows): the key
#: every instance counts it under, so it must never change while instances share one.
SERVER_IDENTITY: Final = "server "
#: The largest send body read before its key is checked (a send is usually well under
#: a KiB): a caller without a key must not make pushd parse megabytes of JSON.
EARLY_PARSE_MAX_BYTES: Final = 16 * 1024


def _parsed_or_none(raw: bytes) -> SendBody | None:
    """A send's body, or None when it is malformed (the 400 then follows the key check)."""
    try:
        body: SendBody = parse_body(raw, SendBody)
    except ApiError:
        return None
    return body


def _valid_user(body: SendBody | None) -> str | None:
    """The user a well-formed send names, if valid and not beside tokens; else None."""
    if body is None or body.user is None or body.tokens is not None:
        return None
    try:
        return check_user(body.user)
    except ApiError:
        return None


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
            Route("POST", "/v1/notifications", self._send_route, "native_send"),
            Route("GET", "/v1/openapi.json", self.openapi, "native_openapi"),
        ]

    async def openapi(self, request: Request) -> Reply:
        return self._openapi

    def _guarded(self, handler: Callable[[Request, Server], Any]) -> Callable[[Request], Any]:
        async def guarded(request: Request) -> Reply:
            try:
                server, _ = await self._authenticate(request)
                reply: Reply = await handler(request, server)
            except ApiError as error:
                return error.reply()
            return reply

        return guarded

    async def _send_route(self, request: Request) -> Reply:
        """``POST /v1/notifications``, authenticated as every route is; but a send to a
        user reads the user's registrations in the same store call as the key (on a
        shared store one hop to a worker thread fewer, on SQLite one statement), so its
        body is read before the key.  A body
        that does not name a valid user, or is over :data:`EARLY_PARSE_MAX_BYTES`, takes
        the usual path, so that a wrong key is still a 401 whatever the body."""
        try:
            body = None
            if len(request.body) <= EARLY_PARSE_MAX_BYTES:
                body = _parsed_or_none(request.body)
            user = _valid_user(body)
            if body is None or user is None:
                server, _ = await self._authenticate(request)
                if body is None:
                    return await self.send(request, server)
                return await self._send(body, server)
            server, registrations = await self._authenticate(request, user)
            return await self._send(body, server, registrations)
        except ApiError as error:
            return error.reply()

    async def _authenticate(
        self, request: Request, user: str | None = None
    ) -> tuple[Server, list[Registration] | None]:
        """The active server whose key the request carries, counted against its rate
        limit, and ``user``'s registrations when read with it (a shared store); else
        the 401, 403 or 429 to answer."""
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <server key>")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <server key>")
        limit, now = self.rate_limit, self.clock()
        count = None
        registrations = None
        if limit.shared is None:
            server, registrations = await self.store.authenticate_for(key.strip(), user)
        else:  # counted in the database, in the statement that authenticates
            server, count, registrations = await self.store.authenticate_counted_for(
                key.strip(), limit.key(SERVER_IDENTITY), limit.window_start(now), user
            )
        if server is None:
            raise ApiError(401, "unauthorized", "unknown server key")
        if not server.active:
            raise ApiError(403, "forbidden", f"server {server.name!r} is deactivated")
        self.activity.seen("native", server.name)
        identity = SERVER_IDENTITY + server.name
        if count is None:
            retry_after = limit.check(identity, now)
        else:
            retry_after = limit.judge(identity, now, count)
        self._refuse_over(retry_after)
        return server, registrations

    def _refuse_over(self, retry_after: float | None) -> None:
        """The 429 for a server over its limit (``retry_after`` seconds to wait)."""
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
        body: RegisterBody = parse_body(request.body, RegisterBody)
        user = check_user(body.user)
        app = self.config.app(self._app(body.app))
        assert app is not None
        token = check_token(body.token, app.provider)
        environment = app.environment if app.provider == "apns" else "production"
        registration, new = await self.store.register(
            server.id, user, token, app.name, environment, app.provider
        )
        return json_reply(201 if new else 200, _registration_json(registration))

    async def unregister(self, request: Request, server: Server) -> Reply:
        body: UnregisterBody = parse_body(request.body, UnregisterBody)
        forms = token_forms(body.token, "token")
        app = None if body.app is None else self._app(body.app)
        removed = await self.store.unregister(server.id, forms, app)
        return json_reply(200, {"removed": removed})

    async def unregister_user(self, request: Request, server: Server) -> Reply:
        body: UserBody = parse_body(request.body, UserBody)
        removed = await self.store.unregister_user(server.id, check_user(body.user))
        return json_reply(200, {"removed": removed})

    async def list_devices(self, request: Request, server: Server) -> Reply:
        body: UserBody = parse_body(request.body, UserBody)
        registrations = await self.store.user_registrations(server.id, check_user(body.user))
        return json_reply(200, {"devices": [_registration_json(r) for r in registrations]})

    async def send(self, request: Request, server: Server) -> Reply:
        return await self._send(parse_body(request.body, SendBody), server)

    async def _send(
        self, body: SendBody, server: Server, registrations: list[Registration] | None = None
    ) -> Reply:
        """Send ``body`` for ``server``; ``registrations``: its user's, if read already."""
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
            user = check_user(body.user)
            if registrations is None:
                registrations = await self.store.user_registrations(server.id, user)
        else:
            assert body.tokens is not None
            if not body.tokens or len(body.tokens) > MAX_TOKENS_PER_SEND:
                raise ApiError(
                    400, "invalid_request", f"list 1 to {MAX_TOKENS_PER_SEND} tokens", "tokens"
                )
            forms = {
                form: token
                for i, token in enumerate(body.tokens)
                for form in token_forms(token, f"tokens[{i}]")
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
