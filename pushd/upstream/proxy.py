"""Reaching APNs, FCM and Google's token endpoint through an HTTP proxy, by CONNECT.

Many networks let servers out only through a proxy.  pushd's HTTP/2 connections
(:mod:`pushd.upstream.h2pool`) open TCP to the proxy, ask it for a tunnel with
``CONNECT host:port`` (with ``Proxy-Authorization: Basic`` when the URL names a user),
and start TLS with ALPN ``h2`` inside the tunnel once the proxy answers 2xx.  The proxy
sees the host name and encrypted bytes, nothing more: no token, no payload, no JWT.
OAuth token requests go through httpx, which is handed the same proxy.

Only ``http://`` proxies: the hop to the proxy is clear text, but all it carries is the
CONNECT line (and the proxy password, as with every Basic-auth proxy: keep the proxy on
a network you trust).  The password never appears in a log line or an error message:
:attr:`Proxy.display` is what pushd shows.

``no_proxy`` follows the ``NO_PROXY`` convention of curl and most HTTP clients: a
comma-separated list of host names (a name also covers its subdomains; a leading dot is
allowed), IP addresses or networks in CIDR form, or ``*`` for everything.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

import attrs
import h11
import trio

__all__ = [
    "Proxy",
    "ProxyError",
    "no_proxy_from_env",
    "open_tunnel",
    "parse_no_proxy",
    "parse_proxy_url",
    "route",
]

#: The only proxy scheme: the tunnel to the proxy is plain HTTP, TLS runs inside it.
PROXY_SCHEME = "http"
#: Bytes of a CONNECT answer's head read before the proxy is declared broken: real ones
#: are a few hundred bytes.
MAX_CONNECT_ANSWER = 16 * 1024
#: Bytes asked of the socket per read while waiting for the CONNECT answer.
READ_SIZE = 4096


class ProxyError(ConnectionError):
    """The proxy could not be reached or would not open the tunnel.

    A :class:`ConnectionError` (so an :class:`OSError`), so every caller that copes with
    a failed connect copes with it too.  The message names the proxy by
    :attr:`Proxy.display`, never with its password.
    """


@attrs.frozen
class Proxy:
    """An HTTP proxy to tunnel through, with the hosts that bypass it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: Hosts reached directly (``NO_PROXY`` syntax, see the module docstring).
    no_proxy: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        """``http://user@host:port``: the proxy as log lines show it (no password)."""
        user = f"{self.username}@" if self.username else ""
        return f"{PROXY_SCHEME}://{user}{_authority(self.host, self.port)}"

    @property
    def url(self) -> str:
        """``http://host:port`` without credentials (httpx takes them apart)."""
        return f"{PROXY_SCHEME}://{_authority(self.host, self.port)}"

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value, or None without a user name."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def bypasses(self, host: str) -> bool:
        """Whether ``host`` is reached directly, by ``no_proxy``."""
        host = host.strip("[]").rstrip(".").lower()
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for entry in self.no_proxy:
            if entry == "*":
                return True
            if address is not None:
                try:
                    if address in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    pass
                continue
            if host == entry or host.endswith("." + entry):
                return True
        return False


def route(proxy: Proxy | None, host: str) -> Proxy | None:
    """The proxy to reach ``host`` through: ``proxy`` unless it is bypassed for ``host``."""
    if proxy is None or proxy.bypasses(host):
        return None
    return proxy


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _no_proxy_entry(entry: str) -> str:
    """One ``NO_PROXY`` entry, normalised: lower case, no leading dot or ``:port``."""
    entry = entry.strip().lower().lstrip(".")
    if entry.startswith("["):  # [v6]:port
        return entry[1:].split("]", 1)[0]
    if entry.count(":") == 1:  # host:port (an IPv6 address has more colons)
        return entry.split(":", 1)[0]
    return entry


def parse_no_proxy(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``NO_PROXY`` entries from a comma-separated string or a list, normalised."""
    items = value.split(",") if isinstance(value, str) else value
    entries = (_no_proxy_entry(item) for item in items)
    return tuple(entry for entry in entries if entry)


def no_proxy_from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The ``no_proxy`` (or ``NO_PROXY``) environment variable's entries."""
    return parse_no_proxy(environ.get("no_proxy") or environ.get("NO_PROXY") or "")


def parse_proxy_url(
    url: str, *, password: str | None = None, no_proxy: tuple[str, ...] = ()
) -> Proxy:
    """``http://[user[:password]@]host:port`` as a :class:`Proxy`.

    ``password`` comes from a password file; it may not be given twice.  Raises
    :class:`ValueError` saying what is wrong, without repeating the URL (it may hold a
    password).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("not a URL like http://proxy.example:3128 (check the port)") from None
    if parts.scheme.lower() != PROXY_SCHEME:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(
            f"must start with http:// (not {shown}): pushd asks the proxy for a tunnel "
            "in plain HTTP and runs TLS inside it"
        )
    if not parts.hostname:
        raise ValueError("names no host: expected http://[user[:password]@]host:port")
    if port is None or port == 0:
        raise ValueError("needs a port, e.g. http://proxy.example:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only http://[user[:password]@]host:port, without a path")
    username = unquote(parts.username) if parts.username is not None else None
    in_url = unquote(parts.password) if parts.password is not None else None
    if password is not None:
        if in_url is not None:
            raise ValueError("has a password, and a password file is given too: keep one")
        if not username:
            raise ValueError("needs a user name (http://user@host:port) for the password file")
    return Proxy(
        host=parts.hostname,
        port=port,
        username=username or None,
        password=password if password is not None else in_url,
        no_proxy=no_proxy,
    )


async def open_tunnel(proxy: Proxy, host: str, port: int) -> trio.SocketStream:
    """A TCP stream to the proxy, tunnelled on to ``host:port``; start TLS on it.

    Raises :class:`ProxyError` if the proxy cannot be reached, refuses (e.g. 407: wrong
    or missing credentials, 403: the port is not allowed) or does not answer HTTP.
    The caller bounds the time it takes.
    """
    target = _authority(host, port)
    try:
        stream = await trio.open_tcp_stream(proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyError(f"proxy {proxy.display} unreachable: {exc.strerror or exc}") from None
    try:
        await _connect(stream, proxy, target)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        raise
    return stream


async def _connect(stream: trio.SocketStream, proxy: Proxy, target: str) -> None:
    """Ask for the tunnel and read the answer's head; raise unless it is 2xx."""
    connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_CONNECT_ANSWER)
    headers = [("Host", target)]
    authorization = proxy.authorization()
    if authorization is not None:
        headers.append(("Proxy-Authorization", authorization))
    request = h11.Request(method="CONNECT", target=target, headers=headers)
    try:
        await stream.send_all(connection.send(request) or b"")
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(READ_SIZE))
            elif isinstance(event, h11.Response):
                break
            elif not isinstance(event, h11.InformationalResponse):
                raise ProxyError(f"proxy {proxy.display} closed the connection on CONNECT")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ProxyError(f"proxy {proxy.display} dropped the connection: {exc}") from None
    except h11.RemoteProtocolError:
        raise ProxyError(f"proxy {proxy.display} did not answer CONNECT in HTTP/1.x") from None
    if not 200 <= event.status_code <= 299:
        reason = event.reason.decode("latin-1", "replace")
        raise ProxyError(
            f"proxy {proxy.display} refused CONNECT {target}: {event.status_code} {reason}"
        )
    if connection.trailing_data[0]:
        # A TLS server never speaks first: bytes here are not from the tunnel's far end.
        raise ProxyError(f"proxy {proxy.display} sent data before the tunnel opened")
