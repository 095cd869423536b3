"""The client's address behind a reverse proxy, from ``X-Forwarded-For`` or ``Forwarded``.

The README recommends a TLS-terminating proxy in front of pushd, and then every request
comes from the proxy: Mattermost's per-source throttle and every ``allowed_networks``
would see one client.  A proxy passes the address it saw in a forwarding header, and
each proxy on the way appends its own peer, so the list reads client, proxy, proxy...
from left to right.  Only the right end is trustworthy: whatever the client sent is on
the left, unchecked.

The rule (``[server] trusted_proxies``; the server calls this only when the peer is one):
walk the list from the right, skipping addresses of trusted proxies; the first other
hop is the client.  If every hop is trusted, the leftmost is the client.  If that hop
is not an IP address (``unknown``, an RFC 7239 obfuscated name, garbage), or the header
cannot be parsed, the client is unknown and the peer's address stands, as if no header
had come.

When a request carries both headers, ``X-Forwarded-For`` is read and ``Forwarded``
ignored: the proxies pushd is put behind (nginx, Caddy, HAProxy's ``option
forwardfor``, Traefik, Apache) write ``X-Forwarded-For`` and pass other headers along
untouched, so a ``Forwarded`` beside it is the client's own, and believing it would let
a client choose its address.  A proxy that writes only ``Forwarded`` must drop an
incoming ``X-Forwarded-For`` for the same reason.

Pure functions over header values, so every case is a table test; the server pays for
this only on requests from a trusted proxy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Final

from pushd.frontends.http import Network, in_networks

#: One ``name=value`` pair of an RFC 7239 element, with what follows it: ``;`` (the
#: next pair of the same element), ``,`` (the next element) or the end.  A value is a
#: token or a quoted string with backslash escapes.
_PAIR: Final = re.compile(
    r'[ \t]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z:\[\]-]*)'
    r"[ \t]*([;,]|$)"
)
_ESCAPE: Final = re.compile(r"\\(.)")


def forwarded_client(
    headers: Iterable[tuple[bytes, bytes]], peer: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client's address for a request that came from the trusted proxy ``peer``.

    ``headers`` are the request's (lower-case names, as the HTTP server gives them); a header sent
    on several lines is one list, in order.
    """
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"forwarded":
            forwarded.append(value)
    if xff:
        hops: list[str | None] | None = [
            _address(hop) for hop in b",".join(xff).decode("latin-1").split(",")
        ]
    elif forwarded:
        hops = forwarded_for(b",".join(forwarded).decode("latin-1"))
    else:
        return peer
    return rightmost_untrusted(hops, trusted) or peer


def rightmost_untrusted(
    hops: Sequence[str | None] | None, trusted: Sequence[Network]
) -> str | None:
    """The client in ``hops`` (left to right, None where a hop is not an IP address):
    the first from the right that is not a trusted proxy, or the leftmost if all are.
    None if that hop is unknown or there are no hops."""
    if not hops:
        return None
    for hop in reversed(hops):
        if hop is None or not in_networks(hop, trusted):
            return hop
    return hops[0]


def forwarded_for(value: str) -> list[str | None] | None:
    """The ``for=`` address of each element of an RFC 7239 ``Forwarded`` value, left to
    right (None for an element without one, or whose node is not an IP address); None
    if the value does not parse."""
    hops: list[str | None] = []
    node: str | None = None
    position = 0
    while True:
        match = _PAIR.match(value, position)
        if match is None:
            return None
        name, raw, separator = match.groups()
        if name.lower() == "for":
            node = _ESCAPE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        if separator != ";":
            hops.append(_address(node) if node is not None else None)
            node = None
        if not separator:
            return hops
        position = match.end()


def _address(node: str) -> str | None:
    """The IP address of one hop, in its canonical form: ``192.0.2.1``, ``2001:db8::1``,
    with or without a port (``192.0.2.1:4711``, ``[2001:db8::1]:4711``); None for
    anything else."""
    node = node.strip()
    if node.startswith("["):
        host, bracket, _ = node[1:].partition("]")
        if not bracket:
            return None
        node = host
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None
