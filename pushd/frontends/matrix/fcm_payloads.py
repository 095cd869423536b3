"""The FCM pushes Sygnal builds from a Matrix notify request (protocol notes §3.1 to
3.3): a flat ``data`` map of strings within FCM's 4096 bytes (split from
:mod:`pushd.frontends.matrix.payloads`, which re-exports it).

Pure functions, no I/O, nothing logged; error messages never include content.
"""

from __future__ import annotations

from typing import Any, Final

from pushd import jsonutil
from pushd.config import MatrixAppOptions
from pushd.frontends.matrix.payload_parts import (
    PayloadError,
    checked_default_payload,
    cut_utf8,
    encode,
)
from pushd.frontends.matrix.wire import Device, Notification
from pushd.model import FcmPush
from pushd.upstream.fcm import message as fcm_message

#: FCM: a string copied into ``data`` longer than this (UTF-8 bytes) is truncated...
FIELD_MAX_BYTES: Final = 1024
#: ...and ends with this, so the app can show that text is missing.
ELLIPSIS: Final = "…"
_ELLIPSIS_BYTES: Final = ELLIPSIS.encode()
#: ...after at most this many bytes of the original: the result is FIELD_MAX_BYTES long.
TRUNCATED_BYTES: Final = FIELD_MAX_BYTES - len(_ELLIPSIS_BYTES)
#: FCM: the shortest a field is cut to while fitting the data limit (just the ellipsis).
FIELD_MIN_BYTES: Final = len(_ELLIPSIS_BYTES)

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
    return cut_utf8(raw, max_bytes - len(_ELLIPSIS_BYTES)) + _ELLIPSIS_BYTES


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
    default = checked_default_payload(device)
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
    # The app's options are shared by every push: copy what is written (the message
    # and its android object), not all of it.
    message: dict[str, Any] = dict(options.fcm_options)
    message.pop("token", None)
    message["data"] = data
    android = message.get("android")
    android = message["android"] = dict(android) if isinstance(android, dict) else {}
    android["priority"] = FCM_ANDROID_PRIORITY[n.prio]
    encoded = encode(message)
    return FcmPush(fields=encoded[1:-1], expiration=None)
