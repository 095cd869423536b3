"""A Rocket.Chat server's push gateway client, as protocol notes §3.2 describe it.

``sendGatewayPush``: one POST per device token to ``{gateway}/push/{apn|gcm}/send``,
``Content-Type: application/json``, ``Authorization: Bearer <cloud token>``, and the
``{token, options}`` body built by ``PushClass.send`` / ``getGatewayNotificationData``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
import httpx

UNIQUE_ID = "rc-workspace-unique-id"
#: ``PUSH_TITLE_LIMIT`` and ``PUSH_MESSAGE_BODY_LIMIT`` of ``push.ts``, in UTF-16 code units.
TITLE_LIMIT = 65
TEXT_LIMIT = 240
_ELLIPSIS = "..."
#: What is left of a UTF-16 surrogate pair after Python's JSON decoding: a lone half.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def node_json(value: Any) -> bytes:
    """``value`` as ``JSON.stringify`` writes it: compact, UTF-8, and a lone surrogate
    as its ``\\uXXXX`` escape (well-formed stringify, Node 12 and later)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


def truncate_string(text: str, limit: int) -> str:
    """``truncateString`` of ``@rocket.chat/tools`` before it learned about surrogate
    pairs: ``str.slice`` counts UTF-16 code units, so an emoji across the cut leaves its
    first half, which ``JSON.stringify`` writes as a lone ``\\ud83d``-style escape."""
    units = text.encode("utf-16-le", "surrogatepass")
    if len(units) <= 2 * limit:
        return text
    kept = units[: 2 * (limit - len(_ELLIPSIS))]
    return kept.decode("utf-16-le", "surrogatepass") + _ELLIPSIS


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
        return await self.post(kind, node_json({"token": token, "options": opts}))
