"""The spool's pure parts as tables: the circuit that paces retries, and the decisions
on what an answer means (never-sent attempts, expiry)."""

from __future__ import annotations

import itertools

import pytest

from pushd.cli_spool import _when
from pushd.config import RetryConfig
from pushd.decisions import LONGEST_EXPIRY, Decisions, Report, Retry
from pushd.lanes import Budget, Lane
from pushd.model import ApnsPush, Delivery, Failed, RetryLater
from pushd.spool.circuit import OPEN_MAX, OPEN_MIN, RAMP_START, TRIP_AFTER, Circuit


def test_the_circuit_opens_after_a_run_of_failures_probes_then_ramps_up() -> None:
    circuit = Circuit(limit=100)
    assert circuit.allowance(100.0) == 100  # a fresh process starts at full speed
    for _ in range(TRIP_AFTER - 1):
        assert not circuit.failure(101.0)
    assert circuit.failure(101.0) and circuit.state == "open"
    assert circuit.allowance(101.0 + OPEN_MIN / 2) == 0
    assert not circuit.resends_unknown
    assert circuit.allowance(101.0 + OPEN_MIN) == 1 and circuit.state == "probing"
    assert circuit.resends_unknown  # the probe may be a row whose outcome is unknown
    circuit.success(102.0)
    assert circuit.state == "closed" and circuit.allowance(102.0) == RAMP_START
    assert circuit.allowance(103.0) == 2 * RAMP_START
    assert circuit.allowance(110.0) == 100


def test_the_cool_down_doubles_up_to_its_cap_and_a_success_resets_it() -> None:
    circuit = Circuit(limit=10)
    for _ in range(TRIP_AFTER):
        circuit.failure(0.0)
    now, cool_downs = 0.0, []
    for _ in range(5):
        opened_at = now
        while circuit.allowance(now) == 0:
            now += 0.125
        cool_downs.append(now - opened_at)
        assert circuit.failure(now)  # the probe fails: open again
    assert cool_downs == [OPEN_MIN, 2 * OPEN_MIN, 4 * OPEN_MIN, OPEN_MAX, OPEN_MAX]
    circuit.success(now)
    for _ in range(TRIP_AFTER):
        circuit.failure(now)
    assert circuit.open_until == now + OPEN_MIN


def delivery(expires_at: float | None = None) -> Delivery:
    return Delivery(
        app="a", token="00" * 32, push=ApnsPush(b"{}"), expires_at=expires_at, protocol="native"
    )


@pytest.fixture
def decisions() -> Decisions:
    lane = Lane(name="a", sender=None, budget=Budget(10))  # type: ignore[arg-type]
    return Decisions({"a": lane}, RetryConfig(max_attempts=3, base_delay=1.0, max_delay=8.0))


@pytest.mark.parametrize("kind", ["unreachable", "paused"])
def test_an_attempt_that_never_left_costs_no_attempt(decisions: Decisions, kind: str) -> None:
    never_sent = RetryLater("down", kind=kind)  # type: ignore[arg-type]
    stored = 0  # the row's attempt count, as the spool keeps it
    for _ in range(50):  # an outage: many tries, none reached the upstream
        decided = decisions.decide(delivery(), never_sent, stored + 1, 0.0)
        assert isinstance(decided, Retry) and decided.due <= 1.0  # soon: base_delay
        stored = decided.attempts
    assert stored == 0
    served = decisions.decide(delivery(), RetryLater("503"), 1, 0.0)
    assert isinstance(served, Retry) and served.attempts == 1  # a 5xx costs one


def test_attempts_that_reached_the_upstream_count_up_to_max_attempts(
    decisions: Decisions,
) -> None:
    assert isinstance(decisions.decide(delivery(), RetryLater("503"), 2, 0.0), Retry)
    gave_up = decisions.decide(delivery(), RetryLater("503"), 3, 0.0)
    assert isinstance(gave_up, Report) and gave_up.counter == "dropped"
    unknown = decisions.decide(delivery(), RetryLater("timeout", kind="unknown"), 1, 0.0)
    assert isinstance(unknown, Retry) and unknown.unknown and unknown.attempts == 1


def test_a_delivery_due_after_its_expiry_is_dropped_unsent_and_counted_expired(
    decisions: Decisions,
) -> None:
    decided = decisions.decide(delivery(expires_at=0.1), RetryLater("503", after=5.0), 1, 0.0)
    assert isinstance(decided, Report) and decided.status == "failed"
    assert decided.counter == "expired" and decisions.stats("a").expired == 1


def test_a_credential_failure_fails_a_fresh_push_but_a_spooled_one_waits_out_the_pause(
    decisions: Decisions,
) -> None:
    refused = Failed("InvalidProviderToken", credential=True)
    fresh = decisions.decide(delivery(), refused, 1, 0.0)
    assert isinstance(fresh, Report) and fresh.status == "failed"
    stored = 0
    for _ in range(10):  # the key stays broken for many pauses: never given up
        spooled = decisions.decide(delivery(), refused, stored + 1, 0.0, spooled=True)
        assert isinstance(spooled, Retry) and spooled.due >= decisions.retry.credential_pause
        stored = spooled.attempts
    assert stored == 0
    # Only its expiry ends it.
    late = decisions.decide(delivery(expires_at=10.0), refused, 1, 0.0, spooled=True)
    assert isinstance(late, Report) and late.counter == "expired"


def test_an_expiry_beyond_any_float_is_retried_within_a_year(decisions: Decisions) -> None:
    """A push's expiry past what a float holds (a frontend's bound missed) must not
    raise after the push went out: that lost the answer and the retry."""
    huge = Delivery(
        app="a", token="00" * 32, push=ApnsPush(b"{}", expiration=10**400), protocol="native"
    )
    assert decisions.expires_at(huge, 1000.0) == 1000.0 + LONGEST_EXPIRY
    decided = decisions.decide(huge, RetryLater("503"), 1, 1000.0)
    assert isinstance(decided, Retry)
    soon = Delivery(app="a", token="00" * 32, push=ApnsPush(b"{}", expiration=2000), protocol="x")
    assert decisions.expires_at(soon, 1000.0) == 2000.0


def test_spool_status_says_when_rows_fall_due_not_due_0s_ago() -> None:
    """A paused app's rows, all due later, read "oldest due 0s ago": a stuck spool."""
    assert _when(None, 1000.0) == "oldest due -"
    assert _when(940.0, 1000.0) == "oldest due 60s ago"
    assert _when(1091.0, 1000.0) == "next due in 91s"
    assert _when(1291.0, 1000.0) == "next due in 5m"


def test_pushes_to_a_throttled_device_go_back_one_at_a_time(decisions: Decisions) -> None:
    """APNs 429 TooManyRequests is about one device: each push to it backed off on its
    own and came back with the others in a burst, refused again.  Now the retries to
    that device are spaced a backoff step apart; another device is not held back."""
    throttled = RetryLater("TooManyRequests", kind="device")
    dues = []
    for _ in range(6):
        decided = decisions.decide(delivery(), throttled, 1, 100.0)
        assert isinstance(decided, Retry)
        dues.append(decided.due)
    # base_delay 1.0: each step is 0.5-1.0 s (equal jitter) after the one before.
    gaps = [later - earlier for earlier, later in itertools.pairwise(dues)]
    assert all(0.5 <= gap <= 1.0 for gap in gaps), dues
    other = Delivery(app="a", token="11" * 32, push=ApnsPush(b"{}"), protocol="native")
    decided = decisions.decide(other, throttled, 1, 100.0)
    assert isinstance(decided, Retry) and decided.due <= 101.0
