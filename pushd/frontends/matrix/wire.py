"""The Matrix push gateway API's wire format: the notify request, its answers, errors.

A homeserver reads only the status and, on 200, ``rejected`` (protocol notes §1.4), but
an admin reading its log sees our error texts, so the 400 cases and their wording are
Sygnal's (§5.1), carried in the Matrix error shape ``{"errcode", "error"}`` with a JSON
content type (§5.2, point 7).

Checks are Sygnal's and no stricter: unknown fields are ignored everywhere, top-level
string fields are not type-checked (a non-string is treated as absent when building a
payload), ``type: null`` is a badge update.  One is looser: a ``tweaks.sound`` that is not
a string, which Synapse sends for a push rule's valueless sound tweak, is dropped where
Sygnal answers 400.  What Sygnal answers with a 500 (odd shapes
deeper down) is a clean 400 or a per-device verdict here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from pushd import jsonutil
from pushd.frontends.http import Reply, has_lone_surrogate, json_reply
from pushd.frontends.ratelimit import retry_after_seconds

#: Sygnal drops bodies over 512 KiB; pushd answers 413 instead.
MAX_BODY_BYTES: Final = 512 * 1024
#: Integers are refused outside 64 bits, like the homeserver's own.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
#: The top-level fields that are strings when present (not type-checked, as Sygnal).
STRING_FIELDS: Final = (
    "event_id",
    "room_id",
    "type",
    "sender",
    "sender_display_name",
    "room_name",
    "room_alias",
    "membership",
)

Prio = Literal["high", "low"]


class BadRequest(ValueError):
    """A malformed notify request: ``str()`` is Sygnal's 400 text."""

    def __init__(self, message: str, errcode: str = "M_BAD_JSON") -> None:
        super().__init__(message)
        self.errcode = errcode


@attrs.frozen
class Counts:
    """``notification.counts``; an absent count is None (0 is kept: it clears a badge)."""

    unread: int | None = None
    missed_calls: int | None = None


@attrs.frozen
class Device:
    """One ``devices[]`` entry: a pusher of the receiving user."""

    app_id: str
    #: Exactly as the homeserver sent it: a rejection must name it unchanged.
    pushkey: str
    #: When the pusher was set, UNIX **seconds** (APNs' 410 rule compares it).
    pushkey_ts: int | None = None
    #: The pusher's ``data`` minus ``url``: ``format``, ``default_payload``, others.
    data: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    tweaks: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class Notification:
    """``notification``: the event (or a badge update) and the devices to tell.

    String fields are None when absent *or not a string*: Sygnal does not check their
    types, and a payload never carries a non-string where a string belongs.
    """

    devices: tuple[Device, ...]
    event_id: str | None = None
    room_id: str | None = None
    type: str | None = None
    sender: str | None = None
    sender_display_name: str | None = None
    room_name: str | None = None
    room_alias: str | None = None
    membership: str | None = None
    user_is_target: bool = False
    prio: Prio = "high"
    content: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    counts: Counts = Counts()

    def __repr__(self) -> str:  # ids only: names and content are private
        return (
            f"Notification(event_id={self.event_id!r}, type={self.type!r}, "
            f"prio={self.prio!r}, devices={len(self.devices)})"
        )


def _load(body: bytes) -> Any:
    try:
        value = jsonutil.loads(body)
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, NaN, huge numbers
        raise BadRequest("Expected JSON request body", "M_NOT_JSON") from None
    if has_lone_surrogate(body, value):
        raise BadRequest("Expected JSON request body", "M_NOT_JSON")
    return value


def _int(value: object) -> bool:
    """A JSON integer a homeserver could mean: Synapse's are 64-bit (Python's JSON would
    take thousands of digits, which no timestamp or count has)."""
    return isinstance(value, int) and not isinstance(value, bool) and INT_MIN <= value <= INT_MAX


def _optional_int(holder: Mapping[str, Any], key: str, label: str) -> int | None:
    """An optional integer field; present but null or not an integer is a 400."""
    if key not in holder:
        return None
    value = holder[key]
    if not _int(value):
        raise BadRequest(f"{label} is of invalid type")
    assert isinstance(value, int)
    return value


def _optional_object(holder: Mapping[str, Any], key: str, label: str) -> dict[str, Any]:
    if key not in holder:
        return {}
    value = holder[key]
    if not isinstance(value, dict):
        raise BadRequest(f"{label} is of invalid type")
    return value


def _device(value: object) -> Device:
    if not isinstance(value, dict):
        raise BadRequest("Device with missing or non-string app_id")
    app_id = value.get("app_id")
    if not isinstance(app_id, str):
        raise BadRequest("Device with missing or non-string app_id")
    pushkey = value.get("pushkey")
    if not isinstance(pushkey, str):
        raise BadRequest("Device with missing or non-string pushkey")
    pushkey_ts = _optional_int(value, "pushkey_ts", "pushkey_ts")
    data = _optional_object(value, "data", "data")
    tweaks = _optional_object(value, "tweaks", "tweaks")
    if "sound" in tweaks and not isinstance(tweaks["sound"], str):
        # Synapse checks no push rule's tweak values and sends a tweak set without one
        # as true (httppusher.tweaks_for_actions).  Sygnal's 400 here makes Synapse
        # retry the event for a day, every later push to the device held behind it;
        # a sound that names no sound file is dropped instead, as an unknown tweak is.
        tweaks = {key: item for key, item in tweaks.items() if key != "sound"}
    return Device(app_id, pushkey, pushkey_ts, data, tweaks)


def _string(holder: Mapping[str, Any], key: str) -> str | None:
    value = holder.get(key)
    return value if isinstance(value, str) else None


def parse_notify(body: bytes) -> Notification:
    """Parse a ``POST /_matrix/push/v1/notify`` body, or :class:`BadRequest` (a 400)."""
    document = _load(body)
    if not isinstance(document, dict) or not isinstance(document.get("notification"), dict):
        raise BadRequest("Invalid notification: expecting object in 'notification' key")
    notification: dict[str, Any] = document["notification"]
    devices = notification.get("devices")
    if not isinstance(devices, list):
        raise BadRequest("Expected list in 'devices' key")
    parsed = tuple(_device(device) for device in devices)
    counts_value = _optional_object(notification, "counts", "counts")
    counts = Counts(
        unread=_optional_int(counts_value, "unread", "counts.unread"),
        missed_calls=_optional_int(counts_value, "missed_calls", "counts.missed_calls"),
    )
    if not parsed:
        raise BadRequest("No devices in notification")
    content = notification.get("content")
    strings = {key: _string(notification, key) for key in STRING_FIELDS}
    return Notification(
        devices=parsed,
        user_is_target=notification.get("user_is_target") is True,
        prio="low" if notification.get("prio") == "low" else "high",
        content=content if isinstance(content, dict) else None,
        counts=counts,
        **strings,
    )


#: The answer to almost every notify, built once.
NOTHING_REJECTED: Final = json_reply(200, {"rejected": []})


def rejected_reply(pushkeys: list[str]) -> Reply:
    """The answer to a notify: the pushkeys, as sent, the homeserver must delete."""
    if not pushkeys:
        return NOTHING_REJECTED
    return json_reply(200, {"rejected": pushkeys})


def error_reply(status: int, errcode: str, message: str) -> Reply:
    """A Matrix error: ``{"errcode": "M_...", "error": "..."}``."""
    return json_reply(status, {"errcode": errcode, "error": message})


def rate_limited_reply(retry_after: float) -> Reply:
    """429 ``M_LIMIT_EXCEEDED`` with ``retry_after_ms``, the client-server API's form,
    and ``Retry-After``.  Synapse reads neither (any failure: retry after 1 s, doubling),
    but an admin reading its log, or another homeserver, can."""
    seconds = retry_after_seconds(retry_after)
    body = {
        "errcode": "M_LIMIT_EXCEEDED",
        "error": f"Too many requests: retry in {seconds} s",
        "retry_after_ms": max(1, math.ceil(retry_after * 1000)),
    }
    return json_reply(429, body, (("retry-after", str(seconds)),))


#: The serving layer's error codes mapped to Matrix's.
_ERRCODES: Final = {
    404: "M_UNRECOGNIZED",
    405: "M_UNRECOGNIZED",
    413: "M_TOO_LARGE",
    403: "M_FORBIDDEN",
}


def serving_error_reply(status: int, code: str, message: str) -> Reply:
    """How the serving layer's own errors (405, 413, 503) read on a Matrix route.

    Matrix has no errcode for an outage: M_UNKNOWN, with pushd's code in the text.
    """
    if status >= 500:
        return error_reply(status, "M_UNKNOWN", f"{code}: {message}")
    return error_reply(status, _ERRCODES.get(status, "M_UNKNOWN"), message)
