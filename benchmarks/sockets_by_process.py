"""Which process holds the accepted connections of a port: the balance of ``SO_REUSEPORT``.

With ``[server] workers = 2`` Linux hashes each new connection to one worker's socket;
a chat server's keep-alive connections then stay there.  ``workers.py`` samples this
while the driver runs, so a row can say how its connections were split.  Read from
/proc (no ``ss`` or ``psutil``): a process's socket inodes from ``/proc/<pid>/fd``, the
established connections on the port from ``/proc/net/tcp`` and ``tcp6``.
"""

from __future__ import annotations

import contextlib
import os

#: ``st`` of an established connection in /proc/net/tcp.
ESTABLISHED = "01"
_SOCKET_LINK = "socket:["


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        with contextlib.suppress(OSError):  # closed while we looked
            target = os.readlink(f"{directory}/{name}")
            if target.startswith(_SOCKET_LINK):
                inodes.add(target[len(_SOCKET_LINK) : -1])
    return inodes


def _established_inodes(port: int) -> set[str]:
    """Inodes of established connections whose local port is ``port`` (the server side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            next(f)  # the header
            for line in f:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == ESTABLISHED:
                    inodes.add(fields[9])
    return inodes


def connections_by_process(port: int, pids: dict[str, int]) -> dict[str, int]:
    """How many established connections to ``port`` each process (by role) holds."""
    established = _established_inodes(port)
    return {role: len(_socket_inodes(pid) & established) for role, pid in pids.items()}
