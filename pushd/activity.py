"""When each chat server last reached pushd, for the status page.

"Is my chat server still talking to the gateway?" is the first question when pushes
stop: a server misconfigured after an upgrade simply goes quiet.  Every frontend tells
:class:`Activity` when a request *authenticates* (a failed guess at a key records
nothing, so nobody can make a server look alive), under the server's own name.
Matrix homeservers send no identity, so they are one entry.

In memory only: the time of a request is not worth a store write per request, and a
restart that forgets it loses an hour's hint, nothing more.  Entries are bounded by the
servers an admin configured or registered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Literal

Protocol = Literal["native", "zulip", "mattermost", "rocketchat", "matrix"]

#: The one name Matrix homeservers are recorded under (they send no identity).
MATRIX_HOMESERVERS: Final = "homeservers"


class Activity:
    """The time of the last authenticated request per (protocol, server name)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._last: dict[tuple[Protocol, str], float] = {}

    def seen(self, protocol: Protocol, name: str) -> None:
        """A request from ``name`` has just authenticated."""
        self._last[(protocol, name)] = self.clock()

    def last(self, protocol: Protocol, name: str) -> float | None:
        """When ``name`` last made an authenticated request, or None since start."""
        return self._last.get((protocol, name))
