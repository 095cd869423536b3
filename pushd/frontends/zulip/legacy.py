"""The Zulip bouncer's legacy flow: device registrations and the notifications Zulip
hands pushd in the clear (end-to-end encrypted ones are :mod:`.e2ee`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pushd.config import AppConfig
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request
from pushd.frontends.zulip import payloads
from pushd.frontends.zulip.e2ee import AppLookup, no_app_message
from pushd.frontends.zulip.servers import REALM_PUSH_STATUS, checked_realm
from pushd.frontends.zulip.wire import (
    IOS_APP_ID_RE,
    KIND_APNS,
    KIND_FCM,
    ZulipError,
    bad_request,
    check_kind,
    check_text,
    check_token,
    ignored,
    is_int64,
    json_int,
    parse_form,
    parse_json_body,
    required,
    success,
)
from pushd.model import Delivery, Push, mask_token
from pushd.store import Store, ZulipRealm, ZulipRegistration, ZulipServer

#: The bouncer's handlers log under one name, as before they had modules of their own.
log = logging.getLogger("pushd.frontends.zulip.api")

TEST_NOTIFICATION_KEYS = frozenset(
    {"token", "token_kind", "user_id", "user_uuid", "realm_uuid", "base_payload"}
)

_REGISTER_FIELDS = frozenset(
    {"token", "token_kind", "user_id", "user_uuid", "realm_uuid", "ios_app_id"}
)
_UNREGISTER_ALL_FIELDS = frozenset({"user_id", "user_uuid", "realm_uuid"})


def _identity(user_id: int | None, user_uuid: str | None) -> str:
    """Zulip's ``<id:…><uuid:…>`` for log lines: ids, never names or content."""
    return (f"<id:{user_id}>" if user_id is not None else "") + (
        f"<uuid:{user_uuid}>" if user_uuid is not None else ""
    )


#: ``ZulipBouncer._realm``: the realm (None if unknown or not named), a 403 if another
#: server's.
OptionalRealmLookup = Callable[[ZulipServer, str | None, str], Awaitable[ZulipRealm | None]]


class LegacyHandlers:
    """``push/register``, ``push/unregister[/all]``, ``push/notify`` and
    ``push/test_notification``: the flow where Zulip hands pushd the notification.

    Mounted by :class:`~pushd.frontends.zulip.api.ZulipBouncer`, which authenticates the
    server and rate-limits it first and lends its realm and app lookups, as it does to
    :class:`~pushd.frontends.zulip.e2ee.E2eeHandlers`.
    """

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        *,
        realm: OptionalRealmLookup,
        app_for: AppLookup,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self._realm = realm
        self._app_for = app_for
        self.clock = clock

    # --- legacy registrations -----------------------------------------------------------

    async def push_register(self, request: Request, server: ZulipServer) -> Reply:
        form = parse_form(request.body)
        token, kind = _token(form)
        ios_app_id = form.get("ios_app_id")
        if kind == KIND_APNS:
            if ios_app_id is None:
                raise bad_request("Missing ios_app_id")
            if IOS_APP_ID_RE.fullmatch(ios_app_id) is None:
                raise bad_request("ios_app_id has invalid format")
        else:
            ios_app_id = None
        user_id, user_uuid = _user(form)
        realm_uuid = check_text(form.get("realm_uuid"), "realm_uuid")
        realm = await self._realm(server, realm_uuid, request.path)
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
        token, kind = _token(form)
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
        # One store call for both reads (one hop on PostgreSQL, not two).
        realm, rows = await self.store.zulip_realm_and_registrations(
            realm_uuid, server.uuid, user_id, user_uuid
        )
        if realm_uuid is not None:
            realm = checked_realm(server, realm_uuid, realm, request.path)
        priority = payloads.fcm_priority(gcm_options, gcm_payload)

        registrations = await self._deduplicated(server, user_id, user_uuid, rows)
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
        self,
        server: ZulipServer,
        user_id: int | None,
        user_uuid: str | None,
        rows: list[ZulipRegistration],
    ) -> list[ZulipRegistration]:
        """Zulip's ``delete_duplicate_registrations`` on the user's ``rows``: a token
        registered under both the user's id and uuid keeps only the uuid row."""
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


def _token(form: Mapping[str, str]) -> tuple[str, int]:
    """The form's device ``token`` and its ``token_kind``, checked in Zulip's order."""
    token = required(form, "token").strip()
    required(form, "token_kind")
    kind = check_kind(json_int(form, "token_kind"))
    return check_token(token, kind), kind


def _user(form: Mapping[str, str]) -> tuple[int | None, str | None]:
    user_id = json_int(form, "user_id")
    user_uuid = check_text(form.get("user_uuid"), "user_uuid")
    if user_id is None and user_uuid is None:
        raise bad_request("Missing user_id or user_uuid")
    return user_id, user_uuid


def _optional(body: Mapping[str, Any], name: str, kind: type) -> Any:
    """A JSON field of type ``kind`` or null; an integer only in 64 bits, as stored, a
    string without control characters (ids and uuids: stored and logged)."""
    value = body.get(name)
    if value is None:
        return None
    if not (is_int64(value) if kind is int else isinstance(value, kind)):
        raise bad_request(f"Invalid {name}")
    if isinstance(value, str):
        check_text(value, name)
    return value


def _strings(body: Mapping[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise bad_request(f"Invalid {name}")
    return value
