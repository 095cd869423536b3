"""The second pass over the chat protocols' sections and the app options they use."""

from __future__ import annotations

import uuid

from pushd.config.apps import AppConfig, MatrixAppOptions
from pushd.config.constants import FCM_OPTIONS_RESERVED, MATRIX_APP_ID_MAX, MIN_PATH_SECRET
from pushd.config.protocols import ZulipPinConfig
from pushd.config.root import Config
from pushd.config.values import check_networks
from pushd.model import APNS_PUSH_TYPES, normalize_zulip_hostname


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


def check_zulip(config: Config) -> list[str]:
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


def check_mattermost(config: Config) -> list[str]:
    mattermost = config.mattermost
    problems: list[str] = []
    if mattermost.throttle_per_second < 1:
        problems.append("mattermost.throttle_per_second: must be at least 1")
    secrets: set[str] = set()
    for index, server in enumerate(mattermost.servers):
        key = f"mattermost.servers[{index}]"
        problems += _check_path_secret(f"{key}.path_secret", server.path_secret, secrets)
        problems += check_networks(f"{key}.allowed_networks", server.allowed_networks)
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


def check_rocketchat(config: Config) -> list[str]:
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


def check_matrix(config: Config) -> list[str]:
    matrix = config.matrix
    problems = check_networks("matrix.allowed_networks", matrix.allowed_networks)
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
