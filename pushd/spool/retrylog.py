"""One INFO line per retry decision, and a summary instead when there are many.

An admin reading the log during upstream trouble wants to see retries happen (which
app, which device, why, when next), but an outage makes thousands a second: each app
gets :data:`LINES_PER_SECOND` full lines a second, and for the rest one line a second
with their count and reasons.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Final

import attrs

from pushd.model import mask_token
from pushd.requestid import spool_request_id

if TYPE_CHECKING:
    from pushd.dispatch import Retry
    from pushd.model import Delivery

log = logging.getLogger("pushd.retry")

#: Full retry lines per app per second; the rest are summarised.
LINES_PER_SECOND: Final = 5


@attrs.define
class _Window:
    started: float
    lines: int = 0
    summarised: collections.Counter[str] = attrs.Factory(collections.Counter)


@attrs.define
class RetryLog:
    """See the module docstring.  ``clock`` is monotonic."""

    clock: collections.abc.Callable[[], float] = time.monotonic
    _windows: dict[str, _Window] = attrs.Factory(dict)

    def decision(
        self, delivery: Delivery, attempt: int, retry: Retry, now: float, row: int | None = None
    ) -> None:
        """Log one decision; ``row`` (the spool row) names the id the retries log under
        (:func:`pushd.requestid.spool_request_id`), tying them to this request's lines."""
        tick = self.clock()
        window = self._windows.get(delivery.app)
        if window is None or tick - window.started >= 1.0:
            if window is not None:
                self._summarise(delivery.app, window)
            window = self._windows[delivery.app] = _Window(tick)
        if window.lines < LINES_PER_SECOND:
            window.lines += 1
            log.info(
                "app %s: %s attempt %d failed (%s); next in %.1f s%s%s",
                delivery.app,
                mask_token(delivery.token),
                attempt,
                retry.reason,
                max(0.0, retry.due - now),
                "" if row is None else f" as {spool_request_id(row)}",
                " (its outcome is unknown: sent again once the upstream is healthy)"
                if retry.unknown
                else "",
            )
        else:
            window.summarised[retry.reason] += 1

    def flush(self) -> None:
        """Summarise every window that has ended (called about once a second)."""
        tick = self.clock()
        for app, window in list(self._windows.items()):
            if tick - window.started >= 1.0:
                self._summarise(app, window)
                del self._windows[app]

    @staticmethod
    def _summarise(app: str, window: _Window) -> None:
        total = sum(window.summarised.values())
        if total:
            reasons = ", ".join(f"{reason} x{n}" for reason, n in window.summarised.most_common(5))
            log.info(
                "app %s: %d more retries scheduled in the last second: %s", app, total, reasons
            )
