"""NaN and Infinity are not JSON (RFC 8259 §6), nor is a number too large for a double,
nor a string that is not Unicode text: bytes that are not UTF-8 (§8.1), among them a
UTF-16 surrogate's (which Python's ``json.loads`` lets through), or an escaped lone
surrogate, which no upstream's UTF-8 can carry.

Every frontend refuses them with its own protocol's bad-input answer and sends nothing
upstream; every payload encoder refuses to produce them (issue 10, item 3).  Each
protocol's test ends with a finite number in the same place, which goes through: the
refusals were the values', and the simulator saw only that last push.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from pushd import jsonutil
from pushd.config import MatrixAppOptions
from pushd.frontends import native, native_wire
from pushd.frontends.http import has_lone_surrogate, json_reply
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
#: Strings that are not UTF-8: a surrogate's bytes (what ``surrogatepass`` decodes), and
#: a byte UTF-8 never uses.
NOT_UTF8 = (b'"\xed\xa0\x80"', b'"a\xffb"')
#: Escaped lone surrogates: a high one; a low one then a high one (not a pair).
LONE_SURROGATES = (b'"\\ud800"', b'"\\uDC00\\uD800"')
#: Everything a frontend must refuse in the value's place (Rocket.Chat: see its test).
REFUSED = (*NOT_JSON, *NOT_UTF8, *LONE_SURROGATES)
#: A finite number in the same place: the control that must go through.
FINITE = "1e300"
#: Stands for the value in a body built with json.dumps, then replaced by the raw text.
MARK = "__number__"


def with_number(body: Any, number: str | bytes) -> bytes:
    """``body`` as JSON with the string ``MARK`` replaced by ``number``, raw."""
    text = json.dumps(body).encode()
    mark = json.dumps(MARK).encode()
    assert text.count(mark) == 1
    return text.replace(mark, number if isinstance(number, bytes) else number.encode())


def nested() -> dict[str, Any]:
    """Where a caller's custom data goes, two levels down."""
    return {"list": [1, {"value": MARK}]}


# --- over HTTP, protocol by protocol -------------------------------------------------------


async def test_native_api(pushd: Pushd, simulator: ApnsSimulator) -> None:
    await pushd.register("u1", token(1))
    body = {"user": "u1", "alert": "hi", "data": {"x": nested()}}
    headers = {**pushd.auth(), "content-type": "application/json"}
    for number in (*REFUSED, FINITE):
        response = await pushd.client.post(
            pushd.url + "/v1/notifications", content=with_number(body, number), headers=headers
        )
        if number == FINITE:
            assert response.status_code == 200, response.text
            break
        assert response.status_code == 400, (number, response.text)
        error = response.json()["error"]
        assert error["code"] == "malformed_json"
        if isinstance(number, str):
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
    for number in (*REFUSED, FINITE):
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
    for number in (*REFUSED, FINITE):
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
    # A lone surrogate in an option the gateway ignores is never sent, so it passes
    # (as in Node's JSON.parse); in the options it uses it is refused (test_rocketchat).
    for number in (*NOT_JSON, *NOT_UTF8, FINITE):
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
    for number in (*REFUSED, FINITE):
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


def deeper_than_the_stack() -> list[Any]:
    """A value nested further than any encoder can recurse (a caller's ``data``
    decoded near the decoder's own depth hits the same a few frames further down)."""
    value: list[Any] = [1]
    for _ in range(sys.getrecursionlimit() * 2):
        value = [value]
    return value


def test_every_payload_encoder_refuses_nesting_too_deep_with_its_own_error() -> None:
    """A RecursionError escaped the native FCM data path as a 500; every encoder of a
    caller's value now answers as it does for NaN."""
    data = {"x": deeper_than_the_stack()}
    with pytest.raises(ValueError, match="nested too deeply"):
        jsonutil.dumps(data)
    with pytest.raises(ValueError, match="nested too deeply"):
        jsonutil.dumpb(data)
    with pytest.raises(native.ApiError) as refused:
        native.build_apns_push(native.SendBody(user="u", data=data), now=0.0)
    assert refused.value.status == 400
    with pytest.raises(native.ApiError) as refused:
        native_wire._fcm_data(data)
    assert (refused.value.status, refused.value.field) == (400, "data")
    with pytest.raises(fcm_message.InvalidMessage):
        fcm_message.build_push(apns=fcm_message.ApnsOptions(payload={"aps": {}, **data}))
    with pytest.raises(ZulipError):
        zulip_payloads.apns_body({"alert": "hi", "custom": data})
    with pytest.raises(BadRequest):
        mattermost_payloads._encode({"aps": {}, **data}, "alert")
    device = Device(hs.IOS_APP, token(1), data={"default_payload": data})
    with pytest.raises(matrix_payloads.PayloadError):
        event = Notification(devices=(device,), type="m.room.message", counts=Counts(unread=1))
        matrix_payloads.apns_push(event, device, MatrixAppOptions())
    assert has_lone_surrogate(b'"\\ud800"', data) is False  # the encoder says why


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


@pytest.mark.parametrize(
    ("raw", "lone"),
    [
        (b'"plain"', False),
        (b'"caf\\u00e9 \\u2028"', False),  # escapes, none of a surrogate
        (b'"\\ud83d\\ude00 \\uD83D\\uDE00"', False),  # pairs, either case
        (b'"\\\\ud800"', False),  # an escaped backslash, then text
        (b'"\\ud800"', True),
        (b'"\\uDBFF x"', True),
        (b'"\\udc00"', True),
        (b'"\\ude00\\ud83d"', True),  # low before high: two lone ones
        (b'{"k": ["\\ud83d"]}', True),  # anywhere in the value
    ],
)
def test_lone_surrogates_are_found_in_escapes_only(raw: bytes, lone: bool) -> None:
    body = b'{"a": ' + raw + b"}"
    assert has_lone_surrogate(body, jsonutil.loads(body)) is lone


@pytest.mark.parametrize(
    "raw", [b'"\xed\xa0\x80"', b'"\xed\xbf\xbf"', b'"\xff"', b'"\xc0\xaf"', b'"\xf4\x90\x80\x80"']
)
def test_loads_refuses_bytes_that_are_not_utf8(raw: bytes) -> None:
    with pytest.raises(ValueError):
        jsonutil.loads(b'{"a": ' + raw + b"}")
    # Other encodings are still detected (RFC 8259 allows only UTF-8 on the wire, but
    # json.loads reads these too); a surrogate's bytes are refused in them as well.
    assert jsonutil.loads('{"a": "\u00e9"}'.encode("utf-16-le")) == {"a": "\u00e9"}
    with pytest.raises(ValueError):
        jsonutil.loads('{"a": "\ud800"}'.encode("utf-16-le", "surrogatepass"))


@pytest.mark.parametrize(
    "parts",
    [
        ("matrix", "im.vector.app.ios", "AAAA+/="),
        ('quote"', "back\\slash", "\x00\x1f\x7f"),
        ("caf\u00e9", "\u2028\u2029", "\U0001f600"),
        ("", "\ud800", "lone"),  # a lone surrogate is escaped as json.dumps keeps it
    ],
)
def test_key_text_is_the_compact_json_of_its_parts(parts: tuple[str, ...]) -> None:
    expected = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    assert jsonutil.key_text(*parts) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"aps": {"alert": {"title": "caf\u00e9", "body": '\U0001f600\n\t"\\'}, "badge": 3}},
        {"results": [{"token": "ab" * 32, "app": "ios", "status": "delivered"}], "n": None},
        [1, -0.0, 1e300, 2**70, True, False, None, "", [], {}],
        {1: "int key", 2.5: "float key", False: "bool key", None: "null key"},
        ("a tuple", ["is", "a", "list"]),
        "\u2028\u2029\x00\x1f\x7f",
        "\ud800",  # encoded as json.dumps encodes it (UTF-8 refuses it later)
        12345,
    ],
)
def test_dumps_is_the_standard_encoders_text(value: Any) -> None:
    """:func:`jsonutil.dumps` runs the C encoder it builds once; its text is what
    ``json.dumps`` with the same options writes, byte for byte."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert jsonutil.dumps(value) == expected


def test_dumps_refuses_what_the_standard_encoder_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonutil.dumps({"a": object()})
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError):  # NotJson: a cycle nests without end
        jsonutil.dumps(cycle)
