"""Giving up a PostgreSQL store call whose database does not answer (split from
:mod:`pushd.store.postgres`).

psycopg's synchronous API waits on its socket with no deadline of its own, and the
worker thread running a call cannot be interrupted; but shutting the socket down ends
the wait at once, with the error a lost connection gives (the transaction, if any, is
rolled back by the server when it sees the connection go).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


class StoreCall:
    """The connection one store call is using, so that the event loop can give the
    call up (:data:`pushd.store.postgres.GIVE_UP_AFTER`): shutting the connection's
    socket ends the statement waiting on it as a lost connection would, and the pool
    discards it.  The lock keeps a connection already handed back to the pool (and
    perhaps to another call) from being shut."""

    __slots__ = ("began", "connection", "given_up", "lock")

    def __init__(self) -> None:
        #: When the call began (``time.monotonic``), its wait for a thread included.
        self.began = time.monotonic()
        self.lock = threading.Lock()
        self.connection: psycopg.Connection[Any] | None = None
        self.given_up = False

    def using(self, connection: psycopg.Connection[Any] | None) -> bool:
        """Record the connection in use (None: handed back); False once given up."""
        with self.lock:
            self.connection = connection
            return not self.given_up

    def give_up(self) -> None:
        import psycopg

        with self.lock:
            self.given_up = True
            if self.connection is None:
                return
            # A duplicate of libpq's descriptor: shutdown acts on the socket they share.
            with (
                contextlib.suppress(OSError, psycopg.Error),
                socket.socket(fileno=os.dup(self.connection.pgconn.socket)) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)
