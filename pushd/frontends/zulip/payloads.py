"""What Zulip's bouncer sends upstream for a legacy notification: pure functions.

The Zulip server builds ``apns_payload`` and ``gcm_payload``; its bouncer reshapes
them (``custom`` lifted beside ``aps``, FCM values stringified, removal lists cut to
200) and the mobile apps are written against exactly that shape, so this module
reproduces the reshaping and nothing more (protocol notes §2.4, §2.5, §3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pushd import jsonutil
from pushd.config import AppConfig
from pushd.frontends.zulip.wire import bad_request
from pushd.model import ApnsPush, FcmPush
from pushd.upstream.fcm import message as fcm_message

#: Legacy APNs pushes live one day (aioapns ``time_to_live=24*3600`` in Zulip).
APNS_TIME_TO_LIVE = 24 * 3600
#: A removal names at most this many messages; the newest (largest ids) are kept.
MAX_REMOVED_MESSAGE_IDS = 200
FCM_PRIORITIES = frozenset({"high", "normal"})


def truncate_removal(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the 200 largest ids of a removal's ``zulip_message_ids`` ("1,2,3").

    Old servers sent unbounded lists, and a long one would exceed the 4 KB limits.
    """
    result = dict(payload)
    ids = result.get("zulip_message_ids")
    if result.get("event") != "remove" or ids is None:
        return result
    try:
        numbers = sorted(int(part) for part in str(ids).split(","))
    except ValueError:
        raise bad_request("Invalid zulip_message_ids") from None
    result["zulip_message_ids"] = ",".join(map(str, numbers[-MAX_REMOVED_MESSAGE_IDS:]))
    return result


def redact_apns(apns_payload: Mapping[str, Any], app: AppConfig) -> Mapping[str, Any]:
    """The APNs payload as the app's ``content`` mode allows: in ``redacted`` and
    ``id_only``, what Zulip's own ``PUSH_NOTIFICATION_REDACT_CONTENT`` does, the alert
    body becomes the redacted text.

    Titles and the ``zulip`` data stay: the Zulip apps need them to show and route a
    legacy push and cannot fetch one by id, so ``id_only`` can do no more here.  For
    pushes no one but the phone can read, Zulip's end-to-end encrypted pushes (which
    pushd relays untouched) are the way.
    """
    alert = apns_payload.get("alert")
    if app.content == "full" or not isinstance(alert, dict) or "body" not in alert:
        return apns_payload
    return {**apns_payload, "alert": {**alert, "body": app.redacted_text}}


def redact_gcm(gcm_payload: Mapping[str, Any], app: AppConfig) -> Mapping[str, Any]:
    """The FCM data as the app's ``content`` mode allows: ``content`` becomes the
    redacted text (not truncated), as Zulip's own redaction does; see :func:`redact_apns`.
    """
    if app.content == "full" or "content" not in gcm_payload:
        return gcm_payload
    return {**gcm_payload, "content": app.redacted_text, "content_truncated": False}


def apns_body(apns_payload: Mapping[str, Any]) -> bytes:
    """``{**custom, "aps": rest}``: the body Zulip's bouncer sends through aioapns."""
    aps = dict(apns_payload)
    custom = aps.pop("custom", {})
    if not isinstance(custom, dict):
        raise bad_request("Invalid apns_payload")
    custom = dict(custom)
    zulip = custom.get("zulip")
    if isinstance(zulip, dict):
        custom["zulip"] = truncate_removal(zulip)
    try:
        return jsonutil.dumpb({**custom, "aps": aps})
    except ValueError:  # NaN or a lone surrogate: only from a caller that skipped the parser
        raise bad_request("Invalid apns_payload") from None


def build_apns_push(apns_payload: Mapping[str, Any], now: float) -> ApnsPush:
    """No priority header (APNs' default, 10) and a 24-hour expiry, as Zulip sends."""
    return ApnsPush(
        payload=apns_body(apns_payload),
        push_type="alert",
        expiration=int(now) + APNS_TIME_TO_LIVE,
    )


def fcm_data(gcm_payload: Mapping[str, Any]) -> dict[str, str]:
    """FCM data values must be strings: Zulip sends ``str(value)`` for the others."""
    return {
        str(key): value if isinstance(value, str) else str(value)
        for key, value in truncate_removal(gcm_payload).items()
    }


def fcm_priority(options: Any, gcm_payload: Mapping[str, Any]) -> str:
    """Zulip's ``parse_fcm_options``: only ``priority``; default by event type."""
    if not isinstance(options, dict):
        raise bad_request(f"Invalid GCM options to bouncer: {json.dumps(options)}")
    options = dict(options)
    priority = options.pop("priority", None)
    if options:
        raise bad_request(f"Invalid GCM options to bouncer: {json.dumps(options, sort_keys=True)}")
    if priority is None:
        return "high" if gcm_payload.get("event") == "message" else "normal"
    if not isinstance(priority, str) or priority not in FCM_PRIORITIES:  # a list: unhashable
        raise bad_request(f"Invalid GCM option to bouncer: priority {priority!r}")
    return str(priority)


def build_fcm_push(data: Mapping[str, str], priority: str) -> FcmPush:
    """A data-only message (no ``notification``: the app renders it itself)."""
    try:
        return fcm_message.build_push(
            data=data,
            android=fcm_message.AndroidOptions(priority="high" if priority == "high" else "normal"),
        )
    except fcm_message.InvalidMessage as error:
        raise bad_request(f"Invalid gcm_payload: {error}") from None


def test_apns_payload(base: Mapping[str, Any]) -> dict[str, Any]:
    """The test notification Zulip's bouncer builds itself for an APNs device."""
    realm_url = base.get("realm_url", base.get("realm_uri"))
    return {
        "alert": {
            "title": "Test notification",
            "body": f"This is a test notification from {base.get('realm_name')} ({realm_url}).",
        },
        "sound": "default",
        "custom": {"zulip": {**base, "event": "test"}},
    }


def test_gcm_payload(base: Mapping[str, Any], now: float) -> dict[str, Any]:
    return {**base, "event": "test", "time": int(now)}


def deleted_devices(requested: Iterable[str], have: Iterable[str], *, apns: bool) -> list[str]:
    """Tokens the server listed that we no longer hold for the user, sorted.

    APNs compares case-insensitively and answers in the server's casing; each held
    token matches one listed variant, so duplicate variants beyond the first are
    reported (Zulip's ``get_deleted_devices``).
    """
    remaining = [token.lower() if apns else token for token in have]
    missing: list[str] = []
    for token in requested:
        key = token.lower() if apns else token
        if key in remaining:
            remaining.remove(key)
        else:
            missing.append(token)
    return sorted(missing)
