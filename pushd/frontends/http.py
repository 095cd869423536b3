"""The small HTTP vocabulary every frontend speaks, independent of the HTTP server.

A handler takes a parsed :class:`Request` and returns a :class:`Reply`; only
:mod:`pushd.server` knows which server framework carries them.  That keeps protocol code
testable without a server and lets the serving layer be swapped after measuring.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from pushd import jsonutil


@attrs.frozen
class Request:
    """One HTTP request, body fully read (the server enforces the size limit)."""

    method: str
    path: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes = attrs.field(repr=False)
    #: Values captured from the route's ``{name}`` segments.
    params: Mapping[str, str] = attrs.Factory(dict)
    client: str | None = None
    #: Set by the server for log correlation.
    request_id: str = ""


@attrs.frozen
class Reply:
    status: int
    body: bytes = attrs.field(default=b"", repr=False)
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Reply]]
ErrorReply = Callable[[int, str, str], Reply]


@attrs.frozen
class Route:
    """``method`` + ``path`` (with ``{name}`` segments) served by ``handler``."""

    method: str
    path: str
    handler: Handler
    #: Name of the route, unique within the app (used by the serving layer).
    name: str
    #: Largest body this route takes (None: the server's ``max_body_bytes``).  Zulip's
    #: analytics upload, for one, can be megabytes.
    max_body_bytes: int | None = None
    #: How errors the serving layer raises on this route (413, 405) are worded:
    #: ``(status, code, message) -> Reply``, in the route's own protocol.  None: the
    #: native API's ``{"error": {...}}``.
    error_reply: ErrorReply | None = None


def json_reply(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A JSON reply, compact (no spaces): it is read by programs, and bytes cost CPU.
    Strict (:mod:`pushd.jsonutil`): a reply is never NaN or Infinity, which are not JSON."""
    return Reply(status=status, body=jsonutil.dumpb(value), headers=headers)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(networks: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (checked by ``check-config``) as networks; host bits are ignored."""
    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)


def in_networks(client: str | None, networks: Iterable[Network]) -> bool:
    """Whether ``client`` (the peer address) is in one of ``networks``.

    An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 peer) counts
    as the IPv4 address it maps, so ``10.0.0.0/8`` works whichever way pushd listens.
    """
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


#: The start of a ``\u`` escape of a UTF-16 surrogate (D800-DFFF), in either case.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def has_lone_surrogate(body: bytes, value: Any) -> bool:
    """Whether the decoded JSON ``value`` of ``body`` holds a lone UTF-16 surrogate.

    JSON may escape one (``"\\ud800"``) and Python decodes it, but no UTF-8 encoder
    (SQLite's, APNs', FCM's) accepts it: frontends refuse such a body up front, where
    the caller can be told.  Only a body with a surrogate's escape can hold one
    (:func:`pushd.jsonutil.loads` refuses raw surrogates), so others cost a scan: most
    bodies, for Synapse's encoder escapes every non-ASCII character (``\\u00e9``), and
    only an astral one (an emoji: a surrogate pair) falls back to encoding the value.
    """
    if b"\\u" not in body or _SURROGATE_ESCAPE.search(body) is None:
        return False
    try:
        jsonutil.dumpb(value)
    except UnicodeEncodeError:
        return True
    except ValueError:  # too deep to encode: whoever encodes it says so in its protocol
        return False
    return False
