"""Where a pool's connections go, how one is opened, and how long to wait before a retry.

Split from :mod:`pushd.upstream.h2pool` because this is the part that changes with the
network path (TCP, an HTTP proxy's CONNECT tunnel, TLS and ALPN, the first SETTINGS)
and with the reconnect back-off, while the pool changes with how batches get stream
slots.  The pool keeps the loop that decides *when* to connect (on demand, or cut short
by a send while the server is unreachable); a :class:`Connector` says *where* and
*how*, and :func:`reconnect_delay` how long the back-off after ``n`` failures is.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable
from typing import Final

import attrs
import trio

from pushd.upstream.h2conn import PoolConnection
from pushd.upstream.h2types import ConnectionFailed, Peer
from pushd.upstream.proxy import Proxy, open_tunnel
from pushd.upstream.tlsio import TlsSocket

#: TCP + TLS + first SETTINGS must complete within this many seconds.
CONNECT_TIMEOUT = 10.0
#: Reconnect backoff after failures: BASE * 2**(n-1), capped, times a jitter factor in
#: [1 - JITTER, 1], so many gateways restarting together do not reconnect in step.
RECONNECT_BACKOFF_BASE = 0.5
RECONNECT_BACKOFF_MAX = 60.0
RECONNECT_JITTER = 0.5
#: While the server is unreachable, a send (which fails at once) cuts the backoff short:
#: the next connect is at most this long after the last.  Without it a 7 s outage left
#: the pool 8 s into its backoff when the server came back, and every send in between
#: failed (and was spooled) though the server was up.  One connect a second while
#: there is traffic is not the churn Apple frowns upon; with no traffic the backoff
#: still grows to RECONNECT_BACKOFF_MAX.
RECONNECT_ON_DEMAND = 1.0


def reconnect_delay(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` consecutive failed connects (>= 1)."""
    delay = min(RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_BASE * 2.0 ** min(failures - 1, 30))
    return delay * (1 - RECONNECT_JITTER * rng())


#: TLS alerts by which a server refuses the client's own certificate (APNs certificate
#: auth: expired, revoked, not one it knows): the credential is wrong, the server is not
#: down.  Apple sends them in the handshake rather than answer 403 ``BadCertificate``.
CERTIFICATE_ALERTS: Final = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)


def refused_certificate(exc: BaseException) -> str | None:
    """The alert (:data:`CERTIFICATE_ALERTS`) if ``exc`` is the server refusing our
    client certificate, else None."""
    if isinstance(exc, ssl.SSLError) and exc.reason in CERTIFICATE_ALERTS:
        return str(exc.reason)
    return None


def root_cause(exc: BaseException) -> BaseException:
    """What really failed: trio wraps a TLS handshake's error (a certificate that does
    not verify) in a BrokenResourceError whose own text is empty."""
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@attrs.frozen
class Connector:
    """Everything a pool's connections are opened with; the same for all of them.

    ``proxy``: open every connection through this HTTP proxy's CONNECT tunnel; a proxy
    that is down or refuses is a failed connect like any other.
    """

    peer: Peer
    host: str
    port: int
    ssl_context: ssl.SSLContext
    proxy: Proxy | None = None
    #: ``host[:port]``, the ``:authority`` of every request.
    authority: str = attrs.field(init=False)
    #: Where connections go, for log lines: the proxy is named, never its password.
    route: str = attrs.field(init=False)

    @authority.default
    def _authority(self) -> str:
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    @route.default
    def _route(self) -> str:
        if self.proxy is None:
            return self.authority
        return f"{self.host}:{self.port} via {self.proxy.display}"

    async def open(
        self, index: int, *, app: str, on_capacity: Callable[[PoolConnection], None]
    ) -> PoolConnection:
        """Connect, negotiate h2 and wait for the server's SETTINGS; started, not served.

        Raises ``OSError``, ``trio.BrokenResourceError``, ``trio.TooSlowError`` (after
        :data:`CONNECT_TIMEOUT`) or :class:`~pushd.upstream.h2types.ConnectionFailed`,
        with the socket closed.
        """
        with trio.fail_after(CONNECT_TIMEOUT):
            if self.proxy is not None:
                tcp = await open_tunnel(self.proxy, self.host, self.port)
            else:
                tcp = await trio.open_tcp_stream(self.host, self.port)
            sock = TlsSocket(tcp, self.ssl_context, self.host)
            try:
                await sock.do_handshake()
                if sock.selected_alpn_protocol() != "h2":
                    raise ConnectionFailed("server did not negotiate HTTP/2 (ALPN h2)")
                conn = PoolConnection(
                    sock, peer=self.peer, app=app, index=index, on_capacity=on_capacity
                )
                await conn.start()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(sock)
                raise
        return conn
