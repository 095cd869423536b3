"""Upstream client settings built from a checked app (reads its key files)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pushd.config.apps import AppConfig
from pushd.config.constants import FCM_MIN_CONNECTIONS
from pushd.config.sections import UpstreamConfig
from pushd.config.values import read_password
from pushd.upstream.apns.settings import (
    PRODUCTION_URL,
    SANDBOX_URL,
    ApnsSettings,
    CertAuth,
    TokenAuth,
)
from pushd.upstream.fcm.service_account import load_service_account
from pushd.upstream.fcm.settings import FCM_URL, FcmSettings
from pushd.upstream.proxy import Proxy, no_proxy_from_env, parse_no_proxy, parse_proxy_url


def app_proxy(
    app: AppConfig, upstream: UpstreamConfig, environ: Mapping[str, str] = os.environ
) -> Proxy | None:
    """The proxy ``app`` goes through (its own or ``[upstream]``'s), or None for direct."""
    url, password_file = upstream.proxy, upstream.proxy_password_file
    if app.proxy is not None:
        url, password_file = app.proxy, app.proxy_password_file
    if not url:
        return None
    no_proxy = (
        parse_no_proxy(upstream.no_proxy)
        if upstream.no_proxy is not None
        else no_proxy_from_env(environ)
    )
    return parse_proxy_url(url, password=read_password(password_file), no_proxy=no_proxy)


def fcm_settings(app: AppConfig, upstream: UpstreamConfig) -> FcmSettings:
    """Build the FCM client settings of a checked app (reads its service account)."""
    assert app.service_account_file is not None  # guaranteed by check()
    account = load_service_account(Path(app.service_account_file).read_bytes())
    return FcmSettings(
        name=app.name,
        account=account,
        project_id=app.project_id or account.project_id,
        base_url=app.upstream_url or FCM_URL,
        ca_file=app.upstream_ca_file,
        connections=max(app.connections, FCM_MIN_CONNECTIONS),
        request_timeout=app.request_timeout,
        proxy=app_proxy(app, upstream),
    )


def cert_auth(app: AppConfig) -> CertAuth:
    """The client certificate of an APNs app with ``cert_file`` (reads its password
    file): what its client and the config checks load."""
    assert app.cert_file is not None
    password = None
    if app.cert_password_file is not None:
        password = Path(app.cert_password_file).read_bytes().strip()
    return CertAuth(cert_file=app.cert_file, password=password)


def apns_settings(app: AppConfig, upstream: UpstreamConfig) -> ApnsSettings:
    """Build the APNs client settings of a checked app (reads its key files)."""
    auth: TokenAuth | CertAuth
    if app.cert_file is not None:
        auth = cert_auth(app)
    else:
        assert app.key_file and app.key_id and app.team_id  # guaranteed by check()
        auth = TokenAuth(
            key_pem=Path(app.key_file).read_bytes(), key_id=app.key_id, team_id=app.team_id
        )
    default_url = PRODUCTION_URL if app.environment == "production" else SANDBOX_URL
    assert app.topic is not None  # guaranteed by check()
    return ApnsSettings(
        name=app.name,
        base_url=app.upstream_url or default_url,
        topic=app.topic,
        auth=auth,
        connections=app.connections,
        ca_file=app.upstream_ca_file,
        request_timeout=app.request_timeout,
        proxy=app_proxy(app, upstream),
    )
