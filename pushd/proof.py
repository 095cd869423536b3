"""Whether an app has proven its configuration, before its "mismatch" verdicts delete tokens.

APNs answers ``BadDeviceToken`` for a sandbox token sent to production (and the
reverse) and ``DeviceTokenNotForTopic`` for a token of another bundle id; FCM answers
``SENDER_ID_MISMATCH`` for a token of another Firebase project.  For one token of a
working app that token is dead; for an app set up wrongly (the wrong ``environment``,
``topic`` or ``project_id``) *every* token gets the same answer, and believing it
empties the store in one burst of pushes, with nothing to recover the tokens from.

So such a verdict (:attr:`pushd.model.TokenDead.mismatch`) removes a token only once
the app has delivered a push since this process started or the app's configuration
last changed (a reload that changes it builds a new lane, and so a new :class:`Proof`):
a delivery shows that the environment, topic and project are right, after which the
verdict can only be about the token.  Until then the delivery fails with the token
kept, and an ALARM names what is likely wrong once :data:`ALARM_AFTER` such answers
came with no delivery, then at most once per :data:`ALARM_INTERVAL` while they keep
coming.  :attr:`Proof.alarm_reason` is the ``pushd_app_mismatch_alarm`` gauge.

The state is the process's own (DESIGN.md: a process keeps what it may lose): after a
restart the app proves itself again with its first delivery, and nothing is removed
meanwhile, which is the safe side.
"""

from __future__ import annotations

import logging
from typing import Final

import attrs

log = logging.getLogger("pushd.dispatch")

#: Mismatch verdicts kept with no delivery before the ALARM: a dead token or two after a
#: start is ordinary, a run of them is the sign of a wrong configuration.
ALARM_AFTER: Final = 5
#: At most one ALARM per app in this many seconds while the verdicts keep coming.
ALARM_INTERVAL: Final = 600.0
#: What a kept verdict's report says after the upstream's reason.
KEPT: Final = "(kept: app not yet proven)"


@attrs.define
class Proof:
    """One app's proof of configuration and its mismatch alarm (module docstring)."""

    #: What to check, for the ALARM line (the app's environment and topic, or project).
    hint: str = ""
    #: Whether a push was delivered since the lane was built.
    proven: bool = False
    #: Mismatch verdicts kept since then (reset by nothing but a delivery).
    kept: int = 0
    #: The upstream's reason of the last kept verdict.
    last_reason: str | None = None
    #: When the last ALARM was logged (None: never).
    alarmed_at: float | None = None

    def delivered(self, app: str) -> None:
        """A push of ``app`` was delivered: its environment, topic and project are right."""
        if not self.proven and self.alarmed_at is not None:
            log.warning("app %s: a push was delivered; its mismatch alarm clears", app)
        self.proven = True

    @property
    def alarm_reason(self) -> str | None:
        """The reason the alarm holds for (the last kept verdict's), or None."""
        if self.proven or self.kept < ALARM_AFTER:
            return None
        return self.last_reason

    def keep(self, app: str, reason: str, now: float) -> None:
        """A mismatch verdict is kept: count it, and log the ALARM when it is due."""
        self.kept += 1
        self.last_reason = reason
        if self.kept < ALARM_AFTER:
            return
        if self.alarmed_at is not None and now - self.alarmed_at < ALARM_INTERVAL:
            return
        self.alarmed_at = now
        log.error(
            "ALARM app %s: %d tokens answered %s (last) and no push was delivered since "
            "start or the app's last config change: its configuration is likely wrong "
            "(%s); the tokens are kept, not removed, until a delivery proves the app",
            app,
            self.kept,
            reason,
            self.hint or "check its credentials and settings",
        )
