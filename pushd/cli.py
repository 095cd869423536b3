"""The ``pushd`` command line.

Note for shells: ``pushd`` is also a bash builtin, so typed bare at a bash prompt it
changes directory instead.  Run it as ``python -m pushd``, by its path
(``.venv/bin/pushd``), or from systemd, where no shell is involved.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from pushd import __version__, config, logs
from pushd.store.sqlite import Database, StoreError

#: The config the admin commands read when none is named.
DEFAULT_CONFIG = "/etc/pushd/pushd.toml"
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
"""


def _fail(message: str) -> int:
    print(f"pushd: {message}", file=sys.stderr)
    return 1


def _load(path: str) -> config.Config | None:
    try:
        return config.load_checked(path)
    except config.ConfigError as error:
        print(f"pushd: {path} has problems:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


# --- serve ----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get(CONFIG_ENV)
    if path is None and Path("pushd.toml").exists():
        path = "pushd.toml"
    if path is None:
        from pushd import demo

        return demo.run(port=args.port)
    cfg = _load(path)
    if cfg is None:
        return 1
    logs.setup(cfg.log)
    from pushd import server

    try:
        trio.run(server.serve, cfg)
    except StoreError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    if cfg is None:
        return 1
    print(f"{args.file}: OK")
    scheme = "https" if cfg.server.tls_cert else "http"
    print(f"  listen: {scheme}://{cfg.server.listen}:{cfg.server.port}")
    print(f"  store:  {cfg.store.path}")
    print(f"  log:    {cfg.log.level}, {cfg.log.format}")
    for app in cfg.apps:
        auth = "token auth" if app.key_file else "certificate auth"
        upstream = app.upstream_url or f"Apple {app.environment}"
        print(
            f"  app {app.name}: {app.provider} {app.environment}, topic {app.topic}, "
            f"{auth}, {app.connections} connection(s), upstream {upstream}"
        )
    if not cfg.apps:
        print("  no apps configured: pushd will accept requests but can deliver nothing")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.config)
    store = Path(args.store).resolve() if args.store else target.resolve().parent / "pushd.sqlite3"
    key_file = target.resolve().parent / f"{args.server}.key"
    for existing in (target, store, key_file):
        if existing.exists():
            return _fail(f"{existing} exists already; init never overwrites anything")
    target.parent.mkdir(parents=True, exist_ok=True)
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "w") as file:
        file.write(STARTER_CONFIG.format(store=store))
    database = Database(str(store))
    try:
        _, key = database.add_server(args.server)
    finally:
        database.close()
    with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(key + "\n")
    print(f"wrote {target} (add your apps, then: pushd check-config {target})")
    print(f"created {store} with chat server {args.server!r}")
    print(f"its API key is in {key_file} (mode 0600); it is stored only hashed")
    return 0


# --- server ---------------------------------------------------------------------------


def _database(args: argparse.Namespace) -> Database | None:
    if args.store:
        path = args.store
    else:
        cfg = _load(args.config)
        if cfg is None:
            return None
        path = cfg.store.path
    try:
        return Database(path)
    except StoreError as error:
        _fail(str(error))
        return None


def cmd_server(args: argparse.Namespace) -> int:
    database = _database(args)
    if database is None:
        return 1
    try:
        if args.action == "add":
            server, key = database.add_server(args.name)
            print(f"added chat server {server.name!r} (id {server.id})")
            print(f"API key (shown once, store it on the chat server): {key}")
        elif args.action == "list":
            for server in database.servers():
                state = "active" if server.active else "deactivated"
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(server.created_at))
                print(f"{server.id:>4}  {server.name:<30} {state:<12} created {created} UTC")
        elif args.action == "rotate-key":
            key = database.rotate_key(args.name)
            print(f"new API key for {args.name!r} (the old one no longer works): {key}")
        elif args.action in ("deactivate", "activate"):
            database.set_active(args.name, args.action == "activate")
            print(f"{args.name!r} is now {args.action}d")
    except StoreError as error:
        return _fail(str(error))
    finally:
        database.close()
    return 0


# --- zulip ----------------------------------------------------------------------------

#: ``zulip_org_key`` is 64 characters: 32 random bytes in hex.
ZULIP_KEY_BYTES = 32


def cmd_zulip_servers(args: argparse.Namespace) -> int:
    """Zulip servers of the push bouncer; ``add`` pre-registers one for closed mode.

    A pre-registered server still runs ``manage.py register_server`` with the uuid and
    key printed here (as ``zulip_org_id`` and ``zulip_org_key`` in its
    zulip-secrets.conf); that call then succeeds whatever ``[zulip] registration`` says.
    """
    import secrets
    import uuid

    from pushd.frontends.zulip.wire import ORG_KEY_LENGTH, ZulipError, check_hostname, is_uuid

    database = _database(args)
    if database is None:
        return 1
    try:
        if args.action == "list":
            for server in database.zulip_servers():
                state = "deactivated" if server.deactivated else "active"
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(server.created_at))
                print(
                    f"{server.uuid}  {server.hostname:<30} {state:<12} created {created} UTC"
                    f"  {server.contact_email}"
                )
        elif args.action == "add":
            org_id = args.uuid or str(uuid.uuid4())
            key = args.key or secrets.token_hex(ZULIP_KEY_BYTES)
            if not is_uuid(org_id):
                return _fail(f"{org_id} is not a UUID")
            if len(key) != ORG_KEY_LENGTH:
                return _fail(f"a zulip_org_key is {ORG_KEY_LENGTH} characters")
            try:
                check_hostname(args.hostname)
            except ZulipError as error:
                return _fail(error.msg)
            database.zulip_add_server(org_id.lower(), key, args.hostname)
            print(f"added Zulip server {args.hostname} ({org_id})")
            print("put these in its /etc/zulip/zulip-secrets.conf, then run")
            print("`manage.py register_server` there (the key is shown once):")
            print(f"zulip_org_id = {org_id}")
            print(f"zulip_org_key = {key}")
        else:
            database.zulip_set_deactivated(args.uuid, args.action == "deactivate")
            print(f"Zulip server {args.uuid} is now {args.action}d")
    except StoreError as error:
        return _fail(str(error))
    finally:
        database.close()
    return 0


def cmd_zulip_keys(args: argparse.Namespace) -> int:
    """Bouncer key pairs for Zulip's E2EE pushes (X25519, as Zulip's own bouncer uses).

    ``add`` prints the new public key once in the base64 form a white-label app bakes in
    (zulip-flutter's ``bouncerPublicKey``); the private key never leaves the store.
    Several keys live at once so an app release can move to a new key while older
    installs keep registering with theirs; ``remove`` a key once no app carries it.  The
    running daemon reads keys per request, so changes take effect without a restart.
    """
    from pushd.frontends.zulip.e2ee import new_key_pair

    database = _database(args)
    if database is None:
        return 1
    try:
        if args.action == "list":
            for key in database.zulip_bouncer_keys():
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created_at))
                print(f"{key.id:>4}  {key.public_key}  created {created} UTC")
        elif args.action == "add":
            public, private = new_key_pair()
            key = database.zulip_add_bouncer_key(public, private)
            print(f"added bouncer key {key.id}; build it into the mobile app as its")
            print("bouncer public key (zulip-flutter: PushDeviceManager.bouncerPublicKey):")
            print(public)
        elif database.zulip_remove_bouncer_key(args.key) == 0:
            return _fail(f"no bouncer key {args.key}")
        else:
            print(f"removed bouncer key {args.key}; apps built with it can no longer register")
    except StoreError as error:
        return _fail(str(error))
    finally:
        database.close()
    return 0


# --- send-test ------------------------------------------------------------------------


def cmd_send_test(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    app = cfg.app(args.app)
    if app is None:
        names = ", ".join(a.name for a in cfg.apps) or "none"
        return _fail(f"no app named {args.app!r} in {args.config} (apps: {names})")
    from pushd.dispatch import Sender
    from pushd.frontends.native import (
        ApiError,
        SendBody,
        build_apns_push,
        build_fcm_push,
        check_token,
    )
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


def _store_options(parser: argparse.ArgumentParser) -> None:
    """Where a store-managing command finds the store: the config's, or a named file."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    where.add_argument("--store", help="the SQLite file, instead of reading the config")


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

    check = commands.add_parser("check-config", help="check a config file and summarise it")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

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

    zulip = commands.add_parser("zulip", help="the Zulip push notification bouncer")
    zulip_topics = zulip.add_subparsers(dest="topic", required=True, metavar="TOPIC")
    zulip_servers = zulip_topics.add_parser("servers", help="Zulip servers using pushd")
    zulip_actions = zulip_servers.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list Zulip servers"),
        ("add", "pre-register a Zulip server (for registration = closed) and print its key"),
        ("deactivate", "refuse a Zulip server's requests (401, as Zulip's service does)"),
        ("reactivate", "accept a deactivated Zulip server again"),
    ):
        sub = zulip_actions.add_parser(action, help=text)
        if action == "add":
            sub.add_argument("hostname", help="the server's EXTERNAL_HOST")
            sub.add_argument("--uuid", help="its zulip_org_id (default: a new one)")
            sub.add_argument("--key", help="its zulip_org_key (default: a new one)")
        elif action != "list":
            sub.add_argument("uuid", help="the server's zulip_org_id")
        _store_options(sub)
        sub.set_defaults(func=cmd_zulip_servers)

    zulip_keys = zulip_topics.add_parser("keys", help="bouncer key pairs for E2EE pushes")
    key_actions = zulip_keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list bouncer keys: id, public key, created"),
        ("add", "make a new key pair and print its public key for the app"),
        ("remove", "retire a key (apps built with it can no longer register)"),
    ):
        sub = key_actions.add_parser(action, help=text)
        if action == "remove":
            sub.add_argument("key", help="the key's id or its base64 public key")
        _store_options(sub)
        sub.set_defaults(func=cmd_zulip_keys)

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
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
