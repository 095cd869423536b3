"""What one FCM app's client needs to know, built by :mod:`pushd.config` from pushd.toml."""

from __future__ import annotations

import attrs

from pushd.upstream.proxy import Proxy

#: Google's endpoints; the config can override the FCM one (simulator), and the token
#: endpoint comes from the service-account file, as google-auth does.
FCM_URL = "https://fcm.googleapis.com"
OAUTH_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@attrs.frozen
class ServiceAccount:
    """The fields of a Google service-account JSON file that pushd uses."""

    project_id: str
    client_email: str
    private_key_id: str
    private_key_pem: bytes = attrs.field(repr=False)
    token_uri: str


@attrs.frozen
class FcmSettings:
    """Connection settings of one configured FCM app."""

    #: The app's name in pushd.toml, for log lines and alarms.
    name: str
    account: ServiceAccount
    #: The project messages are sent to (the account's own unless overridden).
    project_id: str
    #: ``https://host[:port]`` of the FCM endpoint.
    base_url: str = FCM_URL
    #: Extra CA bundle (PEM) to trust for FCM and the token endpoint (simulator, test CA).
    ca_file: str | None = None
    #: HTTP/2 connections kept open to FCM (each carries at most 100 streams in httpx).
    connections: int = 2
    #: How long one request may take before it is reported as RetryLater.
    request_timeout: float = 10.0
    #: An HTTP proxy for FCM and the token endpoint (unless its ``no_proxy`` names one).
    proxy: Proxy | None = None
