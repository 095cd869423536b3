"""Our HPACK encoder and decoder against hpack's, which h2 and every peer agree with."""

from __future__ import annotations

import random

import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)

from pushd.upstream import hpackdec as ours
from pushd.upstream.hpack import FIELD_CACHE_SIZE, HeaderEncoder, encode_integer
from pushd.upstream.hpackdec import HeaderDecoder, decode_integer

JWT = b"bearer " + b"e" * 36 + b"." + b"c" * 60 + b"." + b"s" * 86
PATH = b"/3/device/" + b"ab" * 32
SEED = 20240607
ROUNDS = 300
#: Names with and without a static-table entry, including indices above 14 (multi-byte).
NAMES = [
    b":method",
    b":scheme",
    b":authority",
    b":path",
    b"authorization",
    b"www-authenticate",
    b"content-type",
    b"apns-topic",
    b"apns-push-type",
    b"apns-id",
    b"x-" + b"n" * 130,
]


def request_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"api.push.apple.com"),
        NeverIndexedHeaderTuple(b":path", PATH),
        (b"apns-topic", b"com.example.app"),
        (b"apns-push-type", b"alert"),
        (b"apns-priority", b"10"),
        (b"apns-collapse-id", "zwölf".encode()),
        NeverIndexedHeaderTuple(b"authorization", JWT),
    ]


def as_decoded(headers: list[tuple[bytes, bytes]]) -> list[HeaderTuple]:
    """What a decoder must return: plain pairs are HeaderTuples, sensitivity kept."""
    return [h if isinstance(h, HeaderTuple) else HeaderTuple(h[0], h[1]) for h in headers]


def assert_same(decoded: list[HeaderTuple], expected: list[tuple[bytes, bytes]]) -> None:
    assert decoded == as_decoded(expected)
    assert [type(h) for h in decoded] == [type(h) for h in as_decoded(expected)]


# --- integers (RFC 7541 Appendix C.1) ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "prefix", "encoded"),
    [(10, 5, b"\x0a"), (1337, 5, b"\x1f\x9a\x0a"), (42, 8, b"\x2a"), (31, 5, b"\x1f\x00")],
)
def test_integer_examples(value: int, prefix: int, encoded: bytes) -> None:
    assert encode_integer(value, prefix, 0) == encoded
    assert decode_integer(encoded, 0, prefix) == (value, len(encoded))


def test_integer_round_trip() -> None:
    rng = random.Random(SEED)
    for _ in range(ROUNDS):
        value = rng.randrange(1 << rng.randrange(1, 30))
        prefix = rng.randrange(1, 9)
        data = encode_integer(value, prefix, 0)
        assert decode_integer(b"x" + data, 1, prefix) == (value, len(data) + 1)


def test_truncated_integer() -> None:
    with pytest.raises(HPACKDecodingError):
        decode_integer(b"\x1f\x9a", 0, 5)


# --- encoder --------------------------------------------------------------------------


def test_static_entries_are_one_byte() -> None:
    block = HeaderEncoder().encode([(b":method", b"POST"), (b":scheme", b"https")])
    assert block == b"\x83\x87"  # RFC 7541 Appendix A, entries 3 and 7


@pytest.mark.parametrize(
    "headers",
    [
        request_headers(),
        [(b":status", b"200")],
        [(b"apns-id", b"")],
        [(b"x-empty", b"")],
        [NeverIndexedHeaderTuple(b":method", b"POST")],  # sensitive: never a table entry
        [HeaderTuple(b"authorization", JWT)],
        [(b"x-" + b"n" * 130, b"v" * 1000)],
    ],
)
def test_hpack_decodes_our_blocks(headers: list[tuple[bytes, bytes]]) -> None:
    decoder = Decoder()
    encoder = HeaderEncoder()
    for _ in range(2):  # the second block comes from the cache
        assert_same(decoder.decode(encoder.encode(headers), raw=True), headers)
    assert len(decoder.header_table.dynamic_entries) == 0


def test_randomized_blocks_keep_a_decoder_in_sync() -> None:
    rng = random.Random(SEED)
    decoder = Decoder()
    encoder = HeaderEncoder()
    for _ in range(ROUNDS):
        headers: list[tuple[bytes, bytes]] = []
        for _ in range(rng.randrange(1, 10)):
            name = rng.choice(NAMES)
            value = bytes(rng.randrange(32, 127) for _ in range(rng.choice((0, 3, 40, 300))))
            kind = rng.choice((tuple, HeaderTuple, NeverIndexedHeaderTuple))
            headers.append(kind((name, value)) if kind is tuple else kind(name, value))
        assert_same(decoder.decode(encoder.encode(headers), raw=True), headers)
    assert len(decoder.header_table.dynamic_entries) == 0


def test_lowered_table_size_is_announced_once() -> None:
    decoder = Decoder()
    encoder = HeaderEncoder()
    headers = request_headers()
    # The peer lowers SETTINGS_HEADER_TABLE_SIZE; its decoder now insists on an update.
    encoder.header_table_size = 100
    decoder.max_allowed_table_size = 100
    block = encoder.encode(headers)
    assert block.startswith(encode_integer(100, 5, 0x20))
    assert_same(decoder.decode(block, raw=True), headers)
    assert decoder.header_table_size == 100
    # Only the first block after the change carries it.
    assert not encoder.encode(headers).startswith(b"\x3f")
    assert_same(decoder.decode(encoder.encode(headers), raw=True), headers)


def test_without_the_update_a_lowered_table_is_an_error() -> None:
    """Why the update matters: the same block without it is refused."""
    decoder = Decoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(HeaderEncoder().encode(request_headers()), raw=True)


def test_raised_then_lowered_announces_the_lowest() -> None:
    encoder = HeaderEncoder()
    encoder.header_table_size = 0
    encoder.header_table_size = 65536  # raising needs nothing: we never use the room
    block = encoder.encode([(b":status", b"200")])
    assert block == b"\x20\x88"
    assert encoder.header_table_size == 0
    decoder = Decoder()
    decoder.max_allowed_table_size = 0
    assert decoder.decode(block, raw=True) == [(b":status", b"200")]


def test_raised_size_sends_no_update() -> None:
    encoder = HeaderEncoder()
    encoder.header_table_size = 65536
    assert encoder.encode([(b":status", b"200")]) == b"\x88"


def test_h2_passes_huffman_which_is_ignored() -> None:
    assert HeaderEncoder().encode([(b"x", b"y")], huffman=True) == b"\x00\x01x\x01y"


def test_cache_is_bounded_and_skips_per_request_values() -> None:
    encoder = HeaderEncoder()
    for n in range(3 * FIELD_CACHE_SIZE):
        encoder.encode(
            [
                NeverIndexedHeaderTuple(b":path", b"/3/device/%d" % n),
                (b"apns-collapse-id", b"%d" % n),
            ]
        )
    assert 0 < len(encoder._plain) <= FIELD_CACHE_SIZE
    assert not encoder._sensitive  # every :path was unique: none was kept


# --- decoder --------------------------------------------------------------------------


def random_block_headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for _ in range(rng.randrange(1, 8)):
        name = rng.choice(NAMES)
        value = bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 36, 200))))
        if rng.random() < 0.2:
            headers.append(NeverIndexedHeaderTuple(name, value))
        else:
            headers.append((name, value))
    return headers


def test_decoder_matches_hpack_on_randomized_blocks() -> None:
    """hpack's encoder indexes, evicts and Huffman-codes; both decoders must agree."""
    rng = random.Random(SEED)
    encoder = Encoder()
    reference = Decoder()
    decoder = HeaderDecoder()
    for round_ in range(ROUNDS):
        if round_ % 50 == 25:  # the encoder shrinks or grows its table now and then
            size = rng.choice((0, 64, 256, 4096))
            encoder.header_table_size = size
        headers = random_block_headers(rng)
        block = encoder.encode(headers, huffman=rng.random() < 0.7)
        expected = reference.decode(block, raw=True)
        decoded = decoder.decode(block, raw=True)
        assert decoded == expected
        assert [type(h) for h in decoded] == [type(h) for h in expected]
        assert list(decoder._entries) == [
            tuple(entry) for entry in reference.header_table.dynamic_entries
        ]
        assert decoder.header_table_size == reference.header_table_size


def test_decoder_text_mode() -> None:
    block = Encoder().encode([(b"x", "zwölf".encode())])
    assert HeaderDecoder().decode(block) == [("x", "zwölf")]


def test_huffman_all_octets() -> None:
    """Every octet value, after every other (so each automaton state sees many inputs)."""
    value = bytes(range(256)) + bytes(reversed(range(256)))
    block = Encoder().encode([(b"x", value)], huffman=True)
    assert HeaderDecoder().decode(block, raw=True) == [(b"x", value)]


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\xc0", InvalidTableIndexError),  # dynamic index 64, table empty
        (b"\x80", InvalidTableIndexError),  # index 0
        (b"\x00\x05ab", HPACKDecodingError),  # truncated name
        (b"\x00\x81\xff", HPACKDecodingError),  # Huffman: 8 padding bits
        (b"\x00\x81\x00", HPACKDecodingError),  # Huffman: padding is not 1 bits
        (b"\x00\x84\xff\xff\xff\xff", HPACKDecodingError),  # Huffman: EOS inside
        (b"\x88\x20", HPACKDecodingError),  # size update after a field
        (b"\x3f\xe2\x1f", InvalidTableSizeError),  # size 4097 > allowed 4096
    ],
)
def test_decoder_errors(block: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        HeaderDecoder().decode(block, raw=True)
    with pytest.raises(HPACKDecodingError):  # hpack agrees that these are errors
        Decoder().decode(block, raw=True)


def test_decoder_oversized_list() -> None:
    decoder = HeaderDecoder(max_header_list_size=100)
    with pytest.raises(OversizedHeaderListError):
        decoder.decode(Encoder().encode([(b"x", b"v" * 100)]), raw=True)


def test_decoder_requires_announced_shrink() -> None:
    decoder = HeaderDecoder()
    decoder.max_allowed_table_size = 100
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(b"\x88", raw=True)
    assert decoder.decode(b"\x3f\x45\x88", raw=True) == [(b":status", b"200")]  # size 100


def test_oversized_entry_empties_the_table() -> None:
    encoder = Encoder()
    encoder.header_table_size = 64
    decoder = HeaderDecoder()
    small = encoder.encode([(b"a", b"b")])
    assert decoder.decode(small, raw=True) == [(b"a", b"b")]
    assert len(decoder._entries) == 1
    big = encoder.encode([(b"a", b"v" * 100)])
    assert decoder.decode(big, raw=True) == [(b"a", b"v" * 100)]
    assert len(decoder._entries) == 0


def test_huffman_automaton_is_shared() -> None:
    assert ours._huffman() is ours._huffman()
