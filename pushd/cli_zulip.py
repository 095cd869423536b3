"""``pushd zulip ...``: the Zulip bouncer's servers, hostname pins and E2EE keys.

Every command writes the store directly, which the running daemon reads per request,
so changes count at once without a restart.  Split from :mod:`pushd.cli` to keep each
module a readable size; :func:`add_commands` mounts the commands there.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Final

from pushd.cli_store import fail as _fail
from pushd.cli_store import run_store
from pushd.cli_store import store_options as _store_options
from pushd.config import Config
from pushd.files import SHARED_FILE
from pushd.model import normalize_zulip_hostname
from pushd.spool.seal import SealError, SpoolKeys, create_key_file, key_file_missing
from pushd.store import HostnameTaken, Store, StoreError, ZulipServer

#: ``zulip_org_key`` is 64 characters: 32 random bytes in hex.
ZULIP_KEY_BYTES: Final = 32
_HOSTNAME_FORM: Final = "a hostname like chat.example.com or chat.example.com:8443"


def _config_pins(cfg: Config | None) -> dict[str, str]:
    if cfg is None:
        return {}
    return {
        normalize_zulip_hostname(pin.hostname) or pin.hostname: pin.org_id.lower()
        for pin in cfg.zulip.allowlist
    }


def _state(server: ZulipServer) -> str:
    if server.released_at is not None:
        return "released"
    return "deactivated" if server.deactivated else "active"


def cmd_zulip_servers(args: argparse.Namespace) -> int:
    """Zulip servers of the push bouncer and the hostnames pinned to them.

    ``add`` pre-registers a server for ``closed`` mode: it then runs ``manage.py
    register_server`` with the uuid and key printed here (``zulip_org_id`` and
    ``zulip_org_key`` in its zulip-secrets.conf).  ``allow`` pins a hostname to the
    ``zulip_org_id`` its admin reads from that file, so that only that server may
    register it (see :mod:`pushd.frontends.zulip.registration` for why).
    """

    async def action(database: Store, cfg: Config | None) -> int:
        try:
            return await _servers_action(args, database, cfg)
        except StoreError as error:
            return _fail(str(error))

    return run_store(args, action)


async def _servers_action(args: argparse.Namespace, database: Store, cfg: Config | None) -> int:
    from pushd.frontends.zulip.wire import ORG_KEY_LENGTH, ZulipError, check_hostname, is_uuid

    action = args.action
    if action == "list":
        await _list(database, cfg)
        return 0
    if action in ("deactivate", "reactivate"):
        await database.zulip_set_deactivated(args.uuid, action == "deactivate")
        print(f"Zulip server {args.uuid} is now {action}d")
        return 0
    host = normalize_zulip_hostname(args.hostname)
    if host is None:
        return _fail(f"{args.hostname} is not {_HOSTNAME_FORM}")
    if action == "add":
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
        try:
            await database.zulip_add_server(org_id.lower(), key, host)
        except HostnameTaken as taken:
            return _fail(f"{host} is held by Zulip server {taken.holder} already")
        print(f"added Zulip server {host} ({org_id})")
        print("put these in its /etc/zulip/zulip-secrets.conf, then run")
        print("`manage.py register_server` there (the key is shown once):")
        print(f"zulip_org_id = {org_id}")
        print(f"zulip_org_key = {key}")
        return 0
    if action == "allow":
        return await _allow(database, cfg, host, args.org_id, replace=args.replace)
    if action == "disallow":
        return await _disallow(database, cfg, host)
    released = await database.zulip_release_hostname(host)
    if not released:
        print(f"no Zulip server holds {host}: nothing to release")
    else:
        print(f"released {host} (held by deactivated {', '.join(released)})")
        print("a new zulip_org_id may register it now (in allowlist mode, once pinned to it)")
    return 0


async def _allow(
    database: Store, cfg: Config | None, host: str, org_id: str, *, replace: bool
) -> int:
    from pushd.frontends.zulip.wire import is_uuid

    if not is_uuid(org_id):
        return _fail(f"{org_id} is not a UUID (the server's zulip_org_id)")
    org_id = org_id.lower()
    in_config = _config_pins(cfg).get(host)
    if cfg is not None and in_config is not None and in_config != org_id:
        return _fail(
            f"{host} is pinned to {in_config} in {cfg.source}, which wins over the "
            "store: change it there"
        )
    old = await database.zulip_add_pin(host, org_id, replace=replace)
    if old is None:
        print(f"pinned {host} to zulip_org_id {org_id}")
    elif old.org_id == org_id:
        print(f"{host} is pinned to zulip_org_id {org_id} already")
    else:
        print(f"moved {host} from zulip_org_id {old.org_id} to {org_id}")
    holder = await database.zulip_hostname_holder(host)
    if holder is None:
        print("that server may now register with `manage.py register_server`")
    elif holder.uuid.lower() == org_id:
        print(f"{host} is registered to that server already ({_state(holder)})")
    else:
        print(
            f"note: {host} is held by Zulip server {holder.uuid} ({_state(holder)}); "
            "if that is not the real server, deactivate it "
            f"(pushd zulip servers deactivate {holder.uuid}) and release the hostname "
            f"(pushd zulip servers release {host})"
        )
    return 0


async def _disallow(database: Store, cfg: Config | None, host: str) -> int:
    if cfg is not None and host in _config_pins(cfg):
        return _fail(f"{host} is pinned in {cfg.source}: remove it there")
    if not await database.zulip_remove_pin(host):
        print(f"{host} was not pinned")
        return 0
    print(f"unpinned {host}: no new server may register it in allowlist mode")
    print("a server registered under it keeps working: deactivate it to stop it")
    return 0


async def _list(database: Store, cfg: Config | None) -> None:
    for server in await database.zulip_servers():
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(server.created_at))
        print(
            f"{server.uuid}  {server.hostname:<30} {_state(server):<12} created {created} UTC"
            f"  {server.contact_email}"
        )
    pins = [(pin.hostname, pin.org_id, "store") for pin in await database.zulip_pins()]
    config_pins = _config_pins(cfg)
    pins = [pin for pin in pins if pin[0] not in config_pins]
    pins += [(host, org_id, "config") for host, org_id in config_pins.items()]
    if pins:
        print("pinned hostnames (only that zulip_org_id may register them):")
    for host, org_id, where in sorted(pins):
        holder = await database.zulip_hostname_holder(host)
        if holder is None:
            status = "not registered yet"
        elif holder.uuid.lower() == org_id:
            status = f"registered, {_state(holder)}"
        else:
            status = f"HELD BY {holder.uuid}, {_state(holder)}"
        print(f"  {host:<30} {org_id}  ({where}; {status})")


def cmd_zulip_keys(args: argparse.Namespace) -> int:
    """Bouncer key pairs for Zulip's E2EE pushes (X25519, as Zulip's own bouncer uses).

    ``add`` prints the new public key once in the base64 form a white-label app bakes in
    (zulip-flutter's ``bouncerPublicKey``); the private key never leaves the store, and
    is stored sealed with the current spool key (:mod:`pushd.frontends.zulip.bouncer_keys`).
    Several keys live at once so an app release can move to a new key while older
    installs keep registering with theirs; ``remove`` a key once no app carries it.  The
    running daemon reads keys per request, so changes take effect without a restart.
    """
    from pushd.frontends.zulip.bouncer_keys import seal_private_key
    from pushd.frontends.zulip.e2ee import new_key_pair

    async def action(database: Store, cfg: Config | None) -> int:
        if args.action == "list":
            for key in await database.zulip_bouncer_keys():
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created_at))
                print(f"{key.id:>4}  {key.public_key}  created {created} UTC")
        elif args.action == "add":
            keys = _spool_keys(args, cfg, shared=database.shared)
            if isinstance(keys, str):
                return _fail(keys)
            public, private = new_key_pair()
            spool_key, sealed = seal_private_key(keys, public, private)
            key = await database.zulip_add_bouncer_key(public, sealed, key_id=spool_key)
            print(f"added bouncer key {key.id}; build it into the mobile app as its")
            print("bouncer public key (zulip-flutter: PushDeviceManager.bouncerPublicKey):")
            print(public)
        elif await database.zulip_remove_bouncer_key(args.key) == 0:
            return _fail(f"no bouncer key {args.key}")
        else:
            print(f"removed bouncer key {args.key}; apps built with it can no longer register")
        return 0

    return run_store(args, action)


def _spool_keys(args: argparse.Namespace, cfg: Config | None, *, shared: bool) -> SpoolKeys | str:
    """The spool keys a new bouncer key is sealed with, or why there are none.

    With SQLite and no key file yet it is made, as ``serve`` would, but as ``spool
    new-key`` makes it (the config's group, 0640): this runs as root, and the service's
    user must read it.  With PostgreSQL every instance needs the same file, so it must
    exist already, as check-config demands.
    """
    if args.key_file is not None:
        path, group = Path(args.key_file), None
    elif cfg is None:
        return "with --store, name the spool key file with --key-file: it seals the key"
    else:
        path, group = Path(cfg.spool.key_file), Path(args.config).stat().st_gid
    try:
        if not shared and key_file_missing(path):
            with contextlib.suppress(FileExistsError):  # another process made it just now
                if group is None:
                    create_key_file(path)
                else:
                    create_key_file(path, mode=SHARED_FILE, group=group)
        return SpoolKeys.load(path)
    except SealError as error:
        return str(error)
    except OSError as error:
        return f"spool key file {path}: {error.strerror}"


def add_commands(commands: Any) -> None:
    """Mount ``pushd zulip servers ...`` and ``pushd zulip keys ...`` on the CLI."""
    zulip = commands.add_parser("zulip", help="the Zulip push notification bouncer")
    zulip_topics = zulip.add_subparsers(dest="topic", required=True, metavar="TOPIC")
    zulip_servers = zulip_topics.add_parser("servers", help="Zulip servers using pushd")
    zulip_actions = zulip_servers.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("list", "list Zulip servers and pinned hostnames"),
        ("add", "pre-register a Zulip server (for registration = closed) and print its key"),
        ("allow", "pin a hostname to a zulip_org_id: only that server may register it"),
        ("disallow", "remove a hostname's pin (registered servers keep working)"),
        ("release", "free a hostname held by a deactivated server for a new registration"),
        ("deactivate", "refuse a Zulip server's requests (401, as Zulip's service does)"),
        ("reactivate", "accept a deactivated Zulip server again"),
    ):
        sub = zulip_actions.add_parser(action, help=text)
        if action in ("add", "allow", "disallow", "release"):
            sub.add_argument("hostname", help="the server's EXTERNAL_HOST")
        if action == "add":
            sub.add_argument("--uuid", help="its zulip_org_id (default: a new one)")
            sub.add_argument("--key", help="its zulip_org_key (default: a new one)")
        elif action == "allow":
            sub.add_argument(
                "--org-id",
                required=True,
                help="its zulip_org_id, from its /etc/zulip/zulip-secrets.conf",
            )
            sub.add_argument(
                "--replace", action="store_true", help="move a hostname pinned to another id"
            )
        elif action in ("deactivate", "reactivate"):
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
        elif action == "add":
            sub.add_argument(
                "--key-file",
                help="the spool key file that seals the private key (default: the config's"
                " [spool] key_file; needed with --store)",
            )
        _store_options(sub)
        sub.set_defaults(func=cmd_zulip_keys)
