"""What ``pushd check-config`` prints for a config that passed the checks.

The checks (:func:`pushd.config.check`) say what is wrong; this says what pushd will do:
one line per app in its provider's own terms (an FCM app has no topic), which chat
servers will be served, the exact setting each one needs pasted (built from
``[server] public_url``), and warnings for settings that are valid but will surprise.
Pure functions over a :class:`~pushd.config.Config`: no file is read here.
"""

from __future__ import annotations

import os
from typing import Final
from urllib.parse import urlsplit

from pushd.config import AppConfig, Config, ZulipConfig, is_loopback
from pushd.config.constants import SHUTDOWN_MARGIN, UNIT_STOP_TIMEOUT
from pushd.upstream.apns.settings import PRODUCTION_URL, SANDBOX_URL

#: The Matrix push gateway path, fixed by the spec.
MATRIX_NOTIFY_PATH: Final = "/_matrix/push/v1/notify"
#: Characters of a path secret shown, at its start, when masked: with the 16 required,
#: 12 stay hidden (a check-config output pasted into a ticket gives no head start; both
#: ends showed half of a 16-character secret).
SECRET_SHOWN: Final = 4
#: ``listen`` values that mean "every address": a URL cannot name them.
ANY_ADDRESS: Final = frozenset({"0.0.0.0", "::", ""})


def mask_secret(secret: str) -> str:
    """Enough of a path secret to tell which one it is, not enough to use it."""
    if len(secret) <= 3 * SECRET_SHOWN:
        return "…"
    return f"{secret[:SECRET_SHOWN]}…"


def public_url(config: Config) -> tuple[str, bool]:
    """The URL chat servers reach pushd at, and whether it was derived (not configured)."""
    server = config.server
    if server.public_url:
        return server.public_url.rstrip("/"), False
    scheme = "https" if server.tls_cert else "http"
    host = "<this host>" if server.listen in ANY_ADDRESS else server.listen
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    port = "" if server.port == default else f":{server.port}"
    return f"{scheme}://{host}{port}", True


def _apns_auth(app: AppConfig) -> str:
    if app.key_file is not None:
        return f"token auth (key {app.key_id}, team {app.team_id})"
    return "certificate auth" + (" (password file)" if app.cert_password_file else "")


def app_line(app: AppConfig, account: tuple[str, str] | None = None) -> str:
    """One app in its provider's terms: what an admin compares with Apple's or Google's
    console.  ``account``: an FCM app's service account (project id, client email)."""
    if app.provider == "fcm":
        project = app.project_id or (account[0] if account else "(from the service account)")
        email = f", service account {account[1]}" if account else ""
        upstream = f", upstream {app.upstream_url}" if app.upstream_url else ""
        return f"{app.name}: FCM, project {project}{email}{upstream}"
    default = PRODUCTION_URL if app.environment == "production" else SANDBOX_URL
    upstream = app.upstream_url or default
    return (
        f"{app.name}: APNs, topic {app.topic}, {_apns_auth(app)}, {app.environment} "
        f"({upstream}), {app.connections} connection(s)"
    )


def _zulip_lines(config: Config, base: str) -> list[str]:
    apns = [a for a in config.apps if a.provider == "apns"]
    ios = ", ".join(f"{a.topic} ({a.name})" for a in apns) or "none"
    android = config.zulip.fcm_app or "none ([zulip] fcm_app)"
    return [
        f"Zulip: served under {base}/api/v1/remotes/ (registration: {config.zulip.registration})",
        "  in /etc/zulip/settings.py (Zulip 10 and later):",
        f'    ZULIP_SERVICES_URL = "{base}"',
        "    ZULIP_SERVICE_PUSH_NOTIFICATIONS = True",
        f'  older Zulip servers: PUSH_NOTIFICATION_BOUNCER_URL = "{base}"',
        "  then: ./manage.py register_server",
        f"  iOS apps by ios_app_id: {ios}; Android: {android}",
    ]


def _mattermost_lines(config: Config, base: str) -> list[str]:
    servers = config.mattermost.servers
    if not servers:
        return ["Mattermost: not served (no [[mattermost.servers]])"]
    lines = ["Mattermost: System Console > Notifications > Push Notification Server:"]
    for server in servers:
        lines.append(
            f"  {server.name}: {base}/{mask_secret(server.path_secret)} "
            "(the secret is masked: paste path_secret in its place)"
        )
    types = ", ".join(f"{a.mattermost_type} -> {a.name}" for a in config.apps if a.mattermost_type)
    lines.append(f"  platforms: {types or 'none (set mattermost_type on your apps)'}")
    return lines


def _rocketchat_lines(config: Config, base: str) -> list[str]:
    servers = config.rocketchat.servers
    if not servers:
        return ["Rocket.Chat: not served (no [[rocketchat.servers]])"]
    lines = ["Rocket.Chat: Administration > Push > Gateway:"]
    for server in servers:
        if server.path_secret is not None:
            url = f"{base}/{mask_secret(server.path_secret)} (paste path_secret for the …)"
        else:
            url = f"{base} (it authenticates with one of its tokens)"
        lines.append(f"  {server.name}: {url}")
    return lines


def _matrix_lines(config: Config, base: str) -> list[str]:
    apps = [a for a in config.apps if a.matrix is not None]
    if not apps:
        return ["Matrix: not served (no app has [apps.matrix])"]
    lines = [
        f'Matrix: the pusher URL your apps register ({{"url": ...}} in pusher data): '
        f"{base}{MATRIX_NOTIFY_PATH}"
    ]
    for app in apps:
        assert app.matrix is not None
        lines.append(f"  app_id {', '.join(app.matrix.app_ids)} -> {app.name}")
    return lines


def endpoint_lines(config: Config) -> list[str]:
    """Each chat server pushd serves and what to paste into it."""
    base, _ = public_url(config)
    return [
        f"native API: {base}/v1 (keys from `pushd server add NAME`)",
        *_zulip_lines(config, base),
        *_mattermost_lines(config, base),
        *_rocketchat_lines(config, base),
        *_matrix_lines(config, base),
    ]


def warnings(config: Config) -> list[str]:
    """Valid settings that will surprise: each says what happens and what to change."""
    found: list[str] = []
    base, derived = public_url(config)
    server = config.server
    cores = len(os.sched_getaffinity(0))
    if server.workers > cores:
        found.append(
            f"server.workers is {server.workers} but this machine gives pushd {cores} "
            "CPU(s): workers beyond one per CPU only add switching; lower it"
        )
    if derived:
        found.append(
            f"server.public_url is not set: the URLs above use {base}, derived from listen "
            "and port; set it to the URL chat servers reach pushd at (through any proxy)"
        )
    elif base.startswith("http://") and not is_loopback(urlsplit(base).hostname or ""):
        found.append(
            "server.public_url is plain http: device tokens and messages cross the "
            "network unencrypted; put pushd behind TLS (contrib/ has an nginx example)"
        )
    if any(a.matrix is not None for a in config.apps) and not config.matrix.allowed_networks:
        found.append(
            "matrix.allowed_networks is empty: anyone who can reach pushd may call the "
            "Matrix notify endpoint; list your homeservers' networks"
        )
    zulip = config.zulip
    if zulip == ZulipConfig():  # Zulip is served, but nothing says it is wanted
        pass
    elif zulip.registration == "closed" and not zulip.allowlist:
        found.append(
            'zulip.registration is "closed" and zulip.allowlist is empty: no new Zulip '
            "server can register; only those added with `pushd zulip servers add` are served"
        )
    elif zulip.registration == "allowlist" and not zulip.allowlist:
        found.append(
            "zulip.allowlist is empty: a Zulip server can register only after "
            "`pushd zulip servers allow HOSTNAME --org-id ZULIP_ORG_ID`"
        )
    elif zulip.registration == "open" and not is_loopback(server.listen):
        found.append(
            'zulip.registration is "open" on a non-loopback address: any Zulip server '
            "that reaches pushd can register and push through your apps"
        )
    if (
        zulip != ZulipConfig()
        and zulip.fcm_app is None
        and any(a.provider == "fcm" for a in config.apps)
    ):
        found.append("zulip.fcm_app is not set: Zulip's Android devices have no app")
    for app in config.apps:
        if app.provider == "apns" and app.environment == "sandbox" and not app.upstream_url:
            found.append(
                f"app {app.name} uses APNs sandbox: only development builds receive its pushes"
            )
    if server.drain_seconds + SHUTDOWN_MARGIN > UNIT_STOP_TIMEOUT:
        found.append(
            f"server.drain_seconds is {server.drain_seconds:g}: a stop takes up to "
            f"{SHUTDOWN_MARGIN:g} s more (answers, spool writes, the store), past the "
            f"systemd unit's TimeoutStopSec={UNIT_STOP_TIMEOUT:g}s, which kills pushd "
            f"mid-drain; lower it to {UNIT_STOP_TIMEOUT - SHUTDOWN_MARGIN:g} or raise "
            "TimeoutStopSec"
        )
    if server.admin_token_file is None:
        found.append(
            "server.admin_token_file is not set: /status and the detail of /healthz are "
            "readable only with a chat server's key"
        )
    found += [
        f"{key}: {path} is {'readable' if mode & 0o004 else 'writable'} by every user on "
        f"this machine (mode {mode:04o}): `chmod o-rwx {path}`"
        for key, path, mode in open_secret_files(config)
    ]
    return found


def secret_files(config: Config) -> list[tuple[str, str]]:
    """Every file the config names that holds a credential or a key, by its config key."""
    named: list[tuple[str, str | None]] = [
        ("server.tls_key", config.server.tls_key),
        ("server.admin_token_file", config.server.admin_token_file),
        ("metrics.bearer_token_file", config.metrics.bearer_token_file),
        ("store.password_file", config.store.password_file),
        ("spool.key_file", config.spool.key_file),
        ("upstream.proxy_password_file", config.upstream.proxy_password_file),
    ]
    for index, app in enumerate(config.apps):
        for field in (
            "key_file",
            "cert_file",
            "cert_password_file",
            "service_account_file",
            "proxy_password_file",
        ):
            named.append((f"apps[{index}].{field}", getattr(app, field)))
    return [(key, path) for key, path in named if path]


def open_secret_files(config: Config) -> list[tuple[str, str, int]]:
    """The secret files other users may read or write (a .p8 or a spool key left 0644
    by an editor or a copy): key, path and permission bits."""
    found = []
    for key, path in secret_files(config):
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:  # missing files are check_config's problems, not warnings
            continue
        if mode & 0o006:
            found.append((key, path, mode))
    return found


def metrics_line(config: Config) -> str:
    """Where Prometheus scrapes, and with what (the ``[metrics]`` section)."""
    metrics = config.metrics
    if not metrics.enabled:
        return "off"
    host = f"[{metrics.listen}]" if ":" in metrics.listen else metrics.listen
    token = ", bearer token required" if metrics.bearer_token_file else ""
    return f"http://{host}:{metrics.port}/metrics{token}"


def workers_line(config: Config) -> str:
    """``[server] workers``: how many processes serve, and what they share."""
    count = config.server.workers
    if count == 1:
        return "1 (one process)"
    shared = "PostgreSQL" if config.store.url else "one SQLite file"
    return (
        f"{count} processes on one port (SO_REUSEPORT) under a supervisor, sharing "
        f"{shared}; metrics merged on the metrics port"
    )


def report(
    path: str, config: Config, accounts: dict[str, tuple[str, str]] | None = None
) -> list[str]:
    """Everything ``check-config`` prints for a valid config, line by line.

    ``accounts``: each FCM app's service account (project id, client email) by app name.
    """
    accounts = accounts or {}
    scheme = "https" if config.server.tls_cert else "http"
    store = "PostgreSQL" if config.store.url else f"SQLite {config.store.path}"
    lines = [
        f"{path}: OK",
        f"  listen: {scheme}://{config.server.listen}:{config.server.port}",
        f"  store:  {store}",
        f"  workers: {workers_line(config)}",
        f"  log:    {config.log.level}, {config.log.format}",
        f"  metrics: {metrics_line(config)}",
        "apps:",
    ]
    lines += [f"  {app_line(app, accounts.get(app.name))}" for app in config.apps]
    if not config.apps:
        lines.append("  none: pushd will accept requests but can deliver nothing")
    lines.append("chat servers (what to paste where):")
    lines += [f"  {line}" for line in endpoint_lines(config)]
    found = warnings(config)
    if found:
        lines.append("warnings:")
        lines += [f"  - {warning}" for warning in found]
    return lines
