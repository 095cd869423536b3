"""A Rocket.Chat server's push gateway client, as protocol notes §3.2 describe it.

``sendGatewayPush``: one POST per device token to ``{gateway}/push/{apn|gcm}/send``,
``Content-Type: application/json``, ``Authorization: Bearer <cloud token>``, and the
``{token, options}`` body built by ``PushClass.send`` / ``getGatewayNotificationData``.
"""

from __future__ import annotations

from typing import Any

import attrs
import httpx

UNIQUE_ID = "rc-workspace-unique-id"


def options(
    *,
    title: str = "#general",
    text: str = "alice: hello",
    topic: str | None = None,
    not_id: int = -123456789,
    **extra: Any,
) -> dict[str, Any]:
    """The options of a message push, field for field as a current server sends them."""
    value: dict[str, Any] = {
        "createdAt": "2026-01-02T03:04:05.678Z",
        "createdBy": "<SERVER>",
        "sent": False,
        "sending": 0,
        "from": "push",
        "title": title,
        "text": text,
        "userId": "recipient-user-id",
        "badge": 3,
        "sound": "default",
        "notId": not_id,
        "payload": {
            "host": "https://chat.example.com/",
            "messageId": "mid1",
            "notificationType": "message",
            "rid": "room1",
            "sender": {"_id": "u1", "username": "alice", "name": "Alice"},
            "senderName": "Alice",
            "type": "c",
            "name": "general",
            "messageType": None,
            "tmid": None,
        },
        "apn": {"category": "MESSAGE"},
        "gcm": {"style": "inbox", "image": "https://chat.example.com/assets/favicon_192.png"},
        "uniqueId": UNIQUE_ID,
    }
    if topic is not None:  # iOS only
        value["topic"] = topic
    value.update(extra)
    return value


@attrs.define
class RocketChat:
    """One Rocket.Chat server whose ``Push_gateway`` is ``gateway``."""

    client: httpx.AsyncClient
    #: The first line of ``Push_gateway``, path prefix included.
    gateway: str
    #: The workspace access token; ``""`` when unregistered (then ``Bearer `` is sent).
    cloud_token: str | None = "cloud-workspace-token"

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.cloud_token is not None:
            # fetch's Headers strip trailing whitespace: an empty token goes as "Bearer".
            headers["authorization"] = f"Bearer {self.cloud_token}".rstrip()
        return headers

    async def post(self, kind: str, content: bytes) -> httpx.Response:
        return await self.client.post(
            f"{self.gateway}/push/{kind}/send", content=content, headers=self.headers()
        )

    async def send(self, kind: str, token: str, opts: dict[str, Any]) -> httpx.Response:
        """``sendGatewayPush``: ``kind`` is ``apn`` or ``gcm``."""
        return await self.client.post(
            f"{self.gateway}/push/{kind}/send",
            json={"token": token, "options": opts},
            headers=self.headers(),
        )
