"""The command line's way into the store, and ``pushd store ...``.

Commands that manage what the daemon serves (chat servers, Zulip pins and keys, the
spool) write the store directly, which the running daemon reads per request: changes
count at once, without a restart.  Each runs as one trio program with the store open,
on SQLite or PostgreSQL alike.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from pushd import config
from pushd.store import Store, StoreError, open_store

#: The config the admin commands read when none is named.
DEFAULT_CONFIG = "/etc/pushd/pushd.toml"

StoreCommand = Callable[[Store, config.Config | None], Awaitable[int]]


def fail(message: str) -> int:
    import sys

    print(f"pushd: {message}", file=sys.stderr)
    return 1


def load(path: str) -> config.Config | None:
    """The checked config at ``path``, or None after printing each problem."""
    import sys

    try:
        return config.load_checked(path)
    except config.ConfigError as error:
        print(f"pushd: {path} has problems:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def store_options(parser: argparse.ArgumentParser) -> None:
    """Where a store-managing command finds the store: the config's, or a named file."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    where.add_argument("--store", help="the SQLite file, instead of reading the config")


def run_store(
    args: argparse.Namespace, command: StoreCommand, *, upgrade: bool = False, alone: str = ""
) -> int:
    """Open the store ``args`` names (``--store`` or the config's), run ``command``.

    With ``alone`` (the command's name), a SQLite store is claimed as ``serve`` claims
    it, for a command that must not run beside a pushd serving the file."""
    cfg = None
    if getattr(args, "store", None):
        where = config.StoreConfig(path=args.store)
    else:
        cfg = load(args.config)
        if cfg is None:
            return 1
        where = cfg.store
    held = claim_sqlite(where.path, alone) if alone and where.url is None else []
    if isinstance(held, str):
        return fail(held)

    async def main() -> int:
        store = await open_store(where, upgrade=upgrade, operator=True)
        try:
            return await command(store, cfg)
        finally:
            with trio.CancelScope(shield=True):
                await store.close()

    try:
        return trio.run(main)
    except StoreError as error:
        return fail(str(error))
    finally:
        for lock in held:
            lock.close()


def claim_sqlite(path: str, command: str) -> list[socket.socket] | str:
    """Take the claim ``serve`` takes on the SQLite file at ``path`` (held until the
    sockets close), or the sentence refusing ``command``: run beside a pushd on that
    file, a copy would miss what it spools after the snapshot and both would send the
    same pushes once PostgreSQL serves, and a migration would change the schema under
    it."""
    from pushd.workers import claim_store

    held = claim_store(path)
    if isinstance(held, str):
        return f"{held}: stop it before `pushd store {command}`"
    return held


def add_commands(commands: Any) -> None:
    """Mount ``pushd store ...``."""
    store = commands.add_parser("store", help="the store: schema migrations, moving to PostgreSQL")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = actions.add_parser("migrate", help="bring the store's schema up to this pushd's")
    store_options(migrate)
    migrate.set_defaults(func=cmd_migrate)
    copy = actions.add_parser(
        "copy",
        help="copy this SQLite store into an empty PostgreSQL database (pushd stopped)",
    )
    store_options(copy)
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db")
    copy.add_argument(
        "--password-file", help="a file holding the database password (else libpq's PGPASSWORD...)"
    )
    copy.set_defaults(func=cmd_copy)


def cmd_migrate(args: argparse.Namespace) -> int:
    from pushd.store.schema import SCHEMA_VERSION

    async def report(store: Store, _: config.Config | None) -> int:
        print(f"{store.describe()}: schema {SCHEMA_VERSION}, up to date")
        return 0

    return run_store(args, report, upgrade=True, alone="migrate")


def cmd_copy(args: argparse.Namespace) -> int:
    """``pushd store copy``: see :mod:`pushd.store.copy`."""
    from pathlib import Path

    from pushd.store.copy import copy_sqlite_to
    from pushd.store.postgres import PostgresEngine, redact_url

    if args.store:
        source = args.store
    else:
        cfg = load(args.config)
        if cfg is None:
            return 1
        if cfg.store.url is not None:
            return fail(f"{args.config} already names PostgreSQL: copy reads an SQLite store")
        source = cfg.store.path
    if not args.to.startswith(("postgresql://", "postgres://")):
        return fail("--to must be a PostgreSQL URL (postgresql://user@host/db)")
    if not Path(source).is_file():
        return fail(f"no SQLite store at {source}")
    target = config.StoreConfig(url=args.to, password_file=args.password_file, pool_size=1)
    held = claim_sqlite(source, "copy")
    if isinstance(held, str):
        return fail(held)

    async def main() -> int:
        # Opening creates the schema in an empty database, and refuses an old one.
        store = await open_store(target, operator=True)
        try:
            engine = store.engine
            assert isinstance(engine, PostgresEngine)
            report = await trio.to_thread.run_sync(copy_sqlite_to, source, engine)
        finally:
            with trio.CancelScope(shield=True):
                await store.close()
        width = max(len(table) for table, _ in report.rows)
        print(f"copied {source} to PostgreSQL {redact_url(args.to)} in one transaction:")
        for table, count in report.rows:
            print(f"  {table:<{width}}  {count} rows")
        print(f"  {'total':<{width}}  {report.total} rows")
        print("spool rows stay sealed: give every instance the same [spool] key_file")
        return 0

    try:
        return trio.run(main)
    except StoreError as error:
        return fail(str(error))
    finally:
        for lock in held:
            lock.close()
