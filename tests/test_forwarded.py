"""The client address behind trusted proxies: X-Forwarded-For and RFC 7239 Forwarded,
table-tested over header values (the wire tests are in test_trusted_proxies.py)."""

from __future__ import annotations

import pytest

from pushd.forwarded import forwarded_client, forwarded_for
from pushd.frontends.http import parse_networks

PEER = "127.0.0.1"
TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.0/8", "2001:db8:cafe::/48"])


def client(*headers: tuple[str, str]) -> str | None:
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers]
    return forwarded_client(raw, PEER, TRUSTED)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        # The client sent a made-up entry; the proxy appended what it saw.
        ("198.51.100.1, 203.0.113.7", "203.0.113.7"),
        # Trusted hops on the right are skipped, the first other one is the client.
        ("198.51.100.1, 203.0.113.7, 10.1.2.3, 127.0.0.1", "203.0.113.7"),
        ("10.1.2.3,10.4.5.6", "10.1.2.3"),  # all trusted: the leftmost
        ("  203.0.113.7  ", "203.0.113.7"),
        ("203.0.113.7:4711", "203.0.113.7"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("2001:DB8:0::1", "2001:db8::1"),  # canonical form
        ("::ffff:203.0.113.7", "::ffff:cb00:7107"),
        # Not an address where the walk stops: the peer stands.
        ("unknown", PEER),
        ("203.0.113.7, garbage", PEER),
        ("", PEER),
        (",", PEER),
        ("[2001:db8::1", PEER),
        ("999.1.1.1", PEER),
        # ...but garbage left of the client is never looked at.
        ("garbage, 203.0.113.7", "203.0.113.7"),
    ],
)
def test_x_forwarded_for(value: str, expected: str) -> None:
    assert client(("x-forwarded-for", value)) == expected


def test_x_forwarded_for_on_several_lines_is_one_list() -> None:
    # HAProxy's `option forwardfor` adds a line after the client's own.
    lines = [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "203.0.113.7")]
    assert client(*lines) == "203.0.113.7"
    assert client(*reversed(lines)) == "198.51.100.1"  # in the lines' order


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("for=203.0.113.7", "203.0.113.7"),
        ("For=203.0.113.7", "203.0.113.7"),
        ('for="203.0.113.7:4711";proto=https;by=10.0.0.1', "203.0.113.7"),
        ('for="[2001:db8::1]:4711"', "2001:db8::1"),
        ('for="[2001:db8::1]"', "2001:db8::1"),
        ("for=198.51.100.1, for=203.0.113.7", "203.0.113.7"),
        ("for=198.51.100.1,for=203.0.113.7 , for=10.0.0.2", "203.0.113.7"),
        ('for="[2001:db8:cafe::2]", for=10.0.0.3', "2001:db8:cafe::2"),  # all trusted
        ('for="\\203.0.113.7"', "203.0.113.7"),  # a quoted-pair
        ('for="a,b", for=203.0.113.7', "203.0.113.7"),  # a comma inside quotes
        # Unknown, obfuscated, missing or garbage where the walk stops: the peer stands.
        ("for=unknown", PEER),
        ("for=_hidden", PEER),
        ("for=203.0.113.7, proto=https", PEER),
        ('for="_gazonk"', PEER),
        ("for=203.0.113.7,", PEER),
        ("for=203.0.113.7 junk", PEER),
        ('for="203.0.113.7', PEER),
        ("", PEER),
        ("=", PEER),
    ],
)
def test_forwarded(value: str, expected: str) -> None:
    assert client(("forwarded", value)) == expected


def test_forwarded_for_lists_each_element() -> None:
    assert forwarded_for('for=192.0.2.43, for="[2001:db8:cafe::17]", by=10.0.0.1') == [
        "192.0.2.43",
        "2001:db8:cafe::17",
        None,
    ]
    assert forwarded_for("for=192.0.2.43;for") is None


def test_x_forwarded_for_wins_over_forwarded() -> None:
    both = [("forwarded", "for=198.51.100.66"), ("x-forwarded-for", "203.0.113.7")]
    assert client(*both) == "203.0.113.7"


def test_no_forwarding_header_leaves_the_peer() -> None:
    assert client(("host", "pushd.example.org")) == PEER
