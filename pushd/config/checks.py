"""The second pass: what only the filesystem can say (files exist, keys load, names
unique), every problem at once so that ``pushd check-config`` lists them all."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Final

from pushd.config.apps import AppConfig
from pushd.config.constants import (
    APPLE_ID_LENGTH,
    FCM_MAX_TTL,
    LEASE_MARGIN,
    MAX_CONNECTIONS,
    MAX_REDACTED_TEXT,
    MAX_WORKERS,
)
from pushd.config.protocol_checks import (
    check_matrix,
    check_mattermost,
    check_rocketchat,
    check_zulip,
)
from pushd.config.root import Config
from pushd.config.sections import MetricsConfig
from pushd.config.settings import cert_auth
from pushd.config.values import (
    check_file,
    check_networks,
    check_proxy,
    check_token_file,
    is_loopback,
)
from pushd.spool.seal import SealError, key_file_missing, read_keys
from pushd.tls import server_context
from pushd.upstream.apns import jwt as apns_jwt
from pushd.upstream.apns.certificate import load_client_certificate
from pushd.upstream.fcm.service_account import load_service_account

#: An app's settings that name files.
APP_FILES: Final = (
    "key_file",
    "cert_file",
    "cert_password_file",
    "service_account_file",
    "upstream_ca_file",
    "proxy_password_file",
)


def file_settings(config: Config) -> list[tuple[str, str]]:
    """Every file or path the config names, by key (what :func:`lookup_problems` and
    the checks below look at)."""
    server, store = config.server, config.store
    named = [
        ("server.tls_cert", server.tls_cert),
        ("server.tls_key", server.tls_key),
        ("server.admin_token_file", server.admin_token_file),
        ("server.pid_file", server.pid_file),
        ("store.path", store.path),
        ("store.password_file", store.password_file),
        ("spool.key_file", config.spool.key_file),
        ("metrics.bearer_token_file", config.metrics.bearer_token_file),
        ("upstream.proxy_password_file", config.upstream.proxy_password_file),
    ]
    for index, app in enumerate(config.apps):
        for field in APP_FILES:
            named.append((f"apps[{index}].{field}", getattr(app, field)))
    return [(key, value) for key, value in named if value is not None]


def lookup_problems(config: Config) -> list[str]:
    """The files the system cannot even look up (a name too long, a loop of links, a
    directory on the way it may not search): the other checks would trip over them."""
    problems = []
    for key, value in file_settings(config):
        try:
            Path(value).stat()
        except (FileNotFoundError, NotADirectoryError):
            pass  # the checks below say what each key needs
        except OSError as error:
            problems.append(f"{key}: cannot look up {value}: {error.strerror}")
    return problems


def check(config: Config) -> list[str]:
    """Everything wrong with ``config`` that only the filesystem can tell; empty if fine."""
    return check_apart(config)[0]


def check_apart(config: Config) -> tuple[list[str], dict[str, list[str]]]:
    """:func:`check`'s problems, and among them each app's :func:`credential_problems`
    by app name (``serve``'s start treats those apart: :func:`load_serving`)."""
    credentials: dict[str, list[str]] = {}
    problems = lookup_problems(config)
    if problems:
        return problems, credentials
    server = config.server
    if not 0 <= server.port < 65536:
        problems.append("server.port: must be between 1 and 65535 (0: any free port)")
    if not 1 <= server.workers <= MAX_WORKERS:
        problems.append(f"server.workers: must be between 1 and {MAX_WORKERS}")
    if (server.tls_cert is None) != (server.tls_key is None):
        problems.append("server: set both tls_cert and tls_key, or neither")
    tls = check_file("server.tls_cert", server.tls_cert)
    tls += check_file("server.tls_key", server.tls_key)
    if not tls and server.tls_cert is not None and server.tls_key is not None:
        try:
            server_context(server.tls_cert, server.tls_key)  # loads: OpenSSL must take them
        except ValueError as error:
            tls.append(f"server.{error}")
    problems += tls
    problems += check_networks("server.trusted_proxies", server.trusted_proxies)
    if server.max_body_bytes < 1024:
        problems.append("server.max_body_bytes: must be at least 1024")
    if server.first_attempt_deadline <= 0:
        problems.append("server.first_attempt_deadline: must be positive")
    problems += check_token_file("server.admin_token_file", server.admin_token_file)
    problems += _check_public_url(server.public_url)
    problems += _check_metrics(config.metrics, server.port)
    if server.drain_seconds < 0:
        problems.append("server.drain_seconds: must not be negative")
    problems += _check_retry(config)
    problems += check_proxy("upstream", config.upstream.proxy, config.upstream.proxy_password_file)
    problems += _check_store(config)
    seen: set[str] = set()
    for index, app in enumerate(config.apps):
        if app.name in seen:
            problems.append(f"apps[{index}].name: {app.name!r} is used by an earlier app")
        seen.add(app.name)
        problems += _check_app(index, app, credentials)
    for key, limit in (
        ("native.rate_limit", config.native.rate_limit),
        ("rocketchat.rate_limit", config.rocketchat.rate_limit),
        ("matrix.rate_limit", config.matrix.rate_limit),
    ):
        if limit < 1:
            problems.append(f"{key}: must be at least 1 (requests a minute)")
    problems += check_zulip(config)
    problems += check_mattermost(config)
    problems += check_rocketchat(config)
    problems += check_matrix(config)
    return problems, credentials


def _check_retry(config: Config) -> list[str]:
    """``[retry]``, and leases that outlast every app's attempts: a row whose lease ran
    out while its push was still in flight would be claimed and sent again."""
    retry = config.retry
    problems: list[str] = []
    if retry.max_attempts < 1:
        problems.append("retry.max_attempts: must be at least 1")
    for key, value in (
        ("base_delay", retry.base_delay),
        ("default_ttl", retry.default_ttl),
        ("credential_pause", retry.credential_pause),
    ):
        if value <= 0:
            problems.append(f"retry.{key}: must be positive")
    if retry.max_delay < retry.base_delay:
        problems.append("retry.max_delay: must be at least retry.base_delay")
    if retry.max_queued < 1:
        problems.append("retry.max_queued: must be at least 1")
    lease = config.spool.lease_seconds
    for index, app in enumerate(config.apps):
        if app.request_timeout + LEASE_MARGIN > lease:
            problems.append(
                f"apps[{index}].request_timeout: {app.request_timeout:g} s leaves spool."
                f"lease_seconds ({lease:g} s) under {LEASE_MARGIN:g} s of margin: a push "
                "still in flight when its lease ran out would be sent again"
            )
    return problems


def _check_public_url(url: str | None) -> list[str]:
    if url is None:
        return []
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/") or "?" in url:
        return ["server.public_url: an http(s) URL like https://push.example.com"]
    return []


def _check_metrics(metrics: MetricsConfig, server_port: int) -> list[str]:
    """The metrics listener: a port, and a token wherever others can reach it (the
    metrics name every app and chat-server route: an inventory, not for anyone)."""
    if not metrics.enabled:
        return []
    problems: list[str] = []
    if not 0 <= metrics.port < 65536:
        problems.append("metrics.port: must be between 1 and 65535 (0: any free port)")
    if metrics.port and metrics.port == server_port:
        problems.append(f"metrics.port: {metrics.port} is server.port too; give each its own")
    if metrics.bearer_token_file is None:
        if not is_loopback(metrics.listen):
            problems.append(
                f"metrics.bearer_token_file: required when metrics.listen ({metrics.listen}) "
                "is not a loopback address: Prometheus sends it (authorization.credentials_file)"
            )
        return problems
    return problems + check_token_file("metrics.bearer_token_file", metrics.bearer_token_file)


def _check_store(config: Config) -> list[str]:
    store, spool = config.store, config.spool
    problems: list[str] = []
    if store.url is None:
        store_dir = Path(store.path).parent
        if not store_dir.is_dir():
            problems.append(f"store.path: directory {store_dir} does not exist")
    elif not store.url.startswith(("postgresql://", "postgres://")):
        problems.append("store.url: a PostgreSQL URL like postgresql://pushd@db.example/pushd")
    problems += check_file("store.password_file", store.password_file)
    if store.pool_size < 1:
        problems.append("store.pool_size: must be at least 1")
    if spool.lease_seconds <= 0:
        problems.append("spool.lease_seconds: must be positive")
    if spool.degraded_after <= 0:
        problems.append("spool.degraded_after: must be positive")
    key_dir = Path(spool.key_file).parent
    # An empty file is one a failed start left: serve and new-key replace it.
    missing = key_file_missing(Path(spool.key_file))
    if store.url is not None and missing:
        what = "an empty file" if Path(spool.key_file).exists() else "no such file"
        problems.append(
            f"spool.key_file: {what} {spool.key_file}; with PostgreSQL every instance "
            "needs the same keys: create it once with `pushd spool new-key` and copy it"
        )
    elif store.url is not None or not missing:
        problems += check_file("spool.key_file", spool.key_file) or _check_keys(spool.key_file)
    elif not key_dir.is_dir():
        problems.append(f"spool.key_file: directory {key_dir} does not exist")
    return problems


def _check_keys(key_file: str) -> list[str]:
    """The key file parses (serve, check-config and a reload refuse one that does not)."""
    try:
        read_keys(Path(key_file))
    except SealError as error:
        return [f"spool.key_file: {error}"]
    return []


def _check_fcm_app(key: str, app: AppConfig) -> list[str]:
    problems: list[str] = []
    for field in ("topic", "key_file", "key_id", "team_id", "cert_file", "cert_password_file"):
        if getattr(app, field) is not None:
            problems.append(f'{key}.{field}: only for provider "apns"')
    if app.service_account_file is None:
        problems.append(f'{key}.service_account_file: required for provider "fcm"')
    if app.android_ttl is not None and not 0 <= app.android_ttl <= FCM_MAX_TTL:
        problems.append(f"{key}.android_ttl: must be 0 to {FCM_MAX_TTL} seconds")
    return problems


def _check_app(index: int, app: AppConfig, credentials: dict[str, list[str]]) -> list[str]:
    key = f"apps[{index}]"
    problems: list[str] = []
    if not app.name:
        problems.append(f"{key}.name: must not be empty")
    if not 1 <= app.connections <= MAX_CONNECTIONS:
        problems.append(f"{key}.connections: must be between 1 and {MAX_CONNECTIONS}")
    if app.concurrency < 1:
        problems.append(f"{key}.concurrency: must be at least 1")
    if app.request_timeout <= 0:
        problems.append(f"{key}.request_timeout: must be positive")
    if app.upstream_url is not None and not app.upstream_url.startswith("https://"):
        problems.append(f"{key}.upstream_url: must start with https://")
    credentials[app.name] = credential_problems(index, app)
    problems += credentials[app.name]
    if not app.redacted_text.strip() or len(app.redacted_text) > MAX_REDACTED_TEXT:
        problems.append(f"{key}.redacted_text: 1 to {MAX_REDACTED_TEXT} characters")
    problems += check_proxy(key, app.proxy, app.proxy_password_file)
    if app.provider == "fcm":
        return problems + _check_fcm_app(key, app)
    for field in ("service_account_file", "project_id", "android_ttl", "android_collapse_key"):
        if getattr(app, field) is not None:
            problems.append(f'{key}.{field}: only for provider "fcm"')
    if app.fcm_apns is not None:
        problems.append(f'{key}.fcm_apns: only for provider "fcm"')
    if not app.topic:
        problems.append(f'{key}.topic: required for provider "apns" (the app\'s bundle id)')
    token_auth = [app.key_file, app.key_id, app.team_id]
    if app.key_file is not None and app.cert_file is not None:
        problems.append(f"{key}: set either key_file (token auth) or cert_file, not both")
    elif app.cert_file is not None:
        pass  # its files: credential_problems
    elif any(value is None for value in token_auth):
        missing = [
            name
            for name, value in zip(("key_file", "key_id", "team_id"), token_auth, strict=True)
            if value is None
        ]
        problems.append(
            f"{key}: token auth needs {', '.join(missing)} (or set cert_file for certificate auth)"
        )
    else:
        for field in ("key_id", "team_id"):
            value = getattr(app, field)
            if value is not None and (len(value) != APPLE_ID_LENGTH or not value.isalnum()):
                problems.append(
                    f"{key}.{field}: must be the 10-character id from Apple, got {value!r}"
                )
    return problems


def credential_problems(index: int, app: AppConfig) -> list[str]:
    """What is wrong with the files app ``index`` authenticates and connects with (its
    key, certificate, service account, CA bundle): missing, unreadable or not parsing.

    Kept apart from the config's other problems because ``serve`` treats them apart: a
    wrong setting is the config's fault and refuses the start, but a credential file
    broken on disk (a renewal script's half-written key, a lost permission) is that app's
    alone, and must not keep every other app from starting after a reboot
    (:mod:`pushd.unusable`)."""
    key = f"apps[{index}]"
    problems = check_file(f"{key}.upstream_ca_file", app.upstream_ca_file)
    if not problems and app.upstream_ca_file is not None:
        problems += _openssl(f"{key}.upstream_ca_file", _ca_loader(app.upstream_ca_file))
    if app.provider == "fcm":
        if app.service_account_file is not None:
            problems += _parsed(
                f"{key}.service_account_file", app.service_account_file, load_service_account
            )
    elif app.key_file is not None and app.cert_file is None:
        problems += _parsed(f"{key}.key_file", app.key_file, apns_jwt.load_p8)
    elif app.cert_file is not None and app.key_file is None:
        files = check_file(f"{key}.cert_file", app.cert_file)
        files += check_file(f"{key}.cert_password_file", app.cert_password_file)
        problems += files or _openssl(f"{key}.cert_file", _certificate_loader(app))
    return problems


def _ca_loader(ca_file: str) -> Callable[[ssl.SSLContext], None]:
    return lambda context: context.load_verify_locations(cafile=ca_file)


def _certificate_loader(app: AppConfig) -> Callable[[ssl.SSLContext], None]:
    auth = cert_auth(app)
    return lambda context: load_client_certificate(context, auth)


def _openssl(key: str, load: Callable[[ssl.SSLContext], None]) -> list[str]:
    """What OpenSSL says of a file ``load`` puts into a bare client context: one that
    can be read but is not PEM (or, for a certificate, PKCS#12), lacks its key or needs
    another password would otherwise pass every check and fail only in the app's
    client, leaving check-config's "OK" wrong and the app paused at the next start."""
    try:
        load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    except ssl.SSLError as error:
        return [f"{key}: OpenSSL cannot use it ({error.reason or 'not PEM'})"]
    except (ValueError, TypeError) as error:  # a PKCS#12 bundle cryptography refuses
        return [f"{key}: {error}"]
    except OSError as error:  # gone or unreadable since check_file looked
        return [f"{key}: {error.strerror}"]
    return []


def _parsed(key: str, path: str, parse: Callable[[bytes], object]) -> list[str]:
    """:func:`check_file`, then ``parse`` of its bytes (ValueError: the problem)."""
    problems = check_file(key, path)
    if not problems:
        try:
            parse(Path(path).read_bytes())
        except ValueError as error:  # ServiceAccountError and InvalidProviderKey too
            problems.append(f"{key}: {error}")
        except OSError as error:  # gone or unreadable since check_file looked
            problems.append(f"{key}: cannot read {path}: {error.strerror}")
    return problems
