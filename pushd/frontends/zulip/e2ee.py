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
needs are stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import nacl.exceptions
import nacl.public

from pushd import jsonutil
from pushd.config import AppConfig
from pushd.dispatch import Dispatcher, Report
from pushd.frontends.http import Reply, Request
from pushd.frontends.zulip.wire import (
    IOS_APP_ID_RE,
    KIND_APNS,
    KIND_FCM,
    ZulipError,
    bad_request,
    check_token,
    ignored,
    json_int,
    parse_form,
    parse_json_body,
    required,
    success,
)
from pushd.model import APNS_PRIORITIES, APNS_PUSH_TYPES, ApnsPush, Delivery, Push, mask_token
from pushd.store import Store, ZulipE2eeDevice, ZulipRealm, ZulipServer
from pushd.upstream.fcm import message as fcm_message

log = logging.getLogger(__name__)

#: ``PUSH_REGISTRATION_LIVENESS_TIMEOUT``: a sealed registration older than a day is
#: refused, so one captured in transit cannot be replayed later.
LIVENESS_SECONDS: Final = 24 * 3600
#: ``token_id`` is this many leading bytes of SHA-256(token).
TOKEN_ID_BYTES: Final = 8
#: What ``PushRegistration.token_kind`` says, and the legacy kind it maps to.
TOKEN_KINDS: Final = {"apns": KIND_APNS, "fcm": KIND_FCM}
FCM_PRIORITIES: Final = frozenset({"high", "normal"})
#: Fields each generation's ``e2ee/register`` reads (anything else is reported ignored).
_REGISTER_FIELDS: Final = frozenset(
    {"realm_uuid", "token_id", "push_account_id", "encrypted_push_registration"}
    | {"bouncer_public_key"}
)


@attrs.frozen
class Generation:
    """The names one Zulip generation uses on the wire for the same things."""

    #: Key of a push request naming the device: "token_id" or "device_id".
    device_field: str
    #: Key of the payload naming the push key, forwarded to FCM as a string.
    key_field: str
    #: Key of the response listing devices to forget.
    delete_field: str


ZULIP_12: Final = Generation("token_id", "push_key_id", "delete_token_ids")
ZULIP_11: Final = Generation("device_id", "push_account_id", "delete_device_ids")


@attrs.frozen
class PushRegistration:
    """The app's sealed registration, checked; lives in memory only."""

    token: str
    token_kind: str
    ios_app_id: str | None
    timestamp: int


@attrs.frozen
class PushRequest:
    """One checked entry of ``push_requests``: the device named and what to send it."""

    #: The device as the server named it: a ``token_id`` string or a ``device_id`` int.
    name: str | int
    apns: bool
    push: Push


# --- keys and ids (pure) ------------------------------------------------------------------


def new_key_pair() -> tuple[str, str]:
    """A fresh X25519 bouncer key pair, (public, private), each base64 of 32 bytes.

    Standard base64 of the raw public key is the form a white-label app bakes in
    (zulip-flutter's ``bouncerPublicKey``) and sends back as ``bouncer_public_key``.
    """
    private = nacl.public.PrivateKey.generate()
    return (
        base64.b64encode(bytes(private.public_key)).decode(),
        base64.b64encode(bytes(private)).decode(),
    )


def token_id_of(token: str) -> str:
    """The app's ``computeTokenId``: base64 of the first 8 bytes of SHA-256(token)."""
    digest = hashlib.sha256(token.encode()).digest()[:TOKEN_ID_BYTES]
    return base64.b64encode(digest).decode()


def token_id_int(token_id: str) -> int | None:
    """A ``token_id`` as the signed big-endian int64 Zulip stores, None if malformed."""
    try:
        raw = base64.b64decode(token_id, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != TOKEN_ID_BYTES or base64.b64encode(raw).decode() != token_id:
        return None
    return int.from_bytes(raw, "big", signed=True)


def _invalid_registration() -> ZulipError:
    return bad_request("Invalid encrypted_push_registration")


def open_registration(private_key: str, sealed: str) -> PushRegistration:
    """Open and check a sealed ``PushRegistration`` (notes §4.2); any flaw is a 400.

    Zulip answers every failure here, cryptographic or not, with the same message, so
    the server cannot tell a bad box from a bad token; so do we.
    """
    try:
        box = nacl.public.SealedBox(nacl.public.PrivateKey(base64.b64decode(private_key)))
        plaintext = box.decrypt(base64.b64decode(sealed, validate=True))
        value = jsonutil.loads(plaintext)
    except (
        binascii.Error,
        ValueError,
        TypeError,
        RecursionError,
        nacl.exceptions.CryptoError,
    ):
        raise _invalid_registration() from None
    if not isinstance(value, dict):
        raise _invalid_registration()
    token, kind, app_id, timestamp = (
        value.get(name) for name in ("token", "token_kind", "ios_app_id", "timestamp")
    )
    if not isinstance(token, str) or kind not in TOKEN_KINDS:
        raise _invalid_registration()
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise _invalid_registration()
    try:
        token = check_token(token, TOKEN_KINDS[kind])
    except ZulipError:
        raise _invalid_registration() from None
    if kind == "apns":
        if not isinstance(app_id, str) or IOS_APP_ID_RE.fullmatch(app_id) is None:
            raise _invalid_registration()
    elif app_id is not None:
        raise _invalid_registration()
    return PushRegistration(token, kind, app_id, timestamp)


# --- push requests (pure) -----------------------------------------------------------------


def _field(entry: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = entry.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request(f"Invalid {where}[{name!r}]")
    return value


def parse_push_request(entry: Any, index: int, generation: Generation) -> PushRequest:
    """Check one push request and build what pushd sends (notes §2.7, §4.4).

    APNs (the request has ``http_headers``): the payload goes out as the body, every
    member kept in the server's order; Zulip's bouncer also re-serialises the parsed
    payload (aioapns), so the ciphertext string arrives byte for byte.  No expiration:
    Zulip sets none on this path.  FCM: a data-only message of the key id (as a string,
    FCM data values are strings) and the ciphertext, at the given priority.
    """
    where = f"push_requests[{index}]"
    if not isinstance(entry, dict):
        raise bad_request(f"Invalid {where}")
    name_type: type = str if generation is ZULIP_12 else int
    name = _field(entry, generation.device_field, name_type, where)
    payload = _field(entry, "payload", dict, where)
    key_id = _field(payload, generation.key_field, int, f"{where}['payload']")
    encrypted = _field(payload, "encrypted_data", str, f"{where}['payload']")
    if "http_headers" in entry:
        headers = _field(entry, "http_headers", dict, where)
        priority = headers.get("apns_priority")
        push_type = headers.get("apns_push_type")
        if priority not in APNS_PRIORITIES or isinstance(priority, bool):
            raise bad_request(f"Invalid {where}['http_headers']['apns_priority']")
        if push_type not in APNS_PUSH_TYPES:
            raise bad_request(f"Invalid {where}['http_headers']['apns_push_type']")
        _field(payload, "aps", dict, f"{where}['payload']")
        try:
            body = jsonutil.dumpb(payload)
        except ValueError:  # NaN or a lone surrogate: only from a caller that skipped the parser
            raise bad_request(f"Invalid {where}['payload']") from None
        return PushRequest(name, True, ApnsPush(body, push_type=push_type, priority=priority))
    priority = entry.get("fcm_priority")
    if priority not in FCM_PRIORITIES:
        raise bad_request(f"Invalid {where}['fcm_priority']")
    data = {generation.key_field: str(key_id), "encrypted_data": encrypted}
    try:
        fcm_push = fcm_message.build_push(
            data=data,
            android=fcm_message.AndroidOptions(priority="high" if priority == "high" else "normal"),
        )
    except fcm_message.InvalidMessage as error:
        raise bad_request(f"Invalid {where}['payload']: {error}") from None
    return PushRequest(name, False, fcm_push)


def generation_of(requests: Sequence[Any]) -> Generation:
    """Zulip 11 names devices by ``device_id``, Zulip 12 by ``token_id``."""
    for entry in requests:
        if isinstance(entry, dict) and "device_id" in entry and "token_id" not in entry:
            return ZULIP_11
    return ZULIP_12


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
        # Zulip 11 sends a client-chosen push_account_id, Zulip 12 the token's token_id.
        zulip_11 = "push_account_id" in form and "token_id" not in form
        token_id = None if zulip_11 else required(form, "token_id")
        account = json_int(form, "push_account_id") if zulip_11 else None
        sealed = required(form, "encrypted_push_registration")
        public_key = required(form, "bouncer_public_key")
        realm = await self._realm(server, realm_uuid.lower(), request.path)
        key = await self.store.zulip_bouncer_key(public_key)
        if key is None:
            raise ZulipError(400, "INVALID_BOUNCER_PUBLIC_KEY", "Invalid bouncer_public_key")
        registration = open_registration(key.private_key, sealed)
        if self.clock() - registration.timestamp > LIVENESS_SECONDS:
            raise ZulipError(400, "REQUEST_EXPIRED", "Request expired")
        stored_id: int | None = None
        if token_id is not None:
            if token_id != token_id_of(registration.token):
                raise _invalid_registration()
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

    async def notify(self, request: Request, server: ZulipServer) -> Reply:
        """Forward every encrypted push at once; report counts and devices to forget."""
        body = parse_json_body(request.body)
        realm_uuid = body.get("realm_uuid")
        if not isinstance(realm_uuid, str):
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
