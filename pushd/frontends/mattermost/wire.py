"""Mattermost's wire format: ``model.PushNotification``, the ack, the answers, the throttle.

Mattermost servers decode every answer as JSON and treat anything but HTTP 200 as an
error (protocol notes §2.3), so every application-level outcome, bad input included,
is a 200 with ``{"status": "FAIL", "error": ...}``.  The texts are MPNS's own where the
notes give them, so a server's log reads the same as with the official proxy.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, Literal, cast, get_args

import attrs

from pushd import jsonutil
from pushd.frontends.http import Reply, has_lone_surrogate, json_reply

#: MPNS cuts ``message`` longer than this many bytes ...
MESSAGE_MAX_BYTES: Final = 2047
#: ... to this many (notes §1.2, step 3).
MESSAGE_CUT_BYTES: Final = 2046
#: MPNS cuts ``channel_name`` to this many bytes.
CHANNEL_NAME_MAX_BYTES: Final = 64
#: ``model.PostMessageMaxRunesV2``: the most runes a post's message holds.
POST_MESSAGE_MAX_RUNES: Final = 16383
#: ``model.PostPropsMaxRunes``: the most runes a post's props hold; Mattermost appends
#: every attachment's fallback text (kept in the props) to the pushed message, uncut.
POST_PROPS_MAX_RUNES: Final = 800_000
#: The most bytes ``json.Marshal`` writes for one rune (``<``, ``>`` and ``&`` become
#: ``\u003c`` and the like).
GO_JSON_MAX_BYTES_PER_RUNE: Final = 6
#: Room for the push's other fields (ids, names, signature), far more than they take.
OTHER_FIELDS_BYTES: Final = 64 * 1024
#: Largest ``send_push`` body: the biggest push a Mattermost server can build.  MPNS reads
#: any size and cuts ``message`` afterwards, so a body pushd refused (a FAIL, never
#: retried) would be a push MPNS delivers; the server's 64 KiB default is below a post
#: of 16,383 emoji alone.
MAX_BODY_BYTES: Final = (
    POST_MESSAGE_MAX_RUNES + POST_PROPS_MAX_RUNES
) * GO_JSON_MAX_BYTES_PER_RUNE + OTHER_FIELDS_BYTES
#: The app version when ``platform`` carries no (valid) ``-vN`` suffix.
DEFAULT_APP_VERSION: Final = 1
#: Go's ``int`` is 64 bits: larger JSON numbers fail to decode there, so here too.
GO_INT_MAX: Final = 2**63 - 1
#: The longest 64-bit integer's text: a sign and 19 digits.
GO_INT_MAX_CHARS: Final = 20
#: What ``strconv.Atoi`` accepts after ``-v`` (within 64 bits).
_GO_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
#: The most bytes one character takes in UTF-8.
UTF8_MAX_BYTES: Final = 4
#: The separator between a platform type and its app version (``apple_rn-v2``).
VERSION_SEPARATOR: Final = "-v"

#: ``model.PushNotification`` string fields (all optional on the wire).
STRING_FIELDS: Final = (
    "ack_id",
    "platform",
    "server_id",
    "device_id",
    "post_id",
    "category",
    "sound",
    "message",
    "team_id",
    "channel_id",
    "root_id",
    "channel_name",
    "type",
    "sub_type",
    "transport",
    "sender_id",
    "sender_name",
    "override_username",
    "override_icon_url",
    "from_webhook",
    "version",
    "signature",
)
INT_FIELDS: Final = ("badge", "cont_ava")
BOOL_FIELDS: Final = ("is_crt_enabled", "is_id_loaded")
#: ``model.PushNotificationAck`` fields, checked the same way.
ACK_STRING_FIELDS: Final = ("id", "platform", "type", "post_id")


def _kinds(
    strings: tuple[str, ...], ints: tuple[str, ...], bools: tuple[str, ...]
) -> dict[str, type]:
    """Field name -> the Python type Go's decoder wants, built once per message kind."""
    kinds: dict[str, type] = dict.fromkeys(strings, str)
    kinds.update(dict.fromkeys(ints, int))
    kinds.update(dict.fromkeys(bools, bool))
    return kinds


#: The typed fields of a push and of an ack: looked up per key of the body, which is
#: cheaper than walking every known field (a push names about half of them).
PUSH_KINDS: Final = _kinds(STRING_FIELDS, INT_FIELDS, BOOL_FIELDS)
ACK_KINDS: Final = _kinds(ACK_STRING_FIELDS, (), ("is_id_loaded",))

Status = Literal["OK", "REMOVE", "FAIL"]


class BadRequest(ValueError):
    """The request cannot be served; ``str()`` is the FAIL ``error`` text."""


@attrs.frozen
class PushNotification:
    """The fields of ``model.PushNotification`` pushd uses (unknown ones are ignored)."""

    ack_id: str = ""
    platform: str = ""
    server_id: str = ""
    device_id: str = ""
    post_id: str = ""
    category: str = ""
    sound: str = ""
    message: str = attrs.field(default="", repr=False)
    badge: int = 0
    cont_ava: int = 0
    team_id: str = ""
    channel_id: str = ""
    root_id: str = ""
    channel_name: str = attrs.field(default="", repr=False)
    type: str = ""
    sub_type: str = ""
    transport: str = ""
    sender_id: str = ""
    sender_name: str = attrs.field(default="", repr=False)
    override_username: str = ""
    override_icon_url: str = ""
    from_webhook: str = ""
    version: str = ""
    is_crt_enabled: bool = False
    is_id_loaded: bool = False
    signature: str = ""


@attrs.frozen
class PushNotificationAck:
    """``model.PushNotificationAck``: only checked and counted, as MPNS does."""

    id: str = ""
    platform: str = ""
    type: str = ""
    post_id: str = ""
    is_id_loaded: bool = False


def answer(status: Status, error: str | None = None) -> Reply:
    """MPNS's ``PushResponse``: always HTTP 200, a flat map of strings."""
    if error is None:
        return _ANSWERS[status]
    body: dict[str, str] = {"status": status}
    if error is not None:
        body["error"] = error
    return json_reply(200, body)


#: The answers without an error text, built once (``OK`` is almost every answer).
_ANSWERS: Final = {status: json_reply(200, {"status": status}) for status in get_args(Status)}


def fail(error: str) -> Reply:
    return answer("FAIL", error)


def serving_error_reply(status: int, code: str, message: str) -> Reply:
    """Errors of the serving layer in MPNS's words.

    An oversized body is bad input like malformed JSON: a 200 FAIL, which the server
    logs with its text.  A wrong method keeps its 405 (gorilla/mux answers that too),
    and pushd's own outage (503 ``store_unavailable``) its status and code.
    """
    if status >= 500:  # pushd's outage, not the message's fault: a status it logs
        return json_reply(status, {"status": "FAIL", "error": f"{code}: {message}"})
    reply_status = 405 if status == 405 else 200
    return json_reply(
        reply_status, {"status": "FAIL", "error": f"Failed to read message body: {message}"}
    )


def _load_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; :class:`BadRequest` worded as MPNS words it."""
    try:
        value = jsonutil.loads(body)
    except RecursionError:
        raise BadRequest("Failed to read message body: nested too deeply") from None
    except ValueError as error:  # bad JSON, bad UTF-8, NaN, huge numbers (Go refuses all)
        raise BadRequest(f"Failed to read message body: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest("Failed to read message body: not a JSON object")
    if has_lone_surrogate(body, value):
        raise BadRequest("Failed to read message body: a lone surrogate escape")
    return value


def _typed_fields(value: dict[str, Any], kinds: dict[str, type]) -> dict[str, Any]:
    """The known fields of ``value``, type-checked as Go's decoder checks them.

    ``null`` leaves a field at its zero value, as in Go; unknown keys are ignored.  The
    body's keys are walked in their own order, as Go's decoder reads the document, so the
    first wrong field named is the one Go would name.
    """
    fields: dict[str, Any] = {}
    for name, item in value.items():
        kind = kinds.get(name)
        if kind is None or item is None:
            continue
        if type(item) is kind:  # the usual case: exactly the wanted type
            if kind is int and not -GO_INT_MAX - 1 <= cast(int, item) <= GO_INT_MAX:
                raise BadRequest(f"Failed to read message body: {name} is out of range")
            fields[name] = item
            continue
        # A subclass (only bool is an int's, and Go refuses it) or another type.
        raise BadRequest(f"Failed to read message body: {name} must be a {kind.__name__}")
    return fields


def _cut(text: str, limit: int, cut: int) -> str:
    """``text`` cut to ``cut`` UTF-8 bytes if longer than ``limit``.

    MPNS cuts on a byte offset and may split a character; a split character is dropped
    here instead, so the payload stays valid UTF-8.
    """
    if len(text) * UTF8_MAX_BYTES <= limit:  # short enough whatever its characters
        return text
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:cut].decode(errors="ignore")


def parse_push(body: bytes) -> PushNotification:
    """A ``send_push`` body, checked and truncated as MPNS does (notes §1.2, steps 1-3)."""
    fields = _typed_fields(_load_object(body), PUSH_KINDS)
    if not fields.get("server_id"):
        raise BadRequest("Failed because of missing server Id")
    if not fields.get("device_id"):
        raise BadRequest("Failed because of missing device Id")
    if "message" in fields:
        fields["message"] = _cut(fields["message"], MESSAGE_MAX_BYTES, MESSAGE_CUT_BYTES)
    if "channel_name" in fields:
        fields["channel_name"] = _cut(
            fields["channel_name"], CHANNEL_NAME_MAX_BYTES, CHANNEL_NAME_MAX_BYTES
        )
    return PushNotification(**fields)


def parse_ack(body: bytes) -> PushNotificationAck:
    """An ``ack`` body; ``id``, ``platform`` and ``type`` are required (notes §1.2)."""
    ack = PushNotificationAck(**_typed_fields(_load_object(body), ACK_KINDS))
    for name, label in (("id", "Id"), ("platform", "platform"), ("type", "type")):
        if not getattr(ack, name):
            raise BadRequest(f"Failed because of missing ack {label}")
    return ack


def split_platform(platform: str) -> tuple[str, int]:
    """``(type, app version)`` from ``platform``: ``apple_rn-v2`` is ``("apple_rn", 2)``.

    As MPNS: the type is what precedes the first ``-v``; the version is the integer
    after it, 1 when absent or not an integer (notes §1.2, step 4).
    """
    if VERSION_SEPARATOR not in platform:
        return platform, DEFAULT_APP_VERSION
    parts = platform.split(VERSION_SEPARATOR)
    suffix = parts[1]
    version = DEFAULT_APP_VERSION
    # Atoi fails on a number outside 64 bits; so does Python's int() on one of over
    # 4,300 digits (a 500 once): the length is checked before converting.
    if len(suffix) <= GO_INT_MAX_CHARS and _GO_INT_RE.fullmatch(suffix):
        number = int(suffix)
        if -GO_INT_MAX - 1 <= number <= GO_INT_MAX:
            version = number
    return parts[0], version


# --- throttle ---------------------------------------------------------------------------

#: The throttle's window: ``ThrottlePerSec`` counts requests per second (in
#: :mod:`pushd.frontends.ratelimit`'s windows, which remember as many sources as MPNS).
THROTTLE_WINDOW: Final = 1.0
#: ``throttled``'s denied answer: Go's ``http.Error(w, "limit exceeded", 429)``.
THROTTLED_BODY: Final = b"limit exceeded\n"
THROTTLED_CONTENT_TYPE: Final = "text/plain; charset=utf-8"


def throttled_reply(limit: int, retry_after: float) -> Reply:
    """The 429 ``throttled`` sends: plain text, rate-limit headers, ``Retry-After``."""
    seconds = str(max(1, math.ceil(retry_after)))
    return Reply(
        status=429,
        body=THROTTLED_BODY,
        content_type=THROTTLED_CONTENT_TYPE,
        headers=(
            ("x-ratelimit-limit", str(limit)),
            ("x-ratelimit-remaining", "0"),
            ("retry-after", seconds),
        ),
    )
