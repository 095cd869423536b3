"""A Zulip server as pushd's Zulip bouncer sees it, byte for byte.

Mirrors ``zerver/lib/remote_server.py``: form bodies for the endpoints Zulip sends
``send_to_push_bouncer(..., dict)`` to, JSON (``Content-type: application/json``) for
``send_json_to_push_bouncer``, HTTP Basic with ``zulip_org_id:zulip_org_key``, and the
``ZulipServer/<version>`` User-Agent.  ``register_server`` posts without auth, as
``manage.py register_server`` does.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from typing import Any

import attrs
import httpx

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
        return f"{self.services_url}/api/v1/remotes/{endpoint}"

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
            self.url("server/register"), data=data, headers={"user-agent": USER_AGENT}
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
