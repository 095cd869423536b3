"""pushd.toml: one TOML file loaded into frozen attrs classes with cattrs.

Two passes, so that ``pushd check-config`` can list *every* problem at once:

1. structure: unknown keys, missing keys and wrong types, each named by its key path;
2. check: what only the filesystem can say (files exist, keys load, names unique).

Relative paths in the file are resolved against the file's own directory, so a config
and its key files can be moved together.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from pushd.model import APNS_PUSH_TYPES, RemovalScope, normalize_zulip_hostname
from pushd.tls import server_context
from pushd.typed import CONVERTER, describe_error
from pushd.upstream.apns import jwt as apns_jwt
from pushd.upstream.apns.settings import (
    PRODUCTION_URL,
    SANDBOX_URL,
    ApnsSettings,
    CertAuth,
    TokenAuth,
)
from pushd.upstream.fcm.service_account import ServiceAccountError, load_service_account
from pushd.upstream.fcm.settings import FCM_URL, FcmSettings
from pushd.upstream.proxy import Proxy, no_proxy_from_env, parse_no_proxy, parse_proxy_url

DEFAULT_PORT = 8080
#: PostgreSQL connections per instance: a request needs one for a few milliseconds.
DEFAULT_POOL_SIZE = 10
#: A claimed spool row is another instance's to take after this long: longer than any
#: attempt (request_timeout), short enough that a dead instance's rows move on soon.
DEFAULT_LEASE_SECONDS = 60.0
#: A backlog older than this is an outage worth an alert, not a blip.
DEFAULT_DEGRADED_AFTER = 600.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_FIRST_ATTEMPT_DEADLINE = 10.0
DEFAULT_DRAIN_SECONDS = 10.0
#: ``[server] workers``: more than the machine's cores only adds switching.
MAX_WORKERS = 64
#: Apple's key and team identifiers are ten characters.
APPLE_ID_LENGTH = 10
#: FCM's longest ``android.ttl``: 28 days.
FCM_MAX_TTL = 28 * 24 * 3600
#: httpx carries at most 100 streams per connection: two give FCM room for a fan-out.
FCM_MIN_CONNECTIONS = 2

LogLevel = Literal["debug", "info", "warning", "error"]
#: What of a message an app's pushes carry (see :class:`AppConfig`).
ContentMode = Literal["full", "redacted", "id_only"]

#: Zulip's own bouncer allows each server 1000 requests a minute (``api_by_remote_server``).
DEFAULT_ZULIP_RATE_LIMIT = 1000
#: A secret URL prefix stands in for a password: refuse short ones.
MIN_PATH_SECRET = 16
#: Mattermost's proxy default (`ThrottlePerSec`).
DEFAULT_MATTERMOST_THROTTLE = 300
#: Requests a minute per chat server (native API, Rocket.Chat) or per source address
#: (Matrix): Mattermost's 300 a second, counted over a minute, so a burst (an @all in
#: a room of thousands: a request per user, device or pusher within seconds) passes,
#: while a loop sending as fast as pushd answers is refused within seconds.
DEFAULT_RATE_LIMIT = 18_000
#: Shortest admin token accepted: it guards /healthz's detail like a password.
MIN_ADMIN_TOKEN = 16
#: Synapse waits 60 s for a gateway and sends one pusher's pushes one after another:
#: answer well before, and retry the rest in the background.
DEFAULT_MATRIX_ANSWER_WITHIN = 3.0
#: Synapse retries a failed push after 1 s, doubling: ten minutes covers a burst of
#: its retries after a lost answer.
DEFAULT_MATRIX_DEDUPE_SECONDS = 600.0
#: The client-server API caps ``app_id`` at 64 characters.
MATRIX_APP_ID_MAX = 64
#: Zulip's ``kind`` of a legacy device token: 1 is APNs, 2 is FCM (``PushDeviceToken``).
ZULIP_KIND_APNS = 1
ZULIP_KIND_FCM = 2
#: ``fcm_options`` members pushd sets itself or that would retarget the message.
FCM_OPTIONS_RESERVED = ("token", "topic", "condition", "data")
#: What a push says instead of the message in the ``redacted`` and ``id_only`` modes.
DEFAULT_REDACTED_TEXT = "New message"
#: Longest ``redacted_text``: it replaces a message on a lock screen, not a paragraph.
MAX_REDACTED_TEXT = 200
#: The Prometheus port pushd listens on by default (the OpenTelemetry/Prometheus
#: exporter port, free of pushd's API port).
DEFAULT_METRICS_PORT = 9464


@attrs.frozen
class ServerConfig:
    """``[server]``: where the HTTP API listens and how much it accepts."""

    listen: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: How long a caller waits for the first upstream attempt before hearing "retrying".
    first_attempt_deadline: float = DEFAULT_FIRST_ATTEMPT_DEADLINE
    #: On shutdown, how long in-flight deliveries may finish before they are cancelled.
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    #: Reverse proxies (CIDR) whose ``X-Forwarded-For`` or ``Forwarded`` names the
    #: client (for ``allowed_networks``, throttles and logs); from any other peer those
    #: headers are ignored.
    trusted_proxies: tuple[str, ...] = ()
    #: A file holding the admin token: ``Authorization: Bearer <token>`` reads the
    #: detail of /healthz (as a chat server's key does).  None: no admin token.
    admin_token_file: str | None = None
    #: Where chat servers reach pushd (``https://push.example.com``), behind any proxy:
    #: ``check-config`` builds the URL each chat server needs from it.
    public_url: str | None = None
    #: pushd's process id is written here while it runs, for ``pushd reload``.
    pid_file: str | None = None
    #: Processes serving the API port together (``SO_REUSEPORT``), under one
    #: supervisor (:mod:`pushd.supervisor`); 1: pushd is one process, as before.
    workers: int = 1


@attrs.frozen
class StoreConfig:
    """``[store]``: the embedded SQLite database, or PostgreSQL for several instances."""

    path: str = "/var/lib/pushd/pushd.sqlite3"
    #: PostgreSQL instead of SQLite: ``postgresql://user@host/db`` (libpq's URL; its
    #: environment, PGPASSWORD or ~/.pgpass, works too).  ``path`` is then unused.
    url: str | None = None
    #: A file holding the database password, kept out of the URL and this file.
    password_file: str | None = None
    #: PostgreSQL connections per instance (and worker threads using them).
    pool_size: int = DEFAULT_POOL_SIZE


@attrs.frozen
class SpoolConfig:
    """``[spool]``: deliveries answered "retrying" wait here, sealed, until final."""

    #: Keys that seal the spooled pushes, one per line (base64 of 32 random bytes); new
    #: rows use the first.  Relative to this file.  Created (0600) on first start for
    #: SQLite; with PostgreSQL every instance must have the same file.
    key_file: str = "spool.key"
    #: An instance that claims a row holds it this long before others may take it over.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: /healthz says "degraded" while an app has a row due longer ago than this.
    degraded_after: float = DEFAULT_DEGRADED_AFTER


@attrs.frozen
class MetricsConfig:
    """``[metrics]``: Prometheus metrics at ``/metrics`` on a listener of their own, so
    the API port need not be reachable by Prometheus, nor the metrics by chat servers."""

    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT
    #: A file holding a token that scrapes must send as ``Authorization: Bearer``;
    #: required when ``listen`` is not a loopback address.
    bearer_token_file: str | None = None


@attrs.frozen
class LogConfig:
    """``[log]``."""

    level: LogLevel = "info"
    format: Literal["text", "json"] = "text"


@attrs.frozen
class RetryConfig:
    """``[retry]``: the background retry loop for transient upstream failures."""

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 300.0
    #: Give up on a notification this long after it was first sent if it set no expiry.
    default_ttl: float = 24 * 3600.0
    #: At most this many notifications wait for a retry; beyond it the oldest are dropped.
    max_queued: int = 100_000
    #: How long an app stays paused after a credential error before pushd tries again.
    credential_pause: float = 300.0


@attrs.frozen
class UpstreamConfig:
    """``[upstream]``: how pushd reaches APNs, FCM and Google's token endpoint.

    ``proxy`` sends every app through an HTTP proxy (CONNECT tunnels, see
    :mod:`pushd.upstream.proxy`); an app's own ``proxy`` overrides it, ``""`` for direct.
    """

    #: ``http://[user[:password]@]host:port``; kept out of repr: it may hold a password.
    proxy: str | None = attrs.field(default=None, repr=False)
    #: A file holding the proxy's password, so pushd.toml need not.
    proxy_password_file: str | None = None
    #: Hosts reached without the proxy (``NO_PROXY`` syntax); unset: the ``NO_PROXY``
    #: environment variable.
    no_proxy: tuple[str, ...] | None = None


@attrs.frozen
class FcmApnsDefaults:
    """``[apps.fcm_apns]``: the APNs block FCM forwards to iOS devices of an FCM app."""

    headers: dict[str, str] = attrs.Factory(dict)
    #: Members of ``aps`` added to every message, e.g. ``{"mutable-content" = 1}``.
    aps: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class MatrixAppOptions:
    """``[apps.matrix]``: this app serves Matrix pushers whose ``app_id`` matches.

    The knobs are Sygnal's per-app options under pushd's names (protocol notes §4), so
    an app built against Sygnal gets the same payloads.
    """

    #: Exact app ids or globs (``*`` any run, ``?`` one character, case-sensitive).
    #: An exact match wins; a pushkey matched by globs of two apps is rejected.
    app_ids: tuple[str, ...] = ()
    #: APNs: pushkeys are the base64 of the device token (Element iOS, Element X iOS)
    #: and are sent as hex; false for apps that register the hex token itself.
    convert_pushkey_to_hex: bool = True
    #: Put ``counts`` into the push (APNs ``aps.badge``, FCM ``unread``); false for
    #: apps that count by themselves (counts are wrong with end-to-end encryption).
    send_badge_counts: bool = True
    #: APNs: ``apns-push-type`` (default ``alert``); ``background`` is sent at priority 5.
    push_type: str = "alert"
    #: APNs: map the push rule's ``tweaks.sound`` to ``aps.sound`` (Sygnal does not).
    sound_from_tweaks: bool = False
    #: FCM: the base of every v1 ``message`` (e.g. ``apns`` options for iOS through
    #: FCM, ``android.ttl``); ``data``, ``token`` and ``android.priority`` are pushd's.
    fcm_options: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class AppConfig:
    """One ``[[apps]]`` entry: a mobile app and the credentials to push to it."""

    name: str
    provider: Literal["apns", "fcm"]
    #: APNs: the app's bundle id (APNs topic).
    topic: str | None = None
    #: APNs: which APNs environment the app's tokens belong to.
    environment: Literal["production", "sandbox"] = "production"
    # Token auth (preferred): a .p8 key with its key id and team id.
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    # Certificate auth: PEM (certificate and key) or PKCS#12, optional password file.
    cert_file: str | None = None
    cert_password_file: str | None = None
    # FCM: the Firebase service-account JSON file; project_id overrides the file's.
    service_account_file: str | None = None
    project_id: str | None = None
    #: FCM: Android delivery defaults (``android.priority``, ``ttl`` seconds, collapse key).
    android_priority: Literal["normal", "high"] = "high"
    android_ttl: int | None = None
    android_collapse_key: str | None = None
    fcm_apns: FcmApnsDefaults | None = None
    #: Mattermost: the platform type this app serves (the device id's prefix without
    #: ``-vN``: ``apple_rn``, ``android_rn``, ``apple_rnbeta``, ...).
    mattermost_type: str | None = None
    matrix: MatrixAppOptions | None = None
    #: What of a message this app's pushes carry, whatever the chat server sends:
    #: ``full`` (as sent), ``redacted`` (the text replaced by ``redacted_text``, names
    #: of senders and conversations dropped, ids kept for routing), ``id_only`` (only
    #: the ids the app needs to fetch the message itself).  Per protocol: README,
    #: "Privacy modes".  Zulip's end-to-end encrypted pushes are opaque and untouched.
    content: ContentMode = "full"
    redacted_text: str = DEFAULT_REDACTED_TEXT
    #: Override Apple's or Google's URL, e.g. the bundled simulator.  FCM: only the send
    #: endpoint moves; access tokens still come from the service account's ``token_uri``
    #: (not implied: a proxy or regional endpoint keeps Google's OAuth).
    upstream_url: str | None = None
    #: Extra CA bundle to trust for the upstream (the simulator's CA).
    upstream_ca_file: str | None = None
    connections: int = 1
    #: Notifications in flight at once for this app.
    concurrency: int = 1000
    request_timeout: float = 10.0
    #: This app's HTTP proxy instead of ``[upstream]``'s; ``""``: this app goes direct.
    proxy: str | None = attrs.field(default=None, repr=False)
    proxy_password_file: str | None = None


@attrs.frozen
class ZulipPinConfig:
    """One ``[zulip] allowlist`` entry: a hostname only ``org_id`` may register.

    A hostname alone proves nothing (anyone can claim it, and whoever registers first
    keeps it), while the ``zulip_org_id`` lives in the Zulip server's
    zulip-secrets.conf and is sent to no one but its bouncer.
    """

    hostname: str
    org_id: str


@attrs.frozen
class NativeConfig:
    """``[native]``: pushd's own API under ``/v1``."""

    #: Requests a minute one chat server (one key) may make.
    rate_limit: int = DEFAULT_RATE_LIMIT


@attrs.frozen
class ZulipConfig:
    """``[zulip]``: the Zulip push bouncer under ``/api/v1/remotes/``.

    ``registration`` says who may create a registration with ``manage.py
    register_server``: nobody but servers pre-registered with ``pushd zulip servers add``
    (``closed``), servers whose hostname is pinned to their ``zulip_org_id`` in
    ``allowlist`` or with ``pushd zulip servers allow`` (``allowlist``, the default: an
    open bouncer on the internet would push for anyone), or anybody (``open``, where a
    pinned hostname is still only its org id's).
    """

    registration: Literal["closed", "allowlist", "open"] = "allowlist"
    allowlist: tuple[ZulipPinConfig, ...] = ()
    #: The FCM app (an ``[[apps]]`` name) that serves Zulip's Android registrations.
    #: APNs registrations go to the app whose ``topic`` equals their ``ios_app_id``.
    fcm_app: str | None = None
    #: Requests a minute one Zulip server may make.
    rate_limit: int = DEFAULT_ZULIP_RATE_LIMIT


@attrs.frozen
class MattermostServer:
    """``[[mattermost.servers]]``: one Mattermost server allowed to use the push proxy.

    Mattermost sends no credentials, so the secret is in the URL: the server's "Push
    Notification Server" setting is ``https://<pushd>/<path_secret>``, and Mattermost
    keeps that prefix on every request.
    """

    name: str
    #: The URL path prefix (no slashes): long and random, like a password.
    path_secret: str
    #: Optional source networks (CIDR) this server's requests must come from.
    allowed_networks: tuple[str, ...] = ()
    #: Optional ``server_id`` values its requests must carry.
    server_ids: tuple[str, ...] = ()


@attrs.frozen
class MattermostConfig:
    """``[mattermost]``: the Mattermost push proxy API (``/api/v1/send_push`` and ack)."""

    servers: tuple[MattermostServer, ...] = ()
    #: Requests a second per source address, as Mattermost's proxy throttles.
    throttle_per_second: int = DEFAULT_MATTERMOST_THROTTLE


@attrs.frozen
class RocketChatServer:
    """``[[rocketchat.servers]]``: one Rocket.Chat server allowed to use the push gateway.

    Rocket.Chat sends its cloud token in ``Authorization``, which pushd cannot verify
    offline: instead the admin configures the exact values this server sends, or a
    secret path prefix (its gateway URL is then ``https://<pushd>/<path_secret>``).
    """

    name: str
    #: Accepted ``Authorization`` header values (compared in constant time).
    tokens: tuple[str, ...] = ()
    #: Or a URL path prefix (no slashes) that authenticates the server.
    path_secret: str | None = None
    #: The FCM app (an ``[[apps]]`` name) for this server's Android devices.
    fcm_app: str | None = None


@attrs.frozen
class RocketChatConfig:
    """``[rocketchat]``: the Rocket.Chat push gateway API (``/push/apn|gcm/send``)."""

    servers: tuple[RocketChatServer, ...] = ()
    #: The FCM app for servers that name none.  APNs apps are chosen by
    #: ``options.topic`` (an app's ``topic``).
    fcm_app: str | None = None
    #: Requests a minute one configured server may make (one request per device).
    rate_limit: int = DEFAULT_RATE_LIMIT


@attrs.frozen
class MatrixConfig:
    """``[matrix]``: the Matrix push gateway API (``/_matrix/push/v1/notify``).

    Homeservers send no credentials and the path is fixed by the spec, so the only
    access control is the source address; apps opt in with ``[apps.matrix]``.
    """

    #: Source networks (CIDR) allowed to call notify; empty: anyone (as Sygnal).
    allowed_networks: tuple[str, ...] = ()
    #: Seconds a notify waits for the first upstream attempt before answering; what
    #: is still pending (or failed transiently) is retried in the background.
    answer_within: float = DEFAULT_MATRIX_ANSWER_WITHIN
    #: Seconds a repeated (app_id, pushkey, event_id) is recognised and not sent again.
    dedupe_seconds: float = DEFAULT_MATRIX_DEDUPE_SECONDS
    #: Notify requests a minute per source address (there are no credentials).
    rate_limit: int = DEFAULT_RATE_LIMIT


@attrs.frozen
class Config:
    """The whole of pushd.toml."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    spool: SpoolConfig = SpoolConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    retry: RetryConfig = RetryConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    apps: tuple[AppConfig, ...] = ()
    native: NativeConfig = NativeConfig()
    zulip: ZulipConfig = ZulipConfig()
    mattermost: MattermostConfig = MattermostConfig()
    rocketchat: RocketChatConfig = RocketChatConfig()
    matrix: MatrixConfig = MatrixConfig()
    #: The file this came from; relative paths inside were already resolved against it.
    source: str | None = None

    def app(self, name: str) -> AppConfig | None:
        """The app called ``name``, or None."""
        for app in self.apps:
            if app.name == name:
                return app
        return None

    def zulip_app(self, kind: int, ios_app_id: str | None) -> AppConfig | None:
        """The app serving a Zulip device: APNs by ``ios_app_id`` (the first app whose
        ``topic`` it is), FCM by ``[zulip] fcm_app``."""
        if kind == ZULIP_KIND_APNS:
            for app in self.apps:
                if app.provider == "apns" and ios_app_id is not None and app.topic == ios_app_id:
                    return app
            return None
        return None if self.zulip.fcm_app is None else self.app(self.zulip.fcm_app)

    def removal_scope(self, app: AppConfig) -> RemovalScope:
        """The stored registrations a dead verdict of ``app`` may remove (see there)."""
        kind = ZULIP_KIND_APNS if app.provider == "apns" else ZULIP_KIND_FCM
        ios_app_id = app.topic if app.provider == "apns" else None
        served = self.zulip_app(kind, ios_app_id)
        serves_zulip = served is not None and served.name == app.name
        return RemovalScope(
            environment=app.environment if app.provider == "apns" else "production",
            zulip_kind=kind if serves_zulip else None,
            zulip_ios_app_id=ios_app_id if serves_zulip else None,
        )


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _resolve_paths(config: Config, base: Path) -> Config:
    apps = tuple(
        attrs.evolve(
            app,
            key_file=_resolve(base, app.key_file),
            cert_file=_resolve(base, app.cert_file),
            cert_password_file=_resolve(base, app.cert_password_file),
            service_account_file=_resolve(base, app.service_account_file),
            upstream_ca_file=_resolve(base, app.upstream_ca_file),
            proxy_password_file=_resolve(base, app.proxy_password_file),
        )
        for app in config.apps
    )
    upstream = attrs.evolve(
        config.upstream,
        proxy_password_file=_resolve(base, config.upstream.proxy_password_file),
    )
    server = attrs.evolve(
        config.server,
        tls_cert=_resolve(base, config.server.tls_cert),
        tls_key=_resolve(base, config.server.tls_key),
        admin_token_file=_resolve(base, config.server.admin_token_file),
        pid_file=_resolve(base, config.server.pid_file),
    )
    store = attrs.evolve(
        config.store,
        path=_resolve(base, config.store.path) or config.store.path,
        password_file=_resolve(base, config.store.password_file),
    )
    spool = attrs.evolve(
        config.spool, key_file=_resolve(base, config.spool.key_file) or config.spool.key_file
    )
    metrics = attrs.evolve(
        config.metrics, bearer_token_file=_resolve(base, config.metrics.bearer_token_file)
    )
    return attrs.evolve(
        config,
        apps=apps,
        server=server,
        store=store,
        spool=spool,
        upstream=upstream,
        metrics=metrics,
    )


def _structure_pin(value: Any, kind: Any) -> ZulipPinConfig:
    """An allowlist entry; a bare hostname (the old form) is refused with its fix.

    Before pins, a bare hostname admitted whichever server registered it first, which
    anyone who can reach pushd can do.  Starting with such an entry silently ignored
    would leave the real server refused without a word, so the file is refused instead.
    """
    if isinstance(value, str):
        raise ValueError(
            "a bare hostname admits whoever registers it first; pin its zulip_org_id: "
            f'{{hostname = "{value}", org_id = "<zulip_org_id in its '
            '/etc/zulip/zulip-secrets.conf>"}'
            f" (or drop it and run: pushd zulip servers allow {value} --org-id <zulip_org_id>)"
        )
    if not isinstance(value, dict):
        raise TypeError('expected a table like {hostname = "...", org_id = "..."}')
    pin: ZulipPinConfig = _STRUCTURE_PIN_TABLE(value, kind)
    return pin


_STRUCTURE_PIN_TABLE = CONVERTER.gen_structure_attrs_fromdict(ZulipPinConfig)
CONVERTER.register_structure_hook(ZulipPinConfig, _structure_pin)


def parse(data: dict[str, Any], *, base: Path, source: str | None = None) -> Config:
    """Structure a TOML document into a Config, or raise ConfigError with every problem."""
    try:
        config = CONVERTER.structure(data, Config)
    except Exception as error:  # cattrs raises a tree of errors; flatten them all
        raise ConfigError(describe_error(error)) from None
    if data.get("source") is not None:
        raise ConfigError(["source: unknown key (check its spelling and section)"])
    return attrs.evolve(_resolve_paths(config, base), source=source)


def load(path: str | Path) -> Config:
    """Read and structure ``path``; raise ConfigError naming each problem."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: not readable by this user"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML: {error}"]) from None
    return parse(data, base=path.resolve().parent, source=str(path))


def _check_file(key: str, value: str | None) -> list[str]:
    if value is None:
        return []
    path = Path(value)
    if not path.exists():
        return [f"{key}: no such file {value}"]
    if not path.is_file():
        return [f"{key}: not a regular file {value}"]
    try:
        path.read_bytes()
    except OSError as error:
        return [f"{key}: cannot read {value}: {error.strerror}"]
    return []


def _check_fcm_app(key: str, app: AppConfig) -> list[str]:
    problems: list[str] = []
    for field in ("topic", "key_file", "key_id", "team_id", "cert_file", "cert_password_file"):
        if getattr(app, field) is not None:
            problems.append(f'{key}.{field}: only for provider "apns"')
    if app.service_account_file is None:
        return [*problems, f'{key}.service_account_file: required for provider "fcm"']
    file_problems = _check_file(f"{key}.service_account_file", app.service_account_file)
    if file_problems:
        return problems + file_problems
    try:
        load_service_account(Path(app.service_account_file).read_bytes())
    except ServiceAccountError as error:
        problems.append(f"{key}.service_account_file: {error}")
    if app.android_ttl is not None and not 0 <= app.android_ttl <= FCM_MAX_TTL:
        problems.append(f"{key}.android_ttl: must be 0 to {FCM_MAX_TTL} seconds")
    return problems


def _check_app(index: int, app: AppConfig) -> list[str]:
    key = f"apps[{index}]"
    problems: list[str] = []
    if not app.name:
        problems.append(f"{key}.name: must not be empty")
    if app.connections < 1:
        problems.append(f"{key}.connections: must be at least 1")
    if app.concurrency < 1:
        problems.append(f"{key}.concurrency: must be at least 1")
    if app.request_timeout <= 0:
        problems.append(f"{key}.request_timeout: must be positive")
    if app.upstream_url is not None and not app.upstream_url.startswith("https://"):
        problems.append(f"{key}.upstream_url: must start with https://")
    problems += _check_file(f"{key}.upstream_ca_file", app.upstream_ca_file)
    if not app.redacted_text.strip() or len(app.redacted_text) > MAX_REDACTED_TEXT:
        problems.append(f"{key}.redacted_text: 1 to {MAX_REDACTED_TEXT} characters")
    problems += _check_proxy(key, app.proxy, app.proxy_password_file)
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
        problems += _check_file(f"{key}.cert_file", app.cert_file)
        problems += _check_file(f"{key}.cert_password_file", app.cert_password_file)
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
        file_problems = _check_file(f"{key}.key_file", app.key_file)
        problems += file_problems
        if not file_problems and app.key_file is not None:
            try:
                apns_jwt.load_p8(Path(app.key_file).read_bytes())
            except ValueError as error:
                problems.append(f"{key}.key_file: {error}")
        for field in ("key_id", "team_id"):
            value = getattr(app, field)
            if value is not None and (len(value) != APPLE_ID_LENGTH or not value.isalnum()):
                problems.append(
                    f"{key}.{field}: must be the 10-character id from Apple, got {value!r}"
                )
    return problems


def check(config: Config) -> list[str]:
    """Everything wrong with ``config`` that only the filesystem can tell; empty if fine."""
    problems: list[str] = []
    server = config.server
    if not 0 <= server.port < 65536:
        problems.append("server.port: must be between 1 and 65535 (0: any free port)")
    if not 1 <= server.workers <= MAX_WORKERS:
        problems.append(f"server.workers: must be between 1 and {MAX_WORKERS}")
    if (server.tls_cert is None) != (server.tls_key is None):
        problems.append("server: set both tls_cert and tls_key, or neither")
    tls = _check_file("server.tls_cert", server.tls_cert)
    tls += _check_file("server.tls_key", server.tls_key)
    if not tls and server.tls_cert is not None and server.tls_key is not None:
        try:
            server_context(server.tls_cert, server.tls_key)  # loads: OpenSSL must take them
        except ValueError as error:
            tls.append(f"server.{error}")
    problems += tls
    problems += _check_networks("server.trusted_proxies", server.trusted_proxies)
    if server.max_body_bytes < 1024:
        problems.append("server.max_body_bytes: must be at least 1024")
    if server.first_attempt_deadline <= 0:
        problems.append("server.first_attempt_deadline: must be positive")
    problems += _check_admin_token(server.admin_token_file)
    problems += _check_public_url(server.public_url)
    problems += _check_metrics(config.metrics)
    if config.retry.max_attempts < 1:
        problems.append("retry.max_attempts: must be at least 1")
    problems += _check_proxy("upstream", config.upstream.proxy, config.upstream.proxy_password_file)
    problems += _check_store(config)
    seen: set[str] = set()
    for index, app in enumerate(config.apps):
        if app.name in seen:
            problems.append(f"apps[{index}].name: {app.name!r} is used by an earlier app")
        seen.add(app.name)
        problems += _check_app(index, app)
    for key, limit in (
        ("native.rate_limit", config.native.rate_limit),
        ("rocketchat.rate_limit", config.rocketchat.rate_limit),
        ("matrix.rate_limit", config.matrix.rate_limit),
    ):
        if limit < 1:
            problems.append(f"{key}: must be at least 1 (requests a minute)")
    problems += _check_zulip(config)
    problems += _check_mattermost(config)
    problems += _check_rocketchat(config)
    problems += _check_matrix(config)
    return problems


def read_admin_token(path: str | None) -> str | None:
    """The admin token in ``path`` (surrounding whitespace stripped), or None."""
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8", errors="replace").strip()


def _check_admin_token(path: str | None) -> list[str]:
    problems = _check_file("server.admin_token_file", path)
    if problems or path is None:
        return problems
    token = read_admin_token(path) or ""
    # ASCII: it travels in a header, which HTTP does not decode as UTF-8.
    if len(token) < MIN_ADMIN_TOKEN or not all("!" <= c <= "~" for c in token):
        return [
            f"server.admin_token_file: must hold one token of at least {MIN_ADMIN_TOKEN} "
            "ASCII letters, digits or punctuation"
        ]
    return []


def _check_public_url(url: str | None) -> list[str]:
    if url is None:
        return []
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest or rest.startswith("/") or "?" in url:
        return ["server.public_url: an http(s) URL like https://push.example.com"]
    return []


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from here."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_metrics(metrics: MetricsConfig) -> list[str]:
    """The metrics listener: a port, and a token wherever others can reach it (the
    metrics name every app and chat-server route: an inventory, not for anyone)."""
    if not metrics.enabled:
        return []
    problems: list[str] = []
    if not 0 <= metrics.port < 65536:
        problems.append("metrics.port: must be between 1 and 65535 (0: any free port)")
    if metrics.bearer_token_file is None:
        if not is_loopback(metrics.listen):
            problems.append(
                f"metrics.bearer_token_file: required when metrics.listen ({metrics.listen}) "
                "is not a loopback address: Prometheus sends it (authorization.credentials_file)"
            )
        return problems
    file_problems = _check_file("metrics.bearer_token_file", metrics.bearer_token_file)
    if file_problems:
        return problems + file_problems
    token = read_admin_token(metrics.bearer_token_file) or ""
    if len(token) < MIN_ADMIN_TOKEN or not all("!" <= c <= "~" for c in token):
        problems.append(
            f"metrics.bearer_token_file: must hold one token of at least {MIN_ADMIN_TOKEN} "
            "ASCII letters, digits or punctuation"
        )
    return problems


def _check_store(config: Config) -> list[str]:
    store, spool = config.store, config.spool
    problems: list[str] = []
    if store.url is None:
        store_dir = Path(store.path).parent
        if not store_dir.is_dir():
            problems.append(f"store.path: directory {store_dir} does not exist")
    elif not store.url.startswith(("postgresql://", "postgres://")):
        problems.append("store.url: a PostgreSQL URL like postgresql://pushd@db.example/pushd")
    problems += _check_file("store.password_file", store.password_file)
    if store.pool_size < 1:
        problems.append("store.pool_size: must be at least 1")
    if spool.lease_seconds <= 0:
        problems.append("spool.lease_seconds: must be positive")
    if spool.degraded_after <= 0:
        problems.append("spool.degraded_after: must be positive")
    key_dir = Path(spool.key_file).parent
    if store.url is not None and not Path(spool.key_file).exists():
        problems.append(
            f"spool.key_file: no such file {spool.key_file}; with PostgreSQL every instance "
            "needs the same keys: create it once with `pushd spool new-key` and copy it"
        )
    elif store.url is not None or Path(spool.key_file).exists():
        problems += _check_file("spool.key_file", spool.key_file)
    elif not key_dir.is_dir():
        problems.append(f"spool.key_file: directory {key_dir} does not exist")
    return problems


def _check_fcm_reference(config: Config, key: str, name: str | None) -> list[str]:
    """A reference to an FCM app from a protocol section: it must exist and be FCM."""
    if name is None:
        return []
    app = config.app(name)
    if app is None:
        return [f"{key}: no app named {name!r}"]
    if app.provider != "fcm":
        return [f"{key}: {name!r} is not an FCM app"]
    return []


def _check_zulip(config: Config) -> list[str]:
    zulip = config.zulip
    problems: list[str] = []
    if zulip.rate_limit < 1:
        problems.append("zulip.rate_limit: must be at least 1")
    problems += _check_zulip_pins(zulip.allowlist)
    return problems + _check_fcm_reference(config, "zulip.fcm_app", zulip.fcm_app)


def _check_zulip_pins(pins: tuple[ZulipPinConfig, ...]) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for index, pin in enumerate(pins):
        key = f"zulip.allowlist[{index}]"
        host = normalize_zulip_hostname(pin.hostname)
        if host is None:
            problems.append(f"{key}.hostname: not a hostname like chat.example.com[:port]")
        try:
            org_id = str(uuid.UUID(pin.org_id))
        except ValueError:
            problems.append(f"{key}.org_id: not a UUID (the server's zulip_org_id)")
            continue
        if host is not None and seen.setdefault(host, org_id) != org_id:
            problems.append(f"{key}: {host} is pinned to another org_id above")
    return problems


def _check_path_secret(key: str, secret: str | None, seen: set[str]) -> list[str]:
    if secret is None:
        return []
    problems = []
    if len(secret) < MIN_PATH_SECRET or not all(c.isalnum() or c in "-_" for c in secret):
        problems.append(
            f"{key}: at least {MIN_PATH_SECRET} letters, digits, - or _ "
            "(it is the server's password)"
        )
    if secret in seen:
        problems.append(f"{key}: used by another server")
    seen.add(secret)
    return problems


def _check_mattermost(config: Config) -> list[str]:
    mattermost = config.mattermost
    problems: list[str] = []
    if mattermost.throttle_per_second < 1:
        problems.append("mattermost.throttle_per_second: must be at least 1")
    secrets: set[str] = set()
    for index, server in enumerate(mattermost.servers):
        key = f"mattermost.servers[{index}]"
        problems += _check_path_secret(f"{key}.path_secret", server.path_secret, secrets)
        problems += _check_networks(f"{key}.allowed_networks", server.allowed_networks)
    types: dict[str, str] = {}
    for index, app in enumerate(config.apps):
        if app.mattermost_type is None:
            continue
        if app.mattermost_type in types:
            problems.append(
                f"apps[{index}].mattermost_type: {app.mattermost_type!r} is served by "
                f"{types[app.mattermost_type]!r} already"
            )
        types[app.mattermost_type] = app.name
    return problems


def _check_rocketchat(config: Config) -> list[str]:
    rocketchat = config.rocketchat
    problems = _check_fcm_reference(config, "rocketchat.fcm_app", rocketchat.fcm_app)
    secrets: set[str] = set()
    for index, server in enumerate(rocketchat.servers):
        key = f"rocketchat.servers[{index}]"
        if not server.tokens and server.path_secret is None:
            problems.append(f"{key}: set tokens, path_secret or both (how it authenticates)")
        problems += _check_path_secret(f"{key}.path_secret", server.path_secret, secrets)
        problems += _check_fcm_reference(config, f"{key}.fcm_app", server.fcm_app)
    return problems


def _check_networks(key: str, networks: tuple[str, ...]) -> list[str]:
    problems = []
    for n, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(f"{key}[{n}]: not a network like 10.0.0.0/8")
    return problems


def _check_matrix_app(key: str, app: AppConfig, options: MatrixAppOptions) -> list[str]:
    problems: list[str] = []
    if not options.app_ids:
        problems.append(f"{key}.app_ids: name at least one Matrix app_id (or glob)")
    for n, app_id in enumerate(options.app_ids):
        if not app_id or len(app_id) > MATRIX_APP_ID_MAX:
            problems.append(f"{key}.app_ids[{n}]: 1 to {MATRIX_APP_ID_MAX} characters")
    if app.provider == "fcm":
        defaults = MatrixAppOptions()
        for field in ("convert_pushkey_to_hex", "push_type", "sound_from_tweaks"):
            if getattr(options, field) != getattr(defaults, field):
                problems.append(f'{key}.{field}: only for provider "apns"')
        for member in FCM_OPTIONS_RESERVED:
            if member in options.fcm_options:
                problems.append(f"{key}.fcm_options.{member}: set by pushd, remove it")
        android = options.fcm_options.get("android", {})
        if not isinstance(android, dict):
            problems.append(f"{key}.fcm_options.android: must be a table")
    else:
        if options.fcm_options:
            problems.append(f'{key}.fcm_options: only for provider "fcm"')
        if options.push_type not in APNS_PUSH_TYPES:
            problems.append(
                f"{key}.push_type: one of {', '.join(sorted(APNS_PUSH_TYPES))}, "
                f"got {options.push_type!r}"
            )
    return problems


def _check_matrix(config: Config) -> list[str]:
    matrix = config.matrix
    problems = _check_networks("matrix.allowed_networks", matrix.allowed_networks)
    if matrix.answer_within <= 0:
        problems.append("matrix.answer_within: must be positive")
    if matrix.dedupe_seconds < 0:
        problems.append("matrix.dedupe_seconds: must be 0 (off) or more")
    claimed: dict[str, str] = {}
    for index, app in enumerate(config.apps):
        if app.matrix is None:
            continue
        key = f"apps[{index}].matrix"
        problems += _check_matrix_app(key, app, app.matrix)
        for n, app_id in enumerate(app.matrix.app_ids):
            if app_id in claimed and claimed[app_id] != app.name:
                problems.append(
                    f"{key}.app_ids[{n}]: {app_id!r} is served by {claimed[app_id]!r} already"
                )
            claimed.setdefault(app_id, app.name)
    return problems


def _read_password(path: str | None) -> str | None:
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def _check_proxy(key: str, url: str | None, password_file: str | None) -> list[str]:
    """Problems with a ``proxy`` and its ``proxy_password_file`` (the password unsaid)."""
    if url is None:
        return [f"{key}.proxy_password_file: set {key}.proxy too"] if password_file else []
    if not url:  # "": direct
        return (
            [f"{key}.proxy_password_file: {key}.proxy is empty (direct)"] if password_file else []
        )
    problems = _check_file(f"{key}.proxy_password_file", password_file)
    if problems:
        return problems
    try:
        parse_proxy_url(url, password=_read_password(password_file))
    except (ValueError, UnicodeDecodeError) as error:
        problems.append(f"{key}.proxy: {error}")
    return problems


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
    return parse_proxy_url(url, password=_read_password(password_file), no_proxy=no_proxy)


def load_checked(path: str | Path) -> Config:
    """Load and check; raise ConfigError listing every problem."""
    config = load(path)
    problems = check(config)
    if problems:
        raise ConfigError(problems)
    return config


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


def apns_settings(app: AppConfig, upstream: UpstreamConfig) -> ApnsSettings:
    """Build the APNs client settings of a checked app (reads its key files)."""
    auth: TokenAuth | CertAuth
    if app.cert_file is not None:
        password = None
        if app.cert_password_file is not None:
            password = Path(app.cert_password_file).read_bytes().strip()
        auth = CertAuth(cert_file=app.cert_file, password=password)
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
