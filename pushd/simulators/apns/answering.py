"""Judging a complete request in pushy's order and answering it (see the package doc)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.simulators.apns.connection import Connection, Stream
from pushd.simulators.apns.constants import (
    APNS_ID_RE,
    DEFAULT_REASONS,
    DEVICE_PREFIX,
    JWT_CACHE_SIZE,
    JWT_MAX_AGE,
    JWT_MAX_FUTURE,
    JWT_MIN_REFRESH,
    MAX_COLLAPSE_ID,
    MAX_PAYLOAD,
    MAX_VOIP_PAYLOAD,
    PRIORITIES,
    PUSH_TYPES,
    SUFFIXES_LONGEST_FIRST,
    TOKEN_RE,
    TOPIC_SUFFIXES,
)
from pushd.simulators.apns.jwt import inspect_jwt
from pushd.simulators.apns.values import SUCCESS, Received, SimReply
from pushd.simulators.recording import Recording
from pushd.simulators.script import ReplyScript


@attrs.frozen
class Verdict:
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


class Answering(Recording[Received]):
    """The request half of :class:`~pushd.simulators.apns.ApnsSimulator`: judge a
    complete request in pushy's order and answer it (or drop, or GOAWAY).

    A base class rather than a helper object so that the simulator's settings stay plain
    attributes a test can change at any time; :class:`ApnsSimulator` sets every one of
    them in its ``__init__``.
    """

    max_streams: int
    shrink_after_rejection: bool
    topics: frozenset[str] | None
    accept_any_key: bool
    require_token_auth: bool
    idle_timeout: float | None
    answer_delay: float
    goaway_after: int | None
    log: Callable[[str], None] | None
    _keys: dict[str, tuple[str, ec.EllipticCurvePublicKey]]
    _replies: ReplyScript[SimReply]
    _topic_verdicts: dict[bytes, str | None]

    def _log(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    # -- requests --

    def _process(self, conn: Connection, st: Stream) -> None:
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
        self, conn: Connection, st: Stream, verdict: Verdict, delay: float
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

    def _answer(self, conn: Connection, st: Stream, verdict: Verdict) -> None:
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

    def _judge(self, conn: Connection, st: Stream) -> Verdict:
        """Validate a request in pushy's order and decide the answer."""
        h = st.headers
        raw_id = h.get(b"apns-id")
        apns_id = raw_id if raw_id is not None else str(uuid.uuid4()).encode()
        path = h.get(b":path", b"")
        token = (
            path[len(DEVICE_PREFIX) :].decode("latin-1") if path.startswith(DEVICE_PREFIX) else ""
        )
        raw_topic = h.get(b"apns-topic")
        topic = raw_topic.decode("latin-1") if raw_topic is not None else None
        raw_type = h.get(b"apns-push-type")
        push_type = raw_type.decode("latin-1") if raw_type is not None else None
        raw_priority = h.get(b"apns-priority")
        priority = PRIORITIES.get(raw_priority) if raw_priority is not None else None
        raw_exp = h.get(b"apns-expiration")
        expiration = int(raw_exp) if raw_exp is not None and raw_exp.isdigit() else None
        raw_collapse = h.get(b"apns-collapse-id")
        collapse_id = raw_collapse.decode("latin-1") if raw_collapse is not None else None

        def verdict(status: int, reason: str | None, reply: SimReply = SUCCESS) -> Verdict:
            return Verdict(
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
        if raw_id is not None and not APNS_ID_RE.fullmatch(raw_id):
            apns_id = str(uuid.uuid4()).encode()
            return verdict(400, "BadMessageId")
        if h.get(b":method") != b"POST":
            return verdict(405, "MethodNotAllowed")
        if not path.startswith(DEVICE_PREFIX):
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
        if raw_type is not None and raw_type not in PUSH_TYPES:
            return verdict(400, "InvalidPushType")
        if not topic_fits_push_type(topic or "", push_type or "alert"):
            return verdict(400, "InvalidPushType")
        if not TOKEN_RE.fullmatch(path, len(DEVICE_PREFIX)):
            return verdict(400, "BadDeviceToken")

        reply = self._replies.next(token)
        if reply.action != "reply" or reply.status != 200:
            if reply.action != "reply":
                return verdict(0, reply.reason, reply)
            reason = reply.reason or DEFAULT_REASONS.get(reply.status, "InternalServerError")
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
        for suffix in SUFFIXES_LONGEST_FIRST:
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

    def _check_auth(self, conn: Connection, value: bytes | None) -> tuple[int, str] | None:
        """Check the provider token; on success the connection counts as authenticated."""
        if value is None or value[:7].lower() != b"bearer ":
            return 403, "MissingProviderToken"
        jwt = value[7:].strip()
        info = conn.jwt_cache.get(jwt)
        if info is None:
            info = inspect_jwt(jwt, self._keys, verify=not self.accept_any_key)
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


def topic_fits_push_type(topic: str, push_type: str) -> bool:
    """Whether ``topic`` carries the suffix ``push_type`` requires (and no other)."""
    suffix = TOPIC_SUFFIXES.get(push_type)
    if suffix is not None:
        return topic.endswith(suffix)
    if push_type == "mdm":
        return True  # the topic comes from the MDM certificate, any shape
    return not topic.endswith(SUFFIXES_LONGEST_FIRST)
