"""The Zulip push bouncer endpoints under ``/api/v1/remotes/``: routes, auth, realms.

An unmodified Zulip server pointed at pushd (``ZULIP_SERVICES_URL``) must see what it
sees from Zulip's own service: same status codes, error ``code`` and ``msg``, same
success keys.  It joins ``/api/v1/remotes/...`` to the host root, discarding any path
prefix, so these routes live at the root.  The handlers live beside this module, one
module per group, and are mounted here so that they share the auth, rate limit, realms
and errors: the legacy flow (``push/register``, ``push/notify``, ...) in
:mod:`pushd.frontends.zulip.legacy`, end-to-end encrypted pushes (``push/e2ee/*``) in
:mod:`pushd.frontends.zulip.e2ee`, server registration (who may register which
hostname) in :mod:`pushd.frontends.zulip.registration` and the rest of a server's
upkeep (analytics, deactivate) in :mod:`pushd.frontends.zulip.servers`.

Servers authenticate with HTTP Basic (their ``zulip_org_id`` and ``zulip_org_key``);
the key is stored as a SHA-256 hash and compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from pushd.activity import Activity
from pushd.config import AppConfig, Config
from pushd.dispatch import Dispatcher
from pushd.frontends.http import Reply, Request, Route
from pushd.frontends.ratelimit import RateLimit
from pushd.frontends.zulip.e2ee import E2eeHandlers
from pushd.frontends.zulip.legacy import TEST_NOTIFICATION_KEYS, LegacyHandlers
from pushd.frontends.zulip.registration import ServerRegistration
from pushd.frontends.zulip.servers import (
    ANALYTICS_MAX_BODY,
    ANALYTICS_TABLES,
    NOTIFY_MAX_BODY,
    REALM_PUSH_STATUS,
    ServerHandlers,
    checked_realm,
)
from pushd.frontends.zulip.wire import (
    RATE_WINDOW_SECONDS,
    ZulipError,
    bad_request,
    is_uuid,
    rate_limited,
    unauthorized,
)
from pushd.store import Store, ZulipRealm, ZulipServer, hash_key

__all__ = [
    "ANALYTICS_MAX_BODY",
    "ANALYTICS_TABLES",
    "MAX_UNKNOWN_DEPTH",
    "PREFIX",
    "REALM_PUSH_STATUS",
    "TEST_NOTIFICATION_KEYS",
    "AuthedHandler",
    "ZulipBouncer",
    "zulip_error_reply",
]

log = logging.getLogger(__name__)

PREFIX = "/api/v1/remotes/"
#: Routes whose bodies may exceed the server's ``max_body_bytes``, by path.
BODY_LIMITS: Final = {
    "server/analytics": ANALYTICS_MAX_BODY,
    "push/notify": NOTIFY_MAX_BODY,
    "push/e2ee/notify": NOTIFY_MAX_BODY,
}
#: Unknown paths up to this many segments below the prefix get a Zulip-shaped 404.
MAX_UNKNOWN_DEPTH = 4

AuthedHandler = Callable[[Request, ZulipServer], Awaitable[Reply]]


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
        self.legacy = LegacyHandlers(
            store, dispatcher, realm=self._realm, app_for=self._app_for, clock=clock
        )
        self.servers = ServerHandlers(store)

    def routes(self) -> list[Route]:
        """Every route of the bouncer, on Zulip's paths, with Zulip's error format."""
        authed: list[tuple[str, str, AuthedHandler]] = [
            ("POST", "push/register", self.legacy.push_register),
            ("POST", "push/unregister", self.legacy.push_unregister),
            ("POST", "push/unregister/all", self.legacy.push_unregister_all),
            ("POST", "push/notify", self.legacy.push_notify),
            ("POST", "push/test_notification", self.legacy.push_test_notification),
            ("POST", "push/e2ee/register", self.e2ee.register),
            ("POST", "push/e2ee/notify", self.e2ee.notify),
            ("POST", "server/deactivate", self.servers.server_deactivate),
            ("GET", "server/analytics/status", self.servers.analytics_status),
            ("POST", "server/analytics", self.servers.analytics),
            ("POST", "server/billing", self.servers.billing),
        ]
        routes = [
            Route(
                method,
                PREFIX + path,
                self._authed(handler),
                "zulip_" + path,
                max_body_bytes=BODY_LIMITS.get(path),
                error_reply=zulip_error_reply,
            )
            for method, path, handler in authed
        ]
        for path, handler in (
            ("server/register", self.registration.register),
            ("server/register/transfer", self.servers.transfer),
            ("server/register/verify_challenge", self.servers.transfer),
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
                server, retry_after = await self.authenticate(request)
                if retry_after is not None:
                    raise rate_limited(retry_after)
                return await handler(request, server)
            except ZulipError as error:
                return error.reply()

        return guarded

    async def authenticate(self, request: Request) -> tuple[ZulipServer, float | None]:
        """Zulip's ``get_basic_credentials`` and ``validate_remote_server``, in order,
        and the request counted against the server's rate limit: the server, and the
        seconds it must wait when over the limit (None when not).

        On a shared store the count is made in the store call that reads the server,
        once the key checked out (one hop to a worker thread on PostgreSQL, not two);
        otherwise in memory, as before.
        """
        role, key = _credentials(request)
        if "@" in role:
            raise bad_request("Must validate with valid Zulip server API key")
        limiter, now = self.limiter, self.clock()
        server, count = None, None
        # Stored lower case, or as sent by a registration made before pushd stored them
        # so (see registration.registered_server): a second look only for such an id.
        for spelling in dict.fromkeys((role.lower(), role)) if is_uuid(role) else ():
            identity = f"server {spelling}"
            if limiter.shared is not None:
                server, count = await self.store.zulip_server_counted(
                    spelling, key, limiter.key(identity), limiter.window_start(now)
                )
            else:
                server = await self.store.zulip_server(spelling)
            if server is not None:
                break
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
        identity = f"server {server.uuid}"
        if count is None:
            return server, await limiter.acquire(identity, now)
        return server, limiter.judge(identity, now, count)

    async def _realm(
        self, server: ZulipServer, realm_uuid: str | None, path: str
    ) -> ZulipRealm | None:
        """Zulip's ``get_remote_realm_helper``: None if unknown, 403 if not this server's."""
        if realm_uuid is None:
            return None
        realm = await self.store.zulip_realm(realm_uuid)
        return checked_realm(server, realm_uuid, realm, path)

    def _app_for(self, kind: int, ios_app_id: str | None) -> AppConfig | None:
        return self.config.zulip_app(kind, ios_app_id)


def zulip_error_reply(status: int, code: str, message: str) -> Reply:
    """Errors the serving layer raises on a Zulip route (413, 405, 503), in Zulip's shape.

    Zulip reads ``msg`` from a 4xx and retries a 5xx later, whatever its code.
    """
    return ZulipError(status, "BAD_REQUEST" if status < 500 else code.upper(), message).reply()


def _credentials(request: Request) -> tuple[str, str]:
    """The (role, key) of a request's basic authorization, as Zulip's
    ``get_basic_credentials`` reads them, or its 401 or 400."""
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
    return role, key
