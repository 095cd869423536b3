"""A Zulip server as pushd's Zulip bouncer sees it, byte for byte.

Mirrors ``zerver/lib/remote_server.py``: form bodies for the endpoints Zulip sends
``send_to_push_bouncer(..., dict)`` to, JSON (``Content-type: application/json``) for
``send_json_to_push_bouncer``, HTTP Basic with ``zulip_org_id:zulip_org_key``, and the
``ZulipServer/<version>`` User-Agent.  ``register_server`` posts without auth, as
``manage.py register_server`` does.

The E2EE half plays both the Zulip mobile app (seal a ``PushRegistration`` to the
bouncer's public key, compute ``token_id``, hold the push key and decrypt) and the
Zulip server (encrypt each notification with the device's push key, post the push
requests), as protocol notes §4 describe.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from typing import Any
from urllib.parse import urljoin

import attrs
import httpx
import nacl.encoding
import nacl.public
import nacl.secret
import nacl.utils

ZULIP_VERSION = "11.4"
USER_AGENT = f"ZulipServer/{ZULIP_VERSION}"


def new_org_key() -> str:
    return secrets.token_hex(32)


@attrs.define
class ZulipServer:
    """One Zulip server: its bouncer URL (``ZULIP_SERVICES_URL``) and credentials."""

    client: httpx.AsyncClient
    services_url: str
    org_id: str = attrs.Factory(lambda: str(uuid.uuid4()))
    org_key: str = attrs.Factory(new_org_key)
    hostname: str = "zulip.example.com"

    def url(self, endpoint: str) -> str:
        """``send_to_push_bouncer``'s URL: ``urljoin``, which drops any path of the
        setting (a trailing slash included)."""
        return urljoin(self.services_url, "/api/v1/remotes/" + endpoint)

    def command_url(self, endpoint: str) -> str:
        """``manage.py register_server``'s URL: the setting and the path concatenated, so
        a setting ending in ``/`` gives ``//api/...``."""
        return self.services_url + "/api/v1/remotes/" + endpoint

    def headers(self, org_id: str | None = None, org_key: str | None = None) -> dict[str, str]:
        pair = f"{org_id or self.org_id}:{org_key or self.org_key}".encode()
        return {
            "user-agent": USER_AGENT,
            "authorization": "Basic " + base64.b64encode(pair).decode(),
        }

    async def register_server(
        self, *, new_key: str | None = None, contact_email: str = "admin@zulip.example.com"
    ) -> httpx.Response:
        data = {
            "zulip_org_id": self.org_id,
            "zulip_org_key": self.org_key,
            "hostname": self.hostname,
            "contact_email": contact_email,
        }
        if new_key is not None:
            data["new_org_key"] = new_key
        return await self.client.post(
            self.command_url("server/register"), data=data, headers={"user-agent": USER_AGENT}
        )

    async def form(self, endpoint: str, data: dict[str, Any], **auth: str) -> httpx.Response:
        return await self.client.post(self.url(endpoint), data=data, headers=self.headers(**auth))

    async def json(self, endpoint: str, body: dict[str, Any], **auth: str) -> httpx.Response:
        headers = {**self.headers(**auth), "content-type": "application/json"}
        content = json.dumps(body, separators=(",", ":")).encode()
        return await self.client.post(self.url(endpoint), content=content, headers=headers)

    async def get(self, endpoint: str) -> httpx.Response:
        return await self.client.get(self.url(endpoint), headers=self.headers())

    async def upload_analytics(
        self,
        realms: list[dict[str, Any]],
        realm_counts: list[dict[str, Any]] | None = None,
        installation_counts: list[dict[str, Any]] | None = None,
    ) -> httpx.Response:
        """``send_server_data_to_push_bouncer``: every value a JSON string in a form."""
        data = {
            "realm_counts": json.dumps(realm_counts or []),
            "installation_counts": json.dumps(installation_counts or []),
            "realmauditlog_rows": json.dumps([]),
            "realms": json.dumps(realms),
            "version": json.dumps(ZULIP_VERSION),
            "merge_base": json.dumps(""),
            "api_feature_level": json.dumps(420),
        }
        return await self.form("server/analytics", data)

    async def register_device(
        self,
        token: str,
        kind: int,
        *,
        user_id: int = 10,
        user_uuid: str | None = None,
        realm_uuid: str | None = None,
        ios_app_id: str | None = None,
    ) -> httpx.Response:
        """``add_push_device_token``'s request."""
        data: dict[str, Any] = {"server_uuid": self.org_id, "user_id": str(user_id)}
        if user_uuid is not None:
            data["user_uuid"] = user_uuid
        if realm_uuid is not None:
            data["realm_uuid"] = realm_uuid
        data |= {"token": token, "token_kind": kind}
        if ios_app_id is not None:
            data["ios_app_id"] = ios_app_id
        return await self.form("push/register", data)

    async def e2ee_register(
        self,
        realm_uuid: str,
        token_id: str,
        encrypted_push_registration: str,
        bouncer_public_key: str,
    ) -> httpx.Response:
        """Zulip 12's ``handle_register_push_device_to_bouncer`` request (a form)."""
        return await self.form(
            "push/e2ee/register",
            {
                "realm_uuid": realm_uuid,
                "token_id": token_id,
                "encrypted_push_registration": encrypted_push_registration,
                "bouncer_public_key": bouncer_public_key,
            },
        )

    async def e2ee_register_11(
        self,
        realm_uuid: str,
        push_account_id: int,
        encrypted_push_registration: str,
        bouncer_public_key: str,
    ) -> httpx.Response:
        """Zulip 11's variant: a client-chosen ``push_account_id`` (a ``Json[int]``)."""
        return await self.form(
            "push/e2ee/register",
            {
                "realm_uuid": realm_uuid,
                "push_account_id": str(push_account_id),
                "encrypted_push_registration": encrypted_push_registration,
                "bouncer_public_key": bouncer_public_key,
            },
        )

    async def e2ee_notify(
        self, realm_uuid: str, push_requests: list[dict[str, Any]]
    ) -> httpx.Response:
        """``send_push_notifications``' request to ``push/e2ee/notify`` (JSON)."""
        return await self.json(
            "push/e2ee/notify", {"realm_uuid": realm_uuid, "push_requests": push_requests}
        )


# --- E2EE: what the mobile app and the Zulip server compute -------------------------------

#: ``push_key``'s cryptosystem byte: libsodium ``crypto_secretbox_easy``.
PUSH_KEY_SECRETBOX = 0x31


def token_id(token: str) -> str:
    """zulip-flutter's ``computeTokenId``: base64 of the first 8 bytes of SHA-256."""
    return base64.b64encode(hashlib.sha256(token.encode()).digest()[:8]).decode()


def seal_registration(
    bouncer_public_key: str,
    token: str,
    token_kind: str,
    ios_app_id: str | None,
    timestamp: int | None = None,
    **extra: Any,
) -> str:
    """The app's ``encrypted_push_registration``: a sealed box of the JSON, base64."""
    registration = {
        "token": token,
        "token_kind": token_kind,
        "ios_app_id": ios_app_id,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        **extra,
    }
    return seal(bouncer_public_key, json.dumps(registration).encode())


def seal(bouncer_public_key: str, plaintext: bytes) -> str:
    box = nacl.public.SealedBox(nacl.public.PublicKey(base64.b64decode(bouncer_public_key)))
    return base64.b64encode(box.encrypt(plaintext)).decode()


@attrs.frozen
class PushKey:
    """A device's push key, shared by the app and its Zulip server only."""

    id: int
    key: bytes = attrs.Factory(lambda: nacl.utils.random(nacl.secret.SecretBox.KEY_SIZE))

    @property
    def wire(self) -> str:
        """``push_key`` as the app sends it: cryptosystem byte + key, base64."""
        return base64.b64encode(bytes([PUSH_KEY_SECRETBOX]) + self.key).decode()

    def encrypt(self, payload: dict[str, Any]) -> str:
        """The server's ``SecretBox(key).encrypt(orjson.dumps(payload), Base64Encoder)``."""
        box = nacl.secret.SecretBox(self.key)
        encrypted = box.encrypt(json.dumps(payload).encode(), encoder=nacl.encoding.Base64Encoder)
        return bytes(encrypted).decode()

    def decrypt(self, encrypted_data: str) -> dict[str, Any]:
        """What the app's notification service does on receipt."""
        box = nacl.secret.SecretBox(self.key)
        plaintext = box.decrypt(encrypted_data.encode(), encoder=nacl.encoding.Base64Encoder)
        value: dict[str, Any] = json.loads(plaintext)
        return value


def apns_push_request(
    device: str | int, push_key: PushKey, payload: dict[str, Any], *, removal: bool = False
) -> dict[str, Any]:
    """One APNs-shaped push request; ``device`` is a token_id (12) or device_id (11)."""
    field, key_field = (
        ("token_id", "push_key_id")
        if isinstance(device, str)
        else (
            "device_id",
            "push_account_id",
        )
    )
    return {
        field: device,
        "http_headers": {
            "apns_priority": 5 if removal else 10,
            "apns_push_type": "background" if removal else "alert",
        },
        "payload": {
            key_field: push_key.id,
            "encrypted_data": push_key.encrypt(payload),
            "aps": {"mutable-content": 1, "alert": {"title": "New notification"}},
        },
    }


def fcm_push_request(
    device: str | int, push_key: PushKey, payload: dict[str, Any], *, removal: bool = False
) -> dict[str, Any]:
    """One FCM-shaped push request (no ``http_headers``)."""
    field, key_field = (
        ("token_id", "push_key_id")
        if isinstance(device, str)
        else (
            "device_id",
            "push_account_id",
        )
    )
    return {
        field: device,
        "fcm_priority": "normal" if removal else "high",
        "payload": {key_field: push_key.id, "encrypted_data": push_key.encrypt(payload)},
    }


def realm(n: int, host: str = "zulip.example.com") -> dict[str, Any]:
    """One entry of ``realms`` as ``get_realms_info_for_push_bouncer`` sends it."""
    return {
        "id": n,
        "uuid": str(uuid.UUID(int=n, version=4)),
        "uuid_owner_secret": f"zuliprealm_{n:060d}",
        "host": host,
        "url": f"https://{host}",
        "name": f"Realm {n}",
        "org_type": 0,
        "date_created": 1700000000.0,
        "deactivated": False,
        "is_system_bot_realm": False,
        "authentication_methods": {"Email": True},
    }
