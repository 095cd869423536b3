"""The load driver's modes: what each posts, where, and what answer counts as success.

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
"""

from __future__ import annotations

import argparse
import json

import attrs
from common import (
    APP_NAME,
    EMPTY_PATH,
    FANOUT_DEVICES,
    FANOUT_USER_PREFIX,
    FCM_APP_NAME,
    FCM_FANOUT_USER_PREFIX,
    FCM_SINGLE_USER_PREFIX,
    MATRIX_FANOUT_DEVICES,
    MATRIX_NOTIFY_PATH,
    MATTERMOST_SEND_PATH,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    MIXED_USER_PREFIX,
    SEND_PATH,
    SINGLE_USER_PREFIX,
    ZULIP_DEVICES,
    ZULIP_NOTIFY_PATH,
    ZULIP_SERVER_KEY,
    ZULIP_SERVER_UUID,
    ZULIP_USER_PREFIX,
)
from load_bodies import (
    ALERT,
    EVENT_ID_PLACEHOLDER,
    SYNAPSE_USER_AGENT,
    ZULIP_USER_AGENT,
    basic_auth,
    encode_go_request,
    encode_request,
    matrix_notify_body,
    mattermost_push_body,
    zulip_notify_body,
)

#: Distinct pre-encoded requests cycled through; users are spread over the whole store.
REQUEST_POOL = 4096


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


#: pushd's answer to a push it delivered (MPNS's ``PushResponse``).
MATTERMOST_OK = {"status": "OK"}


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
