"""pushd.toml: one TOML file loaded into frozen attrs classes with cattrs.

Two passes, so that ``pushd check-config`` can list *every* problem at once:

1. structure: unknown keys, missing keys and wrong types, each named by its key path;
2. check: what only the filesystem can say (files exist, keys load, names unique).

Relative paths in the file are resolved against the file's own directory, so a config
and its key files can be moved together.

The package, one module per concern (this module re-exports every public name, so
``from pushd.config import X`` is the one import the rest of pushd needs):

- ``constants``: defaults, limits and the literal types of values;
- ``sections``: the server-wide sections (``[server]``, ``[store]``, ``[spool]``, ...);
- ``apps``: ``[[apps]]`` and its per-protocol options;
- ``protocols``: the chat protocols' sections (``[zulip]``, ``[mattermost]``, ...);
- ``root``: :class:`Config`, the whole file, and :class:`ConfigError`;
- ``loading``: pass 1, reading and structuring the file;
- ``checks``, ``protocol_checks``, ``values``: pass 2;
- ``settings``: the upstream clients' settings built from a checked app.
"""

from pushd.config.apps import AppConfig, FcmApnsDefaults, MatrixAppOptions
from pushd.config.checks import check
from pushd.config.constants import (
    APPLE_ID_LENGTH,
    DEFAULT_DEGRADED_AFTER,
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_FIRST_ATTEMPT_DEADLINE,
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MATRIX_ANSWER_WITHIN,
    DEFAULT_MATRIX_DEDUPE_SECONDS,
    DEFAULT_MATTERMOST_THROTTLE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_METRICS_PORT,
    DEFAULT_POOL_SIZE,
    DEFAULT_PORT,
    DEFAULT_RATE_LIMIT,
    DEFAULT_REDACTED_TEXT,
    DEFAULT_ZULIP_RATE_LIMIT,
    FCM_MAX_TTL,
    FCM_MIN_CONNECTIONS,
    FCM_OPTIONS_RESERVED,
    LEASE_MARGIN,
    MATRIX_APP_ID_MAX,
    MAX_REDACTED_TEXT,
    MAX_WORKERS,
    MIN_ADMIN_TOKEN,
    MIN_PATH_SECRET,
    ZULIP_KIND_APNS,
    ZULIP_KIND_FCM,
    ContentMode,
    LogLevel,
)
from pushd.config.loading import load, load_checked, load_serving, parse
from pushd.config.protocols import (
    MatrixConfig,
    MattermostConfig,
    MattermostServer,
    NativeConfig,
    RocketChatConfig,
    RocketChatServer,
    ZulipConfig,
    ZulipPinConfig,
)
from pushd.config.root import Config, ConfigError
from pushd.config.sections import (
    LogConfig,
    MetricsConfig,
    RetryConfig,
    ServerConfig,
    SpoolConfig,
    StoreConfig,
    UpstreamConfig,
)
from pushd.config.settings import apns_settings, app_proxy, fcm_settings
from pushd.config.values import is_loopback, read_admin_token

__all__ = [
    "APPLE_ID_LENGTH",
    "DEFAULT_DEGRADED_AFTER",
    "DEFAULT_DRAIN_SECONDS",
    "DEFAULT_FIRST_ATTEMPT_DEADLINE",
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MATRIX_ANSWER_WITHIN",
    "DEFAULT_MATRIX_DEDUPE_SECONDS",
    "DEFAULT_MATTERMOST_THROTTLE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_PORT",
    "DEFAULT_RATE_LIMIT",
    "DEFAULT_REDACTED_TEXT",
    "DEFAULT_ZULIP_RATE_LIMIT",
    "FCM_MAX_TTL",
    "FCM_MIN_CONNECTIONS",
    "FCM_OPTIONS_RESERVED",
    "LEASE_MARGIN",
    "MATRIX_APP_ID_MAX",
    "MAX_REDACTED_TEXT",
    "MAX_WORKERS",
    "MIN_ADMIN_TOKEN",
    "MIN_PATH_SECRET",
    "ZULIP_KIND_APNS",
    "ZULIP_KIND_FCM",
    "AppConfig",
    "Config",
    "ConfigError",
    "ContentMode",
    "FcmApnsDefaults",
    "LogConfig",
    "LogLevel",
    "MatrixAppOptions",
    "MatrixConfig",
    "MattermostConfig",
    "MattermostServer",
    "MetricsConfig",
    "NativeConfig",
    "RetryConfig",
    "RocketChatConfig",
    "RocketChatServer",
    "ServerConfig",
    "SpoolConfig",
    "StoreConfig",
    "UpstreamConfig",
    "ZulipConfig",
    "ZulipPinConfig",
    "apns_settings",
    "app_proxy",
    "check",
    "fcm_settings",
    "is_loopback",
    "load",
    "load_checked",
    "load_serving",
    "parse",
    "read_admin_token",
]
