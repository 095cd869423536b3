"""What an upstream's answer means for a delivery: final, or when to try again.

One policy for a fresh attempt and a retry from the spool, so that a delivery is judged
the same whichever process sends it and how often:

- delivered, dead (unless the device registered the token again after APNs saw it
  die) and failed are final;
- a dead verdict that a misconfigured app hears for every token (``TokenDead.mismatch``)
  removes the token only once the app has proven its configuration by a delivery;
  before that it fails with the token kept (:mod:`pushd.proof`);
- a transient failure is tried again after a backoff (with jitter, never before the
  upstream's Retry-After), unless the push asked for one attempt (APNs expiration 0),
  ran out of attempts, or would be due after it expires;
- an attempt that never reached the upstream (connection refused, no connection, the
  app paused) costs no attempt: it goes again soon, and only the push's expiry ends it.
  Otherwise a 7 s outage would burn ``max_attempts`` of every spooled delivery in
  seconds and fail promises pushd made;
- a delivery that would be due after its expiry is dropped unsent and counted as
  ``expired`` (never sent late); one out of attempts is ``gave up`` (``dropped``);
- a credential failure is final for a fresh attempt (its caller hears it at once), but a
  spooled delivery was promised: it waits out the app's pause as a paused one does
  (costing no attempt, ended only by its expiry), since the fault is the app's key, not
  the message, and the operator may yet fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final, Literal

import attrs

from pushd.config import RetryConfig
from pushd.lanes import Lane, LaneStats, backoff
from pushd.model import Delivered, Delivery, Failed, Outcome, RetryLater, TokenDead, mask_token
from pushd.proof import KEPT

log = logging.getLogger("pushd.dispatch")

Status = Literal["delivered", "removed", "retrying", "failed"]

#: Kinds of transient failure where the request never left pushd (or never reached the
#: upstream): they cost no attempt (see the module docstring).
NEVER_SENT: Final = frozenset({"unreachable", "paused"})
#: The reason a delivery that expired unsent reports, and the counter it raises.
EXPIRED: Final = "expired"
#: The latest a push is retried until, from now, whatever expiry it carries (a year;
#: the frontends allow at most about 30 days).
LONGEST_EXPIRY: Final = 365 * 24 * 3600
#: Devices remembered as throttled (APNs 429 TooManyRequests) before the expired ones
#: are swept out: a bound on memory, far above what one process throttles at once.
THROTTLED_DEVICES_SWEEP_AT: Final = 10_000


@attrs.frozen
class Report:
    """What happened to one delivery, as far as the caller is told."""

    delivery: Delivery
    status: Status
    reason: str | None = None
    #: The upstream's verdict (None: no answer before the deadline), for frontends whose
    #: protocol needs more than the status, e.g. a Retry-After to pass on.
    outcome: Outcome | None = None

    @property
    def counter(self) -> str | None:
        """The spool counter a final failure raises (``expired``, ``dropped``), if any."""
        if self.status != "failed" or self.reason is None:
            return None
        if self.reason.startswith(EXPIRED):
            return EXPIRED
        return "dropped" if self.reason.startswith("gave up") else None


@attrs.frozen
class Retry:
    """The decision to try again: when, whether the last try may have arrived, and
    the attempt count to store (unchanged after an attempt that never left)."""

    due: float
    unknown: bool
    reason: str
    attempts: int = 1


class Decisions:
    """The policy above over the apps' lanes (for their counters) and ``[retry]``."""

    def __init__(self, lanes: Mapping[str, Lane], retry: RetryConfig) -> None:
        self.lanes = lanes
        self.retry = retry
        #: Per (app, token) APNs throttles: when its next retry may go (see
        #: :meth:`_device_slot`).
        self._device_free: dict[tuple[str, str], float] = {}

    def stats(self, app: str) -> LaneStats:
        lane = self.lanes.get(app)
        return lane.stats if lane is not None else LaneStats()

    def expires_at(self, delivery: Delivery, now: float) -> float:
        """When trying again becomes pointless: the push's own expiry, or the default."""
        if delivery.expires_at is not None:
            return delivery.expires_at
        expiration = delivery.push.expiration
        if not expiration:
            return now + self.retry.default_ttl
        # The frontends bound what a caller may ask for; this bound keeps a value that
        # slipped past them from raising (a float overflows) after the push went out.
        return float(min(expiration, now + LONGEST_EXPIRY))

    def decide(
        self,
        delivery: Delivery,
        outcome: Outcome,
        attempt: int,
        now: float,
        *,
        spooled: bool = False,
    ) -> Report | Retry:
        """What ``outcome`` of attempt number ``attempt`` means: a final report, or when
        to try again.  ``spooled``: a delivery from the spool, whose caller was already
        answered.  Counted in the app's stats."""
        stats = self.stats(delivery.app)
        if isinstance(outcome, Delivered):
            stats.delivered += 1
            return Report(delivery, "delivered", outcome=outcome)
        if isinstance(outcome, TokenDead):
            kept = (
                outcome.since is not None
                and delivery.registered_at is not None
                and delivery.registered_at >= outcome.since
            )
            if kept:  # the device registered this token again after APNs saw it die
                stats.failed += 1
                return Report(
                    delivery, "failed", f"{outcome.reason} (kept: re-registered)", outcome
                )
            lane = self.lanes.get(delivery.app)
            if outcome.mismatch and (lane is None or not lane.proof.proven):
                return self._unproven(delivery, outcome, lane, now, stats)
            stats.removed += 1
            log.info(
                "app %s: token %s is dead (%s), removing it",
                delivery.app,
                mask_token(delivery.token),
                outcome.reason,
            )
            return Report(delivery, "removed", outcome.reason, outcome)
        if isinstance(outcome, Failed) and outcome.credential and spooled:
            waiting = RetryLater(outcome.reason, after=self.retry.credential_pause, kind="paused")
            return self._retry_or_give_up(delivery, waiting, attempt, now, stats)
        if isinstance(outcome, Failed):
            stats.failed += 1
            return Report(delivery, "failed", outcome.reason, outcome)
        return self._retry_or_give_up(delivery, outcome, attempt, now, stats)

    def _unproven(
        self,
        delivery: Delivery,
        outcome: TokenDead,
        lane: Lane | None,
        now: float,
        stats: LaneStats,
    ) -> Report:
        """A mismatch verdict from an app that has not delivered yet: the token stays."""
        stats.failed += 1
        log.info(
            "app %s: token %s answered %s before any delivery proved the app; kept",
            delivery.app,
            mask_token(delivery.token),
            outcome.reason,
        )
        if lane is not None:
            lane.proof.keep(lane.name, outcome.reason, now)
        return Report(delivery, "failed", f"{outcome.reason} {KEPT}", outcome)

    def _device_slot(self, delivery: Delivery, due: float, now: float) -> float:
        """When a push to a device APNs throttles (429: too many to this token) may go
        again: after its own backoff, and after the retry of any other push to that
        device, one backoff step apart.  Each push backed off on its own, so a device
        with six pushes waiting got them back in bursts of six, every one refused again
        (18 requests in 7 s): now they go one at a time."""
        key = (delivery.app, delivery.token)
        free = self._device_free
        if len(free) >= THROTTLED_DEVICES_SWEEP_AT:
            for stale in [k for k, until in free.items() if until <= now]:
                del free[stale]
        slot = max(due, free.get(key, now) + backoff(1, self.retry))
        free[key] = slot
        return slot

    def _retry_or_give_up(
        self, delivery: Delivery, outcome: RetryLater, attempt: int, now: float, stats: LaneStats
    ) -> Report | Retry:
        never_sent = outcome.kind in NEVER_SENT
        attempts = attempt - 1 if never_sent else attempt
        why = None
        if delivery.push.expiration == 0:
            why = "the push asked for one attempt (expiration 0)"
        elif attempts >= self.retry.max_attempts:
            why = f"{attempts} attempts"
        else:
            delay = max(backoff(max(1, attempts), self.retry), outcome.after or 0.0)
            if never_sent and not outcome.after:
                delay = min(delay, self.retry.base_delay)  # never sent: go again soon
            due = now + delay
            if outcome.kind == "device":
                due = self._device_slot(delivery, due, now)
            if due < self.expires_at(delivery, now):
                # Not counted here: a retry is one once its spool row is written or
                # rescheduled (Dispatcher.count_retry); a caller answered 503 instead
                # was promised nothing.
                return Retry(due, outcome.maybe_delivered, outcome.reason, attempts)
            stats.expired += 1
            log.info(
                "app %s: a notification to %s expires before its next attempt (%s); dropped unsent",
                delivery.app,
                mask_token(delivery.token),
                outcome.reason,
            )
            return Report(delivery, "failed", f"{EXPIRED}: {outcome.reason}", outcome)
        stats.dropped += 1
        log.warning(
            "app %s: giving up on a notification to %s after %s: %s",
            delivery.app,
            mask_token(delivery.token),
            outcome.reason,
            why,
        )
        return Report(delivery, "failed", f"gave up: {outcome.reason} ({why})", outcome)
