"""Attempts without a lane for their app (pushd.attempts): what a push of an app that a
reload removed hears, between its spool claim and its send."""

from __future__ import annotations

from pushd.attempts import Attempts
from pushd.config import RetryConfig
from pushd.decisions import NEVER_SENT
from pushd.model import ApnsPush, Outcome, RetryLater


async def test_a_push_whose_app_a_reload_removed_waits_in_the_spool() -> None:
    """It was failed (final: its row deleted) while the app's other spooled pushes
    waited for it to come back.  Now it is retried later as never sent: it costs no
    attempt and goes back to the spool with them."""
    attempts = Attempts({}, RetryConfig(), clock=lambda: 0.0)
    outcomes: dict[int, Outcome] = {}
    await attempts.attempt("gone", ["a", "b"], ApnsPush(payload=b"{}"), outcomes.__setitem__)
    assert set(outcomes) == {0, 1}
    for outcome in outcomes.values():
        assert isinstance(outcome, RetryLater), outcome
        assert outcome.kind in NEVER_SENT
        assert outcome.reason == "no app named 'gone' is configured"
