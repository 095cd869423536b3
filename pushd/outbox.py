"""The dispatcher's outbox: fresh pushes of concurrent requests leave together.

A chat server's one-device push used to cost a task of its own (spawned, run, woken
by its answer), a cancel scope around its upstream wait and a flush.  Under load many
such requests are parsed in the same scheduler tick, so :meth:`Outbox.put` only queues
the push and wakes the outbox's task, which runs once per tick (after every request
that tick brought) and starts **one** attempt per app for everything queued: one
task, one budget take, one upstream batch (:meth:`pushd.attempts.Attempts.
attempt_sends`; APNs sends it as one batch with one flush).  At 64 concurrent requests
a tick brings several; a lone request waits one scheduler pass longer than before, no
more.

Nothing is held back: the task starts what it found at once, and a push queued while
the task runs is taken on its next pass.  What is queued is already counted in flight
by the dispatcher, so a drain at shutdown waits for it like for any attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from pushd.attempts import Attempts, Send


class Outbox:
    """Queues sends per app; :meth:`run` starts them, one attempt per app and tick."""

    def __init__(self, attempts: Attempts, start_soon: Callable[..., Any]) -> None:
        self._attempts = attempts
        self._start_soon = start_soon
        self._queued: dict[str, list[Send]] = {}
        self._wanted = trio.Event()

    def put(self, app: str, send: Send) -> None:
        """Queue ``send`` for ``app``; it leaves on the task's next pass."""
        queued = self._queued.get(app)
        if queued is None:
            self._queued[app] = [send]
        else:
            queued.append(send)
        if not self._wanted.is_set():
            self._wanted.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start what is queued, once per tick, forever."""
        task_status.started()
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            queued, self._queued = self._queued, {}
            for app, sends in queued.items():
                self._start_soon(self._attempts.attempt_sends, app, sends)
