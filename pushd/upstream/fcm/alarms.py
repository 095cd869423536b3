"""What one FCM app's answers say about its configuration, seen by its client's readers.

Two alarms, both about settings the operator must fix, not about any one token:

* **A project that does not match.**  ``SENDER_ID_MISMATCH`` means the token belongs to
  another Firebase project.  Before the app has delivered, the delivery engine keeps
  such tokens (:mod:`pushd.proof`); after that, one such answer is about its token.
  When most recent sends fail that way the project is wrong all the same (the service
  account changed, half the tokens came from another project), so :class:`MismatchWindow`
  logs an alarm once and, while it holds, turns mismatches into
  ``Failed(credential=True)``: the engine pauses the app rather than deleting every
  token it has.
* **APNs credentials refused by Firebase.**  ``THIRD_PARTY_AUTH_ERROR`` (once
  ``APNS_AUTH_ERROR``) concerns only the iOS and web tokens sent through FCM: Firebase
  refused the APNs key or certificate uploaded to the project.  The app's own
  credential works (Android devices are served), so the delivery fails with the token
  kept and :class:`ThirdPartyAlarm` logs an ALARM at most once per
  :data:`THIRD_PARTY_ALARM_INTERVAL`; pausing the app would hold its Android devices
  too, and flap with every probe that happens to reach one.
"""

from __future__ import annotations

import collections
import logging
from typing import Final

from pushd.model import Failed, Outcome, RetryLater, TokenDead
from pushd.upstream.fcm.classify import THIRD_PARTY_FAILURES

log = logging.getLogger("pushd.upstream.fcm")

#: SENDER_ID_MISMATCH alarm: over the last ALARM_WINDOW answered sends, at least
#: ALARM_MIN_SENDS of them, more than ALARM_RATIO mismatches raise it; it clears (and
#: may be raised again) below ALARM_CLEAR_RATIO, so a ratio hovering near the threshold
#: does not log on every send.
ALARM_WINDOW: Final = 100
ALARM_MIN_SENDS: Final = 20
ALARM_RATIO: Final = 0.5
ALARM_CLEAR_RATIO: Final = 0.25
SENDER_ID_MISMATCH: Final = "SENDER_ID_MISMATCH"
#: At most one THIRD_PARTY_AUTH_ERROR ALARM per app in this many seconds.
THIRD_PARTY_ALARM_INTERVAL: Final = 600.0


class MismatchWindow:
    """The SENDER_ID_MISMATCH ratio of an app's recent answers (module docstring)."""

    def __init__(self, app: str, project: str) -> None:
        self.app = app
        self.project = project
        #: Answered sends, newest last: True for a SENDER_ID_MISMATCH.
        self._recent: collections.deque[bool] = collections.deque(maxlen=ALARM_WINDOW)
        self._mismatches = 0
        #: Whether the alarm is raised.
        self.raised = False

    def observe(self, outcome: Outcome) -> Outcome:
        """Feed an answered send into the window; return the outcome to report."""
        if isinstance(outcome, RetryLater):  # says nothing about the tokens
            return outcome
        mismatch = isinstance(outcome, TokenDead) and outcome.reason == SENDER_ID_MISMATCH
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._mismatches -= 1
        recent.append(mismatch)
        self._mismatches += mismatch
        count = len(recent)
        if not self.raised:
            if count >= ALARM_MIN_SENDS and self._mismatches > ALARM_RATIO * count:
                self.raised = True
                log.error(
                    "ALARM fcm[%s]: %d of the last %d sends failed with SENDER_ID_MISMATCH: "
                    "the service account's project (%s) does not match the app's tokens; "
                    "check project_id and the service-account file",
                    self.app,
                    self._mismatches,
                    count,
                    self.project,
                )
        elif self._mismatches < ALARM_CLEAR_RATIO * count:
            self.raised = False
            log.warning("fcm[%s]: SENDER_ID_MISMATCH alarm cleared", self.app)
        if mismatch and self.raised:
            return Failed(SENDER_ID_MISMATCH, credential=True)
        return outcome


class ThirdPartyAlarm:
    """The rate-limited ALARM for Firebase refusing the app's APNs credentials."""

    def __init__(self, app: str, project: str) -> None:
        self.app = app
        self.project = project
        #: When the last ALARM was logged (monotonic seconds), None before the first.
        self.alarmed_at: float | None = None
        #: Refusals since start, for tests and the log line.
        self.count = 0

    def observe(self, outcome: Outcome, now: float) -> None:
        """Count a refusal; log the ALARM if none was logged within the interval."""
        if not isinstance(outcome, Failed) or outcome.reason not in THIRD_PARTY_FAILURES:
            return
        self.count += 1
        if self.alarmed_at is not None and now - self.alarmed_at < THIRD_PARTY_ALARM_INTERVAL:
            return
        self.alarmed_at = now
        log.error(
            "ALARM fcm[%s]: Firebase refused the APNs credentials uploaded to project %s "
            "(%d refusals since start, last: %s): pushes to its iOS and web tokens fail, "
            "tokens kept; upload a valid APNs key or certificate in the Firebase console "
            "(its Android devices are served as usual)",
            self.app,
            self.project,
            self.count,
            outcome.reason.split(":", 1)[0],
        )
