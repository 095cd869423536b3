"""The HPACK decoder of pushd's HTTP/2 clients: hpack's, made cheaper (see HeaderDecoder).

Split from :mod:`pushd.upstream.hpack` (the encoder): answers need the dynamic table and
Huffman coding that requests never use.
"""

from __future__ import annotations

import collections
import functools
from typing import Final

from hpack import HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

from pushd.upstream.hpack import (
    _CONTINUATION_BITS,
    _CONTINUATION_FLAG,
    _INDEXED,
    _INDEXED_PREFIX_BITS,
    _LITERAL_NEVER_INDEXED,
    _LITERAL_PREFIX_BITS,
    _STRING_PREFIX_BITS,
    _TABLE_SIZE_UPDATE,
    _TABLE_SIZE_UPDATE_PREFIX_BITS,
    DEFAULT_TABLE_SIZE,
)

#: RFC 7541 §4.1: every dynamic table entry costs its name and value plus 32 octets.
ENTRY_OVERHEAD: Final = 32
#: h2's default SETTINGS_MAX_HEADER_LIST_SIZE until it sets its own (it always does).
DEFAULT_MAX_HEADER_LIST_SIZE: Final = 1 << 16
_STATIC_TABLE: Final = HeaderTable.STATIC_TABLE
_STATIC_COUNT: Final = len(_STATIC_TABLE)
#: First-byte patterns of the representations a decoder meets (RFC 7541 §6).
_LITERAL_INCREMENTAL: Final = 0x40  # §6.2.1, 6-bit name index
_INCREMENTAL_PREFIX_BITS: Final = 6
_HUFFMAN_FLAG: Final = 0x80
_BYTE_BITS: Final = 8
_BYTE_VALUES: Final = 256
#: The end-of-string symbol (§5.2): padding is a prefix of its code; decoding it is an error.
_EOS: Final = 256
#: A transition of the byte-wise Huffman automaton into the error state.
_HUFFMAN_ERROR: Final = -1


def decode_integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the integer starting at ``data[pos]``; returns ``(value, next pos)``."""
    limit = (1 << prefix_bits) - 1
    try:
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            octet = data[pos]
            pos += 1
            value += (octet & (_CONTINUATION_FLAG - 1)) << shift
            if not octet & _CONTINUATION_FLAG:
                return value, pos
            shift += _CONTINUATION_BITS
    except IndexError:
        raise HPACKDecodingError("Truncated header block") from None


class _HuffmanAutomaton:
    """Huffman decoding one input byte per step (RFC 7541 §5.2, Appendix B).

    hpack decodes four bits per step with a flag check per step; a unique ``apns-id``
    in every response made that about half of all header decoding.  States are the
    internal nodes of the code tree (the root is 0); a step yields the next state and
    the symbols completed on the way.  The code table comes from ``hpack`` (Appendix B),
    the automaton is built on first use (65,536 transitions, about 0.1 s).
    """

    def __init__(self, codes: list[int], lengths: list[int]) -> None:
        # The code tree: node -> [child for bit 0, child for bit 1]; leaves are
        # stored as ~symbol (negative) so they cannot be confused with node numbers.
        tree: list[list[int | None]] = [[None, None]]
        for symbol, (code, length) in enumerate(zip(codes, lengths, strict=True)):
            node = 0
            for shift in range(length - 1, -1, -1):
                bit = (code >> shift) & 1
                if shift == 0:
                    tree[node][bit] = ~symbol
                    break
                child = tree[node][bit]
                if child is None:
                    child = len(tree)
                    tree.append([None, None])
                    tree[node][bit] = child
                assert child >= 0, "Huffman code is not prefix-free"
                node = child
        #: A string may end in a state reached from the root by fewer than eight 1 bits:
        #: that is valid EOS padding (§5.2); anything else is an error.
        self.accepting = bytearray(len(tree))
        node = 0
        for _ in range(_BYTE_BITS):
            self.accepting[node] = 1
            child = tree[node][1]
            if child is None or child < 0:
                break
            node = child
        self.next_state: list[int] = []
        self.emitted: list[bytes] = []
        interned: dict[bytes, bytes] = {}
        for state in range(len(tree)):
            for byte in range(_BYTE_VALUES):
                node, out = state, bytearray()
                for shift in range(_BYTE_BITS - 1, -1, -1):
                    child = tree[node][(byte >> shift) & 1]
                    if child is None or child == ~_EOS:
                        node = _HUFFMAN_ERROR
                        break
                    if child < 0:
                        out.append(~child)
                        node = 0
                    else:
                        node = child
                self.next_state.append(node)
                key = bytes(out)
                self.emitted.append(interned.setdefault(key, key))

    def decode(self, data: bytes) -> bytes:
        """The octets ``data`` encodes; :class:`HPACKDecodingError` if it is malformed."""
        next_state = self.next_state
        emitted = self.emitted
        out: list[bytes] = []
        state = 0
        for byte in data:
            index = state << _BYTE_BITS | byte
            state = next_state[index]
            if state < 0:
                raise HPACKDecodingError("Invalid Huffman string")
            out.append(emitted[index])
        if not self.accepting[state]:
            raise HPACKDecodingError("Invalid Huffman padding")
        return b"".join(out)


@functools.cache
def _huffman() -> _HuffmanAutomaton:
    return _HuffmanAutomaton(REQUEST_CODES, REQUEST_CODES_LENGTH)


class HeaderDecoder:
    """Drop-in for the ``decoder`` of an :class:`h2.connection.H2Connection`.

    APNs answers carry a fresh ``apns-id`` in every response, which the server inserts
    into its dynamic table, so a decoder cannot avoid the table or Huffman coding.  This
    one is hpack's :class:`~hpack.Decoder` made cheaper: no memoryview copies per field,
    no per-field debug logging, and Huffman decoding a byte at a time.  It keeps the
    same contract with h2: ``decode(block, raw=True)`` returns a list of
    :class:`~hpack.HeaderTuple` (:class:`~hpack.NeverIndexedHeaderTuple` for never-indexed
    fields), h2 sets ``max_header_list_size`` and ``max_allowed_table_size`` from our
    SETTINGS, and errors are hpack's exception classes, which h2 turns into protocol errors.
    """

    def __init__(self, max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        #: Largest decoded header list (names + values + 32 per field) we accept.
        self.max_header_list_size = max_header_list_size
        #: Our SETTINGS_HEADER_TABLE_SIZE: the peer may not make its table bigger.
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE
        self._max_size = DEFAULT_TABLE_SIZE
        self._size = 0
        #: Newest entry first: dynamic index 62 is ``_entries[0]``.
        self._entries: collections.deque[tuple[bytes, bytes]] = collections.deque()

    @property
    def header_table_size(self) -> int:
        """The dynamic table's current maximum size, as the peer last set it."""
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max_size = value
        self._evict(value)

    def _evict(self, room: int) -> None:
        entries = self._entries
        while self._size > room:
            name, value = entries.pop()
            self._size -= ENTRY_OVERHEAD + len(name) + len(value)

    def _add(self, name: bytes, value: bytes) -> None:
        """§4.4: make room by evicting the oldest; an entry larger than the table empties it."""
        size = ENTRY_OVERHEAD + len(name) + len(value)
        if size > self._max_size:
            self._entries.clear()
            self._size = 0
            return
        self._evict(self._max_size - size)
        self._entries.appendleft((name, value))
        self._size += size

    def _lookup(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_COUNT:
            return _STATIC_TABLE[index - 1]
        dynamic = index - _STATIC_COUNT - 1
        if 0 <= dynamic < len(self._entries):
            return self._entries[dynamic]
        raise InvalidTableIndexError(f"Invalid table index {index}")

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huffman = data[pos] & _HUFFMAN_FLAG
        length, pos = decode_integer(data, pos, _STRING_PREFIX_BITS)
        end = pos + length
        if end > len(data):
            raise HPACKDecodingError("Truncated header block")
        raw = data[pos:end]
        return (_huffman().decode(raw) if huffman else raw), end

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        """Decode one complete header block, updating the dynamic table as it says.

        ``raw=False`` returns text like hpack does; h2 always asks for bytes.
        """
        headers: list[HeaderTuple] = []
        inflated = 0
        pos = 0
        end = len(data)
        while pos < end:
            first = data[pos]
            if first & _INDEXED:
                index, pos = decode_integer(data, pos, _INDEXED_PREFIX_BITS)
                header = HeaderTuple(*self._lookup(index))
            elif first & _LITERAL_INCREMENTAL:
                index, pos = decode_integer(data, pos, _INCREMENTAL_PREFIX_BITS)
                if index:
                    name = self._lookup(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                self._add(name, value)
                header = HeaderTuple(name, value)
            elif first & _TABLE_SIZE_UPDATE:
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, pos = decode_integer(data, pos, _TABLE_SIZE_UPDATE_PREFIX_BITS)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            else:  # §6.2.2 without indexing, §6.2.3 never indexed
                index, pos = decode_integer(data, pos, _LITERAL_PREFIX_BITS)
                if index:
                    name = self._lookup(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                if first & _LITERAL_NEVER_INDEXED:
                    header = NeverIndexedHeaderTuple(name, value)
                else:
                    header = HeaderTuple(name, value)
            headers.append(header)
            inflated += ENTRY_OVERHEAD + len(header[0]) + len(header[1])
            if inflated > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
        # A peer that was told to shrink its table must have said so in this block.
        if self._max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        if raw:
            return headers
        try:
            return [header.__class__(header[0].decode(), header[1].decode()) for header in headers]
        except UnicodeDecodeError as exc:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from exc
