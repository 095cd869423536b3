"""Rocket.Chat's push body (``{"token": ..., "options": {...}}``, protocol notes §3.2),
parsed and checked into a :class:`~pushd.frontends.rocketchat_payloads.GatewayPush`.

Split from :mod:`pushd.frontends.rocketchat`, which serves the routes.  Every refusal is
a :class:`GatewayError` (422: Rocket.Chat never retries bad input) naming the field,
never its value: values are message content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pushd import jsonutil
from pushd.frontends.rocketchat_payloads import GatewayPush

#: A UTF-16 surrogate left in a decoded string: JSON decoding joins whole pairs, so
#: whatever remains is half of one.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class GatewayError(Exception):
    """A request the gateway refuses; becomes a JSON error reply with ``status``."""

    def __init__(self, status: int, message: str, *, retry_after: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


# --- the body ----------------------------------------------------------------------


def bad(message: str) -> GatewayError:
    """A 422 naming the field (Rocket.Chat never retries it)."""
    return GatewayError(422, message)


def _get(options: Mapping[str, Any], name: str, kind: type, path: str = "options") -> Any:
    """``options[name]`` if it is a ``kind`` (None when absent or null); 422 otherwise.

    The message names the field, never its value (values are message content).
    """
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad(f"{path}.{name}: must be a {kind.__name__}")
    return value


def _cut_text(options: Mapping[str, Any], name: str) -> str | None:
    """``title`` or ``text``, less any half of a UTF-16 surrogate pair.

    Rocket.Chat cuts both by UTF-16 code units (``truncateString`` in ``PushClass.send``),
    and releases before its cut learned about surrogate pairs send the first half of an
    emoji the cut splits, as a lone escape no UTF-8 can carry.  The half is dropped, as
    the newer cut drops the whole emoji; a 422 would lose the push.
    """
    value: str | None = _get(options, name, str)
    if value is None or _LONE_SURROGATE.search(value) is None:
        return value
    return _LONE_SURROGATE.sub("", value)


def _not_id(options: Mapping[str, Any]) -> int | None:
    """``notId``: a number on the wire; a numeric string is accepted as Android's app does."""
    value = options.get("notId")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise bad("options.notId: must be an integer") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad("options.notId: must be an integer")
    return value


def _encode(value: Any, field: str) -> str:
    """``value`` as compact JSON (what ``EJSON.stringify`` gives for plain JSON)."""
    try:
        text = jsonutil.dumps(value)
        text.encode()
    except (ValueError, RecursionError):  # NaN, lone surrogates (UnicodeEncodeError)
        raise bad(f"{field}: not encodable as JSON") from None
    return text


def parse_body(body: bytes) -> GatewayPush:
    """Parse and check a ``{token, options}`` body; GatewayError(422) naming the field."""
    try:
        document = jsonutil.loads(body)
    except RecursionError:
        raise bad("the body is nested too deeply") from None
    except ValueError:  # bad JSON, bad UTF-8, NaN, Infinity, numbers out of range
        raise bad("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise bad("the body must be a JSON object")
    token = document.get("token")
    if not isinstance(token, str) or not token:
        raise bad("token: missing")
    options = document.get("options")
    if not isinstance(options, dict):
        raise bad("options: missing")
    apn = _get(options, "apn", dict) or {}
    gcm = _get(options, "gcm", dict) or {}
    badge = _get(options, "badge", int)
    if badge is not None and badge < 0:
        raise bad("options.badge: must be 0 or more")
    expiration = _get(apn, "expirationSeconds", int, "options.apn")
    if expiration is not None and expiration < 0:
        raise bad("options.apn.expirationSeconds: must be 0 or more")
    content_available = options.get("contentAvailable")
    if content_available not in (None, True, False, 0, 1):
        raise bad("options.contentAvailable: must be a boolean")
    payload = options.get("payload")
    return GatewayPush(
        token=token,
        title=_cut_text(options, "title"),
        text=_cut_text(options, "text"),
        badge=badge,
        sound=_get(options, "sound", str),
        not_id=_not_id(options),
        ejson=None if payload is None else _encode(payload, "options.payload"),
        sender=_get(options, "from", str),
        topic=_get(options, "topic", str),
        content_available=bool(content_available),
        apn_category=_get(apn, "category", str, "options.apn") or None,
        apn_expiration_seconds=expiration,
        gcm_style=_get(gcm, "style", str, "options.gcm"),
        gcm_image=_get(gcm, "image", str, "options.gcm"),
    )
