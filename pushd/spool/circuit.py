"""One app's circuit: how fast its spool may drain, from how its upstream is doing.

Fresh deliveries are always tried: they are what users wait for, and an attempt at an
upstream that is down fails fast.  Retries from the spool are what could bury an
upstream that just came back (26,000 of them after a 7 s outage), so they go at the
pace the circuit allows:

- **closed** (healthy): up to ``allowance`` retries in flight.  After a close the
  allowance starts small and doubles every :data:`RAMP_INTERVAL` without trouble, up
  to the lane's share for retries;
- **open**: after :data:`TRIP_AFTER` upstream failures in a row (connection failures,
  5xx, timeouts, quota), no retries at all, for a cool-down that doubles on each trip
  that follows (:data:`OPEN_MIN` to :data:`OPEN_MAX`);
- **probing**: after the cool-down, one retry at a time (one whose last attempt may
  have arrived too: otherwise a backlog of only those would never probe); a success
  closes the circuit, a failure opens it again.  Any success, a fresh delivery's too,
  closes it at once.

Pure and clock-driven, so it is tested as a table.  Each instance keeps its own: they
each have their own connections, and each learns of the upstream from its own.
"""

from __future__ import annotations

from typing import Final, Literal

import attrs

State = Literal["closed", "open", "probing"]

#: Upstream failures in a row that open the circuit.
TRIP_AFTER: Final = 5
#: Cool-down of an open circuit: the first, and the longest it doubles to.  Short: a
#: probe is one request, and without fresh traffic the probe is what notices that the
#: upstream is back (and wakes the connection pool), so the cap is how late a backlog
#: may start draining after an outage.  Measured: 30 s left a 7 s outage's backlog
#: waiting up to 30 s after the upstream's return; 2 s costs one request per 2 s.
OPEN_MIN: Final = 0.5
OPEN_MAX: Final = 2.0
#: After a close: retries in flight at first, and how often that doubles.
RAMP_START: Final = 8
RAMP_INTERVAL: Final = 1.0


@attrs.define
class Circuit:
    """See the module docstring.  ``limit``: retries in flight at full speed."""

    limit: int
    state: State = "closed"
    failures: int = 0
    #: Closed: retries allowed in flight now.
    ramp: int = RAMP_START
    ramp_at: float = 0.0
    cool_down: float = OPEN_MIN
    open_until: float = 0.0

    def allowance(self, now: float) -> int:
        """How many retries may be in flight now (the caller subtracts its own)."""
        if self.state == "open":
            if now < self.open_until:
                return 0
            self.state = "probing"
        if self.state == "probing":
            return 1
        while self.ramp < self.limit and now - self.ramp_at >= RAMP_INTERVAL:
            self.ramp = min(self.limit, self.ramp * 2)
            self.ramp_at += RAMP_INTERVAL
        return min(self.ramp, self.limit)

    @property
    def resends_unknown(self) -> bool:
        """Not open: retries whose last attempt got no answer may go again (all of
        them while closed; one, the probe, while probing)."""
        return self.state != "open"

    def success(self, now: float) -> None:
        """An answer from the upstream (any answer but a 5xx or a quota)."""
        self.failures = 0
        if self.state != "closed":
            self.state = "closed"
            self.ramp = min(RAMP_START, self.limit)
            self.ramp_at = now
            self.cool_down = OPEN_MIN

    def failure(self, now: float) -> bool:
        """Upstream trouble; True if this opened the circuit."""
        self.failures += 1
        if self.state == "probing" or (self.state == "closed" and self.failures >= TRIP_AFTER):
            self.state = "open"
            self.open_until = now + self.cool_down
            self.cool_down = min(OPEN_MAX, self.cool_down * 2)
            return True
        return False
