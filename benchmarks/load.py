"""The load driver: closed-loop HTTP/1.1 keep-alive requests from hand-written bytes.

It shares two cores with pushd and the simulator, so it has to be cheap per request:
no HTTP client library, one trio task and one TCP connection per concurrent request,
requests pre-encoded once, responses parsed only as far as the status line and
``Content-Length``.  Every response is still checked: status 200, and for a send, the
JSON summary must say every device was ``delivered`` (one JSON parse per response costs
the driver microseconds; an unnoticed failure would make every number meaningless).  A
mixed send must also show the expected number of delivered devices for *each* app: a
summary of 100 delivered could otherwise hide an FCM app that was never reached.

The ``zulip`` mode is a Zulip server calling pushd's Zulip bouncer: ``POST
/api/v1/remotes/push/notify`` with the JSON body ``send_notifications_to_bouncer``
sends for a new stream message (``apns_payload``, ``gcm_payload``, ``gcm_options`` and
the user's token lists), HTTP Basic with the server's uuid and key, and Zulip's
``User-Agent``, as ``tests/zulip_client.py`` sends it.  Its response must be exactly
Zulip's success: the user's 10 APNs devices counted, no ``deleted_devices`` (a device
pushd failed to reach and deleted would show up there) and the realm allowed to push.

The ``mattermost`` mode is a Mattermost server calling pushd's Mattermost push proxy:
``POST /<path secret>/api/v1/send_push``, one device per request, the body
``json.Marshal`` makes of the ``model.PushNotification`` a server builds for a channel
message in "full" contents mode (``tests/mattermost_client.py``'s ``message``), in the
struct's field order, compact, with no Content-Type and no credentials, and the headers
Go's ``net/http`` client adds by default.  Every answer must be ``{"status": "OK"}``:
anything else (``FAIL``, ``REMOVE``, a 429 from the throttle) fails the run.

The ``matrix`` and ``matrix-4`` modes are a Matrix homeserver (Synapse) calling pushd's
Matrix push gateway: ``POST /_matrix/push/v1/notify``, no credentials, a full-format
notify for an ``m.room.message`` event as Synapse's HTTP pusher builds it (protocol
notes §1.3: compact JSON, its fields in Synapse's order, the pusher's ``data`` minus
``url`` and the push rule's tweaks on each device) to 1 or 4 APNs devices of Element
iOS (``app_id`` ``im.vector.app.ios``, pushkeys the base64 of raw 32-byte tokens).
Synapse sends one device per request; ``matrix-4`` is the batched shape other
homeservers may send, and the second of Sygnal's benchmark figures.  Every request
carries its own ``event_id`` (and ``id``, Synapse's deprecated copy of it): pushd drops
a repeat of (app_id, pushkey, event_id) within ``[matrix] dedupe_seconds``, as the spec
asks, so a request pool cycled with fixed ids would measure the dedupe, not delivery.
The requests are pre-encoded with a placeholder of the event id's length, and each one
is joined around a fresh id when sent.  Every answer must be 200 ``{"rejected": []}``;
a pushkey in ``rejected`` or any other answer fails the run.  ``[]`` alone does not
prove delivery (a push that failed, or a repeat, is not rejected either): the runner's
count of the APNs simulator's answers does.

The measured window starts after each connection's warm-up requests and ends when the
last worker finishes; CPU seconds of the processes given with ``--watch ROLE=PID``
(pushd, the simulator) and of the driver itself are read from /proc at both ends, so
each one's CPU is known for exactly the window that produced the latencies.

Prints one JSON object on stdout.  Bounded: a fixed number of requests, cut short after
``--max-seconds``, and every request must finish within ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from common import (
    APP_NAME,
    DRIVER,
    EMPTY_PATH,
    FANOUT_DEVICES,
    FANOUT_USER_PREFIX,
    FCM_APP_NAME,
    FCM_FANOUT_USER_PREFIX,
    FCM_SINGLE_USER_PREFIX,
    MATRIX_APP_ID,
    MATRIX_FANOUT_DEVICES,
    MATRIX_NOTIFY_PATH,
    MATTERMOST_APPLE_PLATFORM,
    MATTERMOST_SEND_PATH,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    MIXED_USER_PREFIX,
    SEND_PATH,
    SINGLE_USER_PREFIX,
    ZULIP_DEVICES,
    ZULIP_HOSTNAME,
    ZULIP_NOTIFY_PATH,
    ZULIP_REALM_UUID,
    ZULIP_SERVER_KEY,
    ZULIP_SERVER_UUID,
    ZULIP_USER_PREFIX,
    CpuSnapshot,
    matrix_pushkey,
    mattermost_token,
    placement,
    zulip_token,
    zulip_user_id,
    zulip_user_uuid,
)

#: Distinct pre-encoded requests cycled through; users are spread over the whole store.
REQUEST_POOL = 4096
#: A send that takes longer has gone wrong (pushd's own first-attempt deadline is 10 s).
REQUEST_TIMEOUT = 30.0
#: Extra time over --max-seconds for requests in flight and connection set-up.
GRACE_SECONDS = 30.0
RECEIVE_BYTES = 65536
HEADER_END = b"\r\n\r\n"
CONTENT_LENGTH = b"\r\ncontent-length:"
CONNECTION_CLOSE = b"\r\nconnection: close"
#: The notification every send carries: a short alert, as a chat message preview is.
ALERT = "Hello from the benchmark"
#: What a Zulip server says it is (``tests/zulip_client.py``'s version).
ZULIP_USER_AGENT = "ZulipServer/11.4"
#: The sender and stream of the benchmark's Zulip message; ids as a small Zulip has.
ZULIP_SENDER_ID = 8
ZULIP_SENDER = "Iago"
ZULIP_REALM_ID = 2
ZULIP_STREAM = "general"
ZULIP_STREAM_ID = 3
ZULIP_TOPIC = "benchmarks"
ZULIP_MESSAGE_TIME = 1_700_000_000
#: The one answer a Zulip server accepts as a full success for one user's 10 APNs
#: devices (protocol notes §2.4): anything in ``deleted_devices`` means pushd lost one.
ZULIP_SUCCESS = {
    "result": "success",
    "msg": "",
    "total_android_devices": 0,
    "total_apple_devices": ZULIP_DEVICES,
    "deleted_devices": {"android_devices": [], "apple_devices": []},
    "realm": {"can_push": True, "expected_end_timestamp": None},
}
#: What Go's ``net/http`` client sends with every request unless told otherwise
#: (Mattermost's ``sendToPushProxy`` sets no header of its own).
GO_USER_AGENT = "Go-http-client/1.1"
GO_ACCEPT_ENCODING = "gzip"
#: Characters ``json.Marshal`` escapes inside strings (``SetEscapeHTML`` is on), which
#: Python's ``json`` leaves alone.
GO_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
#: The benchmark's Mattermost message: ids are 26 lower-case letters and digits, the
#: length of ``model.NewId()``'s (fixed ones for the server, team, channel and sender).
MATTERMOST_SERVER_ID = "benchtelemetry000000000000"
MATTERMOST_TEAM_ID = "benchteam00000000000000000"
MATTERMOST_CHANNEL_ID = "benchchannel00000000000000"
MATTERMOST_SENDER_ID = "benchsender000000000000000"
MATTERMOST_SENDER = "alice"
MATTERMOST_CHANNEL = "Town Square"
MATTERMOST_BADGE = 3
MATTERMOST_ID_LENGTH = 26
#: ``signature``: an ES256 JWT over ``{ack_id, device_id}``.  pushd passes it through
#: without checking it, so the benchmark's has a real JWT's shape and length (a 64-byte
#: signature) but is signed by nobody.
JWT_HEADER = {"alg": "ES256", "typ": "JWT"}
JWT_SIGNATURE = bytes(range(64))
#: pushd's answer to a push it delivered (MPNS's ``PushResponse``).
MATTERMOST_OK = {"status": "OK"}
#: What Synapse's HTTP client says it is (its own version; Twisted's ``Agent`` adds the
#: rest: ``Host``, ``Content-Length``, and ``Content-Type`` set by ``post_json``).
SYNAPSE_USER_AGENT = "Synapse/1.139.0"
#: The benchmark's Matrix room, sender and message (ids shaped as Synapse's).
MATRIX_SERVER = "bench.example.org"
MATRIX_ROOM_ID = f"!bEnChRoOmAbCdEfGhI:{MATRIX_SERVER}"
MATRIX_SENDER = f"@alice:{MATRIX_SERVER}"
MATRIX_SENDER_NAME = "Alice"
MATRIX_ROOM_NAME = "Town Square"
#: When the benchmark's pushers were set, UNIX seconds (Synapse sends seconds).
MATRIX_PUSHKEY_TS = 1_700_000_000
#: The push rule's tweaks for a message in a small room, as Synapse's defaults set them.
MATRIX_TWEAKS = {"sound": "default", "highlight": False}
#: A room version >= 4 event id: ``$`` and 43 URL-safe base64 characters.  The request
#: pool carries this placeholder; each request replaces it with ``$``, the run's
#: :data:`EVENT_TAG_LENGTH` random characters and the request's number in hex.
EVENT_ID_LENGTH = 44
EVENT_TAG_LENGTH = 11
EVENT_ID_PLACEHOLDER = "$" + "~" * (EVENT_ID_LENGTH - 1)
EVENT_NUMBER_FORMAT = b"%0" + str(EVENT_ID_LENGTH - 1 - EVENT_TAG_LENGTH).encode() + b"x"
#: pushd's answer to a notify whose every pushkey it kept (Matrix's ``rejected`` list).
MATRIX_OK: dict[str, list[str]] = {"rejected": []}


@attrs.frozen
class Mode:
    """What one kind of run posts, where, and how many devices of each app it reaches."""

    path: str
    #: The stored users' names start with this; None when pushd stores nothing for the
    #: mode (a Mattermost push carries its device token).
    user_prefix: str | None
    apns_devices: int = 0
    fcm_devices: int = 0
    #: A Zulip server's ``push/notify`` rather than a native send.
    zulip: bool = False
    #: A Mattermost server's ``send_push`` (one device per request).
    mattermost: bool = False
    #: A Matrix homeserver's ``notify`` (``apns_devices`` per request).
    matrix: bool = False

    @property
    def devices(self) -> int:
        return self.apns_devices + self.fcm_devices

    @property
    def mixed(self) -> bool:
        return self.apns_devices > 0 and self.fcm_devices > 0


MODES: dict[str, Mode] = {
    # The empty endpoint gets the same headers and body as a one-device send, and so
    # does the floor (``floor.py``, which answers any path as pushd's empty endpoint).
    "empty": Mode(EMPTY_PATH, SINGLE_USER_PREFIX),
    "floor": Mode(EMPTY_PATH, SINGLE_USER_PREFIX),
    "one": Mode(SEND_PATH, SINGLE_USER_PREFIX, apns_devices=1),
    "hundred": Mode(SEND_PATH, FANOUT_USER_PREFIX, apns_devices=FANOUT_DEVICES),
    "fcm-one": Mode(SEND_PATH, FCM_SINGLE_USER_PREFIX, fcm_devices=1),
    "fcm-hundred": Mode(SEND_PATH, FCM_FANOUT_USER_PREFIX, fcm_devices=FANOUT_DEVICES),
    "mixed": Mode(
        SEND_PATH,
        MIXED_USER_PREFIX,
        apns_devices=MIXED_APNS_DEVICES,
        fcm_devices=MIXED_FCM_DEVICES,
    ),
    "zulip": Mode(ZULIP_NOTIFY_PATH, ZULIP_USER_PREFIX, apns_devices=ZULIP_DEVICES, zulip=True),
    "mattermost": Mode(MATTERMOST_SEND_PATH, None, apns_devices=1, mattermost=True),
    "matrix": Mode(MATRIX_NOTIFY_PATH, None, apns_devices=1, matrix=True),
    "matrix-4": Mode(MATRIX_NOTIFY_PATH, None, apns_devices=MATRIX_FANOUT_DEVICES, matrix=True),
}


class ResponseError(Exception):
    """A response that is not the success the benchmark expects."""


class ConnectionLost(Exception):
    """pushd closed the connection: this worker cannot go on."""


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time, reopened when told to.

    A server may end a connection with ``connection: close`` (pushd does on shutdown);
    a real client opens a new one, and so does this.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buffer = bytearray()
        self.reopened = 0

    async def _fill(self, stream: trio.SocketStream) -> None:
        chunk = await stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            raise ConnectionLost("pushd closed the connection")
        self.buffer += chunk

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await trio.aclose_forcefully(stream)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; return the response's status and body."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self.buffer.clear()
        stream = self.stream
        await stream.send_all(request)
        while (end := self.buffer.find(HEADER_END)) < 0:
            await self._fill(stream)
        head = bytes(self.buffer[:end]).lower()
        del self.buffer[: end + len(HEADER_END)]
        status = int(head[9:12])
        at = head.find(CONTENT_LENGTH)
        if at < 0:
            raise ConnectionLost(f"status {status} without content-length: {head[:200]!r}")
        value_start = at + len(CONTENT_LENGTH)
        value_end = head.find(b"\r\n", value_start)
        length = int(head[value_start : value_end if value_end >= 0 else len(head)])
        while len(self.buffer) < length:
            await self._fill(stream)
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        if CONNECTION_CLOSE in head:
            await self.close()
            self.reopened += 1
        return status, body


def zulip_notify_body(n: int, message_id: int) -> dict[str, Any]:
    """What a Zulip server posts to ``push/notify`` for a stream message to user ``n``.

    The shape of ``send_notifications_to_bouncer``'s payloads (protocol notes §3):
    both payloads always go, whatever devices the user has, with the server's own list
    of the user's tokens so that the bouncer can say which ones it no longer has.
    """
    user_id = zulip_user_id(n)
    realm_url = f"https://{ZULIP_HOSTNAME}"
    sender_email = f"{ZULIP_SENDER.lower()}@{ZULIP_HOSTNAME}"
    common_fields = {
        "server": ZULIP_HOSTNAME,
        "realm_id": ZULIP_REALM_ID,
        "realm_name": "Bench",
        "realm_uri": realm_url,
        "realm_url": realm_url,
        "user_id": user_id,
        "sender_id": ZULIP_SENDER_ID,
        "sender_email": sender_email,
        "time": ZULIP_MESSAGE_TIME,
        "recipient_type": "stream",
        "stream": ZULIP_STREAM,
        "stream_id": ZULIP_STREAM_ID,
        "topic": ZULIP_TOPIC,
    }
    return {
        "user_id": user_id,
        "user_uuid": zulip_user_uuid(n),
        "realm_uuid": ZULIP_REALM_UUID,
        "apns_payload": {
            "alert": {
                "title": ZULIP_SENDER,
                "subtitle": f"#{ZULIP_STREAM} > {ZULIP_TOPIC}:",
                "body": ALERT,
            },
            "sound": "default",
            "badge": 0,
            "custom": {"zulip": {"message_ids": [message_id], **common_fields}},
        },
        "gcm_payload": {
            "event": "message",
            "zulip_message_id": message_id,
            "content": ALERT,
            "content_truncated": False,
            "sender_full_name": ZULIP_SENDER,
            "sender_avatar_url": f"{realm_url}/avatar/{ZULIP_SENDER_ID}",
            **common_fields,
        },
        "gcm_options": {"priority": "high"},
        "android_devices": [],
        "apple_devices": [zulip_token(n, device) for device in range(ZULIP_DEVICES)],
    }


def go_marshal(value: dict[str, Any]) -> bytes:
    """``json.Marshal``'s bytes for ``value``: compact, UTF-8, HTML characters escaped.

    Go writes a struct's fields in declaration order; ``value`` must already be in it.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for character, escaped in GO_JSON_ESCAPES.items():
        text = text.replace(character, escaped)
    return text.encode()


def base64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mattermost_id(prefix: str, n: int) -> str:
    """A distinct 26-character id (``model.NewId()``'s length) per ``n``."""
    return f"{prefix}{n:0{MATTERMOST_ID_LENGTH - len(prefix)}x}"


def mattermost_push_body(n: int, message_number: int) -> bytes:
    """What a Mattermost server posts to ``send_push`` for a channel message to device ``n``.

    ``model.PushNotification`` as ``json.Marshal`` writes it, fields in the struct's
    order; ``omitempty`` drops the empty ones (``sound``, ``cont_ava``, ``root_id``,
    ``sub_type``, ...), while ``post_id``, the two booleans and ``signature`` are always
    written.  Every message gets its own ``ack_id`` and ``post_id``, as on a server.
    """
    ack_id = mattermost_id("ack", message_number)
    device = mattermost_token(n)
    claims = go_marshal({"ack_id": ack_id, "device_id": device})
    signature = ".".join(
        (base64url(go_marshal(JWT_HEADER)), base64url(claims), base64url(JWT_SIGNATURE))
    )
    return go_marshal(
        {
            "ack_id": ack_id,
            "platform": MATTERMOST_APPLE_PLATFORM,
            "server_id": MATTERMOST_SERVER_ID,
            "device_id": device,
            "post_id": mattermost_id("post", message_number),
            "category": "CAN_REPLY",
            "message": f"{MATTERMOST_SENDER}: {ALERT}",
            "badge": MATTERMOST_BADGE,
            "team_id": MATTERMOST_TEAM_ID,
            "channel_id": MATTERMOST_CHANNEL_ID,
            "channel_name": MATTERMOST_CHANNEL,
            "type": "message",
            "sender_id": MATTERMOST_SENDER_ID,
            "sender_name": MATTERMOST_SENDER,
            "version": "v2",
            "is_crt_enabled": False,
            "is_id_loaded": False,
            "signature": signature,
        }
    )


def matrix_notify_body(devices: Sequence[int], k: int, event_id: str) -> bytes:
    """What Synapse's HTTP pusher posts for a message in a named room to ``devices``.

    ``_build_notification_dict``'s full format, its keys in Synapse's order (``id``
    and the event's fields, ``prio``, ``counts``, ``devices``, then ``content``,
    ``sender_display_name`` and ``room_name`` as they are present), each device as a
    pusher with no ``format`` sends it (``data`` is the pusher's data minus ``url``:
    empty), encoded as Synapse's ``json_encoder`` does: compact.  ``prio`` is
    ``high`` because the tweaks set a sound.
    """
    notification = {
        "id": event_id,
        "event_id": event_id,
        "room_id": MATRIX_ROOM_ID,
        "type": "m.room.message",
        "sender": MATRIX_SENDER,
        "prio": "high",
        "counts": {"unread": 1 + k % 9},
        "devices": [
            {
                "app_id": MATRIX_APP_ID,
                "pushkey": matrix_pushkey(device),
                "pushkey_ts": MATRIX_PUSHKEY_TS,
                "data": {},
                "tweaks": MATRIX_TWEAKS,
            }
            for device in devices
        ],
        "content": {"msgtype": "m.text", "body": ALERT},
        "sender_display_name": MATRIX_SENDER_NAME,
        "room_name": MATRIX_ROOM_NAME,
    }
    return json.dumps({"notification": notification}, separators=(",", ":")).encode()


def encode_go_request(path: str, port: int, body: bytes) -> bytes:
    """A POST as Go's ``net/http`` writes one with no headers set: no Content-Type."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {GO_USER_AGENT}\r\n"
        f"Content-Length: {len(body)}\r\nAccept-Encoding: {GO_ACCEPT_ENCODING}\r\n\r\n"
    ).encode() + body


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` value for HTTP Basic, as a Zulip server sends its uuid/key."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def encode_request(path: str, port: int, headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 POST with a JSON body, keep-alive (HTTP/1.1's default)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def build_requests(args: argparse.Namespace, mode: Mode) -> list[tuple[bytes, ...]]:
    """Pre-encode the requests, for users (or devices) spread evenly over the stored ones.

    Each is a tuple of the request's parts around its event id placeholders: one part
    (the whole request) except for Matrix, whose requests get a fresh id when sent.
    """
    count = min(REQUEST_POOL, args.users)
    requests: list[tuple[bytes, ...]] = []
    for k in range(count):
        user = k * args.users // count
        if mode.mattermost:
            body = mattermost_push_body(user, k)
            requests.append((encode_go_request(mode.path, args.port, body),))
            continue
        if mode.matrix:
            # Consecutive devices, wrapping round: distinct within a request.
            devices = [(k * mode.devices + d) % args.users for d in range(mode.devices)]
            body = matrix_notify_body(devices, k, EVENT_ID_PLACEHOLDER)
            request = encode_request(mode.path, args.port, {"User-Agent": SYNAPSE_USER_AGENT}, body)
            parts = tuple(request.split(EVENT_ID_PLACEHOLDER.encode()))
            assert len(parts) == 3, "the event id is in a Matrix notify twice (id, event_id)"
            requests.append(parts)
            continue
        if mode.zulip:
            payload = zulip_notify_body(user, message_id=k + 1)
            headers = {
                "User-Agent": ZULIP_USER_AGENT,
                "Authorization": basic_auth(ZULIP_SERVER_UUID, ZULIP_SERVER_KEY),
            }
        else:
            payload = {"user": f"{mode.user_prefix}{user}", "alert": ALERT}
            headers = {"Authorization": f"Bearer {args.key}"}
        body = json.dumps(payload, separators=(",", ":")).encode()
        requests.append((encode_request(mode.path, args.port, headers, body),))
    return requests


def check(mode: Mode, status: int, body: bytes) -> None:
    """Raise unless the response is a full success for this mode."""
    if status != 200:
        raise ResponseError(f"status {status}: {body[:300]!r}")
    if mode.mattermost:
        if json.loads(body) != MATTERMOST_OK:
            raise ResponseError(f"Mattermost send_push answered {body[:300]!r}")
        return
    if mode.matrix:
        if json.loads(body) != MATRIX_OK:
            raise ResponseError(f"Matrix notify answered {body[:300]!r}")
        return
    if mode.devices == 0:
        if body != b"{}":
            raise ResponseError(f"empty endpoint answered {body[:300]!r}")
        return
    answer = json.loads(body)
    if mode.zulip:
        if answer != ZULIP_SUCCESS:
            raise ResponseError(f"Zulip notify answered {answer}")
        return
    summary = answer["summary"]
    if summary.get("delivered") != mode.devices:
        raise ResponseError(f"not all {mode.devices} delivered: {summary}")
    if mode.mixed:
        delivered = {APP_NAME: 0, FCM_APP_NAME: 0}
        for result in answer["results"]:
            if result["status"] == "delivered" and result["app"] in delivered:
                delivered[result["app"]] += 1
        expected = {APP_NAME: mode.apns_devices, FCM_APP_NAME: mode.fcm_devices}
        if delivered != expected:
            raise ResponseError(f"delivered per app {delivered}, expected {expected}")


@attrs.define
class Run:
    """Shared state of one run's workers."""

    mode: Mode
    #: Pre-encoded requests, as :func:`build_requests` returns them.
    requests: list[tuple[bytes, ...]]
    remaining: int
    #: ``$`` and this run's random characters, the start of every event id it sends
    #: (Matrix only: unique across runs against the same pushd, whose dedupe remembers).
    event_tag: bytes | None = None
    deadline: float = 0.0
    tickets: itertools.count[int] = attrs.field(factory=itertools.count)
    latencies: list[float] = attrs.Factory(list)
    failures: int = 0
    first_failure: str | None = None
    warmed: int = 0
    #: Warm-up requests answered in full success (not in the window, but sent upstream).
    warmup_done: int = 0
    #: Connections reopened after pushd's ``connection: close`` in the measured window.
    reopened: int = 0
    all_warm: trio.Event = attrs.Factory(trio.Event)
    go: trio.Event = attrs.Factory(trio.Event)

    def next_request(self) -> bytes:
        """The next request to send; a Matrix one with an event id no other has."""
        ticket = next(self.tickets)
        parts = self.requests[ticket % len(self.requests)]
        if self.event_tag is None:
            return parts[0]
        return (self.event_tag + EVENT_NUMBER_FORMAT % ticket).join(parts)

    def fail(self, error: BaseException) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = f"{type(error).__name__}: {error}"


#: Errors after which a connection is out of step or gone: the worker stops.
FATAL_ERRORS = (ConnectionLost, OSError, trio.BrokenResourceError, trio.TooSlowError)
#: Errors in a complete response: the connection is fine, the request counts as failed.
RESPONSE_ERRORS = (ResponseError, ValueError, KeyError)


async def worker(run: Run, port: int, warmup: int, workers: int) -> None:
    """Warm up, wait for the start, then send until the requests or the time run out."""
    connection = Connection(port)
    alive = True
    try:
        for _ in range(warmup):
            request = run.next_request()
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    check(run.mode, *await connection.exchange(request))
                run.warmup_done += 1
            except (*RESPONSE_ERRORS, *FATAL_ERRORS) as error:
                run.fail(error)  # a bad start: leave this worker out of the measured window
                alive = False
                break
        run.warmed += 1
        if run.warmed == workers:
            run.all_warm.set()
        await run.go.wait()
        connection.reopened = 0
        while alive and run.remaining > 0 and time.monotonic() < run.deadline:
            run.remaining -= 1
            request = run.next_request()
            started = time.perf_counter()
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    status, body = await connection.exchange(request)
                run.latencies.append(time.perf_counter() - started)
                check(run.mode, status, body)
            except RESPONSE_ERRORS as error:
                run.fail(error)
            except FATAL_ERRORS as error:
                run.fail(error)
                alive = False
        run.reopened += connection.reopened
    finally:
        await connection.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0.0 if there are none)."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    mode = MODES[args.mode]
    event_tag = None
    if mode.matrix:
        event_tag = ("$" + secrets.token_urlsafe(EVENT_TAG_LENGTH)[:EVENT_TAG_LENGTH]).encode()
    run = Run(
        mode=mode,
        requests=build_requests(args, mode),
        remaining=args.requests,
        event_tag=event_tag,
    )
    watched = {role: int(pid) for role, _, pid in (w.partition("=") for w in args.watch)}
    watched[DRIVER] = os.getpid()
    with trio.fail_after(args.max_seconds + GRACE_SECONDS):
        async with trio.open_nursery() as nursery:
            for _ in range(args.concurrency):
                nursery.start_soon(worker, run, args.port, args.warmup, args.concurrency)
            await run.all_warm.wait()
            before = CpuSnapshot.take(watched)
            started = time.monotonic()
            run.deadline = started + args.max_seconds
            run.go.set()
        elapsed = time.monotonic() - started
        cpu = CpuSnapshot.take(watched).since(before)
    latencies = sorted(run.latencies)
    done = len(latencies)
    return {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "requests": done,
        "notifications": done * mode.devices,
        "fcm_notifications": done * mode.fcm_devices,
        # Every APNs notification of this run, warm-ups included: the runner checks the
        # sum of all runs against what the APNs simulator counted.
        "apns_sent": (done + run.warmup_done) * mode.apns_devices,
        "failures": run.failures,
        "reconnects": run.reopened,
        "first_failure": run.first_failure,
        "elapsed": elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_seconds": cpu,
        "driver": placement(os.getpid()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="pushd's port on 127.0.0.1")
    parser.add_argument("--key", required=True, help="the chat server's API key")
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument(
        "--users",
        type=int,
        required=True,
        help="users stored (Mattermost, Matrix: devices) for this mode",
    )
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True, help="measured requests")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests per connection")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cut the run short")
    parser.add_argument(
        "--watch", action="append", default=[], metavar="ROLE=PID", help="report this CPU too"
    )
    result = trio.run(measure, parser.parse_args())
    json.dump(result, sys.stdout)
    print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
