"""A ``messages:send`` body checked the way FCM does: pure functions over the bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from pushd import jsonutil
from pushd.simulators.fcm.constants import (
    ANDROID_FIELDS,
    BAD_REQUEST_TYPE,
    BAD_TOKEN_MESSAGE,
    FCM_ERROR_TYPE,
    MAX_PAYLOAD,
    MAX_TOPIC_PAYLOAD,
    MAX_TTL_SECONDS,
    MESSAGE_FIELDS,
    NOTIFICATION_FIELDS,
    PRIORITIES,
    REGISTRATION_TOKEN_RE,
    RESERVED_DATA_KEYS,
    RESERVED_DATA_PREFIXES,
    TOPIC_RE,
    TTL_RE,
)


@attrs.frozen
class _Rejection:
    """A 400 the message earned, with its ``details``."""

    message: str
    details: tuple[dict[str, Any], ...]


@attrs.frozen
class Checked:
    """A send body as parsed, and the first fault found in it (if any)."""

    message: dict[str, Any]
    target: str | None
    token: str | None
    validate_only: bool
    size: int
    rejection: _Rejection | None


def fcm_error(code: str) -> dict[str, Any]:
    return {"@type": FCM_ERROR_TYPE, "errorCode": code}


def bad_request(field: str | None, description: str) -> dict[str, Any]:
    violation = (
        {"description": description}
        if field is None
        else {
            "field": field,
            "description": description,
        }
    )
    return {"@type": BAD_REQUEST_TYPE, "fieldViolations": [violation]}


def _field_error(field: str, description: str) -> _Rejection:
    """A fault of JSON-to-proto mapping: ``BadRequest`` only, as Google's front end says."""
    return _Rejection(description, (bad_request(field, description),))


def _fcm_argument_error(field: str, message: str, description: str | None = None) -> _Rejection:
    """A fault FCM itself found: ``FcmError INVALID_ARGUMENT`` and the field."""
    return _Rejection(
        message, (fcm_error("INVALID_ARGUMENT"), bad_request(field, description or message))
    )


def _unknown_field(name: str, at: str | None = None) -> _Rejection:
    where = f" at '{at}'" if at else ""
    text = f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.'
    return _Rejection(text, (bad_request(None, text),))


def _dump(value: object) -> str:
    """Compact JSON of a value, for error messages and size counting."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _check_string_map(value: object, field: str) -> _Rejection | None:
    """``map<string, string>``: a JSON object whose values are all strings."""
    if not isinstance(value, dict):
        return _field_error(
            field,
            f"Invalid value at '{field}' (type.googleapis.com/google.protobuf.Struct), "
            + _dump(value),
        )
    for index, item in enumerate(value.values()):
        if not isinstance(item, str):
            where = f"{field}[{index}].value"
            return _field_error(where, f"Invalid value at '{where}' (TYPE_STRING), {_dump(item)}")
    return None


def _check_notification(value: object, field: str) -> _Rejection | None:
    if not isinstance(value, dict):
        return _field_error(field, f"Invalid value at '{field}', {_dump(value)}")
    for key, item in value.items():
        if key not in NOTIFICATION_FIELDS and field == "message.notification":
            return _unknown_field(str(key), field)
        if key in NOTIFICATION_FIELDS and not isinstance(item, str):
            where = f"{field}.{key}"
            return _field_error(where, f"Invalid value at '{where}' (TYPE_STRING), {_dump(item)}")
    return None


def _reserved_key(data: Mapping[str, Any]) -> str | None:
    for key in data:
        if key in RESERVED_DATA_KEYS or key.startswith(RESERVED_DATA_PREFIXES):
            return str(key)
    return None


def _measure_map(value: object) -> int:
    if not isinstance(value, dict):
        return 0
    size = 0
    for key, item in value.items():
        size += len(str(key).encode("utf-8", "surrogatepass"))
        text = item if isinstance(item, str) else _dump(item)
        size += len(text.encode("utf-8", "surrogatepass"))
    return size


def payload_size(message: Mapping[str, Any]) -> int:
    """The bytes FCM's size limit counts, as this simulator measures them.

    Google counts "the payload": keys plus values of the data and notification parts.
    Here: UTF-8 bytes of every key and value in ``data``, ``notification``,
    ``android.data`` and ``android.notification`` (a non-string value counts as its
    compact JSON).  ``apns`` and ``webpush`` are left out: their limits are APNs' and
    the browsers', enforced further down the line.
    """
    size = _measure_map(message.get("data")) + _measure_map(message.get("notification"))
    android = message.get("android")
    if isinstance(android, dict):
        size += _measure_map(android.get("data")) + _measure_map(android.get("notification"))
    return size


def _check_android(android: object) -> _Rejection | None:
    """Types and formats inside ``message.android``."""
    if not isinstance(android, dict):
        return _field_error(
            "message.android", f"Invalid value at 'message.android', {_dump(android)}"
        )
    for key in android:
        if key not in ANDROID_FIELDS:
            return _unknown_field(str(key), "message.android")
    if "data" in android:
        fault = _check_string_map(android["data"], "message.android.data")
        if fault is not None:
            return fault
    if "notification" in android and not isinstance(android["notification"], dict):
        return _field_error(
            "message.android.notification",
            f"Invalid value at 'message.android.notification', {_dump(android['notification'])}",
        )
    priority = android.get("priority")
    if priority is not None and (
        not isinstance(priority, str) or priority.lower() not in PRIORITIES
    ):
        return _field_error(
            "message.android.priority",
            "Invalid value at 'message.android.priority' "
            "(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), "
            + _dump(priority),
        )
    ttl = android.get("ttl")
    if ttl is not None:
        match = TTL_RE.fullmatch(ttl) if isinstance(ttl, str) else None
        if match is None:
            return _field_error(
                "message.android.ttl",
                "Invalid value at 'message.android.ttl' "
                f"(type.googleapis.com/google.protobuf.Duration), {_dump(ttl)}",
            )
        seconds, fraction = int(match.group(1)), match.group(2) or ""
        if seconds > MAX_TTL_SECONDS or (seconds == MAX_TTL_SECONDS and fraction.strip(".0")):
            return _fcm_argument_error(
                "message.android.ttl", f"TTL must be at most {MAX_TTL_SECONDS}s (28 days)"
            )
    return None


def check_send_body(body: bytes) -> Checked:
    """Parse a ``messages:send`` body and find its first fault, in FCM's order.

    JSON-to-proto faults come first (unknown fields, wrong types, bad ``ttl`` or
    ``priority``): Google's front end rejects those before FCM sees the message.  Then
    FCM's own: the target, the token's format, reserved ``data`` keys, the TTL ceiling,
    the size.  Pure, so the rules are testable without a socket.
    """
    empty: dict[str, Any] = {}

    def reject(
        fault: _Rejection,
        message: dict[str, Any] = empty,
        target: str | None = None,
        token: str | None = None,
        validate_only: bool = False,
        size: int = 0,
    ) -> Checked:
        return Checked(message, target, token, validate_only, size, fault)

    try:
        document = jsonutil.loads(body)  # FCM's parser takes no NaN or Infinity
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        text = f"Invalid JSON payload received. {exc}"
        return reject(_Rejection(text, (bad_request(None, text),)))
    if not isinstance(document, dict):
        text = f"Invalid JSON payload received. Expected an object, got {type(document).__name__}."
        return reject(_Rejection(text, (bad_request(None, text),)))
    for key in document:
        if key not in ("message", "validate_only", "validateOnly"):
            return reject(_unknown_field(str(key)))
    validate_only = document.get("validate_only", document.get("validateOnly", False))
    if not isinstance(validate_only, bool):
        return reject(
            _field_error(
                "validate_only",
                f"Invalid value at 'validate_only' (TYPE_BOOL), {_dump(validate_only)}",
            )
        )
    message = document.get("message")
    if message is None:
        return reject(
            _fcm_argument_error("message", "Recipient of the message is not set."),
            validate_only=validate_only,
        )
    if not isinstance(message, dict):
        return reject(
            _field_error("message", f"Invalid value at 'message', {_dump(message)}"),
            validate_only=validate_only,
        )
    raw_token = message.get("token")
    token = raw_token if isinstance(raw_token, str) else None
    raw_target = message.get("token", message.get("topic", message.get("condition")))
    target = raw_target if isinstance(raw_target, str) else None
    size = payload_size(message)

    def fail(fault: _Rejection) -> Checked:
        return reject(fault, message, target, token, validate_only, size)

    for key, value in message.items():
        if key not in MESSAGE_FIELDS:
            return fail(_unknown_field(str(key), "message"))
        if key in ("token", "topic", "condition", "name") and not isinstance(value, str):
            where = f"message.{key}"
            return fail(
                _field_error(where, f"Invalid value at '{where}' (TYPE_STRING), {_dump(value)}")
            )
        if key in ("apns", "webpush", "fcm_options", "fcmOptions") and not isinstance(value, dict):
            where = f"message.{key}"
            return fail(_field_error(where, f"Invalid value at '{where}', {_dump(value)}"))
    if "data" in message:
        fault = _check_string_map(message["data"], "message.data")
        if fault is not None:
            return fail(fault)
    if "notification" in message:
        fault = _check_notification(message["notification"], "message.notification")
        if fault is not None:
            return fail(fault)
    if "android" in message:
        fault = _check_android(message["android"])
        if fault is not None:
            return fail(fault)

    targets = [name for name in ("token", "topic", "condition") if name in message]
    if not targets:
        return fail(_fcm_argument_error("message", "Recipient of the message is not set."))
    if len(targets) > 1:
        text = (
            "Invalid value at 'message' (oneof), oneof field 'target' is already set. "
            f"Cannot set '{targets[1]}'"
        )
        return fail(_field_error("message", text))
    if token is not None and not REGISTRATION_TOKEN_RE.fullmatch(token):
        return fail(
            _fcm_argument_error("message.token", BAD_TOKEN_MESSAGE, "Invalid registration token")
        )
    topic = message.get("topic")
    if isinstance(topic, str) and not TOPIC_RE.fullmatch(topic):
        return fail(_fcm_argument_error("message.topic", "Invalid topic name"))
    condition = message.get("condition")
    if isinstance(condition, str) and not condition.strip():
        return fail(_fcm_argument_error("message.condition", "Invalid condition expression"))
    for field, data in (
        ("message.data", message.get("data")),
        ("message.android.data", (message.get("android") or {}).get("data")),
    ):
        if isinstance(data, dict):
            reserved = _reserved_key(data)
            if reserved is not None:
                return fail(
                    _fcm_argument_error(
                        field, f'Invalid data payload key: "{reserved}" is reserved'
                    )
                )
    limit = MAX_PAYLOAD if token is not None else MAX_TOPIC_PAYLOAD
    if size > limit:
        return fail(
            _fcm_argument_error(
                "message", f"Message is too big: {size} bytes of payload, the limit is {limit}"
            )
        )
    return Checked(message, target, token, validate_only, size, None)
