"""A :class:`Batch`: one push to many tokens, the owner of its streams on a pool's connections.

Split from :mod:`pushd.upstream.h2pool` (which decides where a batch's requests go):
this is what a batch does with the answers (classify, resend what the server did not
process, renew an expired credential once, report each index exactly once).  The APNs
and FCM clients subclass it with their request building and classification.
:func:`spread` (how many of a batch's requests go to each connection) lives here too,
to keep the pool's module to its size; the pool re-exports it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from pushd.model import Failed, Outcome, RetryLater
from pushd.upstream.h2conn import PoolConnection
from pushd.upstream.h2types import Failure, Stream, Unprocessed

if TYPE_CHECKING:
    from pushd.upstream.h2pool import H2Pool

#: How often one request may be moved to another connection because the server did not
#: process it (GOAWAY above it, REFUSED_STREAM) before it is reported as RetryLater.
MAX_RESENDS = 5

Report = Callable[[int, Outcome], None]


def spread(conns: Sequence[PoolConnection], wanted: int) -> list[tuple[PoolConnection, int]]:
    """How many of ``wanted`` slots to take from each connection, in one go.

    The result is what taking one slot at a time from the connection with the most free
    slots would give: the free counts are levelled from the top, so load spreads evenly.
    """
    frees = sorted(
        ((conn.free_slots, n) for n, conn in enumerate(conns) if conn.free_slots > 0),
        reverse=True,
    )
    wanted = min(wanted, sum(free for free, _ in frees))
    takes = [0] * len(frees)
    top = 1  # frees[:top] are levelled down to ``level`` by the takes so far
    level = frees[0][0] if frees else 0
    while wanted > 0:
        below = frees[top][0] if top < len(frees) else 0
        step = level - below
        if step * top <= wanted:
            for i in range(top):
                takes[i] += step
            wanted -= step * top
            level = below
            top += 1
        else:
            share, extra = divmod(wanted, top)
            for i in range(top):
                takes[i] += share + (i < extra)
            wanted = 0
    return [(conns[n], take) for (_, n), take in zip(frees, takes, strict=True) if take]


class Reauthenticate:
    """An answer saying the credential expired: renew it and resend the request once."""


#: The one instance :meth:`Batch.classify` returns for that.
REAUTHENTICATE = Reauthenticate()


class Batch:
    """One ``send_many`` call: its shared request parts and progress.

    It is the :class:`~pushd.upstream.h2conn.StreamOwner` of its streams, so the readers
    call it per answer; it classifies, resends (unprocessed, expired credentials) and
    reports, and sets :attr:`wake` when every index is reported or a credential must be
    fetched.  Subclasses provide :meth:`build`, :meth:`classify`, :meth:`set_credential`
    and the renewal hooks.
    """

    __slots__ = (
        "closed",
        "conns",
        "credential",
        "error",
        "first_credential",
        "pending",
        "pool",
        "refreshed",
        "remaining",
        "report",
        "resends",
        "sent_credential",
        "stale",
        "waiting",
        "wake",
    )

    def __init__(self, pool: H2Pool, report: Report, count: int, credential: str | None) -> None:
        self.pool = pool
        self.report = report
        #: The credential (JWT, access token) the shared headers carry now, if any.
        self.credential = credential
        self.first_credential = credential
        #: Indices to send as soon as slots are free, oldest first.
        self.pending: collections.deque[int] = collections.deque()
        #: Indices not yet reported; :attr:`wake` is set when it reaches 0.
        self.remaining = count
        #: Set when the batch's task has something to do: all reported, or :attr:`stale`.
        self.wake = trio.Event()
        #: Indices whose credential was refused, waiting for the task to renew it.
        self.stale: list[int] = []
        #: In the pool's waiter queue.
        self.waiting = False
        #: The caller gave up (timeout or cancellation): ignore everything from now on.
        self.closed = False
        #: Connections that got streams of this batch (to reset them if it gives up).
        self.conns: set[PoolConnection] = set()
        #: Unprocessed resends so far, per index (only indices that had one).
        self.resends: dict[int, int] = {}
        #: Indices already resent after an expired credential (only once each).
        self.refreshed: set[int] = set()
        #: The credential each index was last sent with, once the batch's has changed.
        self.sent_credential: dict[int, str | None] | None = None
        #: The first exception ``report`` raised, re-raised by send_batch at the end.
        self.error: Exception | None = None

    # --- provider hooks -----------------------------------------------------------------

    def build(self, index: int) -> tuple[bytes, bytes]:
        """The request of ``index``: encoded header fields and body."""
        raise NotImplementedError

    def classify(self, stream: Stream) -> Outcome | Reauthenticate:
        """The outcome of an answered stream, or :data:`REAUTHENTICATE`."""
        raise NotImplementedError

    def set_credential(self, credential: str | None) -> None:
        """Rebuild the shared request parts for ``credential``."""
        self.credential = credential

    def goaway_outcome(self, reason: str) -> Outcome | Reauthenticate | None:
        """What a request left unprocessed by a GOAWAY with ``reason`` in its debug data
        reports, as an answer with that reason would; None resends it elsewhere."""
        return None

    def credential_refused(self) -> Outcome:
        """What an index reports when its renewed credential is refused too."""
        return Failed("credential refused", credential=True)

    def renew(self, seen: str) -> str | None:
        """The server refused ``seen``: the credential to resend with, or None when it
        must be fetched (then :meth:`renew_async` runs in the batch's task)."""
        raise NotImplementedError

    async def renew_async(self) -> str | Outcome:
        """Fetch a fresh credential, or the outcome for the indices that wanted it."""
        raise NotImplementedError

    # --- reporting ----------------------------------------------------------------------

    def finish(self, index: int, outcome: Outcome) -> None:
        """Report ``index`` (exactly once); wake the caller after the last one.

        ``report`` runs in whichever task got the answer (usually a connection's
        reader): an exception from it must not kill a connection other batches share,
        so it is kept and raised by :meth:`H2Pool.send_batch` at the end.
        """
        self.remaining -= 1
        try:
            self.report(index, outcome)
        except Exception as exc:
            if self.error is None:
                self.error = exc
        if self.remaining == 0:
            self.wake.set()

    def raise_error(self) -> None:
        """Re-raise, in the caller's task, the first exception its ``report`` raised."""
        if self.error is not None:
            raise self.error

    def fail_pending(self, reason: str, outcome: Outcome | None = None) -> None:
        """Report every request still waiting for a slot (or a credential): ``outcome``,
        or RetryLater(``reason``)."""
        pending = self.pending
        if outcome is None:
            outcome = RetryLater(reason, kind="unreachable")
        while pending:
            self.finish(pending.popleft(), outcome)
        stale, self.stale = self.stale, []
        for index in stale:
            self.finish(index, outcome)

    # --- sending ------------------------------------------------------------------------

    def send_on(self, conn: PoolConnection, count: int) -> None:
        """Send the ``count`` oldest pending requests on ``conn``, which has the slots."""
        pending = self.pending
        if count >= len(pending):
            indices = list(pending)
            pending.clear()
        else:
            indices = [pending.popleft() for _ in range(count)]
        self.conns.add(conn)
        if self.sent_credential is not None:
            for index in indices:
                self.sent_credential[index] = self.credential
        opened, failure = conn.open_streams(self, indices, self.build)
        if failure is not None:
            # Never sent: count it as a resend, as send() always has, and queue it again.
            for index in indices[opened:]:
                self.unprocessed(index, failure)

    def unprocessed(self, index: int, reason: str) -> None:
        """The server did not act on ``index``: queue it again, or give up after
        MAX_RESENDS."""
        resends = self.resends.get(index, 0) + 1
        if resends > MAX_RESENDS:
            self.finish(index, RetryLater(reason, kind="unreachable"))
            return
        self.resends[index] = resends
        self.pending.append(index)

    # --- StreamOwner --------------------------------------------------------------------

    def stream_answered(self, stream: Stream) -> None:
        if self.closed:
            return
        outcome = self.classify(stream)
        if isinstance(outcome, Reauthenticate):
            self.reauthenticate(stream.index)
        else:
            self.finish(stream.index, outcome)

    def stream_failed(self, stream: Stream, failure: Failure) -> None:
        if self.closed:
            return
        if isinstance(failure, Unprocessed):
            verdict = None if failure.goaway is None else self.goaway_outcome(failure.goaway)
            if isinstance(verdict, Reauthenticate):
                self.reauthenticate(stream.index)
            elif verdict is not None:
                # A credential the server refused: resending it on a new connection only
                # hears the same (tester: 7 connections in 35 s, the app never paused).
                self.finish(stream.index, verdict)
            else:
                self.unprocessed(stream.index, failure.reason)
                self.pool.pump(self)
        else:
            self.finish(stream.index, RetryLater(failure.reason, kind="unknown"))

    # --- credentials --------------------------------------------------------------------

    def reauthenticate(self, index: int) -> None:
        """Renew the shared credential (once per refused one) and resend ``index`` once."""
        if self.credential is None or index in self.refreshed:
            self.finish(index, self.credential_refused())
            return
        self.refreshed.add(index)
        sent = self.sent_credential
        seen = self.credential if sent is None else sent.get(index, self.first_credential)
        assert seen is not None
        renewed = self.renew(seen)
        if renewed is None:
            self.stale.append(index)
            self.wake.set()
            return
        self.use_credential(renewed)
        self.pending.append(index)
        self.pool.pump(self)

    def use_credential(self, credential: str) -> None:
        """Send with ``credential`` from now on (remembering who got which, once it changes)."""
        if credential != self.credential:
            if self.sent_credential is None:
                self.sent_credential = {}
            self.set_credential(credential)

    async def renew_stale(self) -> None:
        """In the batch's task: fetch a credential and resend what waited for one."""
        result = await self.renew_async()
        stale, self.stale = self.stale, []
        if self.closed:
            return
        if isinstance(result, str):
            self.use_credential(result)
            self.pending.extend(stale)
            self.pool.pump(self)
        else:
            for index in stale:
                self.finish(index, result)
