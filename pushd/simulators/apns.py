"""An APNs look-alike: HTTP/2 over TLS, validating requests the way Apple does.

It serves three masters: pushd's tests (faults on demand, a record of what arrived),
benchmarks (thousands of notifications a second on one core) and ``pushd simulate``.

Why a raw ``h2`` server rather than hypercorn: APNs changes ``SETTINGS_MAX_CONCURRENT_
STREAMS`` while a connection lives (1 until a request carries a valid provider token, then
~1000; back to 1 after a rejected notification until the next success), and clients must
cope with that.  Hypercorn's limit is fixed at start-up, so it cannot show those bugs.

Validation follows the order of pushy's validating mock server (see
``/work/shared/protocols/apns-fcm-and-peers.md`` §7), so a request with several faults
gets the same reason here as there.  A scripted reply (:meth:`ApnsSimulator.script`) is
checked where pushy checks the token's state: after the headers, before authentication
and the payload.

Everything is deliberately lean on the request path: header values stay ``bytes``, a
provider token's signature is verified once per connection, and nothing is logged unless
the caller asked for it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import re
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from pushd.model import APNS_PUSH_TYPES
from pushd.simulators.recording import Recording

__all__ = [
    "DEFAULT_INITIAL_MAX_STREAMS",
    "DEFAULT_MAX_STREAMS",
    "REASON_STATUS",
    "ApnsSimulator",
    "Received",
    "SimReply",
]

# --- Tunables --------------------------------------------------------------------------

#: Streams allowed on a fresh token-auth connection, as APNs does until a valid JWT.
DEFAULT_INITIAL_MAX_STREAMS = 1
#: Streams allowed once authenticated (observed 500, 1000, 1500 on real APNs).
DEFAULT_MAX_STREAMS = 1000
#: Largest payload APNs accepts, and the larger one for VoIP pushes.
MAX_PAYLOAD = 4096
MAX_VOIP_PAYLOAD = 5120
#: ``apns-collapse-id`` limit, in bytes.
MAX_COLLAPSE_ID = 64
#: A provider token whose ``iat`` is older than this is expired.
JWT_MAX_AGE = 3600.0
#: Clock skew tolerated for an ``iat`` in the future.
JWT_MAX_FUTURE = 60.0
#: Replacing a connection's provider token by one issued within this long of the current
#: one is "too many provider token updates".  Counted from the current token's ``iat``,
#: which is how Apple phrases the rule (refresh no more often than every 20 minutes) and
#: spares a client that refreshes right after an ``ExpiredProviderToken``.
JWT_MIN_REFRESH = 1200.0
#: Distinct tokens remembered per connection; a client cycling through more is broken.
JWT_CACHE_SIZE = 16
#: Device tokens are hex; today 64 characters, Apple warns the length may grow.
TOKEN_RE = re.compile(rb"[0-9a-fA-F]{64,200}")
#: Flow-control windows: big enough that a client never waits for a WINDOW_UPDATE.
INITIAL_WINDOW_SIZE = 1 << 24
CONNECTION_WINDOW_SIZE = 1 << 28
#: Request bodies are kept up to this size; larger ones are only counted (they get 413).
MAX_KEPT_BODY = 64 * 1024
#: How long a TLS handshake may take before the connection is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: After a GOAWAY, how long to read and discard what the client still sends before
#: closing: closing with unread data makes the kernel send RST, which can destroy the
#: GOAWAY before the client reads it.
CLOSE_LINGER = 1.0
_RECEIVE_SIZE = 65536

_PUSH_TYPES = frozenset(t.encode() for t in APNS_PUSH_TYPES)
#: Topic suffix each push type requires (``<bundle id><suffix>``).
TOPIC_SUFFIXES: dict[str, str] = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
    "widgets": ".push-type.widgets",
    "controls": ".push-type.controls",
}
# Longest first, so ".push-type.liveactivity" is not mistaken for something shorter.
_SUFFIXES_LONGEST_FIRST = tuple(sorted(TOPIC_SUFFIXES.values(), key=len, reverse=True))
_APNS_ID_RE = re.compile(
    rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_PRIORITIES = {b"1": 1, b"5": 5, b"10": 10}
_DEVICE_PREFIX = b"/3/device/"
#: Reason used for a scripted error status given without one.
_DEFAULT_REASONS = {
    400: "BadDeviceToken",
    403: "Forbidden",
    404: "BadPath",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}

#: Every reason Apple documents, with the status it comes with (protocol notes §1.4), so
#: ``pushd simulate --reply TOKEN=Unregistered`` can be answered as APNs would.
REASON_STATUS: dict[str, int] = {
    **dict.fromkeys(
        [
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
        ],
        400,
    ),
    **dict.fromkeys(
        [
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "BadEnvironmentKeyIdInToken",
            "UnrelatedKeyIdInToken",
        ],
        403,
    ),
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "Unregistered": 410,
    "ExpiredToken": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}

Action = Literal["reply", "goaway", "drop"]
_ACTIONS = frozenset({"reply", "goaway", "drop"})


# --- Public values ---------------------------------------------------------------------


@attrs.frozen
class SimReply:
    """What the simulator does with one notification, scripted by a test.

    ``action``: ``"reply"`` answers with ``status`` (and ``reason``; 410 also carries
    ``timestamp_ms``, now if ``None``); ``"goaway"`` sends GOAWAY whose ``last_stream_id``
    lies below every unanswered stream, with debug data ``{"reason": reason or
    "Shutdown"}``, then closes without answering, so the client must retry elsewhere;
    ``"drop"`` resets the TCP connection with the stream unanswered.  ``delay`` seconds
    pass first, without holding up other streams.  A ``status`` of 200 with action
    ``"reply"`` does not short-circuit validation: the request must still be valid.
    """

    status: int = 200
    reason: str | None = None
    timestamp_ms: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    action: Action = attrs.field(default="reply")

    @action.validator
    def _check_action(self, _attribute: attrs.Attribute[Action], value: str) -> None:
        if value not in _ACTIONS:
            raise ValueError(f"action must be one of {sorted(_ACTIONS)}, not {value!r}")


_SUCCESS = SimReply()


@attrs.frozen
class Received:
    """One notification that got an answer, as the simulator understood it.

    Header-derived fields are ``None`` when the header was absent or unparsable;
    ``apns_id`` is the id the simulator answered with.  ``payload`` is cut at
    ``MAX_KEPT_BODY`` bytes.  ``at`` is UNIX time.
    """

    token: str
    topic: str | None
    push_type: str | None
    priority: int | None
    expiration: int | None
    collapse_id: str | None
    apns_id: str
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    status: int
    reason: str | None
    connection_id: int
    stream_id: int
    at: float


# --- JWT -------------------------------------------------------------------------------


@attrs.frozen
class _TokenInfo:
    """What a provider token says, and whether it can be trusted at all.

    Time-dependent checks (expiry) are not cached: they run on every request.
    """

    error: str | None
    team: str = ""
    iat: float = 0.0


def _b64url(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def _inspect_jwt(
    jwt: bytes, keys: dict[str, tuple[str, ec.EllipticCurvePublicKey]], verify: bool
) -> _TokenInfo:
    """Parse and (unless ``verify`` is false) check the ES256 signature of ``jwt``."""
    bad = _TokenInfo("InvalidProviderToken")
    parts = jwt.split(b".")
    if len(parts) != 3:
        return bad
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error):
        return bad
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return bad
    kid, team, iat = header.get("kid"), claims.get("iss"), claims.get("iat")
    if header.get("alg") != "ES256" or not isinstance(kid, str) or not kid:
        return bad
    if not isinstance(team, str) or not team:
        return bad
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return bad
    if verify:
        known = keys.get(kid)
        if known is None or known[0] != team or len(signature) != 64:
            return bad
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            known[1].verify(der, parts[0] + b"." + parts[1], ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return bad
    return _TokenInfo(None, team, float(iat))


# --- Connections -----------------------------------------------------------------------


class _AdvertisedOnlySettings(h2.settings.Settings):
    """Local settings whose stream limit h2 advertises but does not enforce.

    h2 answers a stream beyond ``MAX_CONCURRENT_STREAMS`` by tearing down the whole
    connection (GOAWAY PROTOCOL_ERROR).  RFC 9113 §5.1.2 also allows a stream error,
    ``REFUSED_STREAM``, which tells the client the request was not processed and can be
    retried; that is the kinder behaviour a client's pool has to handle, so the simulator
    enforces the limit itself.  h2 reads the limit through this property and writes the
    SETTINGS frame from the stored values, so only enforcement is switched off.
    """

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[SettingCodes.MAX_CONCURRENT_STREAMS] = value


class _Stream:
    """One request being received or waiting for its answer."""

    __slots__ = ("body", "body_len", "duplicate", "headers", "scope", "stream_id")

    def __init__(self, stream_id: int, headers: dict[bytes, bytes], duplicate: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.duplicate = duplicate
        self.body = bytearray()
        self.body_len = 0
        self.scope: trio.CancelScope | None = None


@attrs.frozen
class _Verdict:
    status: int
    reason: str | None
    apns_id: bytes
    reply: SimReply
    push_type: str | None
    priority: int | None
    expiration: int | None
    token: str
    topic: str | None
    collapse_id: str | None


class _Connection:
    """State of one client connection: h2 machine, stream limit, provider token."""

    def __init__(self, sim: ApnsSimulator, connection_id: int, stream: trio.abc.Stream) -> None:
        self.sim = sim
        self.id = connection_id
        self.stream = stream
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.target = sim.max_streams if not sim.require_token_auth else sim.initial_max_streams
        self.advertised = self.target
        self.h2.local_settings = _AdvertisedOnlySettings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.target,
                SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW_SIZE,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.h2.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.active: dict[int, _Stream] = {}
        self.max_in_flight = 0
        #: Complete requests taken on this connection (for ``goaway_after``).
        self.taken = 0
        self.authenticated = not sim.require_token_auth
        self.shrunk = False
        self.jwt_cache: dict[bytes, _TokenInfo] = {}
        self.jwt: bytes | None = None
        self.jwt_iat = 0.0
        self.team: str | None = None
        self.last_activity = trio.current_time()
        self.closing = False
        self.dropped = False
        self.wake = trio.Event()
        self.done = trio.Event()
        self.reader_done = trio.Event()
        self.nursery: trio.Nursery | None = None

    # -- plumbing --

    def kick(self) -> None:
        """Ask the writer task to send whatever h2 has queued."""
        self.wake.set()

    def close(self) -> None:
        """Flush what is queued (e.g. a GOAWAY), then close the connection."""
        self.closing = True
        self.wake.set()

    def drop(self) -> None:
        """Reset the connection now, leaving every stream unanswered."""
        self.dropped = True
        self.closing = True
        self.done.set()

    def goaway(self, reason: str, last_stream_id: int | None = None) -> None:
        """Send GOAWAY with APNs' JSON debug data and close.

        h2 can neither send nor receive on a connection after its GOAWAY, so unanswered
        streams stay unanswered; ``last_stream_id`` defaults to just below the oldest of
        them, telling the client all of them are safe to retry.
        """
        if self.closing:
            return
        if last_stream_id is None:
            last_stream_id = (
                min(self.active) - 2 if self.active else self.h2.highest_inbound_stream_id
            )
        for st in self.active.values():
            if st.scope is not None:
                st.scope.cancel()
        self.active.clear()
        debug = json.dumps({"reason": reason}).encode()
        # A ProtocolError means h2 already closed the connection (client GOAWAY).
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(
                error_code=ErrorCodes.NO_ERROR,
                additional_data=debug,
                last_stream_id=max(last_stream_id, 0),
            )
        self.sim.goaways_sent += 1
        self.sim._log(f"connection {self.id}: GOAWAY {reason}")
        self.close()

    def advertise(self, limit: int) -> None:
        if limit != self.advertised and not self.closing:
            self.advertised = limit
            self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: limit})
            self.kick()

    # -- tasks --

    async def writer(self) -> None:
        """The only task that sends, so responses never interleave mid-frame."""
        try:
            while True:
                await self.wake.wait()
                self.wake = trio.Event()
                # Read the flag before taking the data: whatever was queued before
                # close() (a GOAWAY) goes out in this round or the next.
                closing = self.closing
                data = self.h2.data_to_send()
                if data:
                    await self.stream.send_all(data)
                if closing:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped = True
        self.done.set()

    async def reader(self) -> None:
        """Feed h2 until the client hangs up; once closing, read only to discard."""
        try:
            while True:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    break
                if self.closing:
                    continue  # h2 accepts nothing after GOAWAY; see CLOSE_LINGER
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    # h2 has queued a GOAWAY naming the error; send it and hang up.
                    self.sim._log(f"connection {self.id}: protocol error: {exc}")
                    self.close()
                    continue
                for event in events:
                    self.handle_event(event)
                    if self.closing:
                        break
                self.kick()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop()
        finally:
            self.reader_done.set()
        self.close()

    async def idle_watch(self, idle: float) -> None:
        """Send GOAWAY ``IdleTimeout`` once no request has been open for ``idle`` s."""
        while True:
            await trio.sleep_until(self.last_activity + idle)
            if self.active:
                self.last_activity = trio.current_time()
            elif trio.current_time() >= self.last_activity + idle:
                self.goaway("IdleTimeout")
                return

    # -- h2 events --

    def handle_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            st = self.active.get(sid)
            if st is not None and event.data is not None:
                st.body_len += len(event.data)
                room = MAX_KEPT_BODY - len(st.body)
                if room > 0:
                    st.body += event.data[:room]
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded):
            st = self.active.get(event.stream_id)
            if st is not None:
                self.sim._process(self, st)
        elif isinstance(event, h2.events.StreamReset):
            st = self.active.pop(event.stream_id, None)
            if st is not None and st.scope is not None:
                st.scope.cancel()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        assert sid is not None
        limit = self.h2.local_settings[SettingCodes.MAX_CONCURRENT_STREAMS]
        if len(self.active) >= limit:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self.sim.streams_refused += 1
            return
        headers: dict[bytes, bytes] = {}
        duplicate = False
        for name, value in event.headers or ():
            key = bytes(name)
            if key in headers:
                duplicate = True
            headers[key] = bytes(value)
        self.active[sid] = _Stream(sid, headers, duplicate)
        if len(self.active) > self.max_in_flight:
            self.max_in_flight = len(self.active)
            self.sim.max_in_flight[self.id] = self.max_in_flight
        if self.sim.idle_timeout is not None:
            self.last_activity = trio.current_time()


# --- The simulator ---------------------------------------------------------------------


class ApnsSimulator(Recording[Received]):
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
        self._scripts: dict[str, collections.deque[SimReply]] = {}
        self._token_replies: dict[str, SimReply] = {}
        self._default = _SUCCESS
        self._connections: dict[int, _Connection] = {}
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
        self._scripts.setdefault(token, collections.deque()).extend(replies)

    def set_token_reply(self, token: str, reply: SimReply) -> None:
        """Answer ``token`` with ``reply`` every time its scripted replies are used up.

        A dead token stays dead: ``pushd simulate --reply`` needs a reply that does not
        wear off after one notification, unlike :meth:`script`'s.
        """
        self._token_replies[token] = reply

    def set_default(self, reply: SimReply) -> None:
        """Set the reply for tokens without scripted replies (e.g. every token 500)."""
        self._default = reply

    def clear(self) -> None:
        """Forget scripted replies and restore the default of plain success.

        :attr:`received` and the counters are kept; clear them directly if needed.
        """
        self._scripts.clear()
        self._token_replies.clear()
        self._default = _SUCCESS

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
        tcp_listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = int(tcp_listeners[0].socket.getsockname()[1])
        listeners: list[trio.abc.Listener[Any]] = list(tcp_listeners)
        if ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True)
                for listener in tcp_listeners
            ]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        connection_id = self._next_connection_id
        self._next_connection_id += 1
        conn = _Connection(self, connection_id, stream)
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
                _set_linger_zero(stream)
            await trio.aclose_forcefully(stream)
            if connection_id in self.max_in_flight:
                self._log(f"connection {connection_id}: closed")

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    # -- requests --

    def _process(self, conn: _Connection, st: _Stream) -> None:
        """Judge a complete request; answer now, or later if the reply has a delay."""
        conn.taken += 1
        if self.goaway_after is not None and conn.taken > self.goaway_after:
            conn.goaway("Shutdown")
            return
        verdict = self._judge(conn, st)
        reply = verdict.reply
        delay = reply.delay + self.answer_delay
        if delay <= 0 and reply.action == "reply":
            self._answer(conn, st, verdict)
        else:
            assert conn.nursery is not None
            st.scope = trio.CancelScope()
            conn.nursery.start_soon(self._answer_later, conn, st, verdict, delay)

    async def _answer_later(
        self, conn: _Connection, st: _Stream, verdict: _Verdict, delay: float
    ) -> None:
        assert st.scope is not None
        with st.scope:
            await trio.sleep(delay)
            if conn.closing or conn.active.get(st.stream_id) is not st:
                return
            action = verdict.reply.action
            if action == "goaway":
                conn.goaway(verdict.reply.reason or "Shutdown")
            elif action == "drop":
                self._log(f"connection {conn.id}: dropped (scripted)")
                conn.drop()
            else:
                self._answer(conn, st, verdict)

    def _answer(self, conn: _Connection, st: _Stream, verdict: _Verdict) -> None:
        sid = st.stream_id
        del conn.active[sid]
        status = verdict.status
        headers = [(b":status", str(status).encode()), (b"apns-id", verdict.apns_id)]
        body = b""
        if status != 200:
            error: dict[str, object] = {"reason": verdict.reason}
            if status == 410:
                ts = verdict.reply.timestamp_ms
                error["timestamp"] = ts if ts is not None else int(time.time() * 1000)
            body = json.dumps(error, separators=(",", ":")).encode()
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(body)).encode()))
            if verdict.reply.retry_after is not None:
                headers.append((b"retry-after", str(verdict.reply.retry_after).encode()))
        try:
            conn.h2.send_headers(sid, headers, end_stream=not body)
            if body:
                conn.h2.send_data(sid, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            # The client reset the stream or starved its window; nobody to tell.
            return
        if status == 200:
            if conn.shrunk:
                conn.shrunk = False
                conn.advertise(conn.target)
        elif self.shrink_after_rejection and not conn.shrunk and conn.target > 1:
            conn.shrunk = True
            conn.advertise(1)
        if self.idle_timeout is not None:
            conn.last_activity = trio.current_time()
        conn.kick()
        received = Received(
            token=verdict.token,
            topic=verdict.topic,
            push_type=verdict.push_type,
            priority=verdict.priority,
            expiration=verdict.expiration,
            collapse_id=verdict.collapse_id,
            apns_id=verdict.apns_id.decode("latin-1"),
            payload=bytes(st.body),
            status=status,
            reason=verdict.reason,
            connection_id=conn.id,
            stream_id=sid,
            at=time.time(),
        )
        self._note(received)

    def _judge(self, conn: _Connection, st: _Stream) -> _Verdict:
        """Validate a request in pushy's order and decide the answer."""
        h = st.headers
        raw_id = h.get(b"apns-id")
        apns_id = raw_id if raw_id is not None else str(uuid.uuid4()).encode()
        path = h.get(b":path", b"")
        token = (
            path[len(_DEVICE_PREFIX) :].decode("latin-1") if path.startswith(_DEVICE_PREFIX) else ""
        )
        raw_topic = h.get(b"apns-topic")
        topic = raw_topic.decode("latin-1") if raw_topic is not None else None
        raw_type = h.get(b"apns-push-type")
        push_type = raw_type.decode("latin-1") if raw_type is not None else None
        raw_priority = h.get(b"apns-priority")
        priority = _PRIORITIES.get(raw_priority) if raw_priority is not None else None
        raw_exp = h.get(b"apns-expiration")
        expiration = int(raw_exp) if raw_exp is not None and raw_exp.isdigit() else None
        raw_collapse = h.get(b"apns-collapse-id")
        collapse_id = raw_collapse.decode("latin-1") if raw_collapse is not None else None

        def verdict(status: int, reason: str | None, reply: SimReply = _SUCCESS) -> _Verdict:
            return _Verdict(
                status,
                reason,
                apns_id,
                reply,
                push_type,
                priority,
                expiration,
                token,
                topic,
                collapse_id,
            )

        if st.duplicate:
            return verdict(400, "DuplicateHeaders")
        if raw_id is not None and not _APNS_ID_RE.fullmatch(raw_id):
            apns_id = str(uuid.uuid4()).encode()
            return verdict(400, "BadMessageId")
        if h.get(b":method") != b"POST":
            return verdict(405, "MethodNotAllowed")
        if not path.startswith(_DEVICE_PREFIX):
            return verdict(404, "BadPath")
        if not token:
            return verdict(400, "MissingDeviceToken")
        if raw_topic is None or not raw_topic:
            return verdict(400, "MissingTopic")
        if self.topics is not None:
            topic_error = self._topic_verdict(raw_topic)
            if topic_error is not None:
                return verdict(400, topic_error)
        if raw_collapse is not None and len(raw_collapse) > MAX_COLLAPSE_ID:
            return verdict(400, "BadCollapseId")
        if raw_priority is not None and priority is None:
            return verdict(400, "BadPriority")
        if raw_type == b"background" and (priority or 10) == 10:
            return verdict(400, "BadPriority")
        if raw_type is not None and raw_type not in _PUSH_TYPES:
            return verdict(400, "InvalidPushType")
        if not _topic_fits_push_type(topic or "", push_type or "alert"):
            return verdict(400, "InvalidPushType")
        if not TOKEN_RE.fullmatch(path, len(_DEVICE_PREFIX)):
            return verdict(400, "BadDeviceToken")

        queue = self._scripts.get(token)
        reply = queue.popleft() if queue else self._token_replies.get(token, self._default)
        if reply.action != "reply" or reply.status != 200:
            if reply.action != "reply":
                return verdict(0, reply.reason, reply)
            reason = reply.reason or _DEFAULT_REASONS.get(reply.status, "InternalServerError")
            return verdict(reply.status, reason, reply)

        if self.require_token_auth:
            auth_error = self._check_auth(conn, h.get(b"authorization"))
            if auth_error is not None:
                return verdict(auth_error[0], auth_error[1], reply)
        if raw_exp is not None and expiration is None:
            return verdict(400, "BadExpirationDate", reply)
        if st.body_len == 0:
            return verdict(400, "PayloadEmpty", reply)
        if st.body_len > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
            return verdict(413, "PayloadTooLarge", reply)
        return verdict(200, None, reply)

    def _topic_verdict(self, raw_topic: bytes) -> str | None:
        """``None`` if the topic belongs to an allowed bundle id, else the reason."""
        try:
            return self._topic_verdicts[raw_topic]
        except KeyError:
            pass
        assert self.topics is not None
        topic = raw_topic.decode("latin-1")
        base = topic
        for suffix in _SUFFIXES_LONGEST_FIRST:
            if topic.endswith(suffix):
                base = topic[: -len(suffix)]
                break
        result: str | None
        if base in self.topics:
            result = None
        elif any(topic.startswith(allowed + ".") for allowed in self.topics):
            result = "BadTopic"
        else:
            result = "TopicDisallowed"
        if len(self._topic_verdicts) < 1024:
            self._topic_verdicts[raw_topic] = result
        return result

    def _check_auth(self, conn: _Connection, value: bytes | None) -> tuple[int, str] | None:
        """Check the provider token; on success the connection counts as authenticated."""
        if value is None or value[:7].lower() != b"bearer ":
            return 403, "MissingProviderToken"
        jwt = value[7:].strip()
        info = conn.jwt_cache.get(jwt)
        if info is None:
            info = _inspect_jwt(jwt, self._keys, verify=not self.accept_any_key)
            if len(conn.jwt_cache) >= JWT_CACHE_SIZE:
                conn.jwt_cache.clear()
            conn.jwt_cache[jwt] = info
        if info.error is not None:
            return 403, info.error
        if conn.team is not None and info.team != conn.team:
            return 403, "InvalidProviderToken"  # one team per connection
        now = time.time()
        if info.iat < now - JWT_MAX_AGE:
            return 403, "ExpiredProviderToken"
        if info.iat > now + JWT_MAX_FUTURE:
            return 403, "InvalidProviderToken"
        if jwt != conn.jwt:
            if conn.jwt is not None and conn.jwt_iat > now - JWT_MIN_REFRESH:
                return 429, "TooManyProviderTokenUpdates"
            conn.jwt = jwt
            conn.jwt_iat = info.iat
            conn.team = info.team
        if not conn.authenticated:
            conn.authenticated = True
            conn.target = self.max_streams
            if not conn.shrunk:
                conn.advertise(conn.target)
        return None


def _topic_fits_push_type(topic: str, push_type: str) -> bool:
    """Whether ``topic`` carries the suffix ``push_type`` requires (and no other)."""
    suffix = TOPIC_SUFFIXES.get(push_type)
    if suffix is not None:
        return topic.endswith(suffix)
    if push_type == "mdm":
        return True  # the topic comes from the MDM certificate, any shape
    return not topic.endswith(_SUFFIXES_LONGEST_FIRST)


def _set_linger_zero(stream: trio.abc.Stream) -> None:
    """Make closing ``stream`` send a TCP RST, like a server that crashed."""
    transport: object = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    if isinstance(transport, trio.SocketStream):
        with contextlib.suppress(OSError):
            transport.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
