"""Bad input to the Zulip bouncer: Zulip's 400 (``{"result":"error",...}``), nothing
stored, on SQLite and on PostgreSQL alike.

Each case once reached the store or a set lookup and came back as a 500 (which a Zulip
server retries, and whose traceback fills the log), or was stored where PostgreSQL
could not take it.  The tests speak to pushd over HTTP, as a Zulip server and its
mobile apps do, and read the store only to see that nothing was written.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from pushd.frontends.zulip.bouncer_keys import seal_private_key
from pushd.frontends.zulip.e2ee import new_key_pair
from tests.conftest import TOPIC, Pushd, token
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

APNS = 1
FCM = 2
REALM = realm(1)["uuid"]
USER_UUID = str(uuid.UUID(int=77, version=4))
#: The first integers outside what the store keeps (signed 64-bit).
TOO_BIG = 2**63
TOO_SMALL = -(2**63) - 1


def fcm_token(n: int) -> str:
    return f"bad-input-{n:04d}:APA91b" + "q" * 40


def refused(response: httpx.Response, code: str = "BAD_REQUEST") -> str:
    """Assert Zulip's 400 error shape with ``code``; return its ``msg``."""
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert body["result"] == "error"
    assert body["code"] == code, body
    msg: str = body["msg"]
    return msg


@pytest.fixture
async def public_key(bouncer: Pushd) -> str:
    """A bouncer key pair in pushd's store (what ``pushd zulip keys add`` writes)."""
    public, private = new_key_pair()
    spool_key, sealed = seal_private_key(bouncer.services.dispatcher.keys, public, private)
    await bouncer.services.store.zulip_add_bouncer_key(public, sealed, key_id=spool_key)
    return public


async def nothing_registered(bouncer: Pushd) -> None:
    store = bouncer.services.store
    assert await store.zulip_registrations_by_kind() == {}
    assert await store.zulip_e2ee_devices(REALM, device_ids=[1, 2, 3]) == []


# --- 1. integers beyond 64 bits ------------------------------------------------------------


@pytest.mark.parametrize("number", [TOO_BIG, TOO_SMALL])
async def test_legacy_user_ids_beyond_64_bits(
    zulip: ZulipServer, bouncer: Pushd, number: int
) -> None:
    user = {"user_id": str(number)}
    device = {"token": token(1), "token_kind": APNS}
    answer = await zulip.form("push/register", {**user, **device, "ios_app_id": TOPIC})
    assert refused(answer) == "user_id is out of range"
    assert refused(await zulip.form("push/unregister", {**user, **device}))
    assert refused(await zulip.form("push/unregister/all", user))
    assert refused(await zulip.json("push/notify", {"user_id": number})) == "Invalid user_id"
    test = {"token": token(1), "token_kind": APNS, "user_id": number}
    assert refused(await zulip.json("push/test_notification", test)) == "Invalid user_id"
    await nothing_registered(bouncer)


async def test_the_largest_64_bit_user_id_is_served(zulip: ZulipServer, bouncer: Pushd) -> None:
    largest = 2**63 - 1
    answer = await zulip.register_device(token(1), APNS, user_id=largest, ios_app_id=TOPIC)
    assert answer.status_code == 200, answer.text
    answer = await zulip.json("push/notify", {"user_id": largest, "apns_payload": {}})
    assert answer.json()["total_apple_devices"] == 1
    assert (await zulip.form("push/unregister/all", {"user_id": str(largest)})).status_code == 200
    await nothing_registered(bouncer)


async def test_analytics_row_ids_beyond_64_bits(zulip: ZulipServer) -> None:
    for number in (TOO_BIG, TOO_SMALL):
        answer = await zulip.upload_analytics([realm(1)], realm_counts=[{"id": number}])
        assert refused(answer) == 'Invalid realm_counts[0]["id"]'
    status = await zulip.get("server/analytics/status")
    assert status.json()["last_realm_count_id"] == 0


async def test_e2ee_ids_beyond_64_bits(zulip: ZulipServer, bouncer: Pushd, public_key: str) -> None:
    sealed = seal_registration(public_key, fcm_token(1), "fcm", None)
    answer = await zulip.e2ee_register_11(REALM, TOO_BIG, sealed, public_key)
    assert refused(answer) == "push_account_id is out of range"
    key = PushKey(id=1)
    for request in (
        fcm_push_request(TOO_BIG, key, {}),
        apns_push_request(TOO_SMALL, key, {}),
    ):
        answer = await zulip.e2ee_notify(REALM, [request])
        assert refused(answer) == "Invalid push_requests[0]['device_id']"
    await nothing_registered(bouncer)


# --- 2. lone surrogates --------------------------------------------------------------------


async def test_a_lone_surrogate_in_an_analytics_field(zulip: ZulipServer, bouncer: Pushd) -> None:
    """``realms`` is JSON inside a form field: checked as a JSON body is."""
    other = str(uuid.uuid4())
    realms = f'[{{"uuid": "{other}", "host": "h.example.com", "name": "\\ud800"}}]'
    form = {"realm_counts": "[]", "installation_counts": "[]", "realms": realms}
    assert refused(await zulip.form("server/analytics", form)) == "realms is not valid JSON"
    assert await bouncer.services.store.zulip_realm(other) is None


async def test_a_lone_surrogate_in_a_utf16_json_body(zulip: ZulipServer, bouncer: Pushd) -> None:
    """Zulip sends UTF-8 JSON (orjson); a UTF-16 body hid the escape from the check."""
    body = '{"user_uuid": "\\ud800", "apns_payload": {}}'.encode("utf-16")
    headers = {**zulip.headers(), "content-type": "application/json"}
    answer = await bouncer.client.post(zulip.url("push/notify"), content=body, headers=headers)
    assert refused(answer) == "Malformed JSON"


async def test_a_lone_surrogate_in_a_sealed_registration(
    zulip: ZulipServer, bouncer: Pushd, public_key: str
) -> None:
    plaintext = b'{"token": "x\\ud800y", "token_kind": "fcm", "ios_app_id": null, "timestamp": %d}'
    sealed = seal(public_key, plaintext % int(time.time()))
    for answer in (
        await zulip.e2ee_register(REALM, "AAAAAAAAAAA=", sealed, public_key),
        await zulip.e2ee_register_11(REALM, 5, sealed, public_key),
    ):
        assert refused(answer) == "Invalid encrypted_push_registration"
    await nothing_registered(bouncer)


# --- 3. a list or an object where a string or a number goes ---------------------------------


@pytest.mark.parametrize("priority", [["high"], {"a": 1}])
async def test_unhashable_gcm_priority(zulip: ZulipServer, priority: Any) -> None:
    body = {"user_id": 7, "gcm_options": {"priority": priority}}
    msg = refused(await zulip.json("push/notify", body))
    assert msg == f"Invalid GCM option to bouncer: priority {priority!r}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r["http_headers"].update(apns_push_type=["alert"]), "apns_push_type"),
        (lambda r: r["http_headers"].update(apns_priority={}), "apns_priority"),
        (lambda r: r["http_headers"].update(apns_priority=[10]), "apns_priority"),
    ],
)
async def test_unhashable_apns_headers(zulip: ZulipServer, change: Any, field: str) -> None:
    request = apns_push_request("AAAAAAAAAAA=", PushKey(id=1), {})
    change(request)
    msg = refused(await zulip.e2ee_notify(REALM, [request]))
    assert msg == f"Invalid push_requests[0]['http_headers']['{field}']"


async def test_unhashable_fcm_priority(zulip: ZulipServer) -> None:
    request = {**fcm_push_request("AAAAAAAAAAA=", PushKey(id=1), {}), "fcm_priority": ["high"]}
    msg = refused(await zulip.e2ee_notify(REALM, [request]))
    assert msg == "Invalid push_requests[0]['fcm_priority']"


@pytest.mark.parametrize("kind", [["fcm"], {"fcm": 1}])
async def test_unhashable_sealed_token_kind(
    zulip: ZulipServer, bouncer: Pushd, public_key: str, kind: Any
) -> None:
    sealed = seal_registration(public_key, fcm_token(1), kind, None)
    answer = await zulip.e2ee_register(REALM, token_id(fcm_token(1)), sealed, public_key)
    assert refused(answer) == "Invalid encrypted_push_registration"
    await nothing_registered(bouncer)


# --- 4, 5. control characters: forged log lines, NUL that PostgreSQL refuses ----------------

FORGED = "x\n2026-12-07 03:00:00,000 ERROR   pushd.routing: [rFORGED] unexpected error"


@pytest.mark.parametrize(
    ("fields", "msg"),
    [
        ({"user_uuid": FORGED}, "Invalid user_uuid"),
        ({"user_uuid": USER_UUID, "realm_uuid": FORGED}, "Invalid realm_uuid"),
        ({"user_uuid": "u\x00"}, "Invalid user_uuid"),
        ({"user_uuid": USER_UUID, "realm_uuid": "r\x00"}, "Invalid realm_uuid"),
    ],
)
async def test_control_characters_in_legacy_ids(
    zulip: ZulipServer,
    bouncer: Pushd,
    caplog: pytest.LogCaptureFixture,
    fields: dict[str, str],
    msg: str,
) -> None:
    """Logged and stored: refused, so no line is forged and PostgreSQL is not asked."""
    device = {"token": token(1), "token_kind": APNS, "ios_app_id": TOPIC, "user_id": "10"}
    assert refused(await zulip.form("push/register", {**device, **fields})) == msg
    assert refused(await zulip.json("push/notify", {"user_id": 10, **fields})) == msg
    test = {"token": token(1), "token_kind": APNS, "user_id": 10, **fields}
    assert refused(await zulip.json("push/test_notification", test)) == msg
    if "realm_uuid" not in fields:
        assert refused(await zulip.form("push/unregister/all", fields)) == msg
    assert "FORGED" not in caplog.text
    await nothing_registered(bouncer)


async def test_control_characters_in_an_fcm_token(zulip: ZulipServer, bouncer: Pushd) -> None:
    # Within the token: Zulip strips the ends (whitespace, "\x85" and "\n" among it).
    for bad in ("a\x00b", "a\nb" + fcm_token(1), "a\x85b" + fcm_token(1)):
        answer = await zulip.register_device(bad, FCM)
        assert refused(answer) == "Invalid FCM token"
        test = {"token": bad, "token_kind": FCM, "user_id": 10}
        assert refused(await zulip.json("push/test_notification", test)) == "Invalid FCM token"
    await nothing_registered(bouncer)


@pytest.mark.parametrize(
    ("key", "value"),
    [("host", "h\x00.example.com"), ("host", "h.example.com\n"), ("name", "n\x00")],
)
async def test_control_characters_in_analytics_realms(
    zulip: ZulipServer, bouncer: Pushd, key: str, value: str
) -> None:
    other = {**realm(2), key: value}
    answer = await zulip.upload_analytics([realm(1), other])
    assert refused(answer) == f'Invalid realms[1]["{key}"]'
    assert await bouncer.services.store.zulip_realm(other["uuid"]) is None


async def test_a_realm_name_may_hold_a_tab(zulip: ZulipServer, bouncer: Pushd) -> None:
    """Only NUL is refused in a name: a 4xx on analytics turns a server's pushes off."""
    assert (await zulip.upload_analytics([realm(1), {**realm(2), "name": "a\tb"}])).json()
    stored = await bouncer.services.store.zulip_realm(realm(2)["uuid"])
    assert stored is not None and stored.name == "a\tb"


async def test_nul_in_a_contact_email(bouncer: Pushd) -> None:
    server = ZulipServer(client=bouncer.client, services_url=bouncer.url)
    answer = await server.register_server(contact_email="\x00@zulip.example.com")
    assert refused(answer).startswith("Invalid server administrator email address")
    assert await bouncer.services.store.zulip_server(server.org_id) is None


async def test_control_characters_in_e2ee_requests(
    zulip: ZulipServer, bouncer: Pushd, public_key: str
) -> None:
    sealed = seal_registration(public_key, fcm_token(1), "fcm", None)
    tid = token_id(fcm_token(1))
    for bad_realm in ("r\x00", REALM + "\n" + FORGED):
        answer = await zulip.e2ee_register(bad_realm, tid, sealed, public_key)
        assert refused(answer) == "Invalid realm_uuid"
        assert refused(await zulip.e2ee_notify(bad_realm, [])) == "Invalid realm_uuid"
    answer = await zulip.e2ee_register(REALM, tid, sealed, public_key + "\x00")
    assert refused(answer, "INVALID_BOUNCER_PUBLIC_KEY") == "Invalid bouncer_public_key"
    with_nul = seal_registration(public_key, "a\x00b", "fcm", None)
    answer = await zulip.e2ee_register(REALM, token_id("a\x00b"), with_nul, public_key)
    assert refused(answer) == "Invalid encrypted_push_registration"
    await nothing_registered(bouncer)


# --- 7. timestamps no float can hold -------------------------------------------------------


async def test_e2ee_timestamps_beyond_a_float(
    zulip: ZulipServer, bouncer: Pushd, public_key: str
) -> None:
    """Zulip refuses only a registration over a day old; the future is not bounded."""
    past = seal_registration(public_key, fcm_token(1), "fcm", None, timestamp=-(10**400))
    answer = await zulip.e2ee_register(REALM, token_id(fcm_token(1)), past, public_key)
    assert refused(answer, "REQUEST_EXPIRED") == "Request expired"
    await nothing_registered(bouncer)
    future = seal_registration(public_key, fcm_token(1), "fcm", None, timestamp=10**400)
    answer = await zulip.e2ee_register(REALM, token_id(fcm_token(1)), future, public_key)
    assert answer.status_code == 200, answer.text


# --- 6. the letter case of a zulip_org_id -------------------------------------------------


async def test_an_org_id_in_any_case_is_one_registration(bouncer: Pushd) -> None:
    """Zulip's ids are lower case (uuid4) and its bouncer matches any spelling."""
    upper = ZulipServer(client=bouncer.client, services_url=bouncer.url)
    upper.org_id = upper.org_id.upper()
    assert (await upper.register_server()).json()["created"] is True
    lower = ZulipServer(
        client=bouncer.client,
        services_url=bouncer.url,
        org_id=upper.org_id.lower(),
        org_key=upper.org_key,
    )
    for server in (upper, lower):
        assert (await server.get("server/analytics/status")).status_code == 200
    assert (await lower.register_server()).json()["created"] is False
    assert [s.uuid for s in await bouncer.services.store.zulip_servers()] == [lower.org_id]


async def test_a_server_stored_in_upper_case_still_authenticates(bouncer: Pushd) -> None:
    """A registration made before ids were stored lower case keeps its spelling."""
    server = ZulipServer(client=bouncer.client, services_url=bouncer.url)
    server.org_id = server.org_id.upper()
    store = bouncer.services.store
    await store.zulip_add_server(server.org_id, server.org_key, server.hostname)
    assert (await server.get("server/analytics/status")).status_code == 200
    assert (await server.register_server()).json()["created"] is False
    assert [s.uuid for s in await store.zulip_servers()] == [server.org_id]
