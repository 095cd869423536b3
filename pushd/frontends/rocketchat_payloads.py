"""The APNs and FCM messages of the Rocket.Chat push gateway: pure functions, no I/O.

A parsed ``sendGatewayPush`` body (:class:`GatewayPush`) becomes what Rocket.Chat's
native senders (``apn.ts``, ``fcm.ts``) would send and its mobile apps read (protocol
notes §3.4), after the app's ``content`` mode has had its say (:func:`for_content`).
VoIP pushes (``options.topic = "<bundle id>.voip"``, newer Rocket.Chat) go as PushKit
pushes of the app whose topic is the bundle id: the APNs client adds the ``.voip``
suffix to the topic of a ``voip`` push itself.

Errors are :class:`PayloadError`, whose text names a field, never a value: the gateway
answers them with a 422, which Rocket.Chat does not retry.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from pushd import jsonutil
from pushd.config import AppConfig
from pushd.model import ApnsPush, FcmPush, mask_token
from pushd.upstream.apns.request import payload_limit
from pushd.upstream.fcm import message as fcm_message

#: What Rocket.Chat's native APNs sender sets: ``apns-expiration`` one hour ahead,
#: priority 10 (``priority`` is stripped before gateway sends, so it is always the default).
APNS_EXPIRY_SECONDS: Final = 3600
APNS_PRIORITY: Final = 10
#: ``options.topic`` of a VoIP token ends with this; the rest is the app's bundle id.
VOIP_SUFFIX: Final = ".voip"
#: Rocket.Chat's native sender gives a VoIP push 60 s: a call rings now or never.
VOIP_EXPIRY_SECONDS: Final = 60
#: APNs keeps an undelivered push about 30 days (protocol notes: APNs headers); a
#: longer ``options.apn.expirationSeconds`` is taken as this.
APNS_LONGEST_EXPIRY_SECONDS: Final = 30 * 24 * 3600

#: ``payload`` keys that name a person or hold what was written.
SENDER_KEYS: Final = ("sender", "senderName", "caller", "avatar")
CONTENT_KEYS: Final = ("msg", "content")
#: Room types whose ``name`` is a person's (a direct chat, an omnichannel visitor).
PERSONAL_ROOM_TYPES: Final = frozenset({"d", "l"})
#: ``notificationType`` of a message push, and of Rocket.Chat's own id-only push.
MESSAGE_TYPE: Final = "message"
ID_ONLY_TYPE: Final = "message-id-only"
#: What an id-only push's ``payload`` holds: enough for the app's ``push.get`` call.
ID_ONLY_KEYS: Final = ("host", "messageId")


class PayloadError(ValueError):
    """No push can be built from this request; ``str()`` names the field."""


@attrs.frozen
class GatewayPush:
    """The parts of one ``sendGatewayPush`` body the mobile apps use (§3.2)."""

    token: str = attrs.field(repr=mask_token)
    title: str | None = attrs.field(default=None, repr=False)
    text: str | None = attrs.field(default=None, repr=False)
    badge: int | None = None
    sound: str | None = None
    #: The signed 32-bit hash of ``uniqueID|rid``: Android's notification id, iOS's thread.
    not_id: int | None = None
    #: ``options.payload`` (becomes ``ejson`` on the device), already JSON-encoded.
    ejson: str | None = attrs.field(default=None, repr=False)
    sender: str | None = None
    topic: str | None = None
    content_available: bool = False
    apn_category: str | None = None
    apn_expiration_seconds: int | None = None
    gcm_style: str | None = None
    gcm_image: str | None = None


def _json(value: Any) -> str:
    return jsonutil.dumps(value)


def for_content(push: GatewayPush, app: AppConfig) -> GatewayPush:
    """``push`` as the app's ``content`` mode allows (``full``: unchanged).

    ``id_only``: a message push becomes Rocket.Chat's own id-only push (title empty,
    ``redacted_text`` as the text, a payload of ``host``, ``messageId`` and
    ``notificationType: message-id-only``), which the apps complete by fetching the
    message (``push.get``).  ``redacted``, and ``id_only`` for other pushes (calls):
    the same title and text, and the payload without names and message content
    (``sender``, ``senderName``, ``caller``, ``avatar``, ``msg``, ``content``, and a
    direct chat's ``name``).  Rooms, ids and types stay: a tap opens the channel (a
    direct chat's room is named by its sender, so there the app just opens).
    """
    if app.content == "full":
        return push
    payload: dict[str, Any] = {}
    if push.ejson is not None:
        decoded = jsonutil.loads(push.ejson)  # pushd's own encoding of options.payload
        payload = decoded if isinstance(decoded, dict) else {}
    kind = payload.get("notificationType")
    fetchable = all(isinstance(payload.get(key), str) for key in ID_ONLY_KEYS)
    if app.content == "id_only" and kind in (MESSAGE_TYPE, ID_ONLY_TYPE) and fetchable:
        payload = {key: payload[key] for key in ID_ONLY_KEYS}
        payload["notificationType"] = ID_ONLY_TYPE
    else:
        dropped = {*SENDER_KEYS, *CONTENT_KEYS}
        if payload.get("type") in PERSONAL_ROOM_TYPES:
            dropped.add("name")
        payload = {key: value for key, value in payload.items() if key not in dropped}
    ejson = None if push.ejson is None else _json(payload)
    return attrs.evolve(push, title="", text=app.redacted_text, ejson=ejson)


def build_apns_push(push: GatewayPush, now: float, *, voip: bool = False) -> ApnsPush:
    """What Rocket.Chat's native ``sendAPN`` sends (§3.4); a PushKit push if ``voip``.

    ``mutable-content`` lets the iOS NotificationService extension run: it parses the
    top-level ``ejson`` (fetching id-only messages, decrypting E2E ones).
    """
    alert: dict[str, str] = {}
    if push.title is not None:
        alert["title"] = push.title
    if push.text is not None:
        alert["body"] = push.text
    aps: dict[str, Any] = {}
    if alert:
        aps["alert"] = alert
    if push.badge is not None:
        aps["badge"] = push.badge
    if push.sound is not None:
        aps["sound"] = push.sound
    if push.apn_category is not None:
        aps["category"] = push.apn_category
    if push.not_id is not None:
        aps["thread-id"] = str(push.not_id)
    aps["mutable-content"] = 1
    if push.content_available:
        aps["content-available"] = 1
    document: dict[str, Any] = {"aps": aps}
    if push.ejson is not None:
        document["ejson"] = push.ejson
    if push.sender is not None:
        document["messageFrom"] = push.sender
    try:
        payload = _json(document).encode()
    except (ValueError, RecursionError):  # lone surrogates (UnicodeEncodeError)
        raise PayloadError("options: not encodable as JSON") from None
    push_type = "voip" if voip else "alert"
    limit = payload_limit(push_type)
    if len(payload) > limit:
        raise PayloadError(f"the APNs payload would be {len(payload)} bytes, over {limit}")
    seconds = VOIP_EXPIRY_SECONDS if voip else APNS_EXPIRY_SECONDS
    if push.apn_expiration_seconds is not None:
        # Longer than APNs keeps a push is the same as its longest: a server's odd
        # setting is not the device's fault, and an unbounded one overflows a float.
        seconds = min(push.apn_expiration_seconds, APNS_LONGEST_EXPIRY_SECONDS)
    return ApnsPush(
        payload=payload,
        push_type=push_type,
        priority=APNS_PRIORITY,
        expiration=int(now) + seconds,
    )


def build_fcm_push(push: GatewayPush, app: AppConfig, now: float) -> FcmPush:
    """A data-only, high-priority message, as the React Native app reads it (§3.4).

    No ``notification`` block: Android would show it by itself while the app is in the
    background, bypassing the app's handler (no grouping, no E2E decryption).  The app
    drops a message without a numeric ``notId``, so it is required here.
    """
    if push.not_id is None:
        raise PayloadError("options.notId: required for Android")
    data = {"notId": str(push.not_id)}
    for key, value in (
        ("title", push.title),
        ("message", push.text),
        ("ejson", push.ejson),
        ("msgcnt", None if push.badge is None else str(push.badge)),
        ("soundname", push.sound),
        ("style", push.gcm_style),
        ("image", push.gcm_image),
        ("content-available", "1" if push.content_available else None),
    ):
        if value is not None:
            data[key] = value
    try:
        return fcm_message.build_push(
            data=data,
            android=fcm_message.AndroidOptions(
                priority="high", ttl=app.android_ttl, collapse_key=app.android_collapse_key
            ),
            now=now,
        )
    except fcm_message.InvalidMessage as error:  # names the field, never its value
        raise PayloadError(str(error)) from None
