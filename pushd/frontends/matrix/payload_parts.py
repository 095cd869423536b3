"""Parts the Matrix APNs and FCM payload builders share: the error, the pusher's
default payload, compact encoding, character-safe UTF-8 cuts and Sygnal's APNs
truncation (split from :mod:`pushd.frontends.matrix.payloads`).

Pure functions, no I/O, nothing logged; error messages never include content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pushd import jsonutil
from pushd.frontends.matrix.wire import Device


class PayloadError(ValueError):
    """No push can be built for this device; the message never includes content."""


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


def checked_default_payload(device: Device) -> dict[str, Any]:
    default = default_payload(device)
    if default is None:  # the frontend rejects such pushkeys before building anything
        raise PayloadError("default_payload is not a JSON object")
    return default


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON: what pushd sends, and so what the limits are measured on."""
    try:
        return jsonutil.dumpb(value)
    except (TypeError, ValueError):  # UnicodeEncodeError (lone surrogates) included
        raise PayloadError("payload is not encodable as JSON") from None


def _json_cost(text: str) -> int:
    """Bytes a string takes inside compact JSON (quotes and escapes included)."""
    return len(json.dumps(text, ensure_ascii=False).encode())


def cut_utf8(raw: bytes, max_bytes: int) -> bytes:
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
    encoded = encode(payload)
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
        cut = [cut_utf8(raw, level) for raw in raws]
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
    result = encode(_with_choppables(payload, texts))
    if len(result) > limit:  # cannot happen: cut_to(fits) fits
        raise PayloadError(f"APNs payload of {len(result)} bytes > {limit} after truncation")
    return result
