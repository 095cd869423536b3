"""``[server] pid_file``: where ``pushd reload`` finds the running pushd.

Under systemd the unit's ``ExecReload=`` knows ``$MAINPID`` and needs no file; the file
is for everything else (a container, a shell, logrotate's ``postrotate``).  It is
written once pushd listens, so a pid in it is a pushd that can take a SIGHUP, and
removed when pushd exits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class PidFileError(Exception):
    """The pid file does not name a running process; the message says why."""


class PidFile:
    """The pid file of this process (nothing is done when ``path`` is None)."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path is None else Path(path)
        self._written = False

    def write(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            temporary.write_text(f"{os.getpid()}\n")
            os.replace(temporary, self.path)  # a reader sees the old pid or the new, whole
        except OSError as error:
            log.warning("cannot write pid file %s: %s", self.path, error.strerror or error)
            return
        self._written = True

    def remove(self) -> None:
        """Remove the file if it still names this process (not a successor's)."""
        if self.path is None or not self._written:
            return
        try:
            if read_pid(self.path) == os.getpid():
                self.path.unlink()
        except (OSError, PidFileError):
            pass


def read_pid(path: Path) -> int:
    """The pid in ``path``; PidFileError if there is none or it is not a number."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise PidFileError(f"{path}: no such file (is pushd running?)") from None
    except OSError as error:
        raise PidFileError(f"{path}: {error.strerror}") from None
    if not text.isdigit() or int(text) < 2:
        raise PidFileError(f"{path}: does not hold a process id")
    return int(text)
