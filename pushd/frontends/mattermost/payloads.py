"""The APNs payload and FCM data message MPNS builds from a ``PushNotification``.

The Mattermost mobile apps parse exactly these keys (notes §1.7, §1.8), so the shapes
are MPNS's, quirks included: ``apns-push-type`` stays ``alert`` even for silent pushes,
a clear to badge 0 becomes badge 1 for v2 apps, and Android gets a data-only message.
Pure functions: no I/O, nothing logged.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from pushd import jsonutil
from pushd.config import AppConfig
from pushd.frontends.mattermost.shortcodes import expand
from pushd.frontends.mattermost.wire import BadRequest, PushNotification
from pushd.model import ApnsPush, FcmPush
from pushd.upstream.apns.request import payload_limit
from pushd.upstream.fcm import message as fcm_message

#: MPNS sends every APNs push at priority 10.
APNS_PRIORITY: Final = 10
#: What MPNS puts in ``signature`` when the server sent none.
NO_SIGNATURE: Final = "NO_SIGNATURE"
#: Badge value meaning "leave the badge alone" (test pushes).
BADGE_UNSET: Final = -1
#: Sender name of id-loaded Android pushes: the app fetches the real one.
ID_LOADED_SENDER_NAME: Final = "Someone"
#: ``transport`` value asking for a PushKit (VoIP) push on iOS.
TRANSPORT_VOIP: Final = "voip"

TYPE_MESSAGE: Final = "message"
TYPE_SESSION: Final = "session"
TYPE_CLEAR: Final = "clear"
TYPE_TEST: Final = "test"
TYPE_UPDATE_BADGE: Final = "update_badge"
#: Types that show an alert (the rest are silent).
ALERT_TYPES: Final = frozenset({TYPE_MESSAGE, TYPE_SESSION})
#: Silent types that wake the app (``content-available``).
WAKE_TYPES: Final = frozenset({TYPE_CLEAR, TYPE_TEST})
#: Top-level APNs keys copied only when non-empty.
OPTIONAL_APNS_KEYS: Final = (
    "ack_id",
    "channel_id",
    "team_id",
    "sender_id",
    "sender_name",
    "post_id",
    "root_id",
    "override_username",
    "override_icon_url",
    "from_webhook",
)
#: Data keys of message/session pushes on Android, empty values included.
FCM_MESSAGE_KEYS: Final = (
    "team_id",
    "sender_id",
    "sender_name",
    "message",
    "channel_name",
    "post_id",
    "override_username",
    "override_icon_url",
    "from_webhook",
)


def for_content(push: PushNotification, app: AppConfig) -> PushNotification:
    """``push`` as the app's ``content`` mode allows (unchanged in ``full``).

    ``redacted``: the message becomes ``redacted_text``, names and ``sender_id`` go;
    channel, team, post and root ids stay, so a tap opens the right thread.
    ``id_only``: a message push becomes the server's own ``id_loaded`` push (notes §2.5:
    no names, ``redacted_text`` as the message), which the app completes by fetching
    the post through its ack; other pushes (Calls, session) are redacted.
    """
    if app.content == "full":
        return push
    redacted = attrs.evolve(
        push,
        # Only a message push carries what a user wrote (a session push: server text).
        message=app.redacted_text if push.message and push.type == TYPE_MESSAGE else push.message,
        sender_name="",
        channel_name="",
        override_username="",
        override_icon_url="",
    )
    if app.content == "id_only" and push.type == TYPE_MESSAGE and push.transport != TRANSPORT_VOIP:
        return attrs.evolve(redacted, is_id_loaded=True)
    return attrs.evolve(redacted, sender_id="")


def _signature(push: PushNotification) -> str:
    return push.signature or NO_SIGNATURE


def _badge(push: PushNotification, app_version: int) -> int | None:
    """The APNs badge, or None to leave it out.

    The clear quirk: MPNS turns a clear to 0 into 1 for v2+ apps [uncertain why: a 0
    may wipe iOS's notification centre, and the app corrects the badge itself].
    """
    if push.badge == BADGE_UNSET:
        return None
    if push.type == TYPE_CLEAR and push.badge == 0 and app_version > 1:
        return 1
    return push.badge


def _encode(payload: dict[str, Any], push_type: str) -> bytes:
    try:
        encoded = jsonutil.dumpb(payload)
    except ValueError:  # NaN or a lone surrogate: only from a caller that skipped the parser
        raise BadRequest("payload: not encodable as JSON") from None
    limit = payload_limit(push_type)
    if len(encoded) > limit:
        raise BadRequest(f"payload too large: {len(encoded)} bytes > {limit} (APNs' limit)")
    return encoded


def voip_payload(push: PushNotification) -> dict[str, Any]:
    """The PushKit payload of a ``transport: voip`` push (Calls)."""
    payload: dict[str, Any] = {
        "aps": {"content-available": 1},
        "type": push.type,
        "sub_type": push.sub_type,
        "channel_id": push.channel_id,
        "server_id": push.server_id,
        "post_id": push.post_id,
        "thread_id": push.root_id,
        "sender_id": push.sender_id,
        "id_loaded": push.is_id_loaded,
        "signature": _signature(push),
    }
    for name in ("sender_name", "channel_name", "ack_id"):
        if getattr(push, name):
            payload[name] = getattr(push, name)
    return payload


def _aps(push: PushNotification, app_version: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(aps, custom keys)`` of a standard (non-VoIP) push."""
    aps: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    badge = _badge(push, app_version)
    if badge is not None:
        aps["badge"] = badge
    if push.is_id_loaded:
        if push.category:
            aps["category"] = push.category
        aps["sound"] = "default"
        aps["mutable-content"] = 1
        aps["content-available"] = 1
        aps["alert"] = {"body": push.message} if push.message else {}
        custom["version"] = push.version
        custom["id_loaded"] = True
    elif push.type in ALERT_TYPES:
        if push.category:
            aps["category"] = push.category
        aps["sound"] = "default"
        aps["mutable-content"] = 1
        if push.type == TYPE_MESSAGE:
            aps["content-available"] = 1
        custom["version"] = push.version
        body = expand(push.message)  # MPNS: emoji.Sprint, here and on Android
        if push.channel_name and push.version == "v2":
            aps["alert"] = {"title": push.channel_name, "body": body}
        else:
            aps["alert"] = body
        if push.channel_name:
            custom["channel_name"] = push.channel_name
    elif push.type in WAKE_TYPES:
        aps["content-available"] = 1
    if push.is_crt_enabled and push.root_id:
        aps["thread-id"] = push.root_id
    elif push.channel_id:
        aps["thread-id"] = push.channel_id
    return aps, custom


def apns_push(push: PushNotification, app_version: int) -> ApnsPush:
    """The APNs notification MPNS would send; :class:`BadRequest` if it is too large."""
    if push.transport == TRANSPORT_VOIP:
        payload = voip_payload(push)
        return ApnsPush(_encode(payload, "voip"), push_type="voip", priority=APNS_PRIORITY)
    aps, custom = _aps(push, app_version)
    payload = {
        "aps": aps,
        **custom,
        "type": push.type,
        "sub_type": push.sub_type,
        "server_id": push.server_id,
        "is_crt_enabled": push.is_crt_enabled,
        "signature": _signature(push),
    }
    for name in OPTIONAL_APNS_KEYS:
        if getattr(push, name):
            payload[name] = getattr(push, name)
    return ApnsPush(_encode(payload, "alert"), push_type="alert", priority=APNS_PRIORITY)


def fcm_data(push: PushNotification) -> dict[str, str]:
    """The FCM data map MPNS sends (all values strings)."""
    data = {
        "ack_id": push.ack_id,
        "type": push.type,
        "sub_type": push.sub_type,
        "version": push.version,
        "channel_id": push.channel_id,
        "is_crt_enabled": "true" if push.is_crt_enabled else "false",
        "server_id": push.server_id,
        "category": push.category,
        "signature": _signature(push),
    }
    if push.badge != BADGE_UNSET:
        data["badge"] = str(push.badge)
    if push.root_id:
        data["root_id"] = push.root_id
    if push.is_id_loaded:
        data.update(
            post_id=push.post_id,
            message=push.message,
            id_loaded="true",
            sender_id=push.sender_id,
            sender_name=ID_LOADED_SENDER_NAME,
            team_id=push.team_id,
        )
    elif push.type in ALERT_TYPES:
        data.update({name: getattr(push, name) for name in FCM_MESSAGE_KEYS})
        data["message"] = expand(push.message)
    return data


def fcm_push(push: PushNotification, app: AppConfig) -> FcmPush:
    """The data-only FCM message MPNS would send, with the app's Android options
    (whose defaults, ``high`` and no TTL or collapse key, are MPNS's)."""
    try:
        return fcm_message.build_push(
            data=fcm_data(push),
            android=fcm_message.AndroidOptions(
                priority=app.android_priority,
                ttl=app.android_ttl,
                collapse_key=app.android_collapse_key,
            ),
        )
    except fcm_message.InvalidMessage as error:
        raise BadRequest(f"payload not sendable: {error}") from None
