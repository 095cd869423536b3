"""The APNs simulator: its settings, scripted faults and the TLS accept loop."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trio
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.simulators.apns.answering import Answering
from pushd.simulators.apns.connection import Connection
from pushd.simulators.apns.constants import (
    CLOSE_LINGER,
    CONNECTION_WINDOW_SIZE,
    DEFAULT_INITIAL_MAX_STREAMS,
    DEFAULT_MAX_STREAMS,
    HANDSHAKE_TIMEOUT,
)
from pushd.simulators.apns.values import SUCCESS, Received, SimReply
from pushd.simulators.script import ReplyScript
from pushd.simulators.sockets import open_listeners, set_linger_zero


class ApnsSimulator(Answering):
    """An APNs provider API endpoint for tests, benchmarks and ``pushd simulate``.

    Configure it, register provider keys with :meth:`add_key`, start :meth:`serve` in a
    nursery, and point a client at ``https://127.0.0.1:<port>``.  Faults are scripted per
    device token (:meth:`script`, :meth:`set_token_reply`) or for every token
    (:meth:`set_default`, :attr:`answer_delay`, :attr:`goaway_after`); what arrived
    is in :attr:`received`, and :meth:`wait_for` waits for it without polling.
    """

    def __init__(
        self,
        *,
        initial_max_streams: int = DEFAULT_INITIAL_MAX_STREAMS,
        max_streams: int = DEFAULT_MAX_STREAMS,
        shrink_after_rejection: bool = True,
        topics: frozenset[str] | None = None,
        accept_any_key: bool = False,
        require_token_auth: bool = True,
        idle_timeout: float | None = None,
        answer_delay: float = 0.0,
        goaway_after: int | None = None,
        record: bool = True,
        on_received: Callable[[Received], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(record=record, on_received=on_received)
        if initial_max_streams < 1 or max_streams < 1:
            raise ValueError("stream limits must be at least 1")
        if answer_delay < 0 or (goaway_after is not None and goaway_after < 1):
            raise ValueError("answer_delay must be >= 0 and goaway_after at least 1")
        #: SETTINGS_MAX_CONCURRENT_STREAMS of a fresh token-auth connection.
        self.initial_max_streams = initial_max_streams
        #: The limit after the first valid provider token (at once with cert auth).
        self.max_streams = max_streams
        #: Drop a connection's limit to 1 after a rejection, restore after a success.
        self.shrink_after_rejection = shrink_after_rejection
        #: Allowed bundle ids (push-type suffixes are added by the simulator); None = any.
        self.topics = topics
        #: Check a JWT's shape, ``kid`` and ``iat`` but not its signature.
        self.accept_any_key = accept_any_key
        #: False emulates certificate auth: no JWT needed, full stream limit at once.
        self.require_token_auth = require_token_auth
        #: Send GOAWAY ``IdleTimeout`` after this long without requests.
        self.idle_timeout = idle_timeout
        #: Seconds every answer waits, on top of a scripted reply's own ``delay``: a slow
        #: APNs, without holding up other streams.
        self.answer_delay = answer_delay
        #: A connection that has taken this many requests answers the next one with
        #: GOAWAY ``Shutdown`` (it and everything unanswered is safe to retry), as an APNs
        #: server being rotated out does; None never does.
        self.goaway_after = goaway_after
        #: Called with connection-level events (opened, closed, GOAWAY, errors).
        self.log = log

        #: Connections accepted since start.
        self.connections_opened = 0
        #: Highest number of simultaneously open streams, per connection id.
        self.max_in_flight: dict[int, int] = {}
        #: Streams answered with RST_STREAM REFUSED_STREAM for exceeding the limit.
        self.streams_refused = 0
        #: GOAWAY frames sent (scripted, :meth:`goaway_all`, idle timeout).
        self.goaways_sent = 0
        #: The bound port, once :meth:`serve` has started.
        self.port: int | None = None

        self._keys: dict[str, tuple[str, ec.EllipticCurvePublicKey]] = {}
        self._replies = ReplyScript[SimReply](SUCCESS)
        self._connections: dict[int, Connection] = {}
        self._topic_verdicts: dict[bytes, str | None] = {}
        self._next_connection_id = 1

    # -- configuration --

    def add_key(self, key_id: str, team_id: str, public_key: ec.EllipticCurvePublicKey) -> None:
        """Trust provider tokens signed by ``public_key`` with this key id and team id."""
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ValueError("APNs provider keys are P-256 (ES256)")
        self._keys[key_id] = (team_id, public_key)

    def script(self, token: str, *replies: SimReply) -> None:
        """Queue replies for ``token``, used one per notification in order.

        Once they are used up the token gets its standing reply (:meth:`set_token_reply`)
        or else the default (:meth:`set_default`).
        """
        self._replies.queue(token, replies)

    def set_token_reply(self, token: str, reply: SimReply) -> None:
        """Answer ``token`` with ``reply`` every time its scripted replies are used up.

        A dead token stays dead: ``pushd simulate --reply`` needs a reply that does not
        wear off after one notification, unlike :meth:`script`'s.
        """
        self._replies.stand(token, reply)

    def set_default(self, reply: SimReply) -> None:
        """Set the reply for tokens without scripted replies (e.g. every token 500)."""
        self._replies.default = reply

    def clear(self) -> None:
        """Forget scripted replies and restore the default of plain success.

        :attr:`received` and the counters are kept; clear them directly if needed.
        """
        self._replies.clear()

    def goaway_all(self, reason: str = "Shutdown") -> None:
        """Send GOAWAY with ``reason`` on every open connection, then close them."""
        for conn in list(self._connections.values()):
            conn.goaway(reason)

    @property
    def open_connections(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    # -- serving --

    async def serve(
        self,
        ssl_context: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve connections until cancelled.

        ``ssl_context`` must offer ALPN ``h2`` (see :mod:`pushd.simulators.certs`);
        ``None`` serves clear-text HTTP/2 with prior knowledge, handy for quick tests.
        Reports the bound port through ``task_status`` and sets :attr:`port`.
        """
        self.port, listeners = await open_listeners(ssl_context, host, port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        connection_id = self._next_connection_id
        self._next_connection_id += 1
        conn = Connection(self, connection_id, stream)
        try:
            if isinstance(stream, trio.SSLStream):
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await stream.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                    self._log(f"connection {connection_id}: TLS handshake failed: {exc!r}")
                    return
                if stream.selected_alpn_protocol() != "h2":
                    self._log(f"connection {connection_id}: client did not offer ALPN h2")
                    return
            self.connections_opened += 1
            self._connections[connection_id] = conn
            self.max_in_flight[connection_id] = 0
            self._log(f"connection {connection_id}: opened")
            conn.h2.initiate_connection()
            conn.h2.increment_flow_control_window(CONNECTION_WINDOW_SIZE - 65535)
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                nursery.start_soon(conn.writer)
                nursery.start_soon(conn.reader)
                if self.idle_timeout is not None:
                    nursery.start_soon(conn.idle_watch, self.idle_timeout)
                conn.kick()
                await conn.done.wait()
                if not conn.dropped:
                    with trio.move_on_after(CLOSE_LINGER):
                        await conn.reader_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._connections.pop(connection_id, None)
            for st in conn.active.values():
                if st.scope is not None:
                    st.scope.cancel()
            if conn.dropped:
                set_linger_zero(stream)
            await trio.aclose_forcefully(stream)
            if connection_id in self.max_in_flight:
                self._log(f"connection {connection_id}: closed")
