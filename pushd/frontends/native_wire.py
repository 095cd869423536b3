"""The native API's wire models and push building: pure functions over values.

Split from :mod:`pushd.frontends.native` (the handlers): parsing a body into its model,
checking tokens and users, and building the APNs and FCM pushes a send asks for, each
raising :class:`ApiError` naming the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from pushd import jsonutil
from pushd.config import AppConfig
from pushd.frontends.http import Reply, has_lone_surrogate, json_reply
from pushd.model import (
    APNS_PRIORITIES,
    APNS_PUSH_TYPES,
    ApnsPush,
    FcmPush,
    normalize_apns_token,
)
from pushd.typed import WIRE_CONVERTER, describe_error, first_key
from pushd.upstream.apns.request import COLLAPSE_ID_LIMIT, payload_limit
from pushd.upstream.fcm import message as fcm_message

#: Longest user id accepted: chat servers use numbers, UUIDs or e-mail-like ids.
MAX_USER_ID_LENGTH = 256
#: Characters a user id may not hold: C0 controls and DEL (NUL among them).
_CONTROL: Final = re.compile("[\x00-\x1f\x7f]")
#: Most tokens one send may list.
MAX_TOKENS_PER_SEND = 1000
#: Native priorities mapped onto FCM's Android ones.
FCM_PRIORITY = {10: "high", 5: "normal", 1: "normal"}
#: Priority used when the caller names none (APNs' own default for alerts is 10;
#: background pushes must use 5).
DEFAULT_PRIORITY = {"background": 5}


class ApiError(Exception):
    """A request the API refuses; becomes a JSON error reply."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def reply(self) -> Reply:
        error: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        headers = self.headers
        if self.status == 401:
            headers = (("www-authenticate", 'Bearer realm="pushd"'),)
        return json_reply(self.status, {"error": error}, headers)


# --- wire models ------------------------------------------------------------------------


@attrs.frozen
class RegisterBody:
    user: str
    token: str
    app: str


@attrs.frozen
class UnregisterBody:
    token: str
    app: str | None = None


@attrs.frozen
class UserBody:
    user: str


@attrs.frozen
class Alert:
    title: str | None = None
    subtitle: str | None = None
    body: str | None = None


ALERT_FIELDS = frozenset(field.name for field in attrs.fields(Alert))


@attrs.frozen
class SendBody:
    user: str | None = None
    tokens: tuple[str, ...] | None = None
    app: str | None = None
    alert: Any = None  # a string or an Alert object; checked by hand (a union)
    badge: int | None = None
    sound: str | None = None
    data: dict[str, Any] | None = None
    thread_id: str | None = None
    category: str | None = None
    content_available: bool = False
    mutable_content: bool = False
    push_type: str = "alert"
    priority: int | None = None
    #: Seconds the upstream should keep trying; 0 = now or never; default: its own.
    ttl: int | None = None
    collapse_id: str | None = None


def parse_body(body: bytes, model: type[Any]) -> Any:
    try:
        value = jsonutil.loads(body)
    except RecursionError:
        raise ApiError(400, "malformed_json", "the body is nested too deeply") from None
    except ValueError as error:  # bad JSON, bad UTF-8, NaN, huge numbers
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    if has_lone_surrogate(body, value):
        raise ApiError(400, "malformed_json", "the body holds a lone UTF-16 surrogate escape")
    try:
        return WIRE_CONVERTER.structure(value, model)
    except Exception as error:  # cattrs' error tree: report the first key, list them all
        problems = describe_error(error)
        raise ApiError(
            400, "invalid_request", "; ".join(problems), first_key(problems[0])
        ) from None


def check_user(user: str, field: str = "user") -> str:
    if not user or len(user) > MAX_USER_ID_LENGTH:
        raise ApiError(
            400, "invalid_request", f"must be 1 to {MAX_USER_ID_LENGTH} characters", field
        )
    if _CONTROL.search(user) is not None:  # PostgreSQL cannot even store a NUL
        raise ApiError(400, "invalid_request", "must not hold control characters", field)
    return user


def check_token(token: str, provider: str, field: str = "token") -> str:
    """The stored form of a device token of ``provider``; ApiError if it is not one."""
    if provider == "fcm":
        try:
            fcm_message.check_token(token)
        except fcm_message.InvalidToken:
            raise ApiError(400, "invalid_token", "not an FCM registration token", field) from None
        return token
    normalized = normalize_apns_token(token)
    if normalized is None:
        raise ApiError(
            400,
            "invalid_token",
            "an APNs device token is an even number of hex digits (64 to 200)",
            field,
        )
    return normalized


def token_forms(token: str, field: str) -> list[str]:
    """The forms ``token`` may be stored in, whatever its kind (APNs tokens in lower case)."""
    lowered = normalize_apns_token(token)
    if lowered is None:
        try:
            fcm_message.check_token(token)
        except fcm_message.InvalidToken:
            raise ApiError(400, "invalid_token", "not an APNs or FCM token", field) from None
    return [token] if lowered is None or lowered == token else [token, lowered]


def _alert(value: Any) -> str | dict[str, str] | None:
    """A string, or an object with :class:`Alert`'s string fields (checked by hand: this
    runs on every send, and a union is awkward for cattrs)."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "must be a string or an object", "alert")
    for key, item in value.items():
        if key not in ALERT_FIELDS:
            raise ApiError(400, "invalid_request", "unknown key", f"alert.{key}")
        if not isinstance(item, str):
            raise ApiError(400, "invalid_request", "must be a string", f"alert.{key}")
    return value


def for_content(send: SendBody, app: AppConfig) -> SendBody:
    """``send`` as the app's ``content`` mode allows (``full``: unchanged).

    ``redacted``: the alert is ``redacted_text`` alone (a title or subtitle may name the
    sender); ``id_only``: no alert at all.  ``data`` is the caller's own and passes
    unchanged in every mode: it is where the ids the app fetches by belong.
    """
    if app.content == "full" or send.alert is None:
        return send
    if app.content == "id_only":
        return attrs.evolve(send, alert=None)
    text = app.redacted_text
    return attrs.evolve(send, alert=text if isinstance(send.alert, str) else {"body": text})


def build_apns_push(send: SendBody, now: float) -> ApnsPush:
    """The APNs notification a send asks for; raises ApiError naming the bad field."""
    if send.push_type not in APNS_PUSH_TYPES:
        known = ", ".join(sorted(APNS_PUSH_TYPES))
        raise ApiError(400, "invalid_request", f"must be one of {known}", "push_type")
    priority = send.priority
    if priority is None:
        priority = DEFAULT_PRIORITY.get(send.push_type)
    elif priority not in APNS_PRIORITIES:
        raise ApiError(400, "invalid_request", "must be 1, 5 or 10", "priority")
    if send.push_type == "background" and priority == 10:
        raise ApiError(
            400, "invalid_request", "background pushes must use priority 5 or 1", "priority"
        )
    if send.ttl is not None and not 0 <= send.ttl <= fcm_message.MAX_TTL:
        raise ApiError(
            400,
            "invalid_request",
            f"must be 0 to {fcm_message.MAX_TTL} seconds (28 days: FCM's limit; APNs keeps "
            "a push about 30 days)",
            "ttl",
        )
    if send.collapse_id is not None and len(send.collapse_id.encode()) > COLLAPSE_ID_LIMIT:
        raise ApiError(
            400, "invalid_request", f"must be at most {COLLAPSE_ID_LIMIT} bytes", "collapse_id"
        )
    if send.data is not None and "aps" in send.data:
        raise ApiError(400, "invalid_request", "'aps' is reserved for APNs", "data.aps")

    aps: dict[str, Any] = {}
    alert = _alert(send.alert)
    if alert is not None:
        aps["alert"] = alert
    if send.badge is not None:
        if send.badge < 0:
            raise ApiError(400, "invalid_request", "must be 0 or more", "badge")
        aps["badge"] = send.badge
    if send.sound is not None:
        aps["sound"] = send.sound
    if send.thread_id is not None:
        aps["thread-id"] = send.thread_id
    if send.category is not None:
        aps["category"] = send.category
    if send.content_available or send.push_type == "background":
        aps["content-available"] = 1
    if send.mutable_content:
        aps["mutable-content"] = 1
    body = {"aps": aps, **(send.data or {})}
    try:
        payload = jsonutil.dumpb(body)
    except ValueError:  # NaN or a lone surrogate: only from a caller that skipped _parse
        raise ApiError(400, "invalid_request", "not encodable as JSON", "payload") from None
    limit = payload_limit(send.push_type)
    if len(payload) > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"the APNs payload would be {len(payload)} bytes, over the {limit}-byte limit "
            f"for {send.push_type} pushes: shorten the alert or the data",
            "payload",
        )
    expiration = None
    if send.ttl is not None:
        expiration = 0 if send.ttl == 0 else int(now) + send.ttl
    return ApnsPush(
        payload=payload,
        push_type=send.push_type,
        priority=priority,
        expiration=expiration,
        collapse_id=send.collapse_id,
    )


def _fcm_data(data: Mapping[str, Any] | None) -> dict[str, str] | None:
    """FCM data values are strings: strings pass, anything else is sent as its JSON."""
    if data is None:
        return None
    try:
        return {
            key: value if isinstance(value, str) else jsonutil.dumps(value)
            for key, value in data.items()
        }
    except ValueError as error:  # nested too deeply to encode
        raise ApiError(400, "invalid_request", f"not encodable as JSON: {error}", "data") from None


def build_fcm_push(send: SendBody, app: AppConfig, now: float) -> FcmPush:
    """The FCM message a send asks for, with the app's Android and iOS-via-FCM defaults."""
    alert = _alert(send.alert)
    notification = None
    if send.push_type != "background" and alert is not None:
        if isinstance(alert, str):
            notification = fcm_message.Notification(body=alert)
        else:
            notification = fcm_message.Notification(
                title=alert.get("title"), body=alert.get("body")
            )
    priority = app.android_priority
    if send.priority is not None:
        priority = "high" if FCM_PRIORITY.get(send.priority) == "high" else "normal"
    aps: dict[str, Any] = dict(app.fcm_apns.aps) if app.fcm_apns else {}
    for key, value in (
        ("badge", send.badge),
        ("sound", send.sound),
        ("thread-id", send.thread_id),
        ("category", send.category),
        ("content-available", 1 if send.content_available else None),
        ("mutable-content", 1 if send.mutable_content else None),
    ):
        if value is not None:
            aps[key] = value
    apns = None
    if aps or (app.fcm_apns and app.fcm_apns.headers):
        headers = dict(app.fcm_apns.headers) if app.fcm_apns else {}
        apns = fcm_message.ApnsOptions(headers=headers, payload={"aps": aps} if aps else None)
    try:
        return fcm_message.build_push(
            data=_fcm_data(send.data),
            notification=notification,
            android=fcm_message.AndroidOptions(
                priority=priority,
                ttl=app.android_ttl if send.ttl is None else send.ttl,
                collapse_key=send.collapse_id or app.android_collapse_key,
            ),
            apns=apns,
            now=now,
        )
    except fcm_message.InvalidMessage as error:
        text = str(error)
        field = text.split(":", 1)[0]
        if "too big" in text or "bytes" in text:
            raise ApiError(413, "payload_too_large", text, "payload") from None
        raise ApiError(400, "invalid_request", text, field) from None
