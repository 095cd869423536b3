"""Lanes: each app's private share of the delivery engine.

Isolation lives here: each app has its own lane, with its own sender (and so its own
connections), its own concurrency budget, paused state and circuit.  A credential
error pauses only that lane and an outage opens only that lane's circuit; nothing one
app does can block another's tasks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

import attrs
import trio

from pushd.config import RetryConfig
from pushd.model import (
    UPSTREAM_TROUBLE,
    Delivered,
    Failed,
    Outcome,
    RemovalScope,
    RetryLater,
    TokenDead,
)
from pushd.proof import Proof
from pushd.spool.circuit import Circuit

ReportFn = Callable[[int, Outcome], None]
PushT = TypeVar("PushT", contravariant=True)

#: Share of an app's concurrency that retries from the spool may use at full speed:
#: the rest is always there for fresh deliveries.
RETRY_SHARE: Final = 0.5


class Sender(Protocol[PushT]):
    """An upstream client (APNs, FCM): what a lane needs from it.

    Each client takes its own provider's push type; a lane only ever hands its sender
    deliveries built for that lane's app, so the lane holds a ``Sender[Any]``.
    """

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def send(self, token: str, push: PushT) -> Outcome: ...


async def send_each(
    sender: Sender[Any], tokens: Sequence[str], push: Any, report: ReportFn
) -> None:
    """``send_many`` for a sender that has none: one task per token."""

    async def one(index: int, token: str) -> None:
        report(index, await sender.send(token, push))

    async with trio.open_nursery() as nursery:
        for index, token in enumerate(tokens):
            nursery.start_soon(one, index, token)


def _shifted(report: ReportFn, offset: int) -> ReportFn:
    """``report`` for a group whose first index is ``offset`` in the whole."""
    return lambda index, outcome: report(offset + index, outcome)


def backoff(attempt: int, config: RetryConfig, rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, with jitter.

    "Equal jitter": half the step is fixed, half random, so retries of a burst spread out
    but none comes back almost at once.
    """
    step = min(config.max_delay, config.base_delay * 2.0 ** (attempt - 1))
    return step / 2 + rng() * step / 2


@attrs.define
class LaneStats:
    """Counters per app, for /healthz and the logs."""

    delivered: int = 0
    removed: int = 0
    failed: int = 0
    retried: int = 0
    dropped: int = 0
    expired: int = 0


class Budget:
    """How many notifications one app may have in flight; taken and given back in bulk.

    A ``trio.CapacityLimiter`` counts tasks, and a fan-out is one task for many
    notifications, so this counts notifications instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting = 0
        self._freed = trio.Event()

    async def take(self, wanted: int) -> int:
        """Wait until at least one unit is free; take up to ``wanted``; return how many."""
        while self.used >= self.limit:
            self._waiting += 1
            try:
                await self._freed.wait()
            finally:
                self._waiting -= 1
        granted = min(wanted, self.limit - self.used)
        self.used += granted
        return granted

    def give(self, count: int = 1) -> None:
        self.used -= count
        if self._waiting:  # a fan-out gives back one unit per answer: keep that cheap
            self._freed.set()
            self._freed = trio.Event()


@attrs.define(eq=False)
class Lane:
    """One app's private share of the engine."""

    name: str
    sender: Sender[Any]
    budget: Budget
    #: ``"apns"`` or ``"fcm"``: the only pushes its sender can send ("": any, for a
    #: lane built by hand).  A reload may change an app's provider under pushes
    #: spooled for the old one (:meth:`pushd.attempts.Attempts.attempt_sends`).
    provider: str = ""
    paused_until: float = 0.0
    #: The last credential failure, until an answer proves the credential works again
    #: (so it outlives the pause: see :mod:`pushd.attempts`).
    pause_reason: str | None = None
    #: True while the one push that tests the credential after a pause is in flight.
    probing: bool = False
    #: The app's ``request_timeout``: the longest an attempt takes, so the least lease a
    #: claimed spool row must still have before it is sent (see :mod:`pushd.spool.worker`).
    request_timeout: float = 10.0
    stats: LaneStats = attrs.Factory(LaneStats)
    #: What this app's dead verdicts may remove from the store.
    scope: RemovalScope = attrs.Factory(RemovalScope)
    #: Whether the app has delivered since this lane was built: until then its
    #: mismatch verdicts keep their tokens (:mod:`pushd.proof`).
    proof: Proof = attrs.Factory(Proof)
    #: Paces retries from the spool by how the upstream is doing.
    circuit: Circuit = attrs.field(init=False)
    #: Spool rows this instance is sending now.
    retries_in_flight: int = 0
    #: Cancels :meth:`run`: a lane a reload replaced stops once it is idle.
    _stop: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)

    def __attrs_post_init__(self) -> None:
        self.circuit = Circuit(limit=max(1, int(self.budget.limit * RETRY_SHARE)))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the sender (its connections) until :meth:`stop`."""
        with self._stop:
            await self.sender.run(task_status=task_status)

    def stop(self) -> None:
        """Close this lane's connections; whatever is still in flight on them is cut."""
        self._stop.cancel()

    @property
    def idle(self) -> bool:
        """Nothing of this lane's is in flight: fresh sends or spooled retries."""
        return self.budget.used == 0 and self.retries_in_flight == 0

    async def send_many(self, tokens: Sequence[str], push: Any, report: ReportFn) -> None:
        batch_send = getattr(self.sender, "send_many", None)
        if batch_send is None:
            await send_each(self.sender, tokens, push, report)
        else:
            await batch_send(tokens, push, report)

    async def send_mixed(
        self, groups: Sequence[tuple[Sequence[str], Any]], report: ReportFn
    ) -> None:
        """Several pushes, each to its tokens; indices count across the groups in order.

        One upstream batch when the sender has ``send_mixed`` (APNs: one wait, one
        flush for all); otherwise one ``send_many`` per group, concurrently.
        """
        mixed = getattr(self.sender, "send_mixed", None)
        if mixed is not None:
            await mixed(groups, report)
            return
        async with trio.open_nursery() as nursery:
            offset = 0
            for tokens, push in groups:
                nursery.start_soon(self.send_many, tokens, push, _shifted(report, offset))
                offset += len(tokens)

    def observe(self, outcome: Outcome, now: float) -> bool:
        """Tell the circuit (and the proof) what the upstream said; True if that opened it."""
        if isinstance(outcome, Delivered) and not self.proof.proven:
            self.proof.delivered(self.name)
        if isinstance(outcome, RetryLater):
            if outcome.kind in UPSTREAM_TROUBLE:
                return self.circuit.failure(now)
            if outcome.kind == "paused":
                return False
        if isinstance(outcome, Delivered | TokenDead | RetryLater) or (
            isinstance(outcome, Failed) and not outcome.credential
        ):
            self.circuit.success(now)
        return False
