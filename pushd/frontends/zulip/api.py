"""The Zulip push bouncer endpoints under ``/api/v1/remotes/`` (legacy flow).

An unmodified Zulip server pointed at pushd (``ZULIP_SERVICES_URL``) must see what it
sees from Zulip's own service: same status codes, error ``code`` and ``msg``, same
success keys.  It joins ``/api/v1/remotes/...`` to the host root, discarding any path
prefix, so these routes live at the root.  End-to-end encrypted pushes (``push/e2ee/*``)
are handled in :mod:`pushd.frontends.zulip.e2ee` and server registration (who may
register which hostname) in :mod:`pushd.frontends.zulip.registration`, mounted here so
that they share the auth, rate limit, realms and errors.

Servers authenticate with HTTP Basic (their ``zulip_org_id`` and ``zulip_org_key``);
the key is stored as a SHA-256 hash and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pushd import jsonutil
from pushd.activity import Activity
from pushd.config import AppConfig, Config
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request, Route
from pushd.frontends.ratelimit import RateLimit
from pushd.frontends.zulip import payloads
from pushd.frontends.zulip.e2ee import E2eeHandlers, no_app_message
from pushd.frontends.zulip.registration import ServerRegistration
from pushd.frontends.zulip.wire import (
    IOS_APP_ID_RE,
    KIND_APNS,
    KIND_FCM,
    RATE_WINDOW_SECONDS,
    ZulipError,
    bad_request,
    check_kind,
    check_token,
    ignored,
    is_uuid,
    json_int,
    parse_form,
    parse_json_body,
    rate_limited,
    required,
    success,
    unauthorized,
)
from pushd.model import Delivery, Push, mask_token
from pushd.store import Store, ZulipRealm, ZulipRegistration, ZulipServer, hash_key

log = logging.getLogger(__name__)

PREFIX = "/api/v1/remotes/"
#: The analytics upload (also sent by ``manage.py register_server``) carries up to
#: 10,000 rows per table: take what Django takes (DATA_UPLOAD_MAX_MEMORY_SIZE).
ANALYTICS_MAX_BODY = 25 * 1024 * 1024
#: What every realm is told: pushd has no plans and no billing.
REALM_PUSH_STATUS: Mapping[str, Any] = {"can_push": True, "expected_end_timestamp": None}
#: Analytics tables whose largest ``id`` the server asks for before uploading more.
ANALYTICS_TABLES = ("realm_counts", "installation_counts", "realmauditlog_rows")
TEST_NOTIFICATION_KEYS = frozenset(
    {"token", "token_kind", "user_id", "user_uuid", "realm_uuid", "base_payload"}
)

_REGISTER_FIELDS = frozenset(
    {"token", "token_kind", "user_id", "user_uuid", "realm_uuid", "ios_app_id"}
)
_UNREGISTER_ALL_FIELDS = frozenset({"user_id", "user_uuid", "realm_uuid"})
_ANALYTICS_FIELDS = frozenset(
    {*ANALYTICS_TABLES, "realms", "version", "merge_base", "api_feature_level"}
)

#: Unknown paths up to this many segments below the prefix get a Zulip-shaped 404.
MAX_UNKNOWN_DEPTH = 4

AuthedHandler = Callable[[Request, ZulipServer], Awaitable[Reply]]


def _mismatch() -> ZulipError:
    return ZulipError(
        403,
        "REMOTE_REALM_SERVER_MISMATCH_ERROR",
        "Your organization is registered to a different Zulip server. Please contact "
        "Zulip support for assistance in resolving this issue.",
    )


def _identity(user_id: int | None, user_uuid: str | None) -> str:
    """Zulip's ``<id:…><uuid:…>`` for log lines: ids, never names or content."""
    return (f"<id:{user_id}>" if user_id is not None else "") + (
        f"<uuid:{user_uuid}>" if user_uuid is not None else ""
    )


class ZulipBouncer:
    """The handlers, bound to the store, the config's apps and the dispatcher."""

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
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.activity = activity or Activity()
        self.limiter = RateLimit(
            "zulip",
            config.zulip.rate_limit,
            RATE_WINDOW_SECONDS,
            shared=store if store.shared else None,
        )
        self.registration = ServerRegistration(config.zulip, store)
        self.e2ee = E2eeHandlers(
            store,
            dispatcher,
            realm=self._realm,
            app_for=self._app_for,
            push_status=REALM_PUSH_STATUS,
            clock=clock,
        )

    def routes(self) -> list[Route]:
        authed: list[tuple[str, str, AuthedHandler]] = [
            ("POST", "push/register", self.push_register),
            ("POST", "push/unregister", self.push_unregister),
            ("POST", "push/unregister/all", self.push_unregister_all),
            ("POST", "push/notify", self.push_notify),
            ("POST", "push/test_notification", self.push_test_notification),
            ("POST", "push/e2ee/register", self.e2ee.register),
            ("POST", "push/e2ee/notify", self.e2ee.notify),
            ("POST", "server/deactivate", self.server_deactivate),
            ("GET", "server/analytics/status", self.analytics_status),
            ("POST", "server/analytics", self.analytics),
            ("POST", "server/billing", self.billing),
        ]
        routes = [
            Route(
                method,
                PREFIX + path,
                self._authed(handler),
                "zulip_" + path,
                max_body_bytes=ANALYTICS_MAX_BODY if path == "server/analytics" else None,
                error_reply=zulip_error_reply,
            )
            for method, path, handler in authed
        ]
        for path, handler in (
            ("server/register", self.registration.register),
            ("server/register/transfer", self.transfer),
            ("server/register/verify_challenge", self.transfer),
        ):
            routes.append(
                Route(
                    "POST",
                    PREFIX + path,
                    self._open(handler),
                    "zulip_" + path,
                    error_reply=zulip_error_reply,
                )
            )
        # Anything else under the prefix gets a Zulip-shaped 404: a Zulip server reads
        # ``msg`` from every 4xx body.
        for depth in range(1, MAX_UNKNOWN_DEPTH + 1):
            path = PREFIX + "/".join(f"{{p{n}}}" for n in range(depth))
            for method in ("GET", "POST"):
                routes.append(
                    Route(
                        method,
                        path,
                        self._open(self.not_found),
                        f"zulip_unknown_{method}{depth}",
                        error_reply=zulip_error_reply,
                    )
                )
        return routes

    async def not_found(self, request: Request) -> Reply:
        raise ZulipError(404, "BAD_REQUEST", "Endpoint not found")

    # --- plumbing ----------------------------------------------------------------------

    def _open(self, handler: Callable[[Request], Awaitable[Reply]]) -> Callable[..., Any]:
        async def guarded(request: Request) -> Reply:
            try:
                return await handler(request)
            except ZulipError as error:
                return error.reply()

        return guarded

    def _authed(self, handler: AuthedHandler) -> Callable[..., Any]:
        async def guarded(request: Request) -> Reply:
            try:
                server = await self.authenticate(request)
                retry_after = await self.limiter.acquire(f"server {server.uuid}", self.clock())
                if retry_after is not None:
                    raise rate_limited(retry_after)
                return await handler(request, server)
            except ZulipError as error:
                return error.reply()

        return guarded

    async def authenticate(self, request: Request) -> ZulipServer:
        """Zulip's ``get_basic_credentials`` and ``validate_remote_server``, in order."""
        header = request.headers.get("authorization")
        if header is None:
            raise unauthorized("Missing authorization header for basic auth")
        parts = header.split()
        if len(parts) != 2:
            raise unauthorized("Invalid authorization header for basic auth")
        scheme, credentials = parts
        if scheme.lower() != "basic":
            raise bad_request("This endpoint requires HTTP basic authentication.")
        try:
            role, key = base64.b64decode(credentials, validate=True).decode().split(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise unauthorized("Invalid authorization header for basic auth") from None
        if "@" in role:
            raise bad_request("Must validate with valid Zulip server API key")
        server = await self.store.zulip_server(role) if is_uuid(role) else None
        if server is None:
            raise unauthorized(
                f"Zulip server auth failure: {role} is not registered -- "
                "did you run `manage.py register_server`?"
            )
        if not hmac.compare_digest(hash_key(key), server.key_hash):
            raise unauthorized(f"Zulip server auth failure: key does not match role {role}")
        if server.deactivated:
            raise unauthorized(
                "The mobile push notification service registration for your server "
                "has been deactivated"
            )
        self.activity.seen("zulip", server.uuid)
        return server

    async def _realm(
        self, server: ZulipServer, realm_uuid: str | None, path: str
    ) -> ZulipRealm | None:
        """Zulip's ``get_remote_realm_helper``: None if unknown, 403 if not this server's."""
        if realm_uuid is None:
            return None
        realm = await self.store.zulip_realm(realm_uuid)
        if realm is None:
            log.info(
                "%s: Received request for unknown realm %s, server %s",
                path,
                realm_uuid,
                server.uuid,
            )
            return None
        if realm.server_uuid != server.uuid:
            log.warning(
                "%s: realm %s is registered to server %s, not %s",
                path,
                realm_uuid,
                realm.server_uuid,
                server.uuid,
            )
            raise _mismatch()
        return realm

    def _app_for(self, kind: int, ios_app_id: str | None) -> AppConfig | None:
        return self.config.zulip_app(kind, ios_app_id)

    # --- server registration ------------------------------------------------------------

    async def server_deactivate(self, request: Request, server: ZulipServer) -> Reply:
        parse_json_body(request.body)
        await self.store.zulip_set_deactivated(server.uuid, True)
        log.info("Zulip server %s deactivated its registration", server.uuid)
        return success()

    async def transfer(self, request: Request) -> Reply:
        raise bad_request(
            "Registration transfer is not supported by this push notification service; "
            "ask its operator to move the registration."
        )

    async def billing(self, request: Request, server: ZulipServer) -> Reply:
        raise bad_request("This push notification service has no plans to manage.")

    # --- analytics ----------------------------------------------------------------------

    async def analytics_status(self, request: Request, server: ZulipServer) -> Reply:
        return success(
            last_realm_count_id=server.last_realm_count_id,
            last_installation_count_id=server.last_installation_count_id,
            last_realmauditlog_id=server.last_realmauditlog_id,
        )

    async def analytics(self, request: Request, server: ZulipServer) -> Reply:
        """Learn the server's realms; count rows only by their ids (the counts go)."""
        form = parse_form(request.body)
        marks = []
        for name in ANALYTICS_TABLES:
            rows = _json_list(form, name, required=name != "realmauditlog_rows")
            ids = [_row_id(row, name, index) for index, row in enumerate(rows)]
            marks.append(max(ids, default=0))
        realms = [_realm_info(row, index) for index, row in enumerate(_json_list(form, "realms"))]
        for realm in realms:
            known = await self.store.zulip_realm(realm.uuid)
            if known is not None and known.server_uuid != server.uuid:
                log.warning(
                    "Zulip server %s sent realm %s of server %s",
                    server.uuid,
                    realm.uuid,
                    known.server_uuid,
                )
                raise bad_request("Duplicate registration detected.")
        realms = [ZulipRealm(r.uuid, server.uuid, r.host, r.name) for r in realms]
        await self.store.zulip_record_analytics(server.uuid, realms, (marks[0], marks[1], marks[2]))
        return success(
            realms={realm.uuid: dict(REALM_PUSH_STATUS) for realm in realms},
            **ignored(form, _ANALYTICS_FIELDS),
        )

    # --- legacy registrations -----------------------------------------------------------

    async def push_register(self, request: Request, server: ZulipServer) -> Reply:
        form = parse_form(request.body)
        token = required(form, "token").strip()
        required(form, "token_kind")
        kind = check_kind(json_int(form, "token_kind"))
        token = check_token(token, kind)
        ios_app_id = form.get("ios_app_id")
        if kind == KIND_APNS:
            if ios_app_id is None:
                raise bad_request("Missing ios_app_id")
            if IOS_APP_ID_RE.fullmatch(ios_app_id) is None:
                raise bad_request("ios_app_id has invalid format")
        else:
            ios_app_id = None
        user_id, user_uuid = _user(form)
        realm = await self._realm(server, form.get("realm_uuid"), request.path)
        if self._app_for(kind, ios_app_id) is None:
            raise bad_request(no_app_message(kind, ios_app_id))
        await self.store.zulip_register(
            server.uuid,
            kind,
            token,
            ios_app_id,
            user_id,
            user_uuid,
            None if realm is None else realm.uuid,
        )
        log.info(
            "Zulip server %s: registered %s token %s for %s",
            server.uuid,
            "APNs" if kind == KIND_APNS else "FCM",
            mask_token(token),
            _identity(user_id, user_uuid),
        )
        return success(**ignored(form, _REGISTER_FIELDS))

    async def push_unregister(self, request: Request, server: ZulipServer) -> Reply:
        form = parse_form(request.body)
        token = required(form, "token").strip()
        required(form, "token_kind")
        kind = check_kind(json_int(form, "token_kind"))
        token = check_token(token, kind)
        user_id, user_uuid = _user(form)
        removed = await self.store.zulip_unregister(server.uuid, kind, token, user_id, user_uuid)
        if not removed:
            raise bad_request("Token does not exist")
        return success(**ignored(form, _REGISTER_FIELDS))

    async def push_unregister_all(self, request: Request, server: ZulipServer) -> Reply:
        form = parse_form(request.body)
        user_id, user_uuid = _user(form)
        await self.store.zulip_unregister_all(server.uuid, user_id, user_uuid)
        return success(**ignored(form, _UNREGISTER_ALL_FIELDS))

    # --- notifications ------------------------------------------------------------------

    async def push_notify(self, request: Request, server: ZulipServer) -> Reply:
        body = parse_json_body(request.body)
        user_id = _optional(body, "user_id", int)
        user_uuid = _optional(body, "user_uuid", str)
        realm_uuid = _optional(body, "realm_uuid", str)
        apns_payload = _optional(body, "apns_payload", dict) or {}
        gcm_payload = _optional(body, "gcm_payload", dict) or {}
        gcm_options = _optional(body, "gcm_options", dict) or {}
        android_listed = _strings(body, "android_devices")
        apple_listed = _strings(body, "apple_devices")
        if user_id is None and user_uuid is None:
            raise bad_request("Missing user_id or user_uuid")
        if realm_uuid is not None and user_uuid is None:
            raise bad_request("Missing user_uuid")
        realm = await self._realm(server, realm_uuid, request.path)
        priority = payloads.fcm_priority(gcm_options, gcm_payload)

        registrations = await self._deduplicated(server, user_id, user_uuid)
        apple = [r for r in registrations if r.kind == KIND_APNS]
        android = [r for r in registrations if r.kind == KIND_FCM]
        now = self.clock()

        def build(kind: int, app: AppConfig) -> Push:
            """The push for ``app``'s devices, as its ``content`` mode allows."""
            if kind == KIND_APNS:
                return payloads.build_apns_push(payloads.redact_apns(apns_payload, app), now)
            data = payloads.fcm_data(payloads.redact_gcm(gcm_payload, app))
            return payloads.build_fcm_push(data, priority)

        dead = await self._send(server, registrations, build)
        log.info(
            "Zulip server %s: notification for %s to %d APNs and %d FCM device(s), %d dead",
            server.uuid,
            _identity(user_id, user_uuid),
            len(apple),
            len(android),
            len(dead),
        )
        alive_apple = [r.token for r in apple if (KIND_APNS, r.token) not in dead]
        alive_android = [r.token for r in android if (KIND_FCM, r.token) not in dead]
        return success(
            total_android_devices=len(android),
            total_apple_devices=len(apple),
            deleted_devices={
                "android_devices": payloads.deleted_devices(
                    android_listed, alive_android, apns=False
                ),
                "apple_devices": payloads.deleted_devices(apple_listed, alive_apple, apns=True),
            },
            realm=None if realm is None else dict(REALM_PUSH_STATUS),
        )

    async def push_test_notification(self, request: Request, server: ZulipServer) -> Reply:
        body = parse_json_body(request.body)
        extra = sorted(set(body) - TEST_NOTIFICATION_KEYS)
        if extra:
            raise bad_request(f"Extra inputs are not permitted: {', '.join(extra)}")
        token = body.get("token")
        if not isinstance(token, str):
            raise bad_request("token is not a string")
        kind_value = body.get("token_kind")
        kind = check_kind(kind_value if isinstance(kind_value, int) else None)
        token = check_token(token.strip(), kind)
        user_id = _optional(body, "user_id", int)
        user_uuid = _optional(body, "user_uuid", str)
        if user_id is None and user_uuid is None:
            raise bad_request("Missing user_id or user_uuid")
        base = _optional(body, "base_payload", dict) or {}
        await self._realm(server, _optional(body, "realm_uuid", str), request.path)
        matches = [
            r
            for r in await self.store.zulip_user_registrations(server.uuid, user_id, user_uuid)
            if r.kind == kind and r.token == token
        ][:1]
        if not matches:
            raise ZulipError(
                400, "INVALID_REMOTE_PUSH_DEVICE_TOKEN", "Device not recognized by the push bouncer"
            )
        now = self.clock()
        push: Push
        if kind == KIND_APNS:
            push = payloads.build_apns_push(payloads.test_apns_payload(base), now)
        else:
            data = payloads.fcm_data(payloads.test_gcm_payload(base, now))
            push = payloads.build_fcm_push(data, "high")
        # The bouncer's own text, no one's message: the same in every content mode.
        await self._send(server, matches, lambda _kind, _app: push)
        return success()

    async def _deduplicated(
        self, server: ZulipServer, user_id: int | None, user_uuid: str | None
    ) -> list[ZulipRegistration]:
        """Zulip's ``delete_duplicate_registrations``: a token registered under both the
        user's id and uuid keeps only the uuid row."""
        rows = await self.store.zulip_user_registrations(server.uuid, user_id, user_uuid)
        with_uuid = {(r.kind, r.token) for r in rows if r.user_uuid is not None}
        stale = [r for r in rows if r.user_uuid is None and (r.kind, r.token) in with_uuid]
        if stale:
            log.info(
                "Deduplicating push registrations for server %s user %s",
                server.uuid,
                _identity(user_id, user_uuid),
            )
            await self.store.zulip_delete_registrations([r.id for r in stale])
        stale_ids = {r.id for r in stale}
        return [r for r in rows if r.id not in stale_ids]

    async def _send(
        self,
        server: ZulipServer,
        registrations: Sequence[ZulipRegistration],
        build: Callable[[int, AppConfig], Push],
    ) -> set[tuple[int, str]]:
        """Deliver to every device at once; return the dead (kind, token)s (deleted).

        ``build`` makes the push of one kind for one app, once per app: apps may differ
        in their ``content`` mode.  A payload it refuses raises before anything is sent.
        """
        deliveries: list[Delivery] = []
        kinds: list[int] = []
        pushes: dict[tuple[int, str], Push] = {}
        for registration in registrations:
            app = self._app_for(registration.kind, registration.ios_app_id)
            if app is None:
                log.warning(
                    "Zulip server %s: no configured app serves token %s (%s); skipped",
                    server.uuid,
                    mask_token(registration.token),
                    no_app_message(registration.kind, registration.ios_app_id),
                )
                continue
            key = (registration.kind, app.name)
            push = pushes.get(key)
            if push is None:
                push = pushes[key] = build(registration.kind, app)
            deliveries.append(
                Delivery(
                    app=app.name,
                    token=registration.token,
                    push=push,
                    registered_at=registration.registered_at,
                    protocol="zulip",
                )
            )
            kinds.append(registration.kind)
        reports: list[Report] = await self.dispatcher.deliver(deliveries)
        dead = {
            (kind, report.delivery.token)
            for kind, report in zip(kinds, reports, strict=True)
            if report.status == "removed"
        }
        # deliver() has deleted them already: the Zulip rows this app serves too.
        return dead


def zulip_error_reply(status: int, code: str, message: str) -> Reply:
    """Errors the serving layer raises on a Zulip route (413, 405, 503), in Zulip's shape.

    Zulip reads ``msg`` from a 4xx and retries a 5xx later, whatever its code.
    """
    return ZulipError(status, "BAD_REQUEST" if status < 500 else code.upper(), message).reply()


# --- field helpers ----------------------------------------------------------------------


def _user(form: Mapping[str, str]) -> tuple[int | None, str | None]:
    user_id = json_int(form, "user_id")
    user_uuid = form.get("user_uuid")
    if user_id is None and user_uuid is None:
        raise bad_request("Missing user_id or user_uuid")
    return user_id, user_uuid


def _optional(body: Mapping[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f"Invalid {name}")
    return value


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad_request(f"Invalid {name}")
    return value


def _json_list(form: Mapping[str, str], name: str, *, required: bool = False) -> list[Any]:
    raw = form.get(name)
    if raw is None:
        if required:
            raise ZulipError(
                400, "REQUEST_VARIABLE_MISSING", f"Missing '{name}' argument", {"var_name": name}
            )
        return []
    try:
        value = jsonutil.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request(f"{name} is not valid JSON") from None
    if not isinstance(value, list):
        raise bad_request(f"{name} is not a list")
    return value


def _row_id(row: Any, name: str, index: int) -> int:
    value = row.get("id") if isinstance(row, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f'Invalid {name}[{index}]["id"]')
    return value


def _realm_info(row: Any, index: int) -> ZulipRealm:
    if not isinstance(row, dict):
        raise bad_request(f"Invalid realms[{index}]")
    values = {}
    for key in ("uuid", "host", "name"):
        value = row.get(key)
        if not isinstance(value, str):
            raise bad_request(f'Invalid realms[{index}]["{key}"]')
        values[key] = value
    if not is_uuid(values["uuid"]):
        raise bad_request(f'Invalid realms[{index}]["uuid"]')
    return ZulipRealm(values["uuid"].lower(), "", values["host"], values["name"])
