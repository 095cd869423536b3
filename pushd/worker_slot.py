"""One worker slot of the supervisor: the process in it, what it said, how it starts.

Split from :mod:`pushd.supervisor` because what concerns one worker alone changes
together: its record, the command line and environment it is started with (the
sd_notify socket it reports on, its watchdog period, the leases its start releases),
what a message from it means, how long its slot waits after a crash, and how long its
watchdog may stay silent.  The supervisor keeps what spans every worker: the service's
readiness, signals, reloads, merged metrics and the exit status.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Final

import attrs
import trio

from pushd.config import Config
from pushd.workers import METRICS_FIELD, WorkerRole

#: The first restart of a crashed worker waits this long; each further crash doubles it.
BACKOFF_FIRST: Final = 0.5
BACKOFF_MAX: Final = 30.0
#: A worker ready for this long is healthy again: its next crash starts the back-off over.
STABLE_AFTER: Final = 60.0
#: A worker silent on its watchdog for this long is killed and replaced.
WORKER_WATCHDOG: Final = 20.0
#: A starting worker not ready within this long is killed and replaced (counted as a
#: failed start): opening a big store or loading credentials takes seconds, not minutes.
WORKER_START_TIMEOUT: Final = 120.0
#: What the supervisor's own environment must not pass on: a worker reports to the
#: supervisor, not to systemd.
_NOT_INHERITED: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "MAINPID")


@attrs.define
class Worker:
    """One worker slot: the process in it now and what it has said."""

    index: int
    process: trio.Process | None = None
    #: Its next process is being started (``process`` not set yet): a stop waits for it.
    spawning: bool = False
    pid: int = 0
    ready: bool = False
    ready_at: float = 0.0
    start_failures: int = 0
    crashes: int = 0
    restarts: int = 0
    status: str = ""
    metrics_url: str | None = None
    reloading: bool = False
    #: The supervisor's config generation (one per reload it accepted) that the
    #: process in the slot started on: one that was starting during a reload missed
    #: its SIGHUP and is sent one once ready.
    generation: int = 0
    last_ping: float = 0.0
    #: Lease owner prefixes of the predecessors its next start must release.
    release: list[str] = attrs.Factory(list)

    @property
    def watchdog_limit(self) -> float:
        """How long the worker may stay silent before it is killed and replaced."""
        return WORKER_WATCHDOG if self.ready else WORKER_START_TIMEOUT

    def heard(self, fields: dict[str, str]) -> bool:
        """Take in one sd_notify message from the worker; True if it just became ready."""
        self.last_ping = trio.current_time()
        if "STATUS" in fields:
            self.status = fields["STATUS"]
        if METRICS_FIELD in fields:
            self.metrics_url = fields[METRICS_FIELD]
        became_ready = False
        if fields.get("READY") == "1":
            if not self.ready:
                self.ready, self.ready_at = True, trio.current_time()
                self.start_failures, self.release = 0, []
                became_ready = True
            self.reloading = False
        return became_ready

    def crashed(self, was_ready: bool, ready_for: float) -> float:
        """Count a crash; the seconds to wait before the slot starts a new worker."""
        if was_ready and ready_for >= STABLE_AFTER:
            self.crashes = 0
        self.crashes += 1
        return min(BACKOFF_MAX, BACKOFF_FIRST * math.pow(2, self.crashes - 1))


def worker_argv(config: Config) -> list[str]:
    """The command line of every worker: ``pushd serve`` on the supervisor's config."""
    source = config.source
    assert source is not None  # a supervisor runs from a config file
    return [sys.executable, "-m", "pushd", "serve", "--config", str(source)]


def worker_environment(
    worker: Worker, port: int, notify_socket: Path, shared_dir: str | None
) -> dict[str, str]:
    """The environment of ``worker``'s next process: its role, and the supervisor's
    notify socket and watchdog period in place of systemd's."""
    environ = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    role = WorkerRole(worker.index, port, tuple(worker.release), shared_dir)
    environ.update(role.environment())
    environ["NOTIFY_SOCKET"] = str(notify_socket)
    environ["WATCHDOG_USEC"] = str(int(WORKER_WATCHDOG * 1e6))
    return environ
