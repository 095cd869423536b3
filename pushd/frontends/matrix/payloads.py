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

Pure functions, no I/O, nothing logged.  Error messages name the problem and sizes,
never a content value: they end up in logs.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from typing import Any, Final

import attrs

from pushd import jsonutil
from pushd.config import ContentMode, MatrixAppOptions
from pushd.frontends.matrix.wire import Device, Notification
from pushd.model import ApnsPush, FcmPush, normalize_apns_token
from pushd.upstream.apns.request import payload_limit
from pushd.upstream.fcm import message as fcm_message

#: APNs: ``from`` and room names are cut to this many characters (Sygnal's
#: ``MAX_FIELD_LENGTH``), so that one long name cannot crowd out the message text.
NAME_MAX_CHARS: Final = 1024
#: FCM: a string copied into ``data`` longer than this (UTF-8 bytes) is truncated...
FIELD_MAX_BYTES: Final = 1024
#: ...and ends with this, so the app can show that text is missing.
ELLIPSIS: Final = "…"
_ELLIPSIS_BYTES: Final = ELLIPSIS.encode()
#: ...after at most this many bytes of the original: the result is FIELD_MAX_BYTES long.
TRUNCATED_BYTES: Final = FIELD_MAX_BYTES - len(_ELLIPSIS_BYTES)
#: FCM: the shortest a field is cut to while fitting the data limit (just the ellipsis).
FIELD_MIN_BYTES: Final = len(_ELLIPSIS_BYTES)

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

#: FCM ``data`` keys copied from the notification before ``content_*``, in Sygnal's
#: order (``room_id`` follows the content).
FCM_FIELDS: Final = (
    "event_id",
    "type",
    "sender",
    "room_name",
    "room_alias",
    "membership",
    "sender_display_name",
)
#: Fields shortened, together with ``content_*``, to fit FCM's data limit: text meant
#: for display.  Identifiers (event, room and user ids, types) are never cut: a cut id
#: is worse than none, and the Matrix spec caps user ids at 255 bytes anyway.
FCM_DISPLAY_FIELDS: Final = frozenset({"sender_display_name", "room_name", "room_alias"})
#: ``data.prio`` and ``android.priority`` (the v1 enum names) per notify ``prio``.
FCM_DATA_PRIO: Final = {"high": "high", "low": "normal"}
FCM_ANDROID_PRIORITY: Final = {"high": "HIGH", "low": "NORMAL"}


class PayloadError(ValueError):
    """No push can be built for this device; the message never includes content."""


# --- Inputs -------------------------------------------------------------------------


def default_payload(device: Device) -> dict[str, Any] | None:
    """The device's ``data.default_payload``: ``{}`` when absent or null, the dict when
    an object, None when anything else: the caller then rejects the pushkey, as Sygnal
    does, since that pusher can never get a sensible push.  (Sygnal rejects a null too;
    pushd reads it as "no default payload", which is what a client writing null means.)
    """
    value = device.data.get("default_payload")
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    return None


def _checked_default_payload(device: Device) -> dict[str, Any]:
    default = default_payload(device)
    if default is None:  # the frontend rejects such pushkeys before building anything
        raise PayloadError("default_payload is not a JSON object")
    return default


def apns_token(pushkey: str, convert: bool) -> str | None:
    """The APNs device token (lower-case hex) a pushkey stands for, or None.

    Matrix iOS apps register the base64 of the raw token (``convert``).  Sygnal needs
    standard, padded base64 and answers 500 otherwise; pushd also takes it unpadded or
    in the URL-safe alphabet, and a pushkey that still does not decode to a plausible
    token is None, so the frontend rejects it instead of failing the request.  Beware:
    a hex token is valid base64 too, so a hex-registering app with ``convert`` on gets
    a token half again as long (96 hex characters for 64), which APNs refuses.
    """
    token = pushkey
    if convert:
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
    default = _checked_default_payload(device)
    if is_event_id_only(n):
        return _event_id_only_payload(n, default, options)
    alert = _alert(n)
    badge = _badge(n, options)
    if alert is None and badge is None:
        return None
    payload: dict[str, Any] = copy.deepcopy(default) if n.type else {}
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


def _encode(value: Any) -> bytes:
    """Compact UTF-8 JSON: what pushd sends, and so what the limits are measured on."""
    try:
        return jsonutil.dumpb(value)
    except (TypeError, ValueError):  # UnicodeEncodeError (lone surrogates) included
        raise PayloadError("payload is not encodable as JSON") from None


def _json_cost(text: str) -> int:
    """Bytes a string takes inside compact JSON (quotes and escapes included)."""
    return len(json.dumps(text, ensure_ascii=False).encode())


def _cut_utf8(raw: bytes, max_bytes: int) -> bytes:
    """The longest prefix of UTF-8 ``raw`` of at most ``max_bytes`` that ends on a
    character boundary: a character is never split."""
    if len(raw) <= max_bytes:
        return raw
    end = max(max_bytes, 0)
    while end > 0 and raw[end] & 0xC0 == 0x80:  # raw[end] continues a character
        end -= 1
    return raw[:end]


def _choppables(aps: Mapping[str, Any]) -> list[str]:
    """The strings truncation may shorten, in Sygnal's order: ``aps.alert`` when it is
    a string, else ``alert.body`` and each of ``alert.loc-args`` (strings only)."""
    alert = aps.get("alert")
    if isinstance(alert, str):
        return [alert]
    if not isinstance(alert, Mapping):
        return []
    texts = []
    if isinstance(alert.get("body"), str):
        texts.append(alert["body"])
    loc_args = alert.get("loc-args")
    if isinstance(loc_args, list):
        texts.extend(arg for arg in loc_args if isinstance(arg, str))
    return texts


def _with_choppables(payload: Mapping[str, Any], texts: list[str]) -> dict[str, Any]:
    """A copy of ``payload`` with its choppables replaced by ``texts``, in the order of
    :func:`_choppables`; the containers on the way are copied, the caller's untouched."""
    result = dict(payload)
    aps = result["aps"] = dict(payload["aps"])
    replacements = iter(texts)
    alert = aps.get("alert")
    if isinstance(alert, str):
        aps["alert"] = next(replacements)
    elif isinstance(alert, Mapping):
        alert = aps["alert"] = dict(alert)
        if isinstance(alert.get("body"), str):
            alert["body"] = next(replacements)
        loc_args = alert.get("loc-args")
        if isinstance(loc_args, list):
            alert["loc-args"] = [
                next(replacements) if isinstance(arg, str) else arg for arg in loc_args
            ]
    return result


def truncate_apns(payload: dict[str, Any], limit: int) -> bytes:
    """``payload`` encoded, shortened to at most ``limit`` bytes as Sygnal does (§2.7).

    Sygnal removes the last character of the longest (UTF-8 bytes; the first of equals)
    choppable string -- ``aps.alert`` when a string, ``aps.alert.body``, each of
    ``aps.alert.loc-args`` -- until the payload fits; nothing else is ever shortened.
    pushd gives exactly the result of that loop, with two differences:

    * it measures the compact encoding it sends (Sygnal measures, and sends, JSON with
      ``", "`` and ``": "`` separators), which leaves a little more room for text;
    * it gets there in big steps.  Running the loop until the longest string is down to
      ``L`` bytes cuts every string longer than ``L`` to its longest prefix of at most
      ``L`` bytes, whatever the order of the single cuts; so a binary search finds the
      smallest ``L`` at which the payload is still too long, and at most one character
      per string (those exactly ``L`` bytes long, in Sygnal's order) is left to remove.

    Raises :class:`PayloadError` when the payload has no ``aps`` or still does not fit
    with every choppable string empty.  The caller's dicts are not modified.
    """
    encoded = _encode(payload)
    size = len(encoded)
    if size <= limit:
        return encoded
    aps = payload.get("aps")
    if not isinstance(aps, Mapping):
        raise PayloadError(f"APNs payload of {size} bytes > {limit}, and no aps to shorten")
    originals = _choppables(aps)
    raws = [text.encode() for text in originals]
    costs = [_json_cost(text) for text in originals]

    def cut_to(level: int) -> tuple[list[bytes], int]:
        """Every choppable at most ``level`` bytes, and the payload's size then."""
        cut = [_cut_utf8(raw, level) for raw in raws]
        saved = sum(
            cost - _json_cost(new.decode())
            for raw, new, cost in zip(raws, cut, costs, strict=True)
            if len(new) < len(raw)
        )
        return cut, size - saved

    if cut_to(0)[1] > limit:
        raise PayloadError(
            f"APNs payload of {size} bytes > {limit} even with its alert text removed"
        )
    fits, too_long = 0, max(len(raw) for raw in raws)
    while too_long - fits > 1:  # invariant: cut_to(fits) fits, cut_to(too_long) does not
        middle = (fits + too_long) // 2
        if cut_to(middle)[1] <= limit:
            fits = middle
        else:
            too_long = middle
    cut, current = cut_to(too_long)
    texts = [raw.decode() for raw in cut]
    for index, raw in enumerate(cut):
        if current <= limit:
            break
        if len(raw) == too_long:  # still the longest: Sygnal chops it once more
            shorter = texts[index][:-1]
            current -= _json_cost(texts[index]) - _json_cost(shorter)
            texts[index] = shorter
    result = _encode(_with_choppables(payload, texts))
    if len(result) > limit:  # cannot happen: cut_to(fits) fits
        raise PayloadError(f"APNs payload of {len(result)} bytes > {limit} after truncation")
    return result


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


# --- FCM ----------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: not sendable
        raise PayloadError("a text field is not valid Unicode") from None


def _shorten(raw: bytes, max_bytes: int) -> bytes:
    """``raw`` (UTF-8) if at most ``max_bytes``, else its longest prefix that leaves room
    for the ellipsis, and the ellipsis."""
    if len(raw) <= max_bytes:
        return raw
    return _cut_utf8(raw, max_bytes - len(_ELLIPSIS_BYTES)) + _ELLIPSIS_BYTES


def _data_text(value: object) -> str | None:
    """A default_payload value as an FCM data value: FCM takes only strings, so other
    JSON values become their compact JSON text (Sygnal lets FCM refuse the message);
    null means "no value" and drops the key."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return jsonutil.dumps(value)
    except (TypeError, ValueError):
        raise PayloadError("default_payload holds a value that is not JSON") from None


def _fit_data(data: dict[str, str], originals: dict[str, bytes]) -> dict[str, str]:
    """``data`` within FCM's limit, by cutting the longest shortenable values first.

    ``originals`` are the shortenable keys' values before truncation.  All of them are
    cut to one cap, the highest that fits (so only the longest lose text), each cut
    value ending in the ellipsis.  Raises :class:`PayloadError` when even a cap of a
    bare ellipsis does not fit: what is left is ids and the app's default payload.
    """
    size = sum(len(_utf8(key)) + len(_utf8(value)) for key, value in data.items())
    limit = fcm_message.PAYLOAD_LIMIT
    if size <= limit:
        return data
    fixed = size - sum(len(data[key].encode()) for key in originals)

    def size_at(cap: int) -> int:
        return fixed + sum(len(_shorten(raw, cap)) for raw in originals.values())

    if size_at(FIELD_MIN_BYTES) > limit:
        raise PayloadError(f"FCM data of {size} bytes > {limit} even with its text shortened")
    fits, too_long = FIELD_MIN_BYTES, FIELD_MAX_BYTES  # size_at(FIELD_MAX_BYTES) == size
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if size_at(middle) <= limit:
            fits = middle
        else:
            too_long = middle
    fitted = dict(data)
    for key, raw in originals.items():
        fitted[key] = _shorten(raw, fits).decode()
    return fitted


def fcm_data(n: Notification, device: Device, options: MatrixAppOptions) -> dict[str, str] | None:
    """The FCM ``data`` map as Sygnal builds it (§3.2), or None when there is nothing
    to send (no room, no event, no non-zero count: a badge reset never reaches Android).

    The app's default payload comes first (non-strings stringified, nulls dropped), then
    the notification's strings, the content's strings as ``content_<key>``, ``prio``
    and the non-zero counts.  A copied string over :data:`FIELD_MAX_BYTES` is cut to
    :data:`TRUNCATED_BYTES` plus :data:`ELLIPSIS`; then the whole map is fitted to FCM's
    4096 bytes by shortening content and display fields (:class:`PayloadError` if that
    is not enough).
    """
    default = _checked_default_payload(device)
    counts: dict[str, str] = {}
    if options.send_badge_counts:
        for key, count in (("unread", n.counts.unread), ("missed_calls", n.counts.missed_calls)):
            if count:
                counts[key] = str(count)
    if not n.room_id and not n.event_id and not counts:
        return None
    data: dict[str, str] = {}
    for key, value in default.items():
        text = _data_text(value)
        if text is not None:
            data[key] = text
    originals: dict[str, bytes] = {}

    def copy_text(key: str, value: str, shortenable: bool) -> None:
        raw = _utf8(value)
        data[key] = _shorten(raw, FIELD_MAX_BYTES).decode()
        if shortenable:
            originals[key] = raw

    for key in FCM_FIELDS:
        value = getattr(n, key)
        if value is not None:
            copy_text(key, value, key in FCM_DISPLAY_FIELDS)
    for key, value in (n.content or {}).items():
        if isinstance(value, str):
            copy_text(f"content_{key}", value, shortenable=True)
    if n.room_id is not None:
        copy_text("room_id", n.room_id, shortenable=False)
    data["prio"] = FCM_DATA_PRIO[n.prio]
    data.update(counts)
    return _fit_data(data, originals)


def fcm_push(n: Notification, device: Device, options: MatrixAppOptions) -> FcmPush | None:
    """The FCM v1 message for one device (everything but its token), or None.

    Like Sygnal (§3.1): the app's ``fcm_options`` are the base, ``data`` is set and
    ``android.priority`` merged into their ``android`` object; a data-only message
    unless the options add more.  ``token`` is the FCM client's to splice in, so one
    in the options is dropped.  Raises :class:`PayloadError` for data FCM refuses
    (a reserved key such as ``from`` in the default payload).
    """
    data = fcm_data(n, device, options)
    if data is None:
        return None
    try:
        size = fcm_message.check_data(data)
    except fcm_message.InvalidMessage as error:  # names the key, never the value
        raise PayloadError(str(error)) from None
    if size > fcm_message.PAYLOAD_LIMIT:  # cannot happen: fcm_data fits it
        raise PayloadError(f"FCM data of {size} bytes > {fcm_message.PAYLOAD_LIMIT}")
    message: dict[str, Any] = copy.deepcopy(options.fcm_options)
    message.pop("token", None)
    message["data"] = data
    android = message.get("android")
    if not isinstance(android, dict):
        android = message["android"] = {}
    android["priority"] = FCM_ANDROID_PRIORITY[n.prio]
    encoded = _encode(message)
    return FcmPush(fields=encoded[1:-1], expiration=None)
