"""Zulip bouncer private keys, sealed with the spool keys while they rest in the store.

A bouncer private key opens every sealed registration Zulip servers send, and with it
every device token they carry, so it must not be readable in a dump or backup of the
store.  It is sealed with the spool keys (:meth:`~pushd.spool.seal.SpoolKeys.seal_secret`),
whose file lives outside the database, bound to its public key so that one row's sealed
key copied into another's does not open.

Rows written before sealing (``key_id`` NULL) keep working in the clear and are sealed
at the next ``serve`` start; ``pushd spool rotate-key`` re-seals every row under the new
spool key, and its ``--prune`` keeps every spool key a row still uses.  Both write one
row at a time with a compare-and-set, so instances doing it at once agree.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Final

import attrs

from pushd.spool.seal import SealError, SpoolKeys
from pushd.store import Store, StoreError, ZulipBouncerKey

log = logging.getLogger(__name__)

#: What a sealed private key is bound to, followed by its public key.
PURPOSE_PREFIX: Final = "zulip bouncer private key "


def purpose(public_key: str) -> str:
    """The purpose a private key is sealed for: its own public key's."""
    return PURPOSE_PREFIX + public_key


def seal_private_key(keys: SpoolKeys, public_key: str, private_key: str) -> tuple[str, str]:
    """``(key_id, stored)`` for a base64 private key: sealed with the current spool key,
    and base64 again, as the store's text column keeps it."""
    key_id, sealed = keys.seal_secret(purpose(public_key), base64.b64decode(private_key))
    return key_id, base64.b64encode(sealed).decode()


def open_private_key(keys: SpoolKeys, key: ZulipBouncerKey) -> str:
    """The base64 private key of a stored key pair; SealError if it does not open (its
    spool key gone from the key file, or a row tampered with)."""
    if key.key_id is None:
        return key.private_key  # written before sealing; sealed at the next start
    try:
        sealed = base64.b64decode(key.private_key, validate=True)
    except binascii.Error:
        raise SealError("a sealed bouncer key is not base64") from None
    return base64.b64encode(keys.open_secret(key.key_id, sealed, purpose(key.public_key))).decode()


@attrs.frozen
class Resealed:
    """What :func:`reseal` did: rows sealed anew, and rows that would not open."""

    sealed: int
    unreadable: int


async def reseal(store: Store, keys: SpoolKeys, *, plain_only: bool) -> Resealed:
    """Seal stored private keys with the current spool key: the rows in the clear only
    (``serve``'s start), or every row not under it yet (``rotate-key``).

    A row another process changed meanwhile is left to it (one compare-and-set UPDATE
    per row); a row that does not open is counted and kept as it is.
    """
    sealed = unreadable = 0
    for key in await store.zulip_bouncer_keys():
        if key.key_id == keys.current or (plain_only and key.key_id is not None):
            continue
        try:
            private = open_private_key(keys, key)
        except SealError:
            unreadable += 1
            continue
        key_id, stored = seal_private_key(keys, key.public_key, private)
        if await store.zulip_reseal_bouncer_key(key, stored, key_id):
            sealed += 1
    return Resealed(sealed, unreadable)


async def seal_plain_bouncer_keys(store: Store, keys: SpoolKeys) -> None:
    """At ``serve``'s start: seal the private keys stored in the clear by an older pushd,
    and say if any is sealed with a spool key the key file lacks (a key file lost or
    replaced), as the spool does for its rows: registrations to it fail until it is back.

    A store that fails here is logged and the start goes on: the keys in the clear keep
    working, and the next start tries again.
    """
    try:
        done = await reseal(store, keys, plain_only=True)
        missing = sorted(await store.zulip_bouncer_key_ids() - set(keys.ids))
    except StoreError as error:
        log.warning("Zulip bouncer keys stay in the clear until the next start: %s", error)
        return
    if missing:
        log.error(
            "Zulip bouncer private keys are sealed with spool key(s) %s, which %s does "
            "not hold: registrations to them fail until a key file that holds them is back",
            ", ".join(missing),
            keys.path,
        )
    if done.sealed:
        log.info(
            "sealed %d Zulip bouncer private key(s) stored in the clear with spool key %s",
            done.sealed,
            keys.current,
        )
