"""A Matrix homeserver's side of the push gateway API, as Synapse sends it.

The request shapes follow ``shared/protocols/matrix.md`` §1.3: Synapse sends one device
per request, a full event (``id``, ``event_id``, ``room_id``, ``type``, ``sender``,
``prio``, ``counts.unread``, and when present ``content``, ``sender_display_name``,
``room_name``, ``membership`` and ``user_is_target``) with the pusher's tweaks, an
``event_id_only`` event (ids, ``prio`` and ``counts`` only, tweaks dropped), or a badge
update after a read receipt (``type: null``, no event id, no ``prio``).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import attrs
import httpx

NOTIFY = "/_matrix/push/v1/notify"
#: What Element iOS and Element X iOS register as their pusher's default_payload.
ELEMENT_IOS_DEFAULT = {
    "aps": {"mutable-content": 1, "alert": {"loc-key": "Notification", "loc-args": []}}
}
IOS_APP = "im.vector.app.ios"
ANDROID_APP = "im.vector.app.android"


def pushkey_for(token: str, *, padded: bool = True) -> str:
    """The pushkey an Element iOS app registers for an APNs ``token`` (hex)."""
    key = base64.b64encode(bytes.fromhex(token)).decode()
    return key if padded else key.rstrip("=")


def device(
    app_id: str,
    pushkey: str,
    *,
    pushkey_ts: int | None = None,
    event_id_only: bool = False,
    default_payload: Any = None,
    tweaks: dict[str, Any] | None = None,
    **data: Any,
) -> dict[str, Any]:
    """One ``devices[]`` entry: a pusher's app_id, pushkey and data (minus ``url``)."""
    pusher_data: dict[str, Any] = dict(data)
    if event_id_only:
        pusher_data["format"] = "event_id_only"
    if default_payload is not None:
        pusher_data["default_payload"] = default_payload
    entry: dict[str, Any] = {
        "app_id": app_id,
        "pushkey": pushkey,
        "pushkey_ts": int(time.time()) - 3600 if pushkey_ts is None else pushkey_ts,
        "data": pusher_data,
    }
    if tweaks is not None:
        entry["tweaks"] = tweaks
    return entry


def full_event(
    devices: list[dict[str, Any]],
    *,
    event_id: str = "$ev1",
    room_id: str = "!room:example.org",
    type: str = "m.room.message",
    sender: str = "@tom:example.org",
    sender_display_name: str | None = "Major Tom",
    room_name: str | None = "Mission Control",
    content: dict[str, Any] | None = None,
    prio: str = "high",
    unread: int | None = 2,
    membership: str | None = None,
    user_is_target: bool | None = None,
) -> dict[str, Any]:
    """A full-format notify body as Synapse's HTTP pusher builds it."""
    notification: dict[str, Any] = {
        "id": event_id,
        "event_id": event_id,
        "room_id": room_id,
        "type": type,
        "sender": sender,
        "prio": prio,
        "devices": devices,
    }
    if unread is not None:
        notification["counts"] = {"unread": unread}
    if content is not None:
        notification["content"] = content
    if sender_display_name is not None:
        notification["sender_display_name"] = sender_display_name
    if room_name is not None:
        notification["room_name"] = room_name
    if membership is not None:
        notification["membership"] = membership
    if user_is_target is not None:
        notification["user_is_target"] = user_is_target
    return {"notification": notification}


def event_id_only(
    devices: list[dict[str, Any]],
    *,
    event_id: str = "$ev1",
    room_id: str = "!room:example.org",
    prio: str = "high",
    unread: int = 2,
) -> dict[str, Any]:
    """What Synapse sends to an ``event_id_only`` pusher: ids, prio and counts only."""
    for entry in devices:
        entry.pop("tweaks", None)
    return {
        "notification": {
            "event_id": event_id,
            "room_id": room_id,
            "prio": prio,
            "counts": {"unread": unread},
            "devices": devices,
        }
    }


def badge_update(devices: list[dict[str, Any]], *, unread: int = 0) -> dict[str, Any]:
    """A badge update after a read receipt: ``type: null``, no event id, no prio."""
    return {
        "notification": {
            "id": "",
            "type": None,
            "sender": "",
            "counts": {"unread": unread},
            "devices": devices,
        }
    }


@attrs.define
class Homeserver:
    """Sends notify requests to pushd over HTTP, as Synapse's pusher does."""

    client: httpx.AsyncClient
    base_url: str

    async def notify(self, body: Any) -> httpx.Response:
        return await self.client.post(self.base_url + NOTIFY, json=body)

    async def notify_raw(self, content: bytes) -> httpx.Response:
        return await self.client.post(
            self.base_url + NOTIFY, content=content, headers={"content-type": "application/json"}
        )

    async def rejected(self, body: Any) -> list[str]:
        """Notify; the answer must be 200 with a ``rejected`` list, which is returned."""
        response = await self.notify(body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        answer = response.json()
        assert set(answer) == {"rejected"}
        rejected: list[str] = answer["rejected"]
        return rejected
