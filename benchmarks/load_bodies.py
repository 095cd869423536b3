"""The request bodies and heads the load driver sends, as each chat server writes them
(see ``load_modes.py`` for which mode sends which): pure functions of the benchmark's
fixed users, ids and message."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from common import (
    MATRIX_APP_ID,
    MATTERMOST_APPLE_PLATFORM,
    ZULIP_DEVICES,
    ZULIP_HOSTNAME,
    ZULIP_REALM_UUID,
    matrix_pushkey,
    mattermost_token,
    zulip_token,
    zulip_user_id,
    zulip_user_uuid,
)

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
