"""The whole of pushd.toml as one value, and the error that lists its problems.
The sections' defaults are shared instances of frozen attrs classes defined in sibling
modules, which ruff cannot see are immutable (RUF009): sharing them is safe.
"""

# ruff: noqa: RUF009

from __future__ import annotations

import attrs

from pushd.config.apps import AppConfig
from pushd.config.constants import ZULIP_KIND_APNS, ZULIP_KIND_FCM
from pushd.config.protocols import (
    MatrixConfig,
    MattermostConfig,
    NativeConfig,
    RocketChatConfig,
    ZulipConfig,
)
from pushd.config.sections import (
    LogConfig,
    MetricsConfig,
    RetryConfig,
    ServerConfig,
    SpoolConfig,
    StoreConfig,
    UpstreamConfig,
)
from pushd.model import RemovalScope


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
