"""The Zulip bouncer's end-to-end encrypted pushes: ``push/e2ee/register`` and ``notify``.

In this flow pushd never sees what a notification says.  The mobile app seals its
device token to one of the bouncer's public keys (a libsodium sealed box), so the Zulip
server only ever holds that box and a ``token_id``; pushd opens it in memory, checks it
and keeps the token.  The server then encrypts each notification with a key it shares
only with the app and hands pushd the ciphertext, which pushd forwards as it came.

Two wire generations exist (protocol notes §2.6, §2.7, §4.5): Zulip 12 names a device by
``token_id`` (base64 of the first 8 bytes of SHA-256 of the token) and its push key by
``push_key_id``, and is told ``delete_token_ids``; Zulip 11 names devices by a client
chosen ``push_account_id``, is given a bouncer ``device_id`` at registration and is told
``delete_device_ids``.  Both are served.

Privacy: the sealed registration, the decrypted token (except masked) and
``encrypted_data`` never reach a log line or the disk; only the token and what sending
needs are stored.  The bouncer's private keys rest sealed with the spool keys and are
opened per registration, in memory (:mod:`.bouncer_keys`).

The pure half (key pairs, token ids, opening a sealed registration, checking a push
request) lives in :mod:`.e2ee_payloads`; its names are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from pushd.config import AppConfig
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request
from pushd.frontends.zulip.bouncer_keys import open_private_key
from pushd.frontends.zulip.e2ee_payloads import (
    FCM_PRIORITIES,
    TOKEN_ID_BYTES,
    TOKEN_KINDS,
    ZULIP_11,
    ZULIP_12,
    Generation,
    PushRegistration,
    PushRequest,
    generation_of,
    invalid_registration,
    new_key_pair,
    open_registration,
    parse_push_request,
    token_id_int,
    token_id_of,
)
from pushd.frontends.zulip.wire import (
    KIND_APNS,
    KIND_FCM,
    ZulipError,
    bad_request,
    check_text,
    has_control,
    ignored,
    json_int,
    parse_form,
    parse_json_body,
    required,
    success,
)
from pushd.model import Delivery, mask_token
from pushd.spool.seal import SealError
from pushd.store import Store, ZulipBouncerKey, ZulipE2eeDevice, ZulipRealm, ZulipServer

__all__ = [
    "FCM_PRIORITIES",
    "LIVENESS_SECONDS",
    "TOKEN_ID_BYTES",
    "TOKEN_KINDS",
    "ZULIP_11",
    "ZULIP_12",
    "AppLookup",
    "E2eeHandlers",
    "Generation",
    "PushRegistration",
    "PushRequest",
    "RealmLookup",
    "generation_of",
    "missing_realm",
    "new_key_pair",
    "no_app_message",
    "open_registration",
    "parse_push_request",
    "token_id_int",
    "token_id_of",
]

log = logging.getLogger(__name__)

#: ``PUSH_REGISTRATION_LIVENESS_TIMEOUT``: a sealed registration older than a day is
#: refused, so one captured in transit cannot be replayed later.
LIVENESS_SECONDS: Final = 24 * 3600
#: The code of the 503 a registration gets when its bouncer key does not open.
BOUNCER_KEY_UNAVAILABLE: Final = "BOUNCER_KEY_UNAVAILABLE"
#: A bouncer key that does not open is logged as an ERROR at its first refused request,
#: then at most once per this many seconds with the count refused since: every device
#: of a realm re-registers, so one line per request would flood the log.
KEY_ERROR_LOG_SECONDS: Final = 60.0
#: Fields each generation's ``e2ee/register`` reads (anything else is reported ignored).
_REGISTER_FIELDS: Final = frozenset(
    {"realm_uuid", "token_id", "push_account_id", "encrypted_push_registration"}
    | {"bouncer_public_key"}
)


# --- handlers -----------------------------------------------------------------------------


def missing_realm() -> ZulipError:
    """What Zulip answers when a realm was never uploaded: the server retries later."""
    return ZulipError(403, "MISSING_REMOTE_REALM", "Organization not registered")


#: ``ZulipBouncer._realm``: the realm, None if unknown, a 403 if another server's.
RealmLookup = Callable[[ZulipServer, str, str], Awaitable[ZulipRealm | None]]
#: ``ZulipBouncer._app_for``: the configured app serving a (kind, ios_app_id).
AppLookup = Callable[[int, str | None], AppConfig | None]


class E2eeHandlers:
    """``push/e2ee/register`` and ``push/e2ee/notify``.

    Mounted by :class:`~pushd.frontends.zulip.api.ZulipBouncer`, which authenticates the
    server and rate-limits it first and lends its realm and app lookups, so both flows
    agree on which realm belongs to whom and which app serves which token.
    """

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        *,
        realm: RealmLookup,
        app_for: AppLookup,
        push_status: Mapping[str, Any],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.realm_lookup = realm
        self.app_for = app_for
        self.push_status = push_status
        self.clock = clock
        #: Bouncer key id -> when its failure to open was last logged as an ERROR, and
        #: how many requests it refused since.
        self._unopened: dict[int, tuple[float, int]] = {}

    async def _realm(self, server: ZulipServer, realm_uuid: str, path: str) -> ZulipRealm:
        """Unlike legacy pushes, E2EE needs a known realm: 403 lets the server retry."""
        realm = await self.realm_lookup(server, realm_uuid, path)
        if realm is None:
            raise missing_realm()
        return realm

    async def register(self, request: Request, server: ZulipServer) -> Reply:
        """Open the sealed registration, check it and store the device (notes §2.6)."""
        form = parse_form(request.body)
        realm_uuid = required(form, "realm_uuid")
        check_text(realm_uuid, "realm_uuid")
        # Zulip 11 sends a client-chosen push_account_id, Zulip 12 the token's token_id.
        zulip_11 = "push_account_id" in form and "token_id" not in form
        token_id = None if zulip_11 else required(form, "token_id")
        account = json_int(form, "push_account_id") if zulip_11 else None
        sealed = required(form, "encrypted_push_registration")
        public_key = required(form, "bouncer_public_key")
        realm = await self._realm(server, realm_uuid.lower(), request.path)
        # Keys are base64: one with a control character is no key (and NUL, no text
        # PostgreSQL can look up).
        key = None if has_control(public_key) else await self.store.zulip_bouncer_key(public_key)
        if key is None:
            raise ZulipError(400, "INVALID_BOUNCER_PUBLIC_KEY", "Invalid bouncer_public_key")
        registration = open_registration(self._private_key(key), sealed)
        # Zulip bounds the age only, not the future, and its timestamp is any integer:
        # compared, not subtracted, so one too large for a float cannot overflow.
        if registration.timestamp < self.clock() - LIVENESS_SECONDS:
            raise ZulipError(400, "REQUEST_EXPIRED", "Request expired")
        stored_id: int | None = None
        if token_id is not None:
            if token_id != token_id_of(registration.token):
                raise invalid_registration()
            stored_id = token_id_int(token_id)
            assert stored_id is not None  # it equals a well-formed id
        kind = TOKEN_KINDS[registration.token_kind]
        if self.app_for(kind, registration.ios_app_id) is None:
            raise bad_request(no_app_message(kind, registration.ios_app_id))
        device_id = await self.store.zulip_e2ee_register(
            server.uuid,
            realm.uuid,
            registration.token_kind,
            registration.token,
            registration.ios_app_id,
            token_id=stored_id,
            push_account_id=account,
        )
        log.info(
            "Zulip server %s: registered E2EE %s device %s in realm %s",
            server.uuid,
            registration.token_kind,
            mask_token(registration.token),
            realm.uuid,
        )
        extra = ignored(form, _REGISTER_FIELDS)
        if account is not None:
            return success(device_id=device_id, **extra)
        return success(**extra)

    def _private_key(self, key: ZulipBouncerKey) -> str:
        """The key pair's private key, opened with the spool keys; if it does not open
        (its spool key gone from the key file), a 503 Zulip retries later, as it does
        any 5xx: the request is sound, and the key file may yet be put back."""
        try:
            return open_private_key(self.dispatcher.keys, key)
        except SealError as error:
            now = self.clock()
            logged_at, since = self._unopened.get(key.id, (None, 0))
            if logged_at is not None and now - logged_at < KEY_ERROR_LOG_SECONDS:
                self._unopened[key.id] = (logged_at, since + 1)
                log.debug("Zulip E2EE: bouncer key %d still cannot be opened", key.id)
            else:
                self._unopened[key.id] = (now, 0)
                log.error(
                    "Zulip E2EE: bouncer key %d cannot be opened (%s): registrations sealed "
                    "to it fail until the spool key file holds its key again%s",
                    key.id,
                    error,
                    f" ({since} more refused since the last such line)" if since else "",
                )
            raise ZulipError(
                503,
                BOUNCER_KEY_UNAVAILABLE,
                "This push notification service cannot use this bouncer key now; try again later",
            ) from None

    async def notify(self, request: Request, server: ZulipServer) -> Reply:
        """Forward every encrypted push at once; report counts and devices to forget."""
        body = parse_json_body(request.body)
        realm_uuid = body.get("realm_uuid")
        if not isinstance(realm_uuid, str) or has_control(realm_uuid):
            raise bad_request("Invalid realm_uuid")
        entries = body.get("push_requests")
        if not isinstance(entries, list):
            raise bad_request("Invalid push_requests")
        generation = generation_of(entries)
        requests = [parse_push_request(e, i, generation) for i, e in enumerate(entries)]
        realm = await self._realm(server, realm_uuid.lower(), request.path)

        devices = await self._devices(realm, requests, generation)
        forget: list[str | int] = []
        deliveries: list[Delivery] = []
        sent: list[PushRequest] = []
        for push_request in requests:
            device = devices.get(push_request.name)
            if device is None:
                forget.append(push_request.name)  # unknown or already found dead
                continue
            delivery = self._delivery(server, device, push_request)
            if delivery is not None:
                deliveries.append(delivery)
                sent.append(push_request)
        reports: list[Report] = await self.dispatcher.deliver(deliveries)
        apple = android = 0
        for push_request, report in zip(sent, reports, strict=True):
            if report.status == "delivered":
                if push_request.apns:
                    apple += 1
                else:
                    android += 1
            elif report.status == "removed":  # deliver() has deleted the device already
                forget.append(push_request.name)
        log.info(
            "Zulip server %s: E2EE notification for realm %s: %d requested, %d APNs and "
            "%d FCM sent, %d to forget",
            server.uuid,
            realm.uuid,
            len(requests),
            apple,
            android,
            len(forget),
        )
        return success(
            apple_successfully_sent_count=apple,
            android_successfully_sent_count=android,
            **{generation.delete_field: forget},
            realm_push_status=dict(self.push_status),
        )

    async def _devices(
        self, realm: ZulipRealm, requests: Sequence[PushRequest], generation: Generation
    ) -> dict[str | int, ZulipE2eeDevice]:
        """The stored devices the requests name, keyed by the name the server used."""
        store = self.store
        if generation is ZULIP_11:
            ids = [r.name for r in requests if isinstance(r.name, int)]
            return {d.id: d for d in await store.zulip_e2ee_devices(realm.uuid, device_ids=ids)}
        by_int: dict[int, str] = {}
        for push_request in requests:
            number = token_id_int(str(push_request.name))
            if number is not None:
                by_int[number] = str(push_request.name)
        rows = await store.zulip_e2ee_devices(realm.uuid, token_ids=list(by_int))
        return {by_int[d.token_id]: d for d in rows if d.token_id is not None}

    def _delivery(
        self, server: ZulipServer, device: ZulipE2eeDevice, push_request: PushRequest
    ) -> Delivery | None:
        """The delivery for one device, or None (logged) if it cannot be sent."""
        kind = TOKEN_KINDS.get(device.token_kind, KIND_FCM)
        if (kind == KIND_APNS) != push_request.apns:
            # Zulip asserts here (a 500); one odd request must not fail the others.
            log.warning(
                "Zulip server %s: E2EE %s device %s got a push of the other kind; skipped",
                server.uuid,
                device.token_kind,
                mask_token(device.token),
            )
            return None
        app = self.app_for(kind, device.ios_app_id)
        if app is None:
            log.warning(
                "Zulip server %s: no configured app serves E2EE device %s (%s); skipped",
                server.uuid,
                mask_token(device.token),
                no_app_message(kind, device.ios_app_id),
            )
            return None
        return Delivery(
            app=app.name,
            token=device.token,
            push=push_request.push,
            registered_at=device.registered_at,
            protocol="zulip",
        )


def no_app_message(kind: int, ios_app_id: str | None) -> str:
    """Why a device cannot be served: the operator has not configured its app."""
    if kind == KIND_APNS:
        return f"This push notification service has no app for ios_app_id {ios_app_id}"
    return "This push notification service is not set up for Android (FCM) devices"
