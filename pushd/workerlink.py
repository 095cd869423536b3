"""The supervisor's end of its workers' sd_notify messages.

Workers report as a lone pushd reports to systemd (:mod:`pushd.sdnotify`): datagrams
of ``KEY=VALUE`` lines on the socket ``$NOTIFY_SOCKET`` names, here a socket the
supervisor binds in a private directory (mode 0700, so no other user can speak for a
worker).  Each message names its worker (``PUSHD_WORKER``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

import trio

#: The largest message read; a worker's are a few hundred bytes.
MAX_MESSAGE: Final = 8192


def parse(message: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines as a dict; lines without ``=`` are ignored."""
    fields: dict[str, str] = {}
    for line in message.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


class Inbox:
    """A bound AF_UNIX datagram socket at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.chmod(0o700)
        plain = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        plain.bind(str(path))  # before any worker starts: none of their lines is lost
        self._socket = trio.socket.from_stdlib_socket(plain)

    async def receive(self) -> dict[str, str]:
        """The next message's fields."""
        data = await self._socket.recv(MAX_MESSAGE)
        return parse(data)

    def close(self) -> None:
        self._socket.close()
