"""Telling systemd how pushd is doing: ``sd_notify`` without libsystemd.

The protocol is one datagram per message on the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``), holding
``KEY=VALUE`` lines.  That is small enough to own: no C library, no dependency, and it
works the same under systemd 252 (Debian 12) and later.

What pushd sends, and why:

- ``READY=1`` once the store is open and every listener is bound: with ``Type=notify``
  systemd orders dependants after it, so nothing talks to pushd before it can answer.
- ``STATUS=...``: a one-line summary (apps, listeners, spool depth) ``systemctl status``
  shows, refreshed every :data:`STATUS_INTERVAL` seconds.
- ``WATCHDOG=1`` from the trio event loop every half ``$WATCHDOG_USEC``: a loop wedged
  by a blocking call stops sending it and systemd restarts pushd (``WatchdogSec=``).
- ``RELOADING=1`` (with ``MONOTONIC_USEC``, which systemd 253's ``Type=notify-reload``
  requires) then ``READY=1`` around a reload, and ``STOPPING=1`` when draining.

Under ``[server] workers = N`` each worker speaks this same protocol to its supervisor
(:mod:`pushd.supervisor`), which set ``$NOTIFY_SOCKET`` to a socket of its own; every
message then also names the worker (``PUSHD_WORKER=<index>``, from its environment).

Sending never blocks and never raises: a full or vanished socket loses a status line,
which is better than a stalled event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final

import trio

log = logging.getLogger(__name__)

#: Seconds between ``STATUS=`` updates: ``systemctl status`` is read by people.
STATUS_INTERVAL: Final = 5.0
#: The watchdog is fed at this share of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3)
#: advises, so one late wake-up does not cost a restart.
WATCHDOG_SHARE: Final = 0.5
#: Set by the supervisor in a worker's environment: the worker's index (0, 1, ...).
WORKER_ENV: Final = "PUSHD_WORKER"


def _address(name: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a socket address: ``@name`` is Linux's abstract namespace."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` messages, or None when systemd asked for none.

    ``WATCHDOG_PID``, when set, names the process meant: a child that inherited the
    environment (none today, but a wrapper might) must not feed its parent's watchdog.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 * WATCHDOG_SHARE


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares reload messages by."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends notifications to systemd; a no-op when not started by it."""

    def __init__(
        self,
        socket_name: str | None,
        watchdog: float | None = None,
        tag: Mapping[str, object] | None = None,
    ) -> None:
        self.socket_name = socket_name or None
        self.watchdog = watchdog
        #: Fields added to every message (a worker's index, for its supervisor).
        self.tag = dict(tag or {})
        self._socket: socket.socket | None = None
        if self.socket_name is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        worker = environ.get(WORKER_ENV)
        tag = {WORKER_ENV: worker} if worker else None
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_interval(environ), tag)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: object) -> bool:
        """One datagram of ``KEY=value`` lines; False if it could not be sent."""
        if self._socket is None or self.socket_name is None:
            return False
        fields = {**fields, **self.tag}
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._socket.sendto(message.encode(), _address(self.socket_name))
        except OSError as error:  # not there (yet or any more), or full: lose one line
            log.debug("sd_notify %s: %s", ",".join(fields), error.strerror or error)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send(READY=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> None:
        self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="draining: finishing deliveries in flight")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def run(
        self,
        status: Callable[[], str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Feed the watchdog and refresh ``STATUS=`` until cancelled.

        Runs as a task of the event loop it vouches for: if that loop stops scheduling
        tasks, the pings stop, which is exactly what the watchdog must notice.
        """
        task_status.started()
        if not self.enabled:
            await trio.sleep_forever()
        last_status = -STATUS_INTERVAL
        tick = min(self.watchdog or STATUS_INTERVAL, STATUS_INTERVAL)
        while True:
            now = trio.current_time()
            fields: dict[str, object] = {}
            if self.watchdog is not None:
                fields["WATCHDOG"] = 1
            if now - last_status >= STATUS_INTERVAL:
                fields["STATUS"] = status()
                last_status = now
            if fields:
                self.send(**fields)
            await trio.sleep(tick)
