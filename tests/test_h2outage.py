"""The log of an outage's failed connects (pushd.upstream.h2outage): what an admin reads
while APNs or FCM cannot be reached, and when it can again."""

from __future__ import annotations

import logging

import pytest

from pushd.upstream.h2outage import REPEAT_WARNING_AFTER, ConnectFailures

ROUTE = "api.push.apple.com:443"
REFUSED = "ConnectionRefusedError: [Errno 111] Connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_outage_is_one_warning_a_minute_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four slots failing every 5 s for two and a half minutes: 120 failed connects were
    120 warnings; now 3 (at once, after a minute, after two), then the end."""
    caplog.set_level(logging.DEBUG, "pushd.test")
    clock = Clock()
    failures = ConnectFailures(logging.getLogger("pushd.test"), "apns[chat]", clock)
    for _ in range(30):
        for slot in range(4):
            failures.failed(slot, ROUTE, REFUSED, "retry in 5.0 s")
        clock.now += 5
    failures.connected()
    lines = warnings(caplog)
    assert len(lines) == 4, lines
    assert lines[0] == (
        f"apns[chat] connection 0: connect to {ROUTE} failed ({REFUSED}); retry in 5.0 s"
    )
    assert lines[1].endswith(f"; {4 * 12 - 1} more failed connects since the last such line")
    assert lines[3] == "apns[chat]: connected again after 150 s and 120 failed connects"
    assert len(caplog.records) == 121  # the other failures are still there, at DEBUG
    caplog.clear()
    failures.connected()  # no outage: nothing to say
    assert caplog.records == []


def test_a_new_error_is_a_warning_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pushd.test")
    clock = Clock()
    failures = ConnectFailures(logging.getLogger("pushd.test"), "fcm[chat]", clock)
    failures.failed(0, ROUTE, REFUSED, "retry in 1.0 s")
    clock.now += REPEAT_WARNING_AFTER / 2
    failures.failed(1, ROUTE, REFUSED, "retry in 1.0 s")
    failures.failed(1, ROUTE, "SSLCertVerificationError: certificate verify failed", "retry")
    lines = warnings(caplog)
    assert len(lines) == 2, lines
    assert "SSLCertVerificationError" in lines[1]
    assert lines[1].endswith("; 1 more failed connects since the last such line")
