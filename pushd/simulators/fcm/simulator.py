"""The FCM simulator: its settings, scripted faults, the accept loop and the ASGI app."""

from __future__ import annotations

import collections
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from typing import Any, cast

import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, LifespanState

from pushd.simulators.fcm.answers import Answer, google_error_body, json_answer
from pushd.simulators.fcm.constants import (
    DEFAULT_TOKEN_LIFETIME,
    HANDSHAKE_TIMEOUT,
    MAX_REQUEST_BODY,
    SEND_PATH_RE,
    TOKEN_PATH,
)
from pushd.simulators.fcm.endpoints import Bucket, Endpoints
from pushd.simulators.fcm.h2server import H2Served, Request
from pushd.simulators.fcm.oauth import Account, Grant
from pushd.simulators.fcm.transport import (
    Connection,
    Served,
    hypercorn_config,
    peer_key,
)
from pushd.simulators.fcm.values import SUCCESS, FcmReceived, FcmReply
from pushd.simulators.script import ReplyScript
from pushd.simulators.sockets import open_listeners

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Disconnected(Exception):
    pass


class FcmSimulator(Endpoints):
    """FCM HTTP v1 and Google's token endpoint for tests, benchmarks and ``pushd simulate``.

    Register the test service account(s) with :meth:`add_account` (or write one with
    :func:`make_service_account`, pointing its ``token_uri`` at :attr:`token_url`), start
    :meth:`serve` in a nursery, and point a client at ``https://127.0.0.1:<port>``.
    Faults are scripted per registration token (:meth:`script`) or for every token
    (:meth:`set_default`); the token endpoint has :attr:`token_endpoint_down` and
    :meth:`script_token_endpoint`; quotas are per project (:meth:`set_quota`).  What
    arrived is in :attr:`received`; :meth:`wait_for` waits for it without polling.
    """

    def __init__(
        self,
        *,
        token_lifetime: int = DEFAULT_TOKEN_LIFETIME,
        token_url: str | None = None,
        accept_any_assertion: bool = False,
        record: bool = True,
        on_received: Callable[[FcmReceived], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(record=record, on_received=on_received)
        if token_lifetime < 1:
            raise ValueError("token_lifetime must be at least 1 second")
        #: ``expires_in`` of issued access tokens, and how long they work.
        self.token_lifetime = token_lifetime
        #: Check assertions' claims but not their signature; unknown issuers may send
        #: to any project.
        self.accept_any_assertion = accept_any_assertion
        #: Every token request fails with 503 ``temporarily_unavailable`` while true.
        self.token_endpoint_down = False
        #: Called with connection-level and token events.
        self.log = log

        #: Requests to the token endpoint, and access tokens issued.
        self.token_requests = 0
        self.tokens_issued = 0
        #: Requests answered 429 by the quota (not scripted 429s).
        self.quota_rejections = 0
        #: Seconds every send's answer waits, on top of a scripted reply's ``delay``.
        self.answer_delay = 0.0
        #: A connection that has taken this many requests answers the next one with
        #: GOAWAY (see :class:`FcmReply`'s ``"goaway"``); None never does.
        self.goaway_after: int | None = None
        #: Connections accepted since start, and dropped by a scripted ``drop``.
        self.connections_opened = 0
        self.connections_dropped = 0
        #: GOAWAY frames sent (scripted or by ``goaway_after``).
        self.goaways_sent = 0
        #: Requests seen per HTTP version (``"2"``, ``"1.1"``).
        self.http_versions: collections.Counter[str] = collections.Counter()
        #: The bound port, once :meth:`serve` has started.
        self.port: int | None = None

        self._token_url = token_url
        self._host = "127.0.0.1"
        self._accounts: dict[str, Account] = {}
        self._grants: dict[str, Grant] = {}
        self._epoch = 0
        self._replies = ReplyScript[FcmReply](SUCCESS)
        self._token_scripts: collections.deque[FcmReply] = collections.deque()
        self._quotas: dict[str, Bucket] = {}
        self._connections: dict[tuple[str, int], Served] = {}
        self._last_message_us = 0
        self._project_suffix: dict[str, str] = {}

    # -- configuration --

    def add_account(self, client_email: str, public_key: rsa.RSAPublicKey, project_id: str) -> None:
        """Trust assertions of ``client_email`` signed by ``public_key``.

        Its tokens may send to ``project_id``; calling again with another project adds
        that project (and replaces the key).
        """
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TypeError("service-account keys are RSA (RS256)")
        known = self._accounts.get(client_email)
        projects = (known.projects if known else frozenset()) | {project_id}
        self._accounts[client_email] = Account(public_key, projects)

    def script(self, token: str, *replies: FcmReply) -> None:
        """Queue replies for ``token`` (or a topic/condition string), one per valid send.

        A send that fails validation does not use one.  Once they are used up the token
        gets its standing reply (:meth:`set_token_reply`) or else the default
        (:meth:`set_default`).
        """
        self._replies.queue(token, replies)

    def set_token_reply(self, token: str, reply: FcmReply) -> None:
        """Answer ``token`` with ``reply`` every time its scripted replies are used up.

        A dead token stays dead: ``pushd simulate --reply`` needs a reply that does not
        wear off after one send, unlike :meth:`script`'s.
        """
        self._replies.stand(token, reply)

    def set_default(self, reply: FcmReply) -> None:
        """Set the reply for tokens without scripted replies (e.g. every send 503)."""
        self._replies.default = reply

    def script_token_endpoint(self, *replies: FcmReply) -> None:
        """Queue replies for the next token requests (e.g. ``FcmReply(status=503)``).

        A reply of plain success lets the request through to normal checking.
        """
        self._token_scripts.extend(replies)

    def clear(self) -> None:
        """Forget scripted replies (sends and token endpoint) and restore success.

        Accounts, quotas, issued tokens, :attr:`received` and counters are kept.
        """
        self._replies.clear()
        self._token_scripts.clear()
        self.token_endpoint_down = False

    def set_quota(self, project_id: str, per_minute: int | None) -> None:
        """Limit ``project_id`` to ``per_minute`` requests (a full bucket to start with).

        Every request that is not answered 429 or 5xx counts, client errors too, as FCM
        counts them.  ``None`` removes the limit.
        """
        if per_minute is None:
            self._quotas.pop(project_id, None)
            return
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self._quotas[project_id] = Bucket(float(per_minute), per_minute / 60.0, float(per_minute))

    def expire_tokens(self) -> None:
        """Make every access token issued so far invalid: sends get 401 until a refresh."""
        self._epoch += 1

    @property
    def open_connections(self) -> int:
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
        """Listen on ``host:port`` and serve both endpoints until cancelled.

        ``ssl_context`` decides the protocols through ALPN: see :func:`configure_alpn`
        for both HTTP/2 and HTTP/1.1.  ``None`` serves clear-text HTTP/1.1 (and h2c with
        prior knowledge), handy for a quick look with curl.  Reports the bound port
        through ``task_status`` and sets :attr:`port`.
        """
        self.port, listeners = await open_listeners(ssl_context, host, port)
        self._host = host
        config = hypercorn_config()
        context = WorkerContext(None)
        app = ASGIWrapper(cast(ASGIFramework, self))
        state: LifespanState = {}

        async def handle(stream: trio.abc.Stream) -> None:
            key = peer_key(stream)
            self.connections_opened += 1
            try:
                if isinstance(stream, trio.SSLStream):
                    try:
                        with trio.fail_after(HANDSHAKE_TIMEOUT):
                            await stream.do_handshake()
                    except (trio.BrokenResourceError, trio.TooSlowError):
                        return
                    if stream.selected_alpn_protocol() == "h2":
                        served = H2Served(self, stream)
                        await self._track(key, served, served.serve())
                        return
                conn = Connection(stream)

                async def run_hypercorn() -> None:
                    with conn.scope:
                        conn.server = TCPServer(app, config, context, state, cast(Any, stream))
                        await conn.server.run()

                await self._track(key, conn, run_hypercorn())
            finally:
                await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            task_status.started(self.port)

    async def _track(
        self, key: tuple[str, int] | None, conn: Served, serving: Coroutine[Any, Any, None]
    ) -> None:
        """Await ``serving`` with ``conn`` findable by its peer's address meanwhile."""
        if key is not None:
            self._connections[key] = conn
        try:
            await serving
        finally:
            if key is not None and self._connections.get(key) is conn:
                del self._connections[key]

    def _note_goaway(self, conn: Served, reason: str) -> None:
        if not conn.closing:
            self.goaways_sent += 1
            self._log(f"GOAWAY {reason}")

    async def _goaway(self, conn: Served, reason: str) -> None:
        self._note_goaway(conn, reason)
        await conn.goaway(reason)

    # -- requests, whichever loop serves them --

    def _goaway_due(self, conn: Served | None) -> bool:
        """Count a request against ``goaway_after``; true if it is one too many."""
        if conn is None or self.goaway_after is None:
            return False
        conn.taken += 1
        return conn.taken > self.goaway_after

    def _decide(
        self, method: str, path: str, headers: Mapping[bytes, bytes], body: bytes
    ) -> Answer:
        """The answer of either endpoint, or 404 for any other path."""
        if path == TOKEN_PATH:
            return self._token_request(method, headers, body)
        match = SEND_PATH_RE.fullmatch(path)
        if match is None or method != "POST":
            return json_answer(
                404,
                google_error_body(
                    404, "NOT_FOUND", f"The requested URL {path} was not found on this server."
                ),
            )
        return self._send_request(match.group(1), headers, body)

    def _delay(self, answer: Answer, path: str) -> float:
        return answer.reply.delay + (self.answer_delay if path != TOKEN_PATH else 0.0)

    async def _carry_out(self, conn: Served | None, answer: Answer, delay: float) -> bool:
        """Wait ``delay``, then drop or GOAWAY if scripted; true if the answer goes out
        (it is recorded then)."""
        if delay > 0:
            await trio.sleep(delay)
        reply = answer.reply
        if reply.action == "drop":
            if conn is not None:
                self.connections_dropped += 1
                self._log("connection dropped (scripted)")
                conn.drop()
                await trio.sleep_forever()
            return False  # hypercorn answers 500 if the connection cannot be found
        if reply.action == "goaway":
            if conn is not None:
                await self._goaway(conn, reply.message or "Shutdown")
            return False
        return self._release(conn, answer)

    def _release(self, conn: Served | None, answer: Answer) -> bool:
        """Whether an answer goes out; records it if so."""
        if conn is not None and conn.closing:
            return False  # after our GOAWAY this stream is not answered, so not recorded
        if answer.received is not None:
            self._record(answer.received)
        return True

    def _h2_request(self, conn: H2Served, request: Request) -> None:
        """A complete request on the HTTP/2 loop: answered at once unless it waits or
        has a scripted action, which then runs as a task of its own."""
        self.http_versions["2"] += 1
        if self._goaway_due(conn):
            self._note_goaway(conn, "Shutdown")
            conn.start_goaway("Shutdown")  # now, so no later stream is answered first
            return
        answer = self._decide(request.method, request.path, request.headers, request.body)
        delay = self._delay(answer, request.path)
        if delay <= 0 and answer.reply.action == "reply":
            if self._release(conn, answer):
                conn.respond(request, answer)
            return

        async def answer_later() -> None:
            if await self._carry_out(conn, answer, delay):
                conn.respond(request, answer)

        conn.start_soon(request, answer_later)

    # -- ASGI --

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application hypercorn runs for every request."""
        if scope["type"] != "http":
            return
        self.http_versions[scope.get("http_version", "?")] += 1
        client = scope.get("client")
        conn = self._connections.get((str(client[0]), int(client[1]))) if client else None
        if conn is not None and self._goaway_due(conn):
            await self._goaway(conn, "Shutdown")
            return
        try:
            body = await _read_body(receive)
        except _Disconnected:
            return
        path: str = scope["path"]
        headers: dict[bytes, bytes] = {bytes(k).lower(): bytes(v) for k, v in scope["headers"]}
        answer = self._decide(scope["method"], path, headers, body)
        if not await self._carry_out(conn, answer, self._delay(answer, path)):
            return
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [*answer.headers, (b"content-length", str(len(answer.body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


async def _read_body(receive: Receive) -> bytes:
    """The whole request body; beyond :data:`MAX_REQUEST_BODY` only its size matters."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if size <= MAX_REQUEST_BODY:
            chunks.append(chunk)  # the chunk that crosses the limit is kept: len > limit
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
