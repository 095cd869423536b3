"""A minimal HPACK coder for pushd's HTTP/2 clients (APNs, FCM): no dynamic table on send.

Why not :class:`hpack.Encoder`: it is pure Python and does table searches, integer
encoding and (optionally) Huffman coding per header per request; Sygnal spent 28 % of
its APNs CPU there (protocol notes §3.8).  An APNs request is seven or eight headers of
which only ``:path`` changes per request, so here every field is a *literal header field
without indexing* (RFC 7541 §6.2.2) or *never indexed* (§6.2.3), with the name taken
from the static table where it has one, and raw (non-Huffman) strings.  A field's
encoding then depends on nothing but the field itself: it is computed once, cached, and
a header block is a ``b"".join`` of cached pieces plus the new ``:path``.

Never inserting into the dynamic table keeps the peer's decoder trivially in sync: its
dynamic table stays empty whatever happens.  The one duty left is RFC 7541 §4.2: if the
peer lowers SETTINGS_HEADER_TABLE_SIZE below the size its decoder currently allows us,
the next header block must start with a *dynamic table size update* that brings the size
within the new limit.  A raised limit needs nothing, since we never use the room.

The cost is bandwidth: repeated fields (authority, topic, the JWT) are re-sent in full,
some 250 bytes per request more than a fully indexing encoder, on connections that are
never bandwidth-bound.

Shared by :mod:`pushd.upstream.h2conn`, hence by both providers' clients: an FCM
request is the same shape (fixed headers, one bearer token) with the token in the body.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack.table import HeaderTable

#: Representation prefixes (RFC 7541 §6): first-byte patterns and their integer prefixes.
_INDEXED: Final = 0x80  # §6.1, 7-bit index
_INDEXED_PREFIX_BITS: Final = 7
_LITERAL_NOT_INDEXED: Final = 0x00  # §6.2.2, 4-bit name index
_LITERAL_NEVER_INDEXED: Final = 0x10  # §6.2.3, 4-bit name index
_LITERAL_PREFIX_BITS: Final = 4
_TABLE_SIZE_UPDATE: Final = 0x20  # §6.3, 5-bit size
_TABLE_SIZE_UPDATE_PREFIX_BITS: Final = 5
#: String literals (§5.2): H bit clear (raw octets), 7-bit length prefix.
_STRING_PREFIX_BITS: Final = 7
#: Continuation octets of the integer encoding (§5.1) carry 7 bits each.
_CONTINUATION_FLAG: Final = 0x80
_CONTINUATION_BITS: Final = 7

#: The dynamic table size a decoder allows before any SETTINGS (RFC 7540 §6.5.2).
DEFAULT_TABLE_SIZE: Final = HeaderTable.DEFAULT_SIZE
#: Cached field encodings kept at most; the cache is emptied when it is full.  A client
#: sends a handful of distinct repeating fields (authority, topics, push types,
#: priorities, the current JWT), so this is never reached in steady state.
FIELD_CACHE_SIZE: Final = 128
#: Fields whose value is unique per request: caching them would only evict useful entries.
UNCACHED_NAMES: Final = frozenset({b":path", b"apns-id", b"apns-expiration"})


def _static_indices() -> tuple[dict[bytes, int], dict[tuple[bytes, bytes], int]]:
    """(name -> first static index, (name, value) -> static index), 1-based (§2.3.1)."""
    names: dict[bytes, int] = {}
    fields: dict[tuple[bytes, bytes], int] = {}
    for index, (name, value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
        names.setdefault(name, index)
        fields.setdefault((name, value), index)
    return names, fields


_STATIC_NAMES, _STATIC_FIELDS = _static_indices()


def encode_integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """RFC 7541 §5.1: ``value`` in a ``prefix_bits`` prefix OR-ed into ``first_byte``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value > _CONTINUATION_FLAG - 1:
        out.append(_CONTINUATION_FLAG | (value & (_CONTINUATION_FLAG - 1)))
        value >>= _CONTINUATION_BITS
    out.append(value)
    return bytes(out)


def _encode_string(data: bytes) -> bytes:
    """RFC 7541 §5.2 string literal, raw octets."""
    return encode_integer(len(data), _STRING_PREFIX_BITS, 0) + data


def encode_field(name: bytes, value: bytes, sensitive: bool) -> bytes:
    """One header field: fully indexed if the static table has it, else a literal.

    ``sensitive`` fields use the never-indexed form (§7.1.3), which also tells
    intermediaries not to index them: the JWT is a credential.  Neither form, nor the
    indexed one (static entries only), touches the dynamic table.
    """
    if not sensitive:
        index = _STATIC_FIELDS.get((name, value))
        if index is not None:
            return encode_integer(index, _INDEXED_PREFIX_BITS, _INDEXED)
    first = _LITERAL_NEVER_INDEXED if sensitive else _LITERAL_NOT_INDEXED
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        return encode_integer(name_index, _LITERAL_PREFIX_BITS, first) + _encode_string(value)
    return bytes((first,)) + _encode_string(name) + _encode_string(value)


class FieldEncoder:
    """Header fields to HPACK bytes, each field's encoding computed once and cached.

    Every field is encoded without reference to any table state (see the module
    docstring), so encodings can be cached per field and concatenated in any context:
    one instance may serve any number of connections.
    """

    def __init__(self) -> None:
        self._plain: dict[tuple[bytes, bytes], bytes] = {}
        self._sensitive: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The fields' representations, concatenated in order."""
        plain = self._plain
        sensitive = self._sensitive
        parts: list[bytes] = []
        for header in headers:
            never = not getattr(header, "indexable", True)
            cache = sensitive if never else plain
            encoded = cache.get(header)
            if encoded is None:
                name, value = header
                encoded = encode_field(name, value, never)
                if name not in UNCACHED_NAMES:
                    if len(cache) >= FIELD_CACHE_SIZE:
                        cache.clear()
                    cache[header] = encoded
            parts.append(encoded)
        return b"".join(parts)


#: Shared by every batch of every client: field encodings do not depend on the connection.
_SHARED_FIELDS: Final = FieldEncoder()


def encode_fields(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encoded fields for a part of a header block, to pass to :meth:`HeaderEncoder.block`.

    A batch encodes its shared headers once with this and splices only the per-token
    ``:path`` in between, instead of encoding the whole list per request.
    """
    return _SHARED_FIELDS.encode(headers)


class HeaderEncoder(FieldEncoder):
    """Drop-in for the ``encoder`` of an :class:`h2.connection.H2Connection`.

    h2 uses two things of its encoder: ``encode(headers)``, which must return one header
    block, and the ``header_table_size`` setter, called with the peer's
    SETTINGS_HEADER_TABLE_SIZE once our ACK of it is queued.  Headers are ``(name,
    value)`` byte pairs; an :class:`hpack.NeverIndexedHeaderTuple` (``indexable`` false)
    is encoded as never indexed.  :meth:`block` turns fields encoded elsewhere (with
    :func:`encode_fields`) into a header block for this connection.
    """

    def __init__(self) -> None:
        #: The dynamic table size the peer's decoder currently allows us: only ever
        #: lowered, because we never need the room.
        self._table_size = DEFAULT_TABLE_SIZE
        #: A size update must start the next block.
        self._size_update_due = False
        super().__init__()

    @property
    def header_table_size(self) -> int:
        """The dynamic table size announced (or about to be announced) to the peer."""
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # §4.2: only a limit below what the decoder currently allows needs an update; the
        # update announces the lowest limit seen, which satisfies both "the smallest size
        # in the interval" and "the final size" since our table is always empty.
        if value < self._table_size:
            self._table_size = value
            self._size_update_due = True

    def block(self, fields: bytes) -> bytes:
        """The header block that sends ``fields`` (already encoded) on this connection.

        That is ``fields`` itself unless the peer lowered its table size, which the next
        block must acknowledge with a size update in front (RFC 7541 §4.2).  Call it only
        for a block that is certainly sent next.
        """
        if self._size_update_due:
            self._size_update_due = False
            return (
                encode_integer(self._table_size, _TABLE_SIZE_UPDATE_PREFIX_BITS, _TABLE_SIZE_UPDATE)
                + fields
            )
        return fields

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = False) -> bytes:
        """One header block for ``headers``, in order.  ``huffman`` is accepted and ignored.

        Raw strings are deliberate: Huffman coding in pure Python cost more CPU per
        request than the whole budget allows, to save bytes nobody is short of.
        """
        del huffman
        return self.block(super().encode(headers))
