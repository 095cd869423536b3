"""``pushd zulip ...``: the Zulip bouncer's servers and E2EE keys.

Every command writes the store directly, which the running daemon reads per request,
so changes count at once without a restart.  Split from :mod:`pushd.cli` to keep each
module a readable size; :func:`add_commands` mounts the commands there.
"""

from __future__ import annotations

import argparse
import secrets
import time
import uuid
from typing import Any

from pushd.cli import _database, _fail, _store_options
from pushd.store.sqlite import StoreError

#: ``zulip_org_key`` is 64 characters: 32 random bytes in hex.
ZULIP_KEY_BYTES = 32


def cmd_zulip_servers(args: argparse.Namespace) -> int:
    """Zulip servers of the push bouncer; ``add`` pre-registers one for closed mode.

    A pre-registered server still runs ``manage.py register_server`` with the uuid and
    key printed here (as ``zulip_org_id`` and ``zulip_org_key`` in its
    zulip-secrets.conf); that call then succeeds whatever ``[zulip] registration`` says.
    """
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


def add_commands(commands: Any) -> None:
    """Mount ``pushd zulip servers ...`` and ``pushd zulip keys ...`` on the CLI."""
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
