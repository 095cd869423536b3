"""Attempts: one push to some tokens through an app's lane, every outcome recorded once.

The lane decides whether it may go at all (an app paused after a credential error
records ``paused`` without sending: not sent, so not lost), how many may be in flight
(its budget: a large fan-out goes in chunks as units free up), and what each answer
tells its circuit.  A credential failure pauses the app here, with one ALARM line.

When the pause is over, the credential is still suspect until an answer proves it: one
push goes alone to test it, and everything else waits (``paused``) until it has been
answered.  Sending the whole backlog with a key APNs still refuses would only earn a
credential failure per push (and another pause).

:meth:`Attempts.attempt_sends` sends several pushes of one app at once (the
dispatcher's outbox gathers those of concurrent requests, see :mod:`pushd.outbox`):
one budget take, one upstream batch, one task, with each push's outcomes reported
under its own request id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from pushd.config import RetryConfig
from pushd.lanes import Lane
from pushd.metrics.tally import DeliveryTally
from pushd.model import Delivered, Failed, Outcome, RetryLater, TokenDead, provider_of
from pushd.requestid import REQUEST_ID

log = logging.getLogger("pushd.dispatch")

Record = Callable[[int, Outcome], None]


@attrs.frozen
class Send:
    """One push to some tokens of one app, and who hears each token's outcome."""

    tokens: Sequence[str]
    push: Any
    #: ``record(index into tokens, outcome)``, exactly once per token.
    record: Record
    #: The request it came from: its outcomes are logged under it.
    request_id: str = ""


def _wrong_provider(lane: Lane, send: Send) -> Failed:
    """What a push built for another provider than ``lane``'s hears: spooled before a
    reload (or a restart) moved its app to the other provider, it cannot be sent there,
    nor to its device, whose token is the other provider's."""
    return Failed(
        f"app {lane.name}: a push spooled for {provider_of(send.push)} cannot go to "
        f"{lane.provider} (the app's provider changed)"
    )


def _record_all(send: Send, outcome: Outcome) -> None:
    """Every token of ``send`` gets ``outcome`` (not sent), under its request id."""
    current = REQUEST_ID.set(send.request_id)
    try:
        for position in range(len(send.tokens)):
            send.record(position, outcome)
    finally:
        REQUEST_ID.reset(current)


class Attempts:
    """Sends through the lanes; ``clock`` is the wall clock."""

    def __init__(
        self, lanes: Mapping[str, Lane], retry: RetryConfig, clock: Callable[[], float]
    ) -> None:
        self.lanes = lanes
        self.retry = retry
        self.clock = clock
        #: Counts for the metrics (:mod:`pushd.metrics`); None when they are off.
        self.tally: DeliveryTally | None = None

    async def attempt(
        self, app: str, tokens: list[str], push: Any, record: Callable[[int, Outcome], None]
    ) -> None:
        """Send ``push`` to ``tokens`` through the app's lane; ``record(index, outcome)``
        is called exactly once per token."""
        await self.attempt_sends(app, [Send(tokens, push, record, REQUEST_ID.get())])

    @staticmethod
    def _sendable(lane: Lane, sends: Sequence[Send]) -> list[Send]:
        """The sends ``lane``'s sender can send; the others are failed, logged once each."""
        sendable = []
        for send in sends:
            if provider_of(send.push) == lane.provider:
                sendable.append(send)
                continue
            outcome = _wrong_provider(lane, send)
            log.error("%s: failed", outcome.reason)
            _record_all(send, outcome)
        return sendable

    async def attempt_sends(self, app: str, sends: Sequence[Send]) -> None:
        """Every send of ``sends`` through the app's lane, as one upstream batch when the
        budget has room for all; each token's outcome is recorded exactly once."""
        lane = self.lanes.get(app)
        if lane is None:
            # A reload removed the app between a spool claim (or a frontend's check)
            # and now.  Not sent, so not lost: it waits in the spool with the app's
            # other rows, for the app to come back or the push to expire, where it was
            # failed while they waited.
            gone = RetryLater(f"no app named {app!r} is configured", kind="paused")
            for send in sends:
                _record_all(send, gone)
            return
        if lane.provider and any(provider_of(s.push) != lane.provider for s in sends):
            sends = self._sendable(lane, sends)
            if not sends:
                return
        now = self.clock()
        if lane.pause_reason is not None:  # a credential failed and nothing proved it since
            if lane.paused_until > now or lane.probing:
                # Not sent, so not lost: retried once the pause is over, when the
                # credential may work again (a propagating key, a clock fixed, Google's
                # token endpoint back).  If it still fails, that one attempt pauses again.
                paused = RetryLater(
                    f"app {lane.name} is paused after a credential error: {lane.pause_reason}",
                    after=max(0.0, lane.paused_until - now) or None,
                    kind="paused",
                )
                for send in sends:
                    _record_all(send, paused)
                return
            await self._probe(lane, sends)
            return
        total = sum(len(send.tokens) for send in sends)
        granted = await lane.budget.take(total)
        if granted == total:  # the usual case: one batch, no extra task
            await self._send(lane, sends, granted)
            return
        if len(sends) > 1:  # not all fit: each send on its own, in chunks
            lane.budget.give(granted)
            async with trio.open_nursery() as nursery:
                for send in sends:
                    nursery.start_soon(self.attempt_sends, app, [send])
            return
        (send,) = sends
        tokens = send.tokens
        async with trio.open_nursery() as nursery:
            start = 0
            while True:
                nursery.start_soon(self._send, lane, [_part(send, start, granted)], granted)
                start += granted
                if start >= len(tokens):
                    break
                granted = await lane.budget.take(len(tokens) - start)

    async def _send(self, lane: Lane, sends: Sequence[Send], count: int) -> None:
        """Send ``sends`` (``count`` tokens in all, budget taken) as one batch."""
        reported = 0
        tally = self.tally
        started = time.perf_counter()
        # Flat index -> (send, its first flat index): answers arrive by flat index.
        owners: list[int] = []
        starts: list[int] = []
        for number, send in enumerate(sends):
            starts.append(len(owners))
            owners.extend([number] * len(send.tokens))

        # Upstream clients report from their connection's task: its lines (a pause, a
        # retry decision) belong to the request of the delivery answered.
        def report(index: int, outcome: Outcome) -> None:
            nonlocal reported
            number = owners[index]
            send = sends[number]
            current = REQUEST_ID.set(send.request_id)
            try:
                reported += 1
                lane.budget.give()
                if tally is not None:
                    tally.answered(lane.name, outcome, time.perf_counter() - started)
                if isinstance(outcome, Failed) and outcome.credential:
                    self._pause(lane, outcome.reason)
                elif lane.pause_reason is not None and _proves_credential(outcome):
                    log.warning("app %s: its credential works again; sending resumes", lane.name)
                    lane.pause_reason = None
                if lane.observe(outcome, self.clock()):
                    log.warning(
                        "app %s: %d upstream failures in a row (last: %s); retries from the "
                        "spool wait until it answers again",
                        lane.name,
                        lane.circuit.failures,
                        getattr(outcome, "reason", "?"),
                    )
                send.record(index - starts[number], outcome)
            finally:
                REQUEST_ID.reset(current)

        try:
            if len(sends) == 1:
                await lane.send_many(sends[0].tokens, sends[0].push, report)
            else:
                await lane.send_mixed([(send.tokens, send.push) for send in sends], report)
        finally:
            lane.budget.give(count - reported)  # only if cancelled part-way (shutdown)

    async def _probe(self, lane: Lane, sends: Sequence[Send]) -> None:
        """The pause is over: the first token of ``sends`` tests the credential alone,
        every other waits as paused (module docstring)."""
        first, *others = sends
        waiting = RetryLater(
            f"app {lane.name}: one push is testing its credential after a pause "
            f"({lane.pause_reason})",
            kind="paused",
        )
        if len(first.tokens) > 1:
            others.insert(0, _part(first, 1, len(first.tokens) - 1))
        for send in others:
            _record_all(send, waiting)
        lane.probing = True
        try:
            await lane.budget.take(1)
            await self._send(lane, [_part(first, 0, 1)], 1)
        finally:
            lane.probing = False

    def _pause(self, lane: Lane, reason: str) -> None:
        first = lane.paused_until <= self.clock()
        lane.paused_until = self.clock() + self.retry.credential_pause
        lane.pause_reason = reason
        if first:
            log.error(
                "ALARM app %s paused for %.0f s: credential error %s; fix its key or "
                "certificate (other apps are not affected)",
                lane.name,
                self.retry.credential_pause,
                reason,
            )


def _proves_credential(outcome: Outcome) -> bool:
    """Whether the upstream took the credential: it answered about the push itself."""
    return isinstance(outcome, Delivered | TokenDead) or (
        isinstance(outcome, Failed) and not outcome.credential
    )


def _part(send: Send, start: int, count: int) -> Send:
    """Tokens ``start`` to ``start + count`` of ``send``, recording at their own index."""
    if start == 0 and count >= len(send.tokens):
        return send
    record = send.record
    return Send(
        send.tokens[start : start + count],
        send.push,
        lambda index, outcome: record(start + index, outcome),
        send.request_id,
    )
