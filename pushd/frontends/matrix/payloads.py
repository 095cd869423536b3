"""The APNs and FCM pushes Sygnal builds from a Matrix notify request.

Element iOS, Element X iOS, Element Android and Element X Android are built against
Sygnal, the reference push gateway, and read the keys it sends: ``loc-key`` and
``loc-args`` (and the app's own ``default_payload``) on iOS, a flat ``data`` map with
``event_id``, ``room_id``, ``unread`` and ``content_*`` on Android.  So the payloads here
are Sygnal's (protocol notes §2.2 to 2.7, §3.1 to 3.3), same keys and same values, and an
unmodified app cannot tell the gateways apart.  Where Sygnal fails a whole request or
lets the upstream refuse a message, pushd does better (§5.2):

* an undecodable APNs pushkey is ``None`` here (the frontend rejects that pushkey)
  where Sygnal answers 500;
* a payload that cannot be made to fit raises :class:`PayloadError`, a ``Failed`` for
  that one device, where Sygnal answers 500 for everyone;
* APNs payloads are sent as compact JSON, so less is truncated, and truncation cuts in
  big steps: a megabyte body costs a few encodes, not a million re-measurements;
* every FCM ``data`` value is a string (FCM refuses anything else) and the 4096-byte
  data limit is enforced by shortening the longest content and display fields, where
  Sygnal only logs a warning and FCM answers 400.

The FCM builders live in :mod:`.fcm_payloads`, the shared parts (the error, encoding,
Sygnal's APNs truncation) in :mod:`.payload_parts`; both are re-exported here.

Pure functions, no I/O, nothing logged.  Error messages name the problem and sizes,
never a content value: they end up in logs.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import Any, Final

import attrs

from pushd.config import ContentMode, MatrixAppOptions
from pushd.frontends.matrix.fcm_payloads import (
    ELLIPSIS,
    FCM_ANDROID_PRIORITY,
    FCM_DATA_PRIO,
    FCM_DISPLAY_FIELDS,
    FCM_FIELDS,
    FIELD_MAX_BYTES,
    FIELD_MIN_BYTES,
    TRUNCATED_BYTES,
    fcm_data,
    fcm_push,
)
from pushd.frontends.matrix.payload_parts import (
    PayloadError,
    checked_default_payload,
    default_payload,
    truncate_apns,
)
from pushd.frontends.matrix.wire import Device, Notification
from pushd.model import ApnsPush, normalize_apns_token
from pushd.upstream.apns.request import payload_limit

__all__ = [
    "ELLIPSIS",
    "FCM_ANDROID_PRIORITY",
    "FCM_DATA_PRIO",
    "FCM_DISPLAY_FIELDS",
    "FCM_FIELDS",
    "FIELD_MAX_BYTES",
    "FIELD_MIN_BYTES",
    "NAME_MAX_CHARS",
    "TRUNCATED_BYTES",
    "PayloadError",
    "apns_payload",
    "apns_push",
    "apns_token",
    "default_payload",
    "fcm_data",
    "fcm_push",
    "for_content",
    "is_event_id_only",
    "truncate_apns",
]

#: APNs: ``from`` and room names are cut to this many characters (Sygnal's
#: ``MAX_FIELD_LENGTH``), so that one long name cannot crowd out the message text.
NAME_MAX_CHARS: Final = 1024

#: ``from`` when the notification names no sender at all (Sygnal's value).
NO_SENDER: Final = " "
#: ``apns-priority``: deliver now, or when the device is awake anyway (``prio: low``,
#: and always for ``background`` pushes, which APNs refuses at 10).
PRIORITY_IMMEDIATE: Final = 10
PRIORITY_CONSERVE: Final = 5
#: The notify request's ``prio`` asking for a push that need not wake the device.
LOW_PRIO: Final = "low"
BACKGROUND_PUSH_TYPE: Final = "background"
#: An SDP offer with a video stream: the call is a video call (WebRTC calls only).
VIDEO_SDP_MARKER: Final = "m=video"

MESSAGE_TYPES: Final = frozenset({"m.room.message", "m.room.encrypted"})
CALL_INVITE_TYPE: Final = "m.call.invite"
MEMBER_TYPE: Final = "m.room.member"
IMAGE_MSGTYPE: Final = "m.image"
EMOTE_MSGTYPE: Final = "m.emote"


#: Base64 pushkeys whose APNs token :func:`_remembered_token` remembers (least
#: recently used forgotten first): about 300 bytes each for today's 44-character
#: pushkeys (1.2 MB in all), at most about 520 (2.1 MB, tracemalloc) ...
DECODED_TOKENS: Final = 4096
#: ... as only pushkeys up to this long are remembered (a token's base64 is 44 to 136
#: characters): a request's 512 KB pushkey is decoded and refused, never kept.
REMEMBERED_PUSHKEY_CHARS: Final = 256


def apns_token(pushkey: str, convert: bool) -> str | None:
    """The APNs device token (lower-case hex) a pushkey stands for, or None.

    Matrix iOS apps register the base64 of the raw token (``convert``).  Sygnal needs
    standard, padded base64 and answers 500 otherwise; pushd also takes it unpadded or
    in the URL-safe alphabet, and a pushkey that still does not decode to a plausible
    token is None, so the frontend rejects it instead of failing the request.  Beware:
    a hex token is valid base64 too, so a hex-registering app with ``convert`` on gets
    a token half again as long (96 hex characters for 64), which APNs refuses.
    """
    if not convert:
        return normalize_apns_token(pushkey)
    if len(pushkey) <= REMEMBERED_PUSHKEY_CHARS:
        return _remembered_token(pushkey)
    return _decoded_token(pushkey)


@functools.lru_cache(maxsize=DECODED_TOKENS)
def _remembered_token(pushkey: str) -> str | None:
    """:func:`_decoded_token`, remembered: a homeserver names the same pushers in
    notify after notify, and decoding one costs about 2 us against 0.1 for a hit, for
    each device of each request.  The answer depends on the pushkey alone, so a hit
    cannot go stale."""
    return _decoded_token(pushkey)


def _decoded_token(pushkey: str) -> str | None:
    """:func:`apns_token` of a pushkey in base64."""
    unpadded = pushkey.rstrip("=").replace("-", "+").replace("_", "/")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        token = base64.b64decode(padded, validate=True).hex()
    except ValueError:  # binascii.Error, or non-ASCII characters
        return None
    return normalize_apns_token(token)


def is_event_id_only(n: Notification) -> bool:
    """Whether Sygnal's event_id_only payload applies: an event id and no type.

    Never decided by ``data.format``: Synapse's badge updates carry
    ``format: event_id_only`` but no event id, and must become a badge-only push.
    Truthiness, as Sygnal tests it (an empty ``type`` counts as absent).
    """
    return bool(n.event_id) and not n.type


def for_content(n: Notification, content: ContentMode, redacted_text: str) -> Notification:
    """``n`` as an app's ``content`` mode allows it to be sent (``full``: unchanged).

    ``id_only``: what Synapse sends an ``event_id_only`` pusher, whatever the pusher
    asked: event and room ids, counts, prio; so Sygnal's event_id_only payloads apply
    and the app fetches the event itself.  ``redacted``: sender, display name and room
    names go, and the content becomes ``{"body": redacted_text}`` (FCM
    ``content_body``; APNs gets it as the alert body, see :func:`apns_payload`).
    A badge update (no type) carries nothing to hide and is left alone.
    """
    if content == "full" or not n.type:
        return n
    nameless = attrs.evolve(
        n, sender=None, sender_display_name=None, room_name=None, room_alias=None
    )
    if content == "id_only":
        return attrs.evolve(
            nameless, type=None, membership=None, user_is_target=False, content=None
        )
    return attrs.evolve(nameless, content=None if n.content is None else {"body": redacted_text})


# --- APNs ---------------------------------------------------------------------------


def _from_display(n: Notification) -> str:
    """Who the push is from: display name, else user id, else a single space.

    An empty display name falls back to the user id (Sygnal would show it empty: it
    tests the display name against None, the notes read "else")."""
    name = n.sender_display_name or n.sender or NO_SENDER
    return name[:NAME_MAX_CHARS]


def _room_display(n: Notification) -> str | None:
    """The room as shown: its name, else its alias, else None (a direct chat)."""
    room = n.room_name or n.room_alias
    return room[:NAME_MAX_CHARS] if room else None


def _message_alert(n: Notification, sender: str) -> tuple[str, list[str]]:
    """loc-key and loc-args of an ``m.room.message`` or ``m.room.encrypted``.

    The body is used only when the content has both a ``msgtype`` and a ``body`` (an
    encrypted event has neither); a body that is not a string counts as no content
    (Sygnal would put it in ``loc-args``, which iOS expects to hold strings).
    """
    content = n.content or {}
    body = content.get("body")
    usable = "msgtype" in content and isinstance(body, str)
    text: str | None = body if usable else None
    msgtype = content.get("msgtype") if usable else None
    room = _room_display(n)
    if text is not None and msgtype == IMAGE_MSGTYPE:
        if room:
            return "IMAGE_FROM_USER_IN_ROOM", [sender, text, room]
        return "IMAGE_FROM_USER", [sender, text]
    if text and msgtype == EMOTE_MSGTYPE:
        if room:
            return "ACTION_FROM_USER_IN_ROOM", [room, sender, text]
        return "ACTION_FROM_USER", [sender, text]
    if text:
        if room:
            return "MSG_FROM_USER_IN_ROOM_WITH_CONTENT", [sender, room, text]
        return "MSG_FROM_USER_WITH_CONTENT", [sender, text]
    if room:
        return "MSG_FROM_USER_IN_ROOM", [sender, room]
    return "MSG_FROM_USER", [sender]


def _is_video_call(n: Notification) -> bool:
    """A call invite offering video: only detectable in a WebRTC SDP offer."""
    offer = (n.content or {}).get("offer")
    sdp = offer.get("sdp") if isinstance(offer, Mapping) else None
    return isinstance(sdp, str) and VIDEO_SDP_MARKER in sdp


def _alert(n: Notification) -> tuple[str, list[str]] | None:
    """Sygnal's loc-key table (notes §2.5): the alert the app localises, if any."""
    sender = _from_display(n)
    if n.type in MESSAGE_TYPES:
        return _message_alert(n, sender)
    if n.type == CALL_INVITE_TYPE:
        key = "VIDEO_CALL_FROM_USER" if _is_video_call(n) else "VOICE_CALL_FROM_USER"
        return key, [sender]
    if n.type == MEMBER_TYPE:
        if not (n.user_is_target and n.membership == "invite"):
            return None
        room = _room_display(n)
        if room:
            return "USER_INVITE_TO_NAMED_ROOM", [sender, room]
        return "USER_INVITE_TO_CHAT", [sender]
    if n.type:
        return "MSG_FROM_USER", [sender]
    return None  # a badge update


def _badge(n: Notification, options: MatrixAppOptions) -> int | None:
    """Unread plus missed calls, whichever the homeserver sent; None if neither (or the
    app counts by itself)."""
    if not options.send_badge_counts:
        return None
    present = [count for count in (n.counts.unread, n.counts.missed_calls) if count is not None]
    return sum(present) if present else None


def _event_id_only_payload(
    n: Notification, default: dict[str, Any], options: MatrixAppOptions
) -> dict[str, Any]:
    """The app's default payload plus ids and counts: its Notification Service
    Extension fetches and decrypts the event itself.  No ``aps`` is added."""
    payload = dict(default)
    if n.room_id:
        payload["room_id"] = n.room_id
    if n.event_id:
        payload["event_id"] = n.event_id
    if options.send_badge_counts:
        if n.counts.unread is not None:
            payload["unread_count"] = n.counts.unread
        if n.counts.missed_calls is not None:
            payload["missed_calls"] = n.counts.missed_calls
    return payload


def _writable(default: dict[str, Any]) -> dict[str, Any]:
    """A copy of the default payload that :func:`apns_payload` may write into: the
    object, its ``aps`` and ``aps.alert`` copied (the only objects it writes), all else
    shared.  The default stays as the homeserver sent it (:mod:`.same_push` compares
    it with the next device's), at a fifth of ``copy.deepcopy``'s cost, which every
    push paid."""
    payload = dict(default)
    aps = payload.get("aps")
    if isinstance(aps, dict):
        aps = payload["aps"] = dict(aps)
        alert = aps.get("alert")
        if isinstance(alert, dict):
            aps["alert"] = dict(alert)
    return payload


def apns_payload(
    n: Notification, device: Device, options: MatrixAppOptions, redacted_text: str | None = None
) -> dict[str, Any] | None:
    """The APNs JSON payload as Sygnal builds it, or None when there is nothing to send.

    Full path (§2.5): the default payload (only for an event, not a badge update),
    ``aps.alert`` with the loc-key and loc-args (other alert keys of the default kept,
    a non-object alert replaced), ``aps.badge``, and ``room_id``/``event_id`` only with
    a loc-key.  A badge update is just ``{"aps": {"badge": N}}``.  With
    ``sound_from_tweaks`` an alert also gets the push rule's sound.  With
    ``redacted_text`` (the ``redacted`` mode) an alert is that text as its body, in
    place of the loc-key and loc-args, which would name the sender and the room.
    """
    default = checked_default_payload(device)
    if is_event_id_only(n):
        return _event_id_only_payload(n, default, options)
    alert = _alert(n)
    badge = _badge(n, options)
    if alert is None and badge is None:
        return None
    payload = _writable(default) if n.type else {}
    aps = payload.get("aps")
    if not isinstance(aps, dict):  # Sygnal fails with a 500 here
        aps = payload["aps"] = {}
    if alert is not None:
        loc_key, loc_args = alert
        alert_object = aps.get("alert")
        if not isinstance(alert_object, dict):
            alert_object = aps["alert"] = {}
        if redacted_text is None:
            alert_object["loc-key"] = loc_key
            alert_object["loc-args"] = loc_args
        else:
            alert_object.pop("loc-key", None)
            alert_object.pop("loc-args", None)
            alert_object["body"] = redacted_text
        sound = device.tweaks.get("sound")
        if options.sound_from_tweaks and isinstance(sound, str):
            aps["sound"] = sound
    if badge is not None:
        aps["badge"] = badge
    if alert is not None:
        if n.room_id:
            payload["room_id"] = n.room_id
        if n.event_id:
            payload["event_id"] = n.event_id
    return payload


def apns_push(
    n: Notification, device: Device, options: MatrixAppOptions, redacted_text: str | None = None
) -> ApnsPush | None:
    """The APNs push for one device, or None when there is nothing to send.

    ``apns-push-type`` is always sent (Sygnal omits it unless configured).  Priority is
    10, or 5 for ``prio: low`` (most of Synapse's pushes) and for ``background`` pushes,
    which APNs refuses at 10.  Raises :class:`PayloadError` when it cannot fit.
    """
    payload = apns_payload(n, device, options, redacted_text)
    if payload is None:
        return None
    push_type = options.push_type
    body = truncate_apns(payload, payload_limit(push_type))
    conserve = n.prio == LOW_PRIO or push_type == BACKGROUND_PUSH_TYPE
    priority = PRIORITY_CONSERVE if conserve else PRIORITY_IMMEDIATE
    return ApnsPush(payload=body, push_type=push_type, priority=priority)
