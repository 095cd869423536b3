"""A request id on every log line of a delivery.

An admin following one push through the log (the chat server's request, its attempts,
a dead token, a retry decision) greps for one id.  The HTTP server gives each request
an id and sets it in :data:`REQUEST_ID` while its handler runs; trio copies the
context into every task started from there, so the dispatcher's attempt tasks, which
outlive the request, keep logging under the same id.  A retry from the spool runs
under the row's id (``s<row id>``), which the retry decision line names.

:class:`RequestIdFilter` on the log handler puts the id into each record, so no log
call has to pass it.
"""

from __future__ import annotations

import logging
import random
from contextvars import ContextVar
from typing import Final

#: The id of the request (or spool row) the current task works for; "" outside one.
REQUEST_ID: ContextVar[str] = ContextVar("pushd_request_id", default="")
#: Random bits per id: enough that ids rarely repeat within an hour of log.
ID_BITS: Final = 32


def new_request_id() -> str:
    """A fresh id, ``r`` and 8 hex digits.  Random rather than counted, so that ids of
    several instances behind one load balancer do not collide in a shared log."""
    return f"r{random.getrandbits(ID_BITS):08x}"


def spool_request_id(row_id: int) -> str:
    """The id a spooled delivery's retries log under."""
    return f"s{row_id}"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the id or "") and ``request_tag`` (``"[id] "`` or "") to
    every record passing the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = REQUEST_ID.get()
        record.request_id = current
        record.request_tag = f"[{current}] " if current else ""
        return True
