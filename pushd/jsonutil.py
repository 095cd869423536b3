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
from _json import make_encoder
from json.encoder import encode_basestring
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


#: One decoder and one encoder for the process: ``json.loads`` and ``json.dumps`` with
#: any non-default argument build a new one per call, which cost about as much as
#: decoding or encoding a small push itself.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
#: The C encoder that ``_ENCODER.encode`` builds anew on every call (``iterencode``),
#: built once: 1.5-1.9 us less per encode (a push's payload, a native reply), the same
#: text.  Without the circular-reference check, which needs a dict of its own per call:
#: pushd encodes what it decoded or built, never a cycle, and a cycle would still end
#: as an error (:class:`RecursionError`, :class:`NotJson` below).
_C_ENCODER = make_encoder(
    None,
    _ENCODER.default,
    encode_basestring,  # ensure_ascii=False
    None,  # no indent
    _ENCODER.key_separator,
    _ENCODER.item_separator,
    _ENCODER.sort_keys,
    _ENCODER.skipkeys,
    _ENCODER.allow_nan,
)


def loads(data: bytes | str) -> Any:
    """Decode ``data``; :class:`ValueError` if it is not JSON (bad syntax, bad UTF-8,
    NaN, Infinity, a number out of range, an integer of thousands of digits).

    Nesting deep enough to exhaust the stack raises :class:`RecursionError`, as from
    :func:`json.loads`: callers treat it as malformed input too.  Bytes are read as
    UTF-8, -16 or -32 (detected, as :func:`json.loads` does) and strictly, where
    :func:`json.loads` lets the bytes of a UTF-16 surrogate through (``surrogatepass``):
    they are not UTF-8, and a string holding one can be encoded by no upstream, so such
    a body is refused here, in the caller's protocol, like the escape ``"\\ud800"``
    (see :func:`pushd.frontends.http.has_lone_surrogate`).
    """
    if isinstance(data, bytes | bytearray):
        # What detect_encoding answers for every body opening with "{" and no NUL next
        # (no BOM starts with "{"): a chat server's body, without its 0.4 us of checks.
        utf8 = data[:1] == b"{" and data[1:2] != b"\x00"
        data = data.decode("utf-8" if utf8 else json.detect_encoding(data))
    elif data.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    return _DECODER.decode(data)


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (no spaces: read by programs, bytes cost), UTF-8
    characters unescaped; :class:`ValueError` for NaN or an infinity anywhere in it, or
    nesting too deep to encode.

    The decoder goes as deep as the stack allows, so a caller's value decoded near that
    depth, encoded again a few frames further down, raised RecursionError (a 500
    where every caller answers a ValueError with a clear error): it is one here.
    """
    try:
        return "".join(_C_ENCODER(value, 0))
    except RecursionError:
        raise NotJson("nested too deeply to encode") from None


def dumpb(value: Any) -> bytes:
    """:func:`dumps` encoded as UTF-8: an upstream payload or an HTTP body.

    :class:`ValueError` for NaN or an infinity, and :class:`UnicodeEncodeError` (also
    a ValueError) for a lone surrogate, which no UTF-8 encoder takes; nesting too deep
    as :func:`dumps`.
    """
    return dumps(value).encode()


def key_text(*parts: str) -> str:
    """Compact JSON text of a key made of strings (a stored verdict's or dedupe row's
    name, made for every Matrix push): exactly ``json.dumps(list(parts),
    ensure_ascii=False, separators=(",", ":"))``, each string escaped by the encoder's
    own function, at under half the cost of running the encoder on the list."""
    return "[" + ",".join(map(encode_basestring, parts)) + "]"
