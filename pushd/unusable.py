"""Apps whose credentials cannot be used when pushd starts: paused, not fatal.

A config with a wrong *setting* is refused at start, whole, as it always was: that is
the admin's mistake, made in one file, seen at once.  A credential file broken on disk
is different: a renewal script that left half a key, a certificate that lost its
permission, a service account deleted by a clean-up.  It is found when pushd next
starts (often a reboot or an upgrade, unattended), and refusing the start then took
every other app down with it: one broken credential stopped every push of every chat
server.

So ``serve`` starts such an app paused, as if its upstream had refused the credential
(:mod:`pushd.attempts`): an ALARM names the file and the problem, ``/healthz`` and
``pushd_app_paused`` show the app paused (reason ``unusable_credential``), its pushes
are answered ``retrying`` and wait in the spool, and every other app serves as usual.
Once the file is mended, ``pushd reload`` builds the app's client and sends what
waited.  Each pause ends in one try that fails again (another ALARM, another pause)
until then.  ``check-config`` still reports the file as a problem, and a reload still
refuses a config with one: the app running on the credential it loaded before is kept.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import attrs
import trio

from pushd.lanes import Lane
from pushd.model import Failed, Outcome

log = logging.getLogger(__name__)

#: How such an app's pause reason begins: its ``pushd_app_paused`` reason label.
UNUSABLE: Final = "unusable_credential"


@attrs.frozen
class UnusableSender:
    """The sender of an app whose client could not be built: every push is refused as
    by a credential error, without a connection (there is no credential to send)."""

    reason: str

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def send(self, token: str, push: Any) -> Outcome:
        return Failed(self.reason, credential=True)


def unusable_sender(problem: str) -> UnusableSender:
    """The sender for an app whose credential has ``problem``."""
    return UnusableSender(f"{UNUSABLE}: {problem}")


def pause_unusable(lane: Lane, credential_pause: float) -> Lane:
    """Pause ``lane`` (built on an :class:`UnusableSender`) for ``credential_pause``
    seconds from now, with an ALARM naming its problem."""
    assert isinstance(lane.sender, UnusableSender)
    lane.pause_reason = lane.sender.reason
    lane.paused_until = time.time() + credential_pause  # the clock of pushd.attempts
    log.error(
        "ALARM app %s started paused: %s; its pushes wait in the spool; mend the file, "
        "then `pushd reload` (other apps are not affected)",
        lane.name,
        lane.sender.reason.removeprefix(f"{UNUSABLE}: "),
    )
    return lane
