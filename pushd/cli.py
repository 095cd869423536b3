"""The ``pushd`` command line.

Note for shells: ``pushd`` is also a bash builtin, so typed bare at a bash prompt it
changes directory instead.  Run it as ``python -m pushd``, by its path
(``.venv/bin/pushd``), or from systemd, where no shell is involved.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from pushd import __version__, cli_store, config, logs
from pushd.cli_store import run_store, store_options
from pushd.files import SHARED_FILE, private_dirs
from pushd.spool.seal import SealError, create_key_file
from pushd.store import Store, StoreError, open_store
from pushd.workers import WorkerRole

log = logging.getLogger(__name__)

#: Where ``serve`` looks for a config when none is named (then falls back to the demo).
CONFIG_ENV = "PUSHD_CONFIG"

STARTER_CONFIG = """\
# pushd configuration: see pushd.toml.example for every key.

[server]
listen = "127.0.0.1"
port = 8080

[store]
path = "{store}"

[log]
level = "info"
format = "text"

# One [[apps]] entry per mobile app.  Fill in your own and run `pushd check-config`.
# [[apps]]
# name = "chat-ios"
# provider = "apns"
# environment = "production"
# topic = "com.example.chat"
# key_file = "AuthKey_ABC1234567.p8"
# key_id = "ABC1234567"
# team_id = "DEF8901234"
# What of a message its pushes carry: "full", "redacted" or "id_only" (README).
# content = "full"

# Zulip: each Zulip server sets ZULIP_SERVICES_URL = "https://<this pushd>" and
# ZULIP_SERVICE_PUSH_NOTIFICATIONS = True in /etc/zulip/settings.py (older servers:
# PUSH_NOTIFICATION_BOUNCER_URL) and runs `manage.py register_server`.  Who may register:
#   "allowlist" (the default): servers admitted with
#       pushd zulip servers allow HOSTNAME --org-id ZULIP_ORG_ID
#   "closed": only servers pre-registered with `pushd zulip servers add HOSTNAME`
#   "open": anyone who can reach pushd (a private network only)
# iOS devices go to the APNs app whose topic is their ios_app_id; fcm_app serves
# Android.  End-to-end encrypted pushes need a key pair: `pushd zulip keys add`, and
# build the public key it prints into your app.
# [zulip]
# registration = "allowlist"
# fcm_app = "chat-android"
"""


def _fail(message: str) -> int:
    return cli_store.fail(message)


def _load(path: str) -> config.Config | None:
    return cli_store.load(path)


# --- serve ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the daemon; what stops it from starting is one ``pushd:`` line on stderr each.

    A service manager's log shows a line per entry, so a config problem or a
    :class:`~pushd.applanes.StartupError` (a busy port, a key that does not load) is one
    self-contained line and exit status 1; a traceback is left for pushd's own bugs.
    """
    from pushd import server
    from pushd.applanes import StartupError

    path = args.config or os.environ.get(CONFIG_ENV)
    if path is None and Path("pushd.toml").exists():
        path = "pushd.toml"
    try:
        if path is None:
            from pushd import demo

            return demo.run(port=args.port)
        from pushd.config.loading import read_config
        from pushd.workers import read_accepted_config

        role = WorkerRole.from_environment()
        # A worker starts on what its supervisor accepted, not on the file as it is now.
        text = read_accepted_config() if role is not None else None
        try:
            if text is None:
                text = read_config(path)
            cfg, unusable = config.load_serving(path, text)
        except config.ConfigError as error:
            for problem in error.problems:  # load's own problems start with the path
                _fail(problem if problem.startswith(f"{Path(path)}: ") else f"{path}: {problem}")
            return 1
        logs.setup(cfg.log, worker=None if role is None else role.index)
        if role is None:  # said once, by the supervisor or the single process
            from pushd.checkconfig import open_secret_files

            for key, secret, mode in open_secret_files(cfg):
                log.warning(
                    "%s: %s is open to every user on this machine (mode %04o): chmod o-rwx it",
                    key,
                    secret,
                    mode,
                )
        if role is None and cfg.server.workers > 1:
            from pushd.supervisor import Supervisor

            return trio.run(Supervisor(cfg, accepted=text).run)
        if role is None:
            from pushd.workers import claim_all

            # One pushd per SQLite file (and port): a second would release the first
            # one's spool leases at start and send its pushes in flight again.
            claims = claim_all(cfg)
            if isinstance(claims, str):
                return _fail(claims)
        if role is not None:
            # A worker acts on SIGTERM only while serve() listens for it; before (still
            # starting) and after (drained) it is kept, not the default death: a second
            # one, the supervisor's forwarded after the one a whole process group got
            # (Ctrl-C in a terminal, systemd's KillMode=control-group), must not kill a
            # worker that has drained, and one sent while it starts must not be lost.
            signal.signal(signal.SIGTERM, server.remember_early_stop)
            signal.signal(signal.SIGINT, server.remember_early_stop)
        trio.run(functools.partial(server.serve, cfg, worker=role, unusable=unusable))
    except StoreError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        pass
    except (StartupError, BaseExceptionGroup) as error:
        startup = _startup_error(error, StartupError)
        if startup is None:
            raise
        return _fail(str(startup))
    return 0


def _startup_error(error: BaseException, kind: type[Exception]) -> BaseException | None:
    """The ``kind`` error that ended a run, seen through trio's exception groups (it is
    raised inside a nursery); None if anything else is in there."""
    while isinstance(error, BaseExceptionGroup):
        matched, rest = error.split(kind)
        if matched is None or rest is not None:
            return None
        error = matched.exceptions[0]
    return error if isinstance(error, kind) else None


def cmd_init(args: argparse.Namespace) -> int:
    """Write :data:`STARTER_CONFIG`, a store and the first chat server's key.

    The config is a string template, not a TOML writer's output: a starter config is
    mostly comments, which a writer such as tomli-w cannot emit.
    """
    target = Path(args.config)
    store = Path(args.store).resolve() if args.store else target.resolve().parent / "pushd.sqlite3"
    key_file = target.resolve().parent / f"{args.server}.key"
    for existing in (target, store, key_file):
        if existing.exists():
            return _fail(f"{existing} exists already; init never overwrites anything")
    private_dirs(target.resolve().parent)
    private_dirs(store.parent)
    with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SHARED_FILE), "w") as file:
        os.fchmod(file.fileno(), SHARED_FILE)  # a umask of 077 would leave it 0600
        file.write(STARTER_CONFIG.format(store=store))

    async def first_server() -> str:
        opened = await open_store(config.StoreConfig(path=str(store)))
        try:
            return (await opened.add_server(args.server))[1]
        finally:
            await opened.close()

    key = trio.run(first_server)
    spool_key = target.resolve().parent / "spool.key"
    try:
        # Read by the service's user as the config is: same mode and group (README).
        create_key_file(spool_key, mode=SHARED_FILE, group=target.stat().st_gid)
    except FileExistsError:
        pass  # keys in use already: rows sealed under them must stay readable
    except SealError as error:
        return _fail(str(error))
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(key + "\n")
    print(f"wrote {target} (add your apps, then: pushd check-config {target})")
    print(f"created {store} with chat server {args.server!r}")
    print(f"its API key is in {key_file} (mode 0600); it is stored only hashed")
    print(f"spooled notifications are sealed with the key in {spool_key} (mode 0640)")
    print(f"pushd's user reads {target} and {spool_key}: give both its group")
    return 0


# --- server ---------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    async def action(store: Store, _: config.Config | None) -> int:
        try:
            if args.action == "add":
                server, key = await store.add_server(args.name)
                print(f"added chat server {server.name!r} (id {server.id})")
                print(f"API key (shown once, store it on the chat server): {key}")
            elif args.action == "list":
                for server in await store.servers():
                    state = "active" if server.active else "deactivated"
                    created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(server.created_at))
                    print(f"{server.id:>4}  {server.name:<30} {state:<12} created {created} UTC")
            elif args.action == "rotate-key":
                key = await store.rotate_key(args.name)
                print(f"new API key for {args.name!r} (the old one no longer works): {key}")
            elif args.action in ("deactivate", "activate"):
                await store.set_active(args.name, args.action == "activate")
                print(f"{args.name!r} is now {args.action}d")
        except StoreError as error:
            return _fail(str(error))
        return 0

    return run_store(args, action)


# --- send-test ------------------------------------------------------------------------


def cmd_send_test(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    app = cfg.app(args.app)
    if app is None:
        names = ", ".join(a.name for a in cfg.apps) or "none"
        return _fail(f"no app named {args.app!r} in {args.config} (apps: {names})")
    from pushd.frontends.native import (
        ApiError,
        SendBody,
        build_apns_push,
        build_fcm_push,
        check_token,
    )
    from pushd.lanes import Sender
    from pushd.upstream.apns.client import ApnsClient
    from pushd.upstream.fcm.client import FcmClient

    try:
        token = check_token(args.token, app.provider)
        body = SendBody(tokens=(token,), alert=args.alert, push_type=args.push_type)
        now = time.time()
        push = (
            build_fcm_push(body, app, now) if app.provider == "fcm" else build_apns_push(body, now)
        )
    except ApiError as error:
        return _fail(f"{error.field}: {error.message}")
    logs.setup(cfg.log)
    client: Sender[Any] = (
        FcmClient(config.fcm_settings(app, cfg.upstream))
        if app.provider == "fcm"
        else ApnsClient(config.apns_settings(app, cfg.upstream))
    )

    async def send() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            outcome = await client.send(token, push)
            print(f"{app.name}: {outcome}")
            nursery.cancel_scope.cancel()

    trio.run(send)
    return 0


# --- main -----------------------------------------------------------------------------


_store_options = store_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushd", description="Self-hosted push notification gateway for chat servers."
    )
    parser.add_argument("--version", action="version", version=f"pushd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the daemon (with no config: a self-contained demo)"
    )
    serve.add_argument("--config", "-c", help=f"config file (default: ${CONFIG_ENV}, ./pushd.toml)")
    serve.add_argument("--port", type=int, default=8080, help="demo mode only: HTTP port")
    serve.set_defaults(func=cmd_serve)

    from pushd import cli_ops

    cli_ops.add_commands(commands)

    init = commands.add_parser("init", help="write a starter config, store and server key")
    init.add_argument("--config", "-c", default="pushd.toml")
    init.add_argument("--store", help="SQLite file (default: beside the config)")
    init.add_argument("--server", default="default", help="name of the first chat server")
    init.set_defaults(func=cmd_init)

    server = commands.add_parser("server", help="manage chat servers allowed to use the API")
    server_actions = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("add", "add a chat server and print its new API key"),
        ("list", "list chat servers"),
        ("rotate-key", "replace a server's API key"),
        ("deactivate", "refuse a server's requests (403)"),
        ("activate", "accept a deactivated server again"),
    ):
        sub = server_actions.add_parser(action, help=text)
        if action != "list":
            sub.add_argument("name")
        _store_options(sub)
        sub.set_defaults(func=cmd_server)

    from pushd import cli_spool, cli_zulip

    cli_zulip.add_commands(commands)
    cli_store.add_commands(commands)
    cli_spool.add_commands(commands)

    send_test = commands.add_parser("send-test", help="send one notification to one token")
    send_test.add_argument("--config", "-c", required=True)
    send_test.add_argument("--app", required=True)
    send_test.add_argument("--token", required=True)
    send_test.add_argument("--alert", default="Test notification from pushd")
    send_test.add_argument("--push-type", default="alert")
    send_test.set_defaults(func=cmd_send_test)

    from pushd.simulators import cli as simulator_cli

    simulate = commands.add_parser("simulate", help="run the APNs simulator (no Apple needed)")
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(func=simulator_cli.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:
        # The reader went away (`pushd check-config | head`): nothing more to say, and
        # no traceback; stdout is pointed at /dev/null so its flush at exit is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
