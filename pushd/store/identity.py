"""Which file a SQLite store is, apart from the path it was reached by.

A path names whatever file is there now; a running pushd holds the file it opened.
The two part when the file is deleted or replaced under pushd (the engine notices:
:class:`pushd.store.engine.SqliteEngine`), and one file has several paths through a
bind mount or a hard link (``pushd.workers.store_claim_names`` claims the file, not
the path).  ``(st_dev, st_ino)`` names a file on one host.
"""

from __future__ import annotations

import os

FileIdentity = tuple[int, int]


def file_identity(path: str) -> FileIdentity | None:
    """``(st_dev, st_ino)`` of the file at ``path``, None if there is none."""
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_dev, status.st_ino


def file_change(path: str, opened: FileIdentity) -> str | None:
    """What became of the file opened as ``opened``: ``"was deleted"``, ``"was
    replaced by another file"``, or None while it is still the one at ``path``.

    Any other error of ``stat`` (a permission changed on the directory, EIO) says
    nothing about which file is there: SQLite's own errors report such trouble."""
    try:
        now = file_identity(path)
    except OSError:
        return None
    if now is None:
        return "was deleted"
    return None if now == opened else "was replaced by another file"
