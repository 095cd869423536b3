"""``[server] workers = N``: what a worker is told, and what is done once before any starts.

A worker is an ordinary ``pushd serve`` started by the supervisor
(:mod:`pushd.supervisor`) with a few environment variables (:class:`WorkerRole`).  It
differs from a lone pushd in four ways, all because N processes now share one store
and one port:

- it binds the API port with ``SO_REUSEPORT`` (:mod:`pushd.reuseport`);
- it treats its store as shared even when it is SQLite (``Store.shared``): rate
  windows and Matrix dedupe keys are shared, as N instances on one PostgreSQL share
  them in the database (on SQLite in the host's memory instead, which is 2x cheaper:
  :mod:`pushd.hostshared`), and the spool worker releases only its own leases (a lone
  SQLite pushd releases every lease at start, which would take rows a sibling is
  sending).
  Claims are atomic across processes on SQLite too: every write transaction begins
  ``IMMEDIATE``, so two workers' claims take turns on the database's write lock;
- its metrics listener is on a loopback port of its own, which the supervisor scrapes
  and serves merged on the configured one (:mod:`pushd.metrics.merge`);
- it writes no pid file and speaks sd_notify to the supervisor, not to systemd.

Done once, by the supervisor, before the workers start (:func:`prepare_store`): the
schema migration (N processes migrating one file at once would race), releasing the
leases a previous run left behind (safe only while no worker runs), and creating the
spool's key file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import attrs
import trio

from pushd import claims
from pushd.config import Config
from pushd.sdnotify import WORKER_ENV
from pushd.spool.seal import SealError, SpoolKeys
from pushd.store import open_store
from pushd.store.identity import file_identity

log = logging.getLogger(__name__)

#: The API port every worker binds (the supervisor resolved a configured 0 to it).
PORT_ENV: Final = "PUSHD_WORKER_PORT"
#: Lease owners (name prefixes, comma-separated) of a dead worker, for its replacement.
RELEASE_ENV: Final = "PUSHD_RELEASE_LEASES"
#: The directory of the host's shared tables (:mod:`pushd.hostshared`).
SHARED_ENV: Final = "PUSHD_SHARED_DIR"
#: A worker's metrics listen here (a free port), for the supervisor only.
WORKER_METRICS_HOST: Final = "127.0.0.1"
#: The descriptor of the config a worker starts on: the bytes its supervisor last
#: accepted, not whatever the file holds now (an edit not reloaded yet, or broken).
ACCEPTED_ENV: Final = "PUSHD_ACCEPTED_CONFIG_FD"
#: The sd_notify field a worker announces its metrics URL with.
METRICS_FIELD: Final = "PUSHD_METRICS"


@attrs.frozen
class WorkerRole:
    """What the supervisor told this worker through its environment."""

    index: int
    port: int
    release: tuple[str, ...] = ()
    #: Where the supervisor keeps the rate windows and dedupe keys its workers share.
    shared_dir: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> WorkerRole | None:
        """The role, or None for a pushd that is not a supervisor's worker."""
        index, port = environ.get(WORKER_ENV), environ.get(PORT_ENV)
        if index is None or port is None or not index.isdigit() or not port.isdigit():
            return None
        release = tuple(p for p in environ.get(RELEASE_ENV, "").split(",") if p)
        return cls(int(index), int(port), release, environ.get(SHARED_ENV) or None)

    def environment(self) -> dict[str, str]:
        return {
            WORKER_ENV: str(self.index),
            PORT_ENV: str(self.port),
            **({RELEASE_ENV: ",".join(self.release)} if self.release else {}),
            **({SHARED_ENV: self.shared_dir} if self.shared_dir else {}),
        }

    def apply(self, config: Config) -> Config:
        """``config`` as this worker runs it: the port the supervisor reserved."""
        return attrs.evolve(config, server=attrs.evolve(config.server, port=self.port))

    def metrics_config(self, config: Config) -> Config:
        """The config a worker's metrics listener binds by: a free loopback port."""
        return attrs.evolve(
            config, metrics=attrs.evolve(config.metrics, listen=WORKER_METRICS_HOST, port=0)
        )


#: How often a worker looks whether its supervisor is still there.
ORPHAN_POLL: Final = 1.0


async def first_of(*triggers: Callable[[], Awaitable[None]]) -> None:
    """Return as soon as any of ``triggers`` returns."""
    async with trio.open_nursery() as nursery:

        async def one(trigger: Callable[[], Awaitable[None]]) -> None:
            await trigger()
            nursery.cancel_scope.cancel()

        for trigger in triggers:
            nursery.start_soon(one, trigger)


async def orphaned() -> None:
    """Return once this worker's supervisor is gone (SIGKILLed: it could forward
    nothing).  Then the worker drains and exits rather than serve on unsupervised.
    Polled, because Linux's parent-death signal follows the thread that started the
    process, and trio starts processes from a worker thread that may exit any time."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 (no event for "reparented")
        await trio.sleep(ORPHAN_POLL)
    log.warning("the supervisor (pid %d) is gone: draining and exiting", parent)


def lease_prefix(pid: int) -> str:
    """The start of every spool lease owner name of process ``pid`` on this host
    (``dispatch.instance_name``: host, pid, a random part)."""
    return f"{socket.gethostname()}:{pid}:"


class PrepareError(Exception):
    """The store or the spool key cannot be prepared; the message is for the admin."""


async def prepare_store(config: Config) -> int:
    """Migrate the store, release leases left by a previous run (SQLite only: nobody
    else uses the file yet), and create the spool key file if SQLite's pushd would.
    The number of leases released.  StoreError if the store does not open."""
    store = await open_store(config.store)
    try:
        try:
            SpoolKeys.load(config.spool.key_file, create=not store.shared)
        except (SealError, OSError) as error:
            raise PrepareError(f"spool.key_file: {error}") from None
        if store.shared:
            return 0  # other instances may hold leases right now
        return await store.spool_release(None)
    finally:
        await store.close()


#: A claim: the name bound (:func:`pushd.claims.claim`) and how messages call it.
Claim = tuple[str, str]


def claim_names(config: Config) -> list[Claim]:
    """What one supervisor at a time may have: its port (``SO_REUSEPORT`` would let a
    second one of the same user bind it and take half the connections) and its SQLite
    file (a second would release the first one's spool leases at start)."""
    names = []
    if config.server.port != 0:
        port = f"port {config.server.listen}:{config.server.port}"
        names.append((port, port))
    if config.store.url is None:
        names += store_claim_names(config.store.path)
    return names


def store_claim_names(path: str) -> list[Claim]:
    """The claims on the SQLite file at ``path``: the file, not the path to it.

    A path is one of many to a file: through a bind mount of its directory (or of
    the file), a symlink, a hard link.  Keyed by path, a second pushd on the same file
    by another path started, released the first one's leases and sent its pushes in
    flight twice.  So the claims name identities (``st_dev``, ``st_ino``):

    - the containing directory's, with the file's name (a digest: names are unbounded,
      abstract addresses are not): the file may not exist yet, and a bind mount of the
      directory shows the same identity;
    - the file's own, when it exists: a hard link elsewhere, a bind mount of the file.

    Not covered: a hard link made after a pushd started on a file it created (only
    the directory was claimed then); another network namespace (abstract sockets are
    per namespace: a container); another user (the claim is per user); another host
    (a network filesystem).
    """
    real = os.path.realpath(path)
    label = f"store {real}"
    directory, name = os.path.split(real)
    try:
        where = os.stat(directory)
    except OSError:  # opening it will fail and say why; claim what there is
        return [(f"store path {_digest(real)}", label)]
    digest = _digest(name)
    names = [(f"store dir {where.st_dev}:{where.st_ino} {digest}", label)]
    identity = file_identity(real)
    if identity is not None:
        names.append((f"store file {identity[0]}:{identity[1]}", label))
    return names


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(errors="surrogateescape"), digest_size=12).hexdigest()


def accepted_config_fd(text: bytes) -> int:
    """An anonymous in-memory file holding ``text``, for workers to inherit
    (:data:`ACCEPTED_ENV`); close-on-exec except where passed on purpose."""
    fd = os.memfd_create("pushd-accepted-config", os.MFD_CLOEXEC)
    view = memoryview(text)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def read_accepted_config(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The config bytes the supervisor passed this worker, if it did (the descriptor
    is closed after; its offset is shared with the other workers, so read by pread)."""
    value = environ.get(ACCEPTED_ENV)
    if not value or not value.isdigit():
        return None
    fd = int(value)
    try:
        return os.pread(fd, os.fstat(fd).st_size, 0)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def claim_all(config: Config) -> list[socket.socket] | str:
    """Claim every name of :func:`claim_names` (:mod:`pushd.claims`: held until the
    sockets close or the process ends), or the sentence saying why one cannot be had
    (none are kept then).  A supervisor claims them for its workers; a single
    ``pushd serve`` for itself."""
    return claim_each(claim_names(config))


def claim_store(path: str) -> list[socket.socket] | str:
    """The claims ``serve`` takes on the SQLite file at ``path``, for a command that
    must not run beside a pushd on it (``store copy``, ``store migrate``)."""
    return claim_each(store_claim_names(path))


def claim_each(names: list[Claim]) -> list[socket.socket] | str:
    held: list[socket.socket] = []
    for name, label in names:
        claimed = claims.claim(name, label)
        if isinstance(claimed, str):
            for lock in held:
                lock.close()
            return claimed
        held.append(claimed)
    return held


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
