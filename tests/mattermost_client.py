"""A Mattermost server as the push proxy sees it (protocol notes §2).

It POSTs ``json.Marshal(msg)`` with no Content-Type and no credentials to its
configured push server URL plus ``/api/v1/send_push`` (or ``/ack``), one request per
device and event.  The bodies below are what ``notification_push.go`` builds for each
kind of push; Go's ``omitempty`` drops empty strings, zero ints and so a badge of 0.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
import httpx

SERVER_ID = "telemetry0000000000000000a"
#: What Go's ``json.Marshal`` writes as ``\uXXXX``: HTML's ``<``, ``>`` and ``&`` and the
#: two line separators JavaScript cannot hold; everything else non-ASCII goes raw UTF-8.
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
#: The most runes a post's message holds (``model.PostMessageMaxRunesV2``).
POST_MESSAGE_MAX_RUNES = 16383
APPLE = "apple_rn-v2"
ANDROID = "android_rn-v2"


def go_json(value: Any) -> bytes:
    """``value`` as ``json.Marshal`` encodes it: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _GO_ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode()


def marshal(**fields: Any) -> dict[str, Any]:
    """The JSON ``json.Marshal`` makes of a ``PushNotification`` with these fields."""
    body: dict[str, Any] = {
        "ack_id": "",
        "platform": "",
        "server_id": "",
        "device_id": "",
        "post_id": "",
        "is_crt_enabled": False,
        "is_id_loaded": False,
        "signature": "",
    }
    for name, value in fields.items():
        if name in body or value not in ("", 0, None):
            body[name] = value
    return body


def message(device: str, platform: str = APPLE, **extra: Any) -> dict[str, Any]:
    """A ``message`` push in ``full`` contents mode."""
    fields: dict[str, Any] = {
        "ack_id": "ackid00000000000000000000a",
        "platform": platform,
        "server_id": SERVER_ID,
        "device_id": device,
        "category": "CAN_REPLY",
        "version": "v2",
        "type": "message",
        "team_id": "team0000000000000000000000",
        "channel_id": "chan0000000000000000000000",
        "post_id": "post0000000000000000000000",
        "sender_id": "user0000000000000000000000",
        "sender_name": "alice",
        "channel_name": "Town Square",
        "message": "alice: secret lunch plans",
        "badge": 3,
        "signature": "eyJhbGciOiJFUzI1NiJ9.e30.sig",
        **extra,
    }
    return marshal(**fields)


def clear(device: str, platform: str = APPLE, badge: int = 0, **extra: Any) -> dict[str, Any]:
    return marshal(
        ack_id="ackclear",
        platform=platform,
        server_id=SERVER_ID,
        device_id=device,
        type="clear",
        version="v2",
        channel_id="chan0000000000000000000000",
        cont_ava=1,
        badge=badge,
        **extra,
    )


def update_badge(device: str, platform: str = APPLE, badge: int = 2) -> dict[str, Any]:
    return marshal(
        ack_id="ackbadge",
        platform=platform,
        server_id=SERVER_ID,
        device_id=device,
        type="update_badge",
        version="v2",
        sound="none",
        cont_ava=1,
        badge=badge,
    )


def session(device: str, platform: str = APPLE) -> dict[str, Any]:
    return marshal(
        ack_id="acksession",
        platform=platform,
        server_id=SERVER_ID,
        device_id=device,
        type="session",
        version="v2",
        message="Session Expired: Please log in to continue receiving notifications.",
    )


def system_console_test(device: str, platform: str = APPLE) -> dict[str, Any]:
    """``SendTestPushNotification``: badge -1, version "2"."""
    return marshal(
        platform=platform, server_id=SERVER_ID, device_id=device, type="test", version="2", badge=-1
    )


def id_loaded(device: str, platform: str = APPLE) -> dict[str, Any]:
    """``buildIdLoadedPushNotificationMessage``: no sender or channel name."""
    return marshal(
        ack_id="ackidloaded",
        platform=platform,
        server_id=SERVER_ID,
        device_id=device,
        type="message",
        version="v2",
        category="CAN_REPLY",
        is_id_loaded=True,
        post_id="post0000000000000000000000",
        channel_id="chan0000000000000000000000",
        root_id="root0000000000000000000000",
        team_id="team0000000000000000000000",
        sender_id="user0000000000000000000000",
        is_crt_enabled=True,
        badge=1,
        message="You've received a new message.",
    )


@attrs.define
class MattermostServer:
    """Plays one Mattermost server whose push server URL is ``push_url``."""

    client: httpx.AsyncClient
    push_url: str

    async def post(self, path: str, body: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else go_json(body)
        return await self.client.post(self.push_url.rstrip("/") + path, content=content)

    async def send_push(self, body: Any) -> httpx.Response:
        return await self.post("/api/v1/send_push", body)

    async def send(self, body: Any) -> dict[str, str]:
        """``sendToPushProxy``: it needs a 200 and a JSON body."""
        response = await self.send_push(body)
        assert response.status_code == 200, response.text
        result: dict[str, str] = response.json()
        return result

    async def ack(self, body: Any) -> httpx.Response:
        return await self.post("/api/v1/ack", body)
