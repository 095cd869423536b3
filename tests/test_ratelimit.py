"""The shared rate limiter: fixed windows per key, bounded memory, one warning a window."""

from __future__ import annotations

import logging

import pytest

from pushd.frontends.ratelimit import FixedWindowLimiter, RateLimit, retry_after_seconds
from pushd.store.errors import StoreUnavailable


def test_a_window_starts_at_the_first_request_and_refuses_past_the_limit() -> None:
    limiter = FixedWindowLimiter(2, window=10)
    assert limiter.check("a", 100.0) is None
    assert limiter.check("a", 104.0) is None
    assert limiter.check("a", 105.0) == pytest.approx(5.0)
    assert limiter.check("a", 109.9) == pytest.approx(0.1)  # refusals are not counted
    assert limiter.check("b", 105.0) is None  # keys are counted apart
    assert limiter.check("a", 110.0) is None  # a new window
    assert limiter.check("a", 111.0) is None
    assert limiter.check("a", 112.0) == pytest.approx(8.0)


def test_ended_windows_are_dropped_as_time_passes() -> None:
    limiter = FixedWindowLimiter(5, window=1)
    for n in range(1000):
        limiter.check(f"source-{n}", 0.0)
    assert len(limiter) == 1000
    limiter.check("late", 1.5)
    assert len(limiter) == 1


def test_a_flood_of_distinct_keys_does_not_grow_memory() -> None:
    limiter = FixedWindowLimiter(5, window=60, max_keys=100)
    for n in range(10_000):
        assert limiter.check(f"source-{n}", 0.0) is None
    assert len(limiter) == 100
    # The newest keys are still counted (the oldest were forgotten).
    for _ in range(4):
        assert limiter.check("source-9999", 1.0) is None
    assert limiter.check("source-9999", 1.0) is not None


def test_a_wall_clock_stepped_back_never_asks_for_more_than_a_window() -> None:
    limiter = FixedWindowLimiter(1, window=60)
    assert limiter.check("a", 1000.0) is None
    retry_after = limiter.check("a", 900.0)
    assert retry_after is not None and 0 < retry_after <= 60


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_seconds(0.001) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2
    assert retry_after_seconds(59.5) == 60


def test_a_limited_identity_is_logged_once_a_window(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pushd.frontends.ratelimit")
    limit = RateLimit("matrix", 1, window=60)
    assert limit.check("192.0.2.1", 0.0) is None
    for second in range(1, 50):
        assert limit.check("192.0.2.1", float(second)) is not None
    assert limit.check("192.0.2.2", 10.0) is None
    assert limit.check("192.0.2.2", 11.0) is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("matrix: 192.0.2.1 is over its rate limit (1 requests in 60 s)")
    assert "192.0.2.2" in lines[1]
    assert limit.check("192.0.2.1", 61.0) is None  # a new window
    assert limit.check("192.0.2.1", 62.0) is not None
    assert len(caplog.records) == 3  # and a new warning


def test_protocols_sharing_a_backend_count_apart() -> None:
    shared = FixedWindowLimiter(1, window=60)
    native = RateLimit("native", 1, limiter=shared)
    rocketchat = RateLimit("rocketchat", 1, limiter=shared)
    assert native.check("server a", 0.0) is None
    assert rocketchat.check("server a", 0.0) is None
    assert native.check("server a", 1.0) is not None


class Counter:
    """A shared counter as the store keeps it: one count per (key, window start)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.rows: dict[tuple[str, int], int] = {}
        self.fail = fail

    async def rate_hit(self, key: str, window_start: int) -> int:
        if self.fail:
            raise StoreUnavailable("connection_lost")
        self.rows[key, window_start] = self.rows.get((key, window_start), 0) + 1
        return self.rows[key, window_start]


async def test_shared_windows_are_the_clocks_and_count_in_the_shared_rows() -> None:
    counter = Counter()
    # Two instances, one database: the limit holds over both.
    first, second = (RateLimit("native", 3, window=60, shared=counter) for _ in range(2))
    assert await first.acquire("server a", 120.5) is None
    assert await second.acquire("server a", 130.0) is None
    assert await first.acquire("server a", 170.0) is None
    assert await second.acquire("server a", 175.0) == pytest.approx(5.0)  # until 180
    assert counter.rows == {("native:server a", 120): 4}
    assert await first.acquire("server b", 175.0) is None  # identities count apart
    assert await second.acquire("server a", 180.0) is None  # the clock's next minute


async def test_a_failing_shared_counter_lets_requests_through() -> None:
    limit = RateLimit("zulip", 1, window=60, shared=Counter(fail=True))
    assert await limit.acquire("server a", 0.0) is None
    assert await limit.acquire("server a", 1.0) is None


async def test_acquire_without_a_shared_counter_counts_in_memory() -> None:
    limit = RateLimit("rocketchat", 1, window=60)
    assert await limit.acquire("server a", 0.0) is None
    assert await limit.acquire("server a", 1.0) == pytest.approx(59.0)
