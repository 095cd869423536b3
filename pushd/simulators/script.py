"""Scripted faults, the same for both simulators: which reply a token gets next.

A test (or ``pushd simulate --reply``) queues replies per token, gives a token a
standing reply that never wears off, or changes the default every other token gets.
The reply types differ (APNs' :class:`~pushd.simulators.apns.SimReply`, FCM's
:class:`~pushd.simulators.fcm.FcmReply`); the bookkeeping and the ``action`` they share
live here.
"""

from __future__ import annotations

import collections
from typing import Generic, Literal, TypeVar

#: What a simulator does with a request: answer it, send GOAWAY, or reset the connection.
Action = Literal["reply", "goaway", "drop"]
ACTIONS = frozenset({"reply", "goaway", "drop"})

R = TypeVar("R")


def check_action(_instance: object, _attribute: object, value: str) -> None:
    """attrs validator of a reply's ``action``."""
    if value not in ACTIONS:
        raise ValueError(f"action must be one of {sorted(ACTIONS)}, not {value!r}")


class ReplyScript(Generic[R]):
    """Replies queued per token, then the token's standing reply, then the default."""

    def __init__(self, success: R) -> None:
        self._success = success
        self._queues: dict[str, collections.deque[R]] = {}
        self._standing: dict[str, R] = {}
        #: What a token without a queued or standing reply gets.
        self.default = success

    def queue(self, token: str, replies: tuple[R, ...]) -> None:
        """Add ``replies`` to ``token``'s queue, used one per request in order."""
        self._queues.setdefault(token, collections.deque()).extend(replies)

    def stand(self, token: str, reply: R) -> None:
        """Answer ``token`` with ``reply`` whenever its queue is empty."""
        self._standing[token] = reply

    def clear(self) -> None:
        """Forget every queued and standing reply; the default is success again."""
        self._queues.clear()
        self._standing.clear()
        self.default = self._success

    def next(self, token: str) -> R:
        """The reply for ``token``'s next request (taking it from its queue, if any)."""
        queue = self._queues.get(token)
        return queue.popleft() if queue else self._standing.get(token, self.default)
