"""NaN and Infinity are not JSON (RFC 8259 §6), nor is a number too large for a double.

Every frontend refuses them with its own protocol's bad-input answer and sends nothing
upstream; every payload encoder refuses to produce them (issue 10, item 3).  Each
protocol's test ends with a finite number in the same place, which goes through: the
refusals were the numbers', and the simulator saw only that last push.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pushd import jsonutil
from pushd.config import MatrixAppOptions
from pushd.frontends import native
from pushd.frontends.http import json_reply
from pushd.frontends.matrix import payloads as matrix_payloads
from pushd.frontends.matrix.wire import Counts, Device, Notification
from pushd.frontends.mattermost import payloads as mattermost_payloads
from pushd.frontends.mattermost.wire import BadRequest
from pushd.frontends.zulip import payloads as zulip_payloads
from pushd.frontends.zulip.wire import ZulipError
from pushd.simulators.apns import ApnsSimulator
from pushd.upstream.apns import classify as apns_classify
from pushd.upstream.fcm import classify as fcm_classify
from pushd.upstream.fcm import message as fcm_message
from tests import matrix_homeserver as hs
from tests import mattermost_client as mm
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token
from tests.rocketchat_client import RocketChat, options
from tests.zulip_client import ZulipServer, realm

#: What Python's json module reads as a float JSON has no value for.
NOT_JSON = ("NaN", "Infinity", "-Infinity", "1e400", "-1e999")
#: A finite number in the same place: the control that must go through.
FINITE = "1e300"
#: Stands for the number in a body built with json.dumps, then replaced by the raw text.
MARK = "__number__"


def with_number(body: Any, number: str) -> bytes:
    """``body`` as JSON with the string ``MARK`` replaced by ``number``, unquoted."""
    text = json.dumps(body)
    assert text.count(json.dumps(MARK)) == 1
    return text.replace(json.dumps(MARK), number).encode()


def nested() -> dict[str, Any]:
    """Where a caller's custom data goes, two levels down."""
    return {"list": [1, {"value": MARK}]}


# --- over HTTP, protocol by protocol -------------------------------------------------------


async def test_native_api(pushd: Pushd, simulator: ApnsSimulator) -> None:
    await pushd.register("u1", token(1))
    body = {"user": "u1", "alert": "hi", "data": {"x": nested()}}
    headers = {**pushd.auth(), "content-type": "application/json"}
    for number in (*NOT_JSON, FINITE):
        response = await pushd.client.post(
            pushd.url + "/v1/notifications", content=with_number(body, number), headers=headers
        )
        if number == FINITE:
            assert response.status_code == 200, response.text
            break
        assert response.status_code == 400, (number, response.text)
        error = response.json()["error"]
        assert error["code"] == "malformed_json"
        assert number.lstrip("-") in error["message"]
    (received,) = simulator.received
    assert json.loads(received.payload)["x"] == {"list": [1, {"value": 1e300}]}


async def test_zulip_bouncer(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = app_entry("ios", TOPIC, upstream, key_file, ca_file)
    pushd: Pushd = await start_pushd(apps=[app], zulip={"registration": "open"})
    zulip = ZulipServer(client=pushd.client, services_url=pushd.url)
    assert (await zulip.register_server()).status_code == 200
    assert (await zulip.upload_analytics([realm(1)])).status_code == 200
    assert (await zulip.register_device(token(1), 1, ios_app_id=TOPIC)).status_code == 200
    body = {
        "user_id": 10,
        "apns_payload": {"alert": "hi", "custom": {"zulip": nested()}},
        "gcm_payload": {},
        "gcm_options": {},
        "apple_devices": [token(1)],
        "android_devices": [],
    }
    headers = {**zulip.headers(), "content-type": "application/json"}
    for number in (*NOT_JSON, FINITE):
        response = await pushd.client.post(
            zulip.url("push/notify"), content=with_number(body, number), headers=headers
        )
        if number == FINITE:
            assert response.status_code == 200, response.text
            break
        assert response.status_code == 400, (number, response.text)
        assert response.json() == {
            "result": "error",
            "code": "BAD_REQUEST",
            "msg": "Malformed JSON",
        }
    (received,) = simulator.received
    assert json.loads(received.payload)["zulip"] == {"list": [1, {"value": 1e300}]}


async def test_mattermost_push_proxy(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = {
        **app_entry("ios", TOPIC, upstream, key_file, ca_file),
        "mattermost_type": "apple_rn",
    }
    secret = "strict-json-0123456789"
    pushd: Pushd = await start_pushd(
        apps=[app], mattermost={"servers": [{"name": "mm", "path_secret": secret}]}
    )
    server = mm.MattermostServer(pushd.client, f"{pushd.url}/{secret}")
    # Go's decoder reads the whole body, unknown keys included, before it sees a field.
    body = {**mm.message(token(1)), "future_field": nested()}
    for number in (*NOT_JSON, FINITE):
        response = await server.send_push(with_number(body, number))
        assert response.status_code == 200, response.text
        if number == FINITE:
            assert response.json() == {"status": "OK"}
            break
        answer = response.json()
        assert answer["status"] == "FAIL", number
        assert answer["error"].startswith("Failed to read message body: ")
    assert len(simulator.received) == 1


async def test_rocketchat_gateway(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = app_entry("ios", TOPIC, upstream, key_file, ca_file)
    servers = [{"name": "rc", "tokens": ["Bearer cloud-workspace-token"]}]
    pushd: Pushd = await start_pushd(apps=[app], rocketchat={"servers": servers})
    rc = RocketChat(client=pushd.client, gateway=pushd.url)
    body = {"token": token(1), "options": options(topic=TOPIC, futureField=nested())}
    for number in (*NOT_JSON, FINITE):
        response = await rc.post("apn", with_number(body, number))
        if number == FINITE:
            assert response.status_code == 200, response.text
            break
        assert response.status_code == 422, (number, response.text)
        answer = response.json()
        assert answer["status"] == 422
        assert answer["error"] == "the body is not valid JSON"
    assert len(simulator.received) == 1


async def test_matrix_gateway(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = {
        **app_entry("ios", TOPIC, upstream, key_file, ca_file),
        "matrix": {"app_ids": [hs.IOS_APP]},
    }
    pushd: Pushd = await start_pushd(apps=[app], matrix={"answer_within": 1.0})
    homeserver = hs.Homeserver(pushd.client, pushd.url)
    device = hs.device(hs.IOS_APP, hs.pushkey_for(token(1)), default_payload={"x": nested()})
    body = hs.full_event([device], content={"msgtype": "m.text", "body": "hi"})
    for number in (*NOT_JSON, FINITE):
        response = await homeserver.notify_raw(with_number(body, number))
        if number == FINITE:
            assert response.json() == {"rejected": []}
            break
        assert response.status_code == 400, (number, response.text)
        assert response.json()["errcode"] == "M_NOT_JSON"
    (received,) = simulator.received
    assert json.loads(received.payload)["x"] == {"list": [1, {"value": 1e300}]}


# --- the helpers and the encoders, without sockets -----------------------------------------


@pytest.mark.parametrize("number", NOT_JSON)
def test_loads_refuses_what_json_cannot_express(number: str) -> None:
    with pytest.raises(jsonutil.NotJson):
        jsonutil.loads('{"a": [1, {"b": NUMBER}]}'.replace("NUMBER", number))
    assert jsonutil.loads('{"a": [1, {"b": 1.5e300}], "c": -0.0}') == {
        "a": [1, {"b": 1.5e300}],
        "c": 0,
    }


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_every_payload_encoder_refuses_nan_and_infinity(number: float) -> None:
    data = {"x": [1, {"y": number}]}
    with pytest.raises(ValueError):
        jsonutil.dumps(data)
    with pytest.raises(ValueError):
        jsonutil.dumpb(data)
    with pytest.raises(native.ApiError) as refused:
        native.build_apns_push(native.SendBody(user="u", data=data), now=0.0)
    assert refused.value.status == 400
    with pytest.raises(fcm_message.InvalidMessage):
        fcm_message.build_push(apns=fcm_message.ApnsOptions(payload={"aps": {}, **data}))
    with pytest.raises(ZulipError):
        zulip_payloads.apns_body({"alert": "hi", "custom": data})
    with pytest.raises(BadRequest):
        mattermost_payloads._encode({"aps": {}, **data}, "alert")  # what apns_push ends in
    device = Device(hs.IOS_APP, token(1), data={"default_payload": data})
    with pytest.raises(matrix_payloads.PayloadError):
        event = Notification(devices=(device,), type="m.room.message", counts=Counts(unread=1))
        matrix_payloads.apns_push(event, device, MatrixAppOptions())
    assert jsonutil.dumps({"y": 1e300}) == '{"y":1e+300}'


def test_replies_are_strict_too() -> None:
    with pytest.raises(ValueError):
        json_reply(200, {"x": math.nan})
    assert json_reply(200, {"x": "é"}).body == '{"x":"é"}'.encode()


def test_upstream_answers_with_nan_are_unreadable() -> None:
    """An APNs 410 body's timestamp is compared with registration times: a NaN there
    would compare false with everything, so the body counts as unreadable instead."""
    assert apns_classify.parse_body(b'{"reason":"Unregistered","timestamp":NaN}') == (None, None)
    assert apns_classify.parse_body(b'{"reason":"Unregistered","timestamp":1e3}') == (
        "Unregistered",
        1.0,
    )
    assert fcm_classify.parse_error(b'{"error":{"code":NaN}}') == fcm_classify.FcmErrorBody()
