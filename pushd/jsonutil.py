"""Strict JSON: RFC 8259 and nothing more, in both directions.

Python's :mod:`json` reads and writes ``NaN``, ``Infinity`` and ``-Infinity``, and reads
a number too large for a double (``1e400``) as infinity.  None of that is JSON: APNs,
FCM, Go's and JavaScript's parsers refuse it, so a chat server's ``{"x": NaN}`` taken at
face value would become a payload the upstream cannot read, or a 500 where an encoder
finally refuses.  Every parser in pushd decodes with :func:`loads`, which refuses them
at the door where the caller can be told in its own protocol, and every encoder of an
upstream payload or a reply uses :func:`dumps`, which refuses to produce them.

A leaf module (standard library only): the frontends, the payload builders and the
upstream clients all import it.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NotJson(ValueError):
    """A number JSON cannot express.  A :class:`ValueError`, like every other decoding
    failure, so callers catch one exception for all malformed bodies."""


def _refuse_constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"{text} is out of range for a JSON number")
    return value


def loads(data: bytes | str) -> Any:
    """Decode ``data``; :class:`ValueError` if it is not JSON (bad syntax, bad UTF-8,
    NaN, Infinity, a number out of range, an integer of thousands of digits).

    Nesting deep enough to exhaust the stack raises :class:`RecursionError`, as from
    :func:`json.loads`: callers treat it as malformed input too.
    """
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (no spaces: read by programs, bytes cost), UTF-8
    characters unescaped; :class:`ValueError` for NaN or an infinity anywhere in it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumpb(value: Any) -> bytes:
    """:func:`dumps` encoded as UTF-8: an upstream payload or an HTTP body.

    :class:`ValueError` for NaN or an infinity, and :class:`UnicodeEncodeError` (also
    a ValueError) for a lone surrogate, which no UTF-8 encoder takes.
    """
    return dumps(value).encode()
