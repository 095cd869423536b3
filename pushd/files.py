"""Files and directories pushd creates: private to its user, whatever the umask.

The store holds device tokens and hashed keys, and later sealed notifications; its
``-wal`` and ``-shm`` side files hold the same pages.  SQLite gives side files the mode
of the database file, so creating that file 0600 before SQLite opens it keeps all three
private even under a umask of 022.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

#: The store and other files only pushd's user reads.
PRIVATE_FILE: Final = 0o600
#: Config and key files root writes for the service's user to read: owner root, group
#: the service's (README, "Running it for real"), nobody else.
SHARED_FILE: Final = 0o640
#: Directories pushd creates for them.
PRIVATE_DIR: Final = 0o700
#: SQLite's side files of a database in WAL mode.
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
#: Ends the name of a file :func:`write_durably` has not put in place yet.
TEMPORARY_SUFFIX: Final = ".tmp"


def private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents, each new one 0700 (existing ones untouched)."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=PRIVATE_DIR)
            os.chmod(directory, PRIVATE_DIR)  # mkdir's mode is filtered by the umask


def private_file(path: Path) -> None:
    """Make ``path`` exist with mode 0600; tighten it (and SQLite's side files) if it
    is more open, as a store made by an older pushd under a lax umask is."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & ~PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        side = Path(f"{path}{suffix}")
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if stat.S_IMODE(side.stat().st_mode) & ~PRIVATE_FILE:
                os.chmod(side, PRIVATE_FILE)


class OwnerError(PermissionError):
    """A new file cannot be given the owner and group of the file it replaces (only
    root, or the owner keeping its own uid and a group it is in, may set them)."""


def write_durably(
    path: Path, data: bytes, *, mode: int, owner: tuple[int, int] | None = None, replace: bool
) -> None:
    """Put ``data`` at ``path`` whole or not at all, and on disk before this returns.

    The bytes go to a temporary file beside ``path`` (so a rename is atomic), made
    private at once, then given ``owner`` (uid, gid) and ``mode``, written, flushed with
    fsync, and only then renamed over ``path`` (``replace``) or linked to it (not
    ``replace``: FileExistsError if there is one, never overwritten); the directory is
    flushed last so the new name survives a power loss too.  A full disk or a crash
    leaves ``path`` as it was and no temporary file behind.  OwnerError if ``owner``
    cannot be set, OSError for anything else.
    """
    directory = path.parent
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    temporary = Path(name)
    try:
        try:
            if owner is not None:
                try:
                    os.fchown(fd, *owner)
                except PermissionError as error:
                    raise OwnerError(error.errno, error.strerror) from None
            os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    sync_directory(directory)


def sync_directory(directory: Path) -> None:
    """fsync ``directory``: a rename or link in it is durable only once this returns."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
