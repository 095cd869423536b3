"""The sections of the chat protocols: ``[native]``, ``[zulip]``, ``[mattermost]``,
``[rocketchat]`` and ``[matrix]``."""

from __future__ import annotations

from typing import Literal

import attrs

from pushd.config.constants import (
    DEFAULT_MATRIX_ANSWER_WITHIN,
    DEFAULT_MATRIX_DEDUPE_SECONDS,
    DEFAULT_MATTERMOST_THROTTLE,
    DEFAULT_RATE_LIMIT,
    DEFAULT_ZULIP_RATE_LIMIT,
)


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
