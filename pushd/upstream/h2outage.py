"""How a pool's failed connects are logged: as one outage, not a line per slot and try.

Each slot of a pool (``connections`` of them per app) reconnects on its own backoff, and
each failed connect was a WARNING: an APNs outage of an hour with four slots wrote
hundreds of lines per app, burying the one that said something new.  Now the first
failure of an outage is a WARNING, and so is a failure with another error, and one a
minute while it lasts (saying how many failed since); the rest are DEBUG.  When a
connect succeeds again, one WARNING closes the outage with its length, so an admin who
reads only warnings sees it end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio

#: While connects keep failing with the same error, one WARNING per this many seconds.
REPEAT_WARNING_AFTER: Final = 60.0


class ConnectFailures:
    """The failed connects of one pool (``label``, ``apns[app]``), logged to ``log``."""

    def __init__(
        self, log: logging.Logger, label: str, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self._log = log
        self._label = label
        self._clock = clock
        #: When the outage began (the first failed connect since one succeeded), or None.
        self.since: float | None = None
        #: Failed connects since then.
        self.count = 0
        self._warned_at = float("-inf")
        self._warned_error = ""
        self._quiet = 0

    def failed(self, index: int, route: str, error: str, retry: str) -> None:
        """Slot ``index``'s connect to ``route`` failed with ``error`` (``Type: text``);
        ``retry`` says when it tries again."""
        now = self._clock()
        if self.since is None:
            self.since = now
        self.count += 1
        loud = error != self._warned_error or now - self._warned_at >= REPEAT_WARNING_AFTER
        if not loud:
            self._quiet += 1
            self._log.debug(
                "%s connection %d: connect to %s failed (%s); %s",
                self._label, index, route, error, retry,
            )  # fmt: skip
            return
        since = ""
        if self._quiet:
            since = f"; {self._quiet} more failed connects since the last such line"
        self._log.warning(
            "%s connection %d: connect to %s failed (%s); %s%s",
            self._label, index, route, error, retry, since,
        )  # fmt: skip
        self._warned_at, self._warned_error, self._quiet = now, error, 0

    def connected(self) -> None:
        """A connect succeeded: the outage, if there was one, is over."""
        if self.since is None:
            return
        self._log.warning(
            "%s: connected again after %.0f s and %d failed connects",
            self._label, self._clock() - self.since, self.count,
        )  # fmt: skip
        self.since, self.count = None, 0
        self._warned_at, self._warned_error, self._quiet = float("-inf"), "", 0
