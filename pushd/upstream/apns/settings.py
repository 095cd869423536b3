"""What one APNs app's client needs to know, built by :mod:`pushd.config` from pushd.toml."""

from __future__ import annotations

import attrs

from pushd.upstream.proxy import Proxy

#: Apple's hosts; ``upstream_url`` in the config overrides them (simulator, proxies).
PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"


@attrs.frozen
class TokenAuth:
    """Provider-token (JWT) authentication with a ``.p8`` key."""

    key_pem: bytes = attrs.field(repr=False)
    key_id: str
    team_id: str


@attrs.frozen
class CertAuth:
    """TLS client-certificate authentication (PEM with key, or PKCS#12)."""

    cert_file: str
    password: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ApnsSettings:
    """Connection settings of one configured APNs app."""

    #: The app's name in pushd.toml, for log lines and alarms.
    name: str
    #: ``https://host[:port]`` of the APNs endpoint.
    base_url: str
    #: The app's bundle id; the push-type suffix is added per request.
    topic: str
    auth: TokenAuth | CertAuth
    #: Long-lived HTTP/2 connections kept open to APNs.
    connections: int = 1
    #: Extra CA bundle (PEM) to trust, on top of the system store (simulator, test CA).
    ca_file: str | None = None
    #: How long one request may take before it is reported as RetryLater.
    request_timeout: float = 10.0
    #: An HTTP proxy to tunnel through (unless its ``no_proxy`` names the APNs host).
    proxy: Proxy | None = None
