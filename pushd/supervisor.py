"""``[server] workers = N``: one supervisor process, N worker processes on one port.

The supervisor is the process systemd (or a shell) started, and the only one it needs
to know: it holds the pid file, speaks sd_notify (``READY`` once every worker is ready,
``WATCHDOG`` from its own loop, ``RELOADING``/``READY`` around a reload, ``STOPPING``),
serves the merged metrics (:mod:`pushd.metrics.merge`), and forwards signals:

- ``SIGHUP``: to every worker, each of which reloads the config itself
  (:mod:`pushd.reload`); systemd hears ``READY`` again once all have answered.
- ``SIGTERM``/``SIGINT``: to every worker, each of which drains (stops accepting,
  finishes what it accepted); the supervisor exits once all have, 0 if all went well.

Workers are ordinary ``pushd serve`` processes (:mod:`pushd.workers` says what differs)
that report to the supervisor over the sd_notify protocol on a socket of its own, so a
worker's readiness, status, reloads and watchdog travel the way a lone pushd's do to
systemd.  That socket, and the tables in which workers share rate windows and Matrix
dedupe keys on SQLite (:mod:`pushd.hostshared`), live in a private directory (mode 0700,
under ``$RUNTIME_DIRECTORY`` when systemd gives one) removed on exit.

A worker that dies is logged and started again after a back-off that doubles with each
crash (:meth:`pushd.worker_slot.Worker.crashed`); its replacement first releases the
dead one's spool leases, so what it was sending goes again at once.  A worker that
stops feeding its watchdog (:attr:`pushd.worker_slot.Worker.watchdog_limit`: a wedged
event loop) is killed and replaced.  If a worker fails before the service was ever
ready, or fails to become ready :data:`MAX_START_FAILURES` times in a row, the
supervisor stops the others and exits 1: that is a problem for the admin, not one a
restart fixes, and systemd's ``Restart=`` policy then decides.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import trio

from pushd import __version__
from pushd.config import Config, ConfigError, load_checked, read_admin_token
from pushd.hostshared import create_tables
from pushd.http11 import ListenError
from pushd.metrics.merge import MergedMetrics, WorkerView
from pushd.pidfile import PidFile
from pushd.reuseport import bind_reuse_port
from pushd.sdnotify import WORKER_ENV, Notifier
from pushd.worker_slot import Worker, worker_argv, worker_environment
from pushd.workerlink import Inbox
from pushd.workers import (
    ACCEPTED_ENV,
    PrepareError,
    accepted_config_fd,
    claim_all,
    describe_exit,
    lease_prefix,
    prepare_store,
)

log = logging.getLogger(__name__)

#: A worker that exits before it is ready this many times in a row ends the service.
MAX_START_FAILURES: Final = 5
#: How long the supervisor waits for every worker to answer a reload.
RELOAD_TIMEOUT: Final = 60.0
#: A stopping worker gets ``drain_seconds`` plus this before it is killed.
STOP_GRACE: Final = 10.0
#: How often the supervisor looks at its workers' watchdogs.
TICK: Final = 1.0


class Supervisor:
    """Runs ``config.server.workers`` workers; :meth:`run` returns the exit status."""

    def __init__(
        self, config: Config, *, accepted: bytes, notifier: Notifier | None = None
    ) -> None:
        self.config = config
        #: The config file's bytes as last accepted (at start, then by each reload that
        #: passed the checks): every worker starts on them (:data:`ACCEPTED_ENV`), so a
        #: replacement never serves an edit not reloaded yet, nor dies on a broken one.
        self._accepted_fd = accepted_config_fd(accepted)
        #: Raised each time a reload is accepted (:attr:`Worker.generation`).
        self._generation = 0
        self.notifier = notifier or Notifier.from_environment()
        self.workers = [Worker(index) for index in range(config.server.workers)]
        self.port = config.server.port
        self.urls: list[str] = []
        self.serving = False
        self.stopping = False
        self.exit_status = 0
        self._stop = trio.Event()
        self._changed = trio.Event()
        self._inbox: Inbox | None = None
        self._shared_dir: str | None = None
        self._metrics: MergedMetrics | None = None
        #: Held while running (:func:`pushd.claims.claim`); closed on exit.
        self._claims: list[socket.socket] = []

    # --- state ------------------------------------------------------------------------

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def status_line(self) -> str:
        ready = sum(1 for worker in self.workers if worker.ready)
        first = next((w.status for w in self.workers if w.ready and w.status), "")
        return f"{ready}/{len(self.workers)} workers ready" + (f"; {first}" if first else "")

    def views(self) -> list[WorkerView]:
        return [WorkerView(w.index, w.metrics_url, w.restarts) for w in self.workers]

    def stop(self, status: int = 0) -> None:
        """Drain every worker and exit with ``status`` (the worst asked for)."""
        self.exit_status = max(self.exit_status, status)
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        self._stop.set()
        self._poke()

    # --- running ----------------------------------------------------------------------

    async def run(self) -> int:
        claims = claim_all(self.config)
        if isinstance(claims, str):
            log.error("%s: stopping", claims)
            return 1
        try:
            reserved = bind_reuse_port(self.config.server.listen, self.config.server.port)
        except ListenError as error:
            log.error("%s", error)
            return 1
        finally:
            self._claims = claims
        self.port = reserved[0].getsockname()[1]
        try:
            released = await prepare_store(self.config)
        except PrepareError as error:
            log.error("%s", error)
            return 1
        if released:
            log.info("spool: %d deliveries in flight before a restart go again now", released)
        pid_file = PidFile(self.config.server.pid_file)
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        try:
            with (
                trio.open_signal_receiver(*signals) as received,
                tempfile.TemporaryDirectory(
                    prefix="pushd-workers-", dir=os.environ.get("RUNTIME_DIRECTORY") or None
                ) as directory,
            ):
                self._inbox = Inbox(Path(directory) / "notify")
                self._shared_dir = directory
                create_tables(Path(directory))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._signals, received)
                    nursery.start_soon(self._listen_inbox)
                    if not await self._start_metrics(nursery):
                        nursery.cancel_scope.cancel()
                        return 1
                    for worker in self.workers:
                        nursery.start_soon(self._keep, worker)
                    if await self._wait_all_ready():
                        self.serving = True
                        pid_file.write()
                        self.notifier.ready(self.status_line())
                        self._log_ready()
                        nursery.start_soon(self.notifier.run, self.status_line)
                        nursery.start_soon(self._watchdogs)
                    await self._stop.wait()
                    await self._all_exited()
                    nursery.cancel_scope.cancel()
        finally:
            pid_file.remove()
            self.notifier.close()
            if self._inbox is not None:
                self._inbox.close()
            for sock in [*reserved, *self._claims]:
                sock.close()
        return self.exit_status

    def _log_ready(self) -> None:
        scheme = "https" if self.config.server.tls_cert else "http"
        host = self.config.server.listen
        shown = f"[{host}]" if ":" in host else host
        pids = ", ".join(str(w.pid) for w in self.workers)
        log.info(
            "pushd %s listening on %s://%s:%d with %d workers (pids %s) and %d app(s)",
            __version__, scheme, shown, self.port, len(self.workers), pids,
            len(self.config.apps),
        )  # fmt: skip

    async def _start_metrics(self, nursery: trio.Nursery) -> bool:
        if not self.config.metrics.enabled:
            return True
        metrics = MergedMetrics(self.config, self.views)
        self._metrics = metrics
        try:
            urls: list[str] = await nursery.start(metrics.run)
        except (ListenError, BaseExceptionGroup) as error:  # a busy port, maybe in a group
            found: BaseException = error
            while isinstance(found, BaseExceptionGroup) and len(found.exceptions) == 1:
                found = found.exceptions[0]
            if not isinstance(found, ListenError):
                raise
            log.error("metrics: %s", found)
            return False
        log.info("metrics of every worker, merged, on %s", ", ".join(urls))
        return True

    async def _wait_all_ready(self) -> bool:
        while not self.stopping:
            if all(worker.ready for worker in self.workers):
                return True
            await self._changed.wait()
        return False

    async def _all_exited(self) -> None:
        grace = self.config.server.drain_seconds + STOP_GRACE
        with trio.move_on_after(grace):
            while self._any_running():
                await self._changed.wait()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                log.error("worker %d (pid %d) did not drain in time: killing it",
                          worker.index, worker.pid)  # fmt: skip
                worker.process.kill()
        with trio.move_on_after(STOP_GRACE):
            while self._any_running():
                await self._changed.wait()

    def _any_running(self) -> bool:
        """A worker has a process, or one being started (a stop must wait for it too)."""
        return any(w.process is not None or w.spawning for w in self.workers)

    async def _keep(self, worker: Worker) -> None:
        """Run the worker in its slot until the supervisor stops; restart it when it dies."""
        while not self.stopping:
            assert self._inbox is not None
            environ = worker_environment(worker, self.port, self._inbox.path, self._shared_dir)
            fd, generation = self._accepted_fd, self._generation
            environ[ACCEPTED_ENV] = str(fd)
            worker.spawning = True
            try:
                process = await trio.lowlevel.open_process(
                    worker_argv(self.config), env=environ, pass_fds=(fd,)
                )
            finally:
                worker.spawning = False
            worker.process, worker.pid, worker.ready = process, process.pid, False
            worker.generation = generation
            worker.last_ping = trio.current_time()
            log.info("worker %d started (pid %d)", worker.index, process.pid)
            if self.stopping:  # stop() ran while it was started, so it did not signal it
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            was_ready, ready_for = worker.ready, trio.current_time() - worker.ready_at
            worker.process, worker.ready, worker.metrics_url = None, False, None
            worker.reloading = False
            self._poke()
            if self.stopping:
                log.info("worker %d (pid %d) %s", worker.index, worker.pid, describe_exit(code))
                return
            worker.release = [lease_prefix(worker.pid)]
            if not self.serving:
                log.error("worker %d (pid %d) %s before pushd was ready: stopping",
                          worker.index, worker.pid, describe_exit(code))  # fmt: skip
                self.stop(1)
                return
            if not was_ready:
                worker.start_failures += 1
                if worker.start_failures >= MAX_START_FAILURES:
                    log.error(
                        "worker %d failed to start %d times in a row (last: pid %d %s): "
                        "stopping pushd",
                        worker.index, worker.start_failures, worker.pid, describe_exit(code),
                    )  # fmt: skip
                    self.stop(1)
                    return
            delay = worker.crashed(was_ready, ready_for)
            log.warning("worker %d (pid %d) %s; starting a new one in %.1f s",
                        worker.index, worker.pid, describe_exit(code), delay)  # fmt: skip
            with trio.move_on_after(delay):
                await self._stop.wait()
            worker.restarts += 1

    async def _signals(self, received: AsyncIterator[int]) -> None:
        async for signum in received:
            if signum == signal.SIGHUP:
                if self.serving and not self.stopping:
                    await self._reload()
                continue
            log.info("received %s: draining every worker", signal.Signals(signum).name)
            self.stop(0)

    async def _reload(self) -> None:
        """Forward SIGHUP; systemd hears READY again once every worker has reloaded."""
        log.info("received SIGHUP: every worker reloads %s", self.config.source)
        self.notifier.reloading()
        await self._reload_own()
        for worker in self.workers:
            if worker.process is not None and worker.ready:
                worker.reloading = True
                worker.process.send_signal(signal.SIGHUP)
        with trio.move_on_after(RELOAD_TIMEOUT):
            while any(worker.reloading for worker in self.workers) and not self.stopping:
                await self._changed.wait()
        late = [str(w.index) for w in self.workers if w.reloading]
        if late:
            log.warning("reload: worker(s) %s did not answer within %g s", ", ".join(late),
                        RELOAD_TIMEOUT)  # fmt: skip
        self.notifier.ready(self.status_line())

    async def _reload_own(self) -> None:
        """What the supervisor itself keeps of the config: the bytes workers start on,
        and the metrics token (the workers' listeners ask for the new one once they
        have reloaded)."""
        source = self.config.source
        if source is None:
            return

        def read() -> tuple[bytes, Config]:
            text = Path(source).read_bytes()
            return text, load_checked(source, text)

        try:
            text, new = await trio.to_thread.run_sync(read)
        except (ConfigError, OSError):
            return  # each worker logs the problems and keeps its config
        old, self._accepted_fd = self._accepted_fd, accepted_config_fd(text)
        os.close(old)
        self._generation += 1
        if self._metrics is not None:
            self._metrics.token = read_admin_token(new.metrics.bearer_token_file)

    async def _listen_inbox(self) -> None:
        assert self._inbox is not None
        while True:
            fields = await self._inbox.receive()
            index = fields.get(WORKER_ENV, "")
            if not index.isdigit() or int(index) >= len(self.workers):
                continue
            self._heard(self.workers[int(index)], fields)
            self._poke()

    def _heard(self, worker: Worker, fields: dict[str, str]) -> None:
        if not worker.heard(fields):
            return
        if self.serving:
            log.info("worker %d (pid %d) is ready", worker.index, worker.pid)
        if worker.generation != self._generation and worker.process is not None:
            # It was starting, on the config before, when a reload was forwarded to
            # the ready workers: it would have served the old config until restarted.
            log.info("worker %d (pid %d) started before the last reload: reloading it",
                     worker.index, worker.pid)  # fmt: skip
            worker.generation, worker.reloading = self._generation, True
            worker.process.send_signal(signal.SIGHUP)

    async def _watchdogs(self) -> None:
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            for worker in self.workers:
                process = worker.process
                if process is None or process.returncode is not None:
                    continue
                limit = worker.watchdog_limit
                if now - worker.last_ping > limit and not self.stopping:
                    log.error("worker %d (pid %d) sent no watchdog ping for %g s: killing it",
                              worker.index, worker.pid, limit)  # fmt: skip
                    process.kill()
                    worker.last_ping = now
