"""``pushd spool ...``: look at the spool, purge an app's rows, rotate the sealing key.

The spool holds deliveries pushd answered as "retrying" and has not yet settled.  These
commands work on the store directly, beside a running daemon (on PostgreSQL, beside
every instance): ``status`` reads, ``purge`` deletes rows an operator has given up on
(counted as "purged"), and key rotation is two steps so that no row is ever left under
a key the daemon no longer has:

1. ``pushd spool new-key`` puts a new key first in the key file (the old ones stay).
   Every instance re-reads the file within seconds and seals new rows with it.
2. ``pushd spool rotate-key`` re-seals the remaining rows, and the Zulip bouncer
   private keys the same keys seal, under the first key; with ``--prune`` it then
   drops keys no row (of either) uses from the file.

``rotate-key`` alone does both (adds a key unless ``--keep-key``).  A running pushd
looks at the key file before it seals a row, so once a new key is first no row is
sealed under the old one; ``rotate-key`` still waits :data:`KEY_SWITCH_SECONDS` after
adding its key (for rows sealed just before, not yet committed), and after ``--prune``
it looks again and puts back any dropped key a row has come to use meanwhile (an
instance whose copy of the file was not updated yet): a key is never dropped while a
row needs it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Final

import trio

from pushd import config
from pushd.cli_store import fail, run_store, store_options
from pushd.files import SHARED_FILE
from pushd.spool.seal import (
    SealError,
    SpoolKeys,
    create_key_file,
    key_file_missing,
    key_id,
    prepend_key,
    read_keys,
    write_keys,
)
from pushd.store import Store

#: Rows re-sealed per transaction: small enough not to hold a lock for long.
RESEAL_BATCH = 500
#: Seconds ``rotate-key`` waits after adding a key, and after pruning, before it looks
#: at which keys rows use: a running pushd seals with the new key from its next row on,
#: and a row sealed just before reaches the store well within this.
KEY_SWITCH_SECONDS: Final = 5.0


def add_commands(commands: Any) -> None:
    """Mount ``pushd spool ...``."""
    spool = commands.add_parser("spool", help="deliveries waiting to be retried (sealed)")
    actions = spool.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="rows per app, how old, and the counters")
    store_options(status)
    status.set_defaults(func=cmd_status)
    purge = actions.add_parser("purge", help="delete every waiting row of one app")
    purge.add_argument("--app", required=True)
    store_options(purge)
    purge.set_defaults(func=cmd_purge)
    new_key = actions.add_parser("new-key", help="put a new sealing key first in the key file")
    new_key.add_argument("--config", "-c", default="/etc/pushd/pushd.toml")
    new_key.set_defaults(func=cmd_new_key)
    rotate = actions.add_parser("rotate-key", help="re-seal every row under the first key")
    rotate.add_argument("--config", "-c", default="/etc/pushd/pushd.toml")
    rotate.add_argument("--keep-key", action="store_true", help="do not add a new key first")
    rotate.add_argument("--prune", action="store_true", help="then drop keys no row uses")
    rotate.set_defaults(func=cmd_rotate)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _when(oldest_due: float | None, now: float) -> str:
    """How long the oldest row has been due, or, when none is due yet (a paused app's
    rows, backoffs), when the first will be: "due 0s ago" read as a stuck spool."""
    if oldest_due is None:
        return "oldest due -"
    if oldest_due <= now:
        return f"oldest due {_age(now - oldest_due)} ago"
    return f"next due in {_age(oldest_due - now)}"


def cmd_status(args: argparse.Namespace) -> int:
    async def report(store: Store, _: config.Config | None) -> int:
        now = time.time()
        stats = await store.spool_stats(now)
        counters = await store.spool_counters()
        if not stats:
            print("spool: empty")
        for app in stats:
            print(
                f"{app.app}: {app.depth} waiting, {app.due} due, {app.leased} leased,"
                f" {app.unknown} possibly delivered, {_when(app.oldest_due, now)}"
            )
        if counters:
            print("counters:")
            for (name, event), count in sorted(counters.items()):
                print(f"  {name} {event}: {count}")
        return 0

    return run_store(args, report)


def cmd_purge(args: argparse.Namespace) -> int:
    async def purge(store: Store, _: config.Config | None) -> int:
        removed = await store.spool_purge(args.app)
        print(f"purged {removed} waiting deliveries of app {args.app!r}")
        return 0

    return run_store(args, purge)


def _key_file(args: argparse.Namespace) -> str | None:
    from pushd.cli_store import load

    cfg = load(args.config)
    return None if cfg is None else cfg.spool.key_file


def cmd_new_key(args: argparse.Namespace) -> int:
    """Put a new key first; with no key file yet, create it (a PostgreSQL deployment's
    first step: its instances refuse to start without the file, and do not create it)."""
    try:
        cfg = config.load(args.config)  # the key file's absence is what this fixes
    except config.ConfigError as error:
        return fail("; ".join(error.problems))
    path = Path(cfg.spool.key_file)
    if key_file_missing(path):
        try:
            # Read by the service's user as the config is (README): as ``pushd init``
            # writes it, the config's group and mode 0640, not root's own 0600.
            create_key_file(path, mode=SHARED_FILE, group=Path(args.config).stat().st_gid)
            (new,) = SpoolKeys.load(path).ids
        except (OSError, SealError) as error:
            return fail(f"cannot create {path}: {error}")
        print(f"created {path} with spool key {new}; copy it to every instance")
        return 0
    try:
        new = prepend_key(path)
    except (OSError, SealError) as error:
        return fail(f"cannot add a key to {path}: {error}")
    print(f"new spool key {new} is first in {path}; run `pushd spool rotate-key` to re-seal")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    path = _key_file(args)
    if path is None:
        return 1
    if not args.keep_key:
        try:
            prepend_key(Path(path))
        except (OSError, SealError) as error:
            return fail(f"cannot add a key to {path}: {error}")

    async def rotate(store: Store, _: config.Config | None) -> int:
        try:
            keys = SpoolKeys.load(path)
        except (OSError, SealError) as error:
            return fail(f"cannot read the spool keys in {path}: {error}")
        if not args.keep_key:
            print(f"new spool key {keys.current}; letting running instances switch to it")
            await trio.sleep(KEY_SWITCH_SECONDS)
        resealed = unreadable = 0
        after = 0
        while True:
            rows = await store.spool_page(after, RESEAL_BATCH)
            if not rows:
                break
            after = rows[-1].id
            batch: list[tuple[int, str, bytes]] = []
            for row in rows:
                if row.key_id == keys.current:
                    continue
                try:
                    push = keys.open(row.key_id, row.sealed, row.app, row.token)
                except SealError:
                    unreadable += 1
                    continue
                batch.append((row.id, *keys.seal(row.app, row.token, push)))
            await store.spool_reseal(batch)
            resealed += len(batch)
        print(f"re-sealed {resealed} rows under key {keys.current}")
        if unreadable:
            print(f"{unreadable} rows do not open with any key in {path}; kept as they are")
        from pushd.frontends.zulip.bouncer_keys import reseal as reseal_bouncer_keys

        bouncer = await reseal_bouncer_keys(store, keys, plain_only=False)
        if bouncer.sealed:
            print(f"re-sealed {bouncer.sealed} Zulip bouncer private key(s)")
        if bouncer.unreadable:
            print(
                f"{bouncer.unreadable} Zulip bouncer private key(s) do not open with any key"
                f" in {path}; kept as they are"
            )
        if args.prune:
            await _prune(store, keys)
        return 0

    return run_store(args, rotate)


async def _used_key_ids(store: Store) -> set[str]:
    """The keys something in the store is sealed with: spool rows and Zulip bouncer
    private keys (:mod:`pushd.frontends.zulip.bouncer_keys`)."""
    return set(await store.spool_key_ids()) | await store.zulip_bouncer_key_ids()


async def _prune(store: Store, keys: SpoolKeys) -> None:
    """Drop the keys no row uses; then look again and put back any that came into use
    (module docstring)."""
    used = await _used_key_ids(store) | {keys.current}
    held = read_keys(keys.path)
    kept = [key for key in held if key_id(key) in used]
    write_keys(keys.path, kept)
    dropped = [key for key in held if key_id(key) not in used]
    if dropped:
        await trio.sleep(KEY_SWITCH_SECONDS)
        used = await _used_key_ids(store)
        back = [key for key in dropped if key_id(key) in used]
        if back:
            # Read again: an operator may have changed the file meanwhile too.
            write_keys(keys.path, [*read_keys(keys.path), *back])
            names = ", ".join(key_id(key) for key in back)
            print(
                f"kept key(s) {names}: rows sealed under them were written while pruning "
                "(an instance still sealing with them); run rotate-key again later"
            )
            dropped = [key for key in dropped if key not in back]
    print(f"{keys.path} now holds {len(held) - len(dropped)} key(s)")
