"""One pushd at a time per port and per SQLite file, which other users cannot block.

A claim is an abstract Unix socket bound under a name (``port 127.0.0.1:8080``, or a
SQLite file's identity: ``pushd.workers.store_claim_names``): the kernel releases it
when the process ends, however it ends, so a crash never leaves a stale lock behind.
Abstract names have no owner or permissions, though, and are predictable from the
config: any local user could bind pushd's first and keep it from starting.  So a name
held by a process of another user is skipped for the next of a few slots, and a claim
counts as taken only when a process of pushd's own user holds it (read from ``/proc``:
that user's processes are the ones whose descriptors it may list, and their owner is
checked too, in case pushd runs as root).  A claim on slot *k* also checks the slots
above it, where another pushd went while a squatter held this one and has since left.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Final

#: Slots for one name: a squatter of one slot is passed by; of every slot, reported.
SLOTS: Final = 8
#: A slot busy with no holder of ours in sight may be one exiting: look again after
#: this pause before passing it by.
RECHECK_PAUSE: Final = 0.2
PROC: Final = Path("/proc")
#: Hex digits of a claim's name kept in its socket's name (128 bits).
NAME_DIGEST_CHARS: Final = 32


def claim_address(name: str, slot: int) -> str:
    """The abstract socket name of ``name``'s claim in ``slot``: the name hashed, as a
    socket name holds at most 107 bytes and a store's path may be longer (such a path
    was refused as if another pushd held it)."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:NAME_DIGEST_CHARS]
    return f"pushd-claim uid={os.getuid()} slot={slot} {digest}"


def _bind(address: str) -> socket.socket | None:
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        lock.bind(b"\0" + address.encode())
    except OSError:
        lock.close()
        return None
    return lock


def _inodes(address: str) -> set[str]:
    """The inodes of the sockets bound to the abstract ``address`` (the network
    namespace's ``unix`` table, under ``/proc/self`` where a unit's ``ProcSubset=pid``
    would hide ``/proc/net``, shows it as ``@address``, last on its line, spaces and
    all)."""
    wanted = "@" + address
    found = set()
    with open(PROC / "self" / "net" / "unix", encoding="utf-8", errors="replace") as table:
        for line in table:
            fields = line.rstrip("\n").split(None, 7)
            if len(fields) == 8 and fields[7] == wanted:
                found.add(fields[6])
    return found


def held_by_own_user(address: str) -> bool:
    """Whether a process of this user holds the abstract socket ``address``."""
    targets = {f"socket:[{inode}]" for inode in _inodes(address)}
    if not targets:
        return False
    uid = os.getuid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            descriptors = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for descriptor in descriptors:
            try:
                if os.readlink(descriptor) in targets:
                    return True
            except OSError:
                continue
    return False


def _slot_is_ours(address: str) -> bool | None:
    """For a busy slot: True if a process of this user holds it, False if another
    user's does, None if it came free meanwhile (its holder was exiting)."""
    for attempt in range(2):
        if held_by_own_user(address):
            return True
        if attempt == 0:
            time.sleep(RECHECK_PAUSE)
        probe = _bind(address)
        if probe is not None:
            probe.close()
            return None
    return False


def claim(name: str, label: str | None = None) -> socket.socket | str:
    """Hold ``name`` while this process runs (keep the socket open), or the sentence
    saying why it cannot be had (naming ``label``, the name as the admin knows it,
    when the name itself is not readable: a file's identity).

    An abstract address is at most 107 bytes: keep ``name`` short (a digest for
    anything of unbounded length, such as a path)."""
    label = label or name
    for slot in range(SLOTS):
        address = claim_address(name, slot)
        lock = _bind(address)
        if lock is None:
            ours = _slot_is_ours(address)
            if ours:
                return f"another pushd has {label} already"
            if ours is None:
                lock = _bind(address)
            if lock is None:
                continue  # another user's process squats this slot
        if any(_slot_is_ours(address) for address in _busy_above(name, slot)):
            lock.close()
            return f"another pushd has {label} already"
        return lock
    return (
        f"processes of other users hold every slot of pushd's claim on {label}: find them "
        f"with `grep '@pushd-claim uid={os.getuid()}' /proc/net/unix` and `ss -xp`"
    )


def _busy_above(name: str, slot: int) -> list[str]:
    """The addresses of the slots above ``slot`` that someone holds."""
    busy = []
    for above in range(slot + 1, SLOTS):
        address = claim_address(name, above)
        probe = _bind(address)
        if probe is None:
            busy.append(address)
        else:
            probe.close()
    return busy
