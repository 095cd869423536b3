"""Zulip's end-to-end encrypted pushes through pushd, over real sockets.

The tests play the Zulip mobile app (seal a registration to pushd's public key, hold a
push key, decrypt what arrives) and the Zulip server (encrypt with the push key, call
``push/e2ee/*``), with the APNs and FCM simulators as Apple and Google.  Expected
bodies are the protocol notes' (zulip.md §2.6, §2.7, §4).
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.public
import pytest

from pushd.model import RemovalScope
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from pushd.store import DeadToken, Store, ZulipRealm
from tests.conftest import TOPIC, Pushd, token
from tests.storefixtures import run_cli
from tests.zulip_client import (
    PushKey,
    ZulipServer,
    apns_push_request,
    fcm_push_request,
    realm,
    seal,
    seal_registration,
    token_id,
)

OK = {"result": "success", "msg": ""}
REALM = realm(1)["uuid"]
PUSH_STATUS = {"can_push": True, "expected_end_timestamp": None}
#: The plaintext a Zulip server encrypts for a message notification (notes §4.4).
MESSAGE = {
    "type": "message",
    "message_id": 42,
    "time": 1754385395,
    "content": "top secret plans",
    "sender_id": 7,
    "sender_full_name": "Iago",
    "realm_url": "https://zulip.example.com",
    "realm_name": "Realm 1",
    "user_id": 10,
    "recipient_type": "direct",
    "recipient_user_ids": [7, 10],
}


def fcm_token(n: int) -> str:
    return f"e2ee-device-{n:04d}:APA91b" + "z" * 40


def error(code: str, msg: str, **data: Any) -> dict[str, Any]:
    return {"result": "error", "msg": msg, "code": code, **data}


@pytest.fixture
async def bouncer(start_bouncer: Callable[..., Awaitable[Pushd]]) -> Pushd:
    """SQLite only (conftest's ``zulip`` registers its server with this one)."""
    return await start_bouncer()


async def add_key(pushd: Pushd, capsys: pytest.CaptureFixture[str]) -> str:
    """``pushd zulip keys add`` against the running daemon's store; the printed key."""
    capsys.readouterr()
    store, key_file = pushd.config.store.path, pushd.config.spool.key_file
    assert await run_cli(["zulip", "keys", "add", "--store", store, "--key-file", key_file]) == 0
    public = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(base64.b64decode(public, validate=True)) == 32
    return public


@pytest.fixture
async def public_key(bouncer: Pushd, capsys: pytest.CaptureFixture[str]) -> str:
    return await add_key(bouncer, capsys)


async def register_apns(zulip: ZulipServer, public_key: str, n: int = 1) -> str:
    sealed = seal_registration(public_key, token(n), "apns", TOPIC)
    response = await zulip.e2ee_register(REALM, token_id(token(n)), sealed, public_key)
    assert response.status_code == 200, response.text
    assert response.json() == OK
    return token_id(token(n))


async def register_fcm(zulip: ZulipServer, public_key: str, n: int = 1) -> str:
    sealed = seal_registration(public_key, fcm_token(n), "fcm", None)
    response = await zulip.e2ee_register(REALM, token_id(fcm_token(n)), sealed, public_key)
    assert response.status_code == 200, response.text
    assert response.json() == OK
    return token_id(fcm_token(n))


def e2ee_rows(pushd: Pushd) -> list[tuple[Any, ...]]:
    """What the store keeps of each E2EE device, read with a plain connection."""
    with contextlib.closing(sqlite3.connect(pushd.config.store.path)) as db:
        return db.execute(
            "SELECT token_kind, token, ios_app_id, token_id, push_account_id"
            " FROM zulip_e2ee_devices ORDER BY id"
        ).fetchall()


def as_int64(tid: str) -> int:
    """A token_id as Zulip (and pushd) store it: the signed big-endian int64."""
    return int.from_bytes(base64.b64decode(tid), "big", signed=True)


# --- the whole flow -------------------------------------------------------------------------


async def test_app_and_server_end_to_end_through_pushd(
    zulip: ZulipServer,
    public_key: str,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    """Seal, register, encrypt, notify; the simulators' devices decrypt the same message."""
    ios_id = await register_apns(zulip, public_key)
    android_id = await register_fcm(zulip, public_key)
    ios_key, android_key = PushKey(id=10), PushKey(id=20)

    response = await zulip.e2ee_notify(
        REALM,
        [
            apns_push_request(ios_id, ios_key, MESSAGE),
            fcm_push_request(android_id, android_key, MESSAGE),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        **OK,
        "apple_successfully_sent_count": 1,
        "android_successfully_sent_count": 1,
        "delete_token_ids": [],
        "realm_push_status": PUSH_STATUS,
    }

    (apns,) = simulator.received
    assert (apns.token, apns.topic) == (token(1), TOPIC)
    assert (apns.priority, apns.push_type, apns.expiration) == (10, "alert", None)
    body = json.loads(apns.payload)
    assert list(body) == ["push_key_id", "encrypted_data", "aps"]
    assert body["push_key_id"] == 10
    assert body["aps"] == {"mutable-content": 1, "alert": {"title": "New notification"}}
    assert ios_key.decrypt(body["encrypted_data"]) == MESSAGE

    (fcm,) = fcm_simulator.received
    assert fcm.token == fcm_token(1)
    assert "notification" not in fcm.message
    assert fcm.message["android"]["priority"].lower() == "high"
    data = fcm.message["data"]
    assert set(data) == {"push_key_id", "encrypted_data"} and data["push_key_id"] == "20"
    assert android_key.decrypt(data["encrypted_data"]) == MESSAGE
    # The push key is the app's and the server's alone: any other key fails.
    with pytest.raises(nacl.exceptions.CryptoError):
        PushKey(id=20).decrypt(data["encrypted_data"])


#: Devices of the one user, half iOS, half Android.
DEVICES = 80
#: A message notification as Zulip fills it: content cut to 200 characters, names, URLs.
FULL_MESSAGE = {
    **MESSAGE,
    "content": "x" * 200,
    "sender_full_name": "Somebody With A Long Name",
    "sender_avatar_url": "https://zulip.example.com/user_avatars/2/" + "a" * 40 + ".png",
    "realm_name": "A realm whose name is not short either",
}


async def test_a_notify_for_80_devices_past_64_kib_is_delivered_to_every_one(
    zulip: ZulipServer,
    public_key: str,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    """A Zulip user with many devices: one E2EE notify carries a payload per device,
    and a body past the server's default 64 KiB was answered 413, which makes Zulip's
    worker drop the notification for every device of the user."""
    key = PushKey(id=7)
    requests = []
    for n in range(1, DEVICES // 2 + 1):
        requests.append(apns_push_request(await register_apns(zulip, public_key, n), key,
                                          FULL_MESSAGE))  # fmt: skip
        requests.append(fcm_push_request(await register_fcm(zulip, public_key, n), key,
                                         FULL_MESSAGE))  # fmt: skip
    body = json.dumps({"realm_uuid": REALM, "push_requests": requests})
    assert len(body) > 64 * 1024  # the server default this route no longer stops at
    response = await zulip.e2ee_notify(REALM, requests)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["apple_successfully_sent_count"] == DEVICES // 2, answer
    assert answer["android_successfully_sent_count"] == DEVICES // 2, answer
    assert len(simulator.received) == len(fcm_simulator.received) == DEVICES // 2


async def test_removals_go_at_low_priority_as_given(
    zulip: ZulipServer,
    public_key: str,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    ios_id = await register_apns(zulip, public_key)
    android_id = await register_fcm(zulip, public_key)
    removal = {"type": "remove", "message_ids": [1, 2], "realm_url": "x", "user_id": 10}
    key = PushKey(id=4_000_000_000)  # a uint32, as the app picks them
    response = await zulip.e2ee_notify(
        REALM,
        [
            apns_push_request(ios_id, key, removal, removal=True),
            fcm_push_request(android_id, key, removal, removal=True),
        ],
    )
    assert response.status_code == 200, response.text
    (apns,) = simulator.received
    assert (apns.priority, apns.push_type) == (5, "background")
    (fcm,) = fcm_simulator.received
    assert fcm.message["android"]["priority"].lower() == "normal"
    assert fcm.message["data"]["push_key_id"] == "4000000000"
    assert key.decrypt(fcm.message["data"]["encrypted_data"]) == removal


# --- registration -------------------------------------------------------------------------


async def test_registration_is_idempotent(
    zulip: ZulipServer, public_key: str, bouncer: Pushd
) -> None:
    await register_apns(zulip, public_key)
    await register_apns(zulip, public_key)
    await register_fcm(zulip, public_key)
    await register_fcm(zulip, public_key)
    assert e2ee_rows(bouncer) == [
        ("apns", token(1), TOPIC, as_int64(token_id(token(1))), None),
        ("fcm", fcm_token(1), None, as_int64(token_id(fcm_token(1))), None),
    ]


async def test_an_upper_case_apns_token_is_stored_lower_case(
    zulip: ZulipServer, public_key: str, bouncer: Pushd
) -> None:
    upper = token(3).upper().replace("0X", "0x")
    sealed = seal_registration(public_key, upper, "apns", TOPIC)
    response = await zulip.e2ee_register(REALM, token_id(upper), sealed, public_key)
    assert response.json() == OK
    assert e2ee_rows(bouncer)[0][1] == token(3)


async def test_registrations_expire_after_a_day(zulip: ZulipServer, public_key: str) -> None:
    now = int(time.time())
    fresh = seal_registration(public_key, token(1), "apns", TOPIC, timestamp=now - 86_000)
    assert (await zulip.e2ee_register(REALM, token_id(token(1)), fresh, public_key)).json() == OK
    stale = seal_registration(public_key, token(2), "apns", TOPIC, timestamp=now - 86_460)
    response = await zulip.e2ee_register(REALM, token_id(token(2)), stale, public_key)
    assert response.status_code == 400
    assert response.json() == error("REQUEST_EXPIRED", "Request expired")


@pytest.mark.parametrize("claimed", ["192057", "token(2)", "AAAAAAAAAAE="])
async def test_token_id_must_be_the_tokens(
    zulip: ZulipServer, public_key: str, claimed: str
) -> None:
    """The server cannot point a device's token_id at another device's token."""
    if claimed == "token(2)":
        claimed = token_id(token(2))
    sealed = seal_registration(public_key, token(1), "apns", TOPIC)
    response = await zulip.e2ee_register(REALM, claimed, sealed, public_key)
    assert response.status_code == 400
    assert response.json() == error("BAD_REQUEST", "Invalid encrypted_push_registration")


@pytest.mark.parametrize(
    "registration",
    [
        {"token": token(1), "token_kind": "gcm", "ios_app_id": None},
        {"token": "not hex", "token_kind": "apns", "ios_app_id": TOPIC},
        {"token": token(1), "token_kind": "apns", "ios_app_id": None},
        {"token": token(1), "token_kind": "apns", "ios_app_id": "bad id!"},
        {"token": fcm_token(1), "token_kind": "fcm", "ios_app_id": TOPIC},
        {"token": "", "token_kind": "fcm", "ios_app_id": None},
        {"token": "x" * 4097, "token_kind": "fcm", "ios_app_id": None},
        {"token": fcm_token(1), "token_kind": "fcm", "ios_app_id": None, "timestamp": "now"},
        {"token_kind": "fcm", "ios_app_id": None},
        [],
    ],
)
async def test_bad_registrations(zulip: ZulipServer, public_key: str, registration: Any) -> None:
    if isinstance(registration, dict):
        registration = {"timestamp": int(time.time()), **registration}
    sealed = seal(public_key, json.dumps(registration).encode())
    claimed = token_id(registration.get("token", "")) if isinstance(registration, dict) else "x"
    response = await zulip.e2ee_register(REALM, claimed, sealed, public_key)
    assert response.status_code == 400
    assert response.json() == error("BAD_REQUEST", "Invalid encrypted_push_registration")


async def test_boxes_pushd_cannot_open(zulip: ZulipServer, public_key: str) -> None:
    stranger = nacl.public.PrivateKey.generate().public_key
    other = base64.b64encode(bytes(stranger)).decode()
    for sealed in (
        "not base64!",
        base64.b64encode(b"too short").decode(),
        seal_registration(other, token(1), "apns", TOPIC),  # sealed to another key
        seal(public_key, b"not json"),
    ):
        response = await zulip.e2ee_register(REALM, token_id(token(1)), sealed, public_key)
        assert response.status_code == 400
        assert response.json() == error("BAD_REQUEST", "Invalid encrypted_push_registration")


async def test_unknown_bouncer_key_and_realms(
    zulip: ZulipServer, public_key: str, bouncer: Pushd
) -> None:
    sealed = seal_registration(public_key, token(1), "apns", TOPIC)
    tid = token_id(token(1))
    unknown_key = base64.b64encode(bytes(32)).decode()
    response = await zulip.e2ee_register(REALM, tid, sealed, unknown_key)
    assert response.status_code == 400
    assert response.json() == error("INVALID_BOUNCER_PUBLIC_KEY", "Invalid bouncer_public_key")

    missing = error("MISSING_REMOTE_REALM", "Organization not registered")
    unknown_realm = str(uuid.uuid4())
    response = await zulip.e2ee_register(unknown_realm, tid, sealed, public_key)
    assert (response.status_code, response.json()) == (403, missing)
    response = await zulip.e2ee_notify(unknown_realm, [])
    assert (response.status_code, response.json()) == (403, missing)

    other = ZulipServer(client=bouncer.client, services_url=bouncer.url, hostname="b.example")
    await other.register_server()
    mismatch = error(
        "REMOTE_REALM_SERVER_MISMATCH_ERROR",
        "Your organization is registered to a different Zulip server. Please contact "
        "Zulip support for assistance in resolving this issue.",
    )
    response = await other.e2ee_register(REALM, tid, sealed, public_key)
    assert (response.status_code, response.json()) == (403, mismatch)
    response = await other.e2ee_notify(REALM, [])
    assert (response.status_code, response.json()) == (403, mismatch)

    response = await zulip.form("push/e2ee/register", {"realm_uuid": REALM, "token_id": tid})
    assert response.status_code == 400
    assert response.json() == error(
        "REQUEST_VARIABLE_MISSING",
        "Missing 'encrypted_push_registration' argument",
        var_name="encrypted_push_registration",
    )


async def test_a_token_for_an_app_pushd_does_not_serve(zulip: ZulipServer, public_key: str) -> None:
    sealed = seal_registration(public_key, token(1), "apns", "org.example.unknown")
    response = await zulip.e2ee_register(REALM, token_id(token(1)), sealed, public_key)
    assert response.status_code == 400
    assert response.json() == error(
        "BAD_REQUEST",
        "This push notification service has no app for ios_app_id org.example.unknown",
    )


async def test_key_rotation_with_the_cli_while_pushd_runs(
    zulip: ZulipServer, bouncer: Pushd, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two keys live at once; once the old one is removed, only the new one works."""
    old = await add_key(bouncer, capsys)
    new = await add_key(bouncer, capsys)
    assert old != new
    store = bouncer.config.store.path
    assert await run_cli(["zulip", "keys", "list", "--store", store]) == 0
    listed = capsys.readouterr().out
    assert old in listed and new in listed
    old_id = next(line.split()[0] for line in listed.splitlines() if old in line)

    await register_apns(zulip, old, 1)
    await register_apns(zulip, new, 2)

    assert await run_cli(["zulip", "keys", "remove", old_id, "--store", store]) == 0
    assert await run_cli(["zulip", "keys", "remove", old_id, "--store", store]) == 1
    sealed = seal_registration(old, token(3), "apns", TOPIC)
    response = await zulip.e2ee_register(REALM, token_id(token(3)), sealed, old)
    assert response.json() == error("INVALID_BOUNCER_PUBLIC_KEY", "Invalid bouncer_public_key")
    await register_apns(zulip, new, 3)
    assert await run_cli(["zulip", "keys", "remove", new, "--store", store]) == 0  # by public key
    capsys.readouterr()
    assert await run_cli(["zulip", "keys", "list", "--store", store]) == 0
    assert capsys.readouterr().out == ""


# --- notify -------------------------------------------------------------------------------


async def test_dead_and_unknown_tokens_come_back_in_delete_token_ids(
    zulip: ZulipServer,
    public_key: str,
    bouncer: Pushd,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    dead_ios = await register_apns(zulip, public_key, 1)
    live_ios = await register_apns(zulip, public_key, 2)
    dead_android = await register_fcm(zulip, public_key, 1)
    live_android = await register_fcm(zulip, public_key, 2)
    simulator.script(
        token(1),
        SimReply(status=410, reason="Unregistered", timestamp_ms=int(time.time() * 1000) + 60_000),
    )
    fcm_simulator.script(fcm_token(1), FcmReply(error_code="UNREGISTERED"))
    unknown = token_id("never registered")
    key = PushKey(id=1)
    requests = [
        apns_push_request(dead_ios, key, MESSAGE),
        apns_push_request(live_ios, key, MESSAGE),
        fcm_push_request(dead_android, key, MESSAGE),
        fcm_push_request(live_android, key, MESSAGE),
        fcm_push_request(unknown, key, MESSAGE),
        fcm_push_request("not a token id", key, MESSAGE),
    ]
    response = await zulip.e2ee_notify(REALM, requests)
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["apple_successfully_sent_count"], result["android_successfully_sent_count"]) == (
        1,
        1,
    )
    assert sorted(result["delete_token_ids"]) == sorted(
        [dead_ios, dead_android, unknown, "not a token id"]
    )
    assert {row[1] for row in e2ee_rows(bouncer)} == {token(2), fcm_token(2)}

    # Forgotten devices are answered at once, without a send.
    sent = len(simulator.received), len(fcm_simulator.received)
    response = await zulip.e2ee_notify(REALM, requests[:1] + requests[2:3])
    assert response.json()["delete_token_ids"] == [dead_ios, dead_android]
    assert (len(simulator.received), len(fcm_simulator.received)) == sent


async def test_zulip_11_push_account_ids_and_device_ids(
    zulip: ZulipServer,
    public_key: str,
    bouncer: Pushd,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
) -> None:
    """Zulip 11: push_account_id in, device_id out; delete_device_ids in the answer."""
    sealed = seal_registration(public_key, fcm_token(1), "fcm", None)
    first = await zulip.e2ee_register_11(REALM, 555, sealed, public_key)
    assert first.status_code == 200, first.text
    device_id = first.json()["device_id"]
    assert first.json() == {**OK, "device_id": device_id}
    again = await zulip.e2ee_register_11(REALM, 555, sealed, public_key)
    assert again.json() == {**OK, "device_id": device_id}
    ios = seal_registration(public_key, token(1), "apns", TOPIC)
    ios_device = (await zulip.e2ee_register_11(REALM, 556, ios, public_key)).json()["device_id"]
    assert ios_device != device_id
    assert [row[4] for row in e2ee_rows(bouncer)] == [555, 556]

    fcm_simulator.script(fcm_token(1), FcmReply(error_code="UNREGISTERED"))
    key = PushKey(id=555)
    response = await zulip.e2ee_notify(
        REALM,
        [
            fcm_push_request(device_id, key, MESSAGE),
            apns_push_request(ios_device, key, MESSAGE),
            fcm_push_request(999_999, key, MESSAGE),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        **OK,
        "apple_successfully_sent_count": 1,
        "android_successfully_sent_count": 0,
        "delete_device_ids": [999_999, device_id],
        "realm_push_status": PUSH_STATUS,
    }
    (fcm,) = fcm_simulator.received
    assert set(fcm.message["data"]) == {"push_account_id", "encrypted_data"}
    assert fcm.message["data"]["push_account_id"] == "555"
    assert key.decrypt(fcm.message["data"]["encrypted_data"]) == MESSAGE
    (apns,) = simulator.received
    assert json.loads(apns.payload)["push_account_id"] == 555


def as_fcm_with_priority(priority: str) -> Any:
    """Turn an APNs-shaped push request into an FCM-shaped one."""

    def change(push_request: dict[str, Any]) -> None:
        del push_request["http_headers"]
        push_request["fcm_priority"] = priority

    return change


@pytest.mark.parametrize(
    ("change", "msg"),
    [
        (lambda r: r["http_headers"].update(apns_priority=7), "['http_headers']['apns_priority']"),
        (
            lambda r: r["http_headers"].update(apns_push_type="x"),
            "['http_headers']['apns_push_type']",
        ),
        (lambda r: r["payload"].pop("aps"), "['payload']['aps']"),
        (lambda r: r["payload"].update(push_key_id="10"), "['payload']['push_key_id']"),
        (lambda r: r["payload"].pop("encrypted_data"), "['payload']['encrypted_data']"),
        (lambda r: r.pop("token_id"), "['token_id']"),
        (as_fcm_with_priority("max"), "['fcm_priority']"),
    ],
)
async def test_bad_push_requests(
    zulip: ZulipServer, public_key: str, change: Any, msg: str
) -> None:
    tid = await register_apns(zulip, public_key)
    push_request = apns_push_request(tid, PushKey(id=1), MESSAGE)
    change(push_request)
    response = await zulip.e2ee_notify(
        REALM, [apns_push_request(tid, PushKey(1), {}), push_request]
    )
    assert response.status_code == 400
    assert response.json() == error("BAD_REQUEST", f"Invalid push_requests[1]{msg}")


async def test_a_push_of_the_wrong_kind_is_skipped(
    zulip: ZulipServer, public_key: str, simulator: ApnsSimulator
) -> None:
    """Zulip's bouncer asserts (a 500); pushd skips that one and sends the others."""
    ios_id = await register_apns(zulip, public_key, 1)
    other = await register_apns(zulip, public_key, 2)
    key = PushKey(id=1)
    response = await zulip.e2ee_notify(
        REALM, [fcm_push_request(ios_id, key, MESSAGE), apns_push_request(other, key, MESSAGE)]
    )
    assert response.status_code == 200
    assert response.json()["apple_successfully_sent_count"] == 1
    assert response.json()["delete_token_ids"] == []
    assert [r.token for r in simulator.received] == [token(2)]


async def test_nothing_secret_reaches_the_logs_or_the_disk(
    zulip: ZulipServer,
    public_key: str,
    bouncer: Pushd,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    sealed = seal_registration(public_key, fcm_token(7), "fcm", None)
    response = await zulip.e2ee_register(REALM, token_id(fcm_token(7)), sealed, public_key)
    assert response.json() == OK
    push_request = fcm_push_request(token_id(fcm_token(7)), PushKey(id=3), MESSAGE)
    encrypted = push_request["payload"]["encrypted_data"]
    assert (await zulip.e2ee_notify(REALM, [push_request])).status_code == 200
    assert sealed[:40] not in caplog.text
    assert encrypted[:40] not in caplog.text
    assert fcm_token(7) not in caplog.text

    on_disk = b"".join(
        path.read_bytes() for path in Path(bouncer.config.store.path).parent.glob("pushd-*")
    )
    assert sealed[:40].encode() not in on_disk
    assert encrypted[:40].encode() not in on_disk


async def test_store_keeps_one_row_per_device_and_remove_dead_takes_it(store: Store) -> None:
    """Migration 4, idempotent writes, and the one dead-token path for all tables (on
    each backend)."""
    server = str(uuid.uuid4())
    await store.zulip_add_server(server, "k" * 64, "z.example")
    await store.zulip_record_analytics(server, [ZulipRealm(REALM, server, "z", "R")], (0, 0, 0))
    tid = as_int64(token_id(token(1)))
    first = await store.zulip_e2ee_register(server, REALM, "apns", token(1), TOPIC, token_id=tid)
    again = await store.zulip_e2ee_register(server, REALM, "apns", token(1), TOPIC, token_id=tid)
    assert first == again
    (device,) = await store.zulip_e2ee_devices(REALM, token_ids=[tid, tid + 1])
    assert (device.token, device.token_id) == (token(1), tid)

    # A 410 dated before the (re-)registration keeps it; a later one removes it.
    scope = RemovalScope("sandbox", zulip_kind=1, zulip_ios_app_id=TOPIC)
    since = device.registered_at - 1
    await store.remove_dead([DeadToken("ios", token(1), since=since, scope=scope)])
    assert await store.zulip_e2ee_devices(REALM, token_ids=[tid])
    # Another app's verdict (another bundle id) leaves it alone.
    other = RemovalScope("sandbox", zulip_kind=1, zulip_ios_app_id="org.example.other")
    assert await store.remove_dead([DeadToken("other", token(1), scope=other)]) == 0
    assert await store.remove_dead([DeadToken("ios", token(1), scope=scope)]) == 1
    assert await store.zulip_e2ee_devices(REALM, token_ids=[tid]) == []
