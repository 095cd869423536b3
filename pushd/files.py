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
from pathlib import Path
from typing import Final

#: The store and other files only pushd's user reads.
PRIVATE_FILE: Final = 0o600
#: Directories pushd creates for them.
PRIVATE_DIR: Final = 0o700
#: SQLite's side files of a database in WAL mode.
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


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
