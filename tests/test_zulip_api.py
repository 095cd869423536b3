"""The Zulip bouncer end to end: a Zulip server's requests into pushd over HTTP, out to
the APNs and FCM simulators over HTTP/2 + TLS.  Expected bodies are the notes' (zulip.md)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import trio

from pushd.frontends.zulip.servers import NOTIFY_MAX_BODY
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmReply, FcmSimulator
from pushd.store import open_store
from tests.conftest import TOPIC, Pushd, token
from tests.storefixtures import run_cli
from tests.zulip_client import USER_AGENT, ZulipServer, new_org_key, realm

APNS = 1
FCM = 2
USER_UUID = str(uuid.UUID(int=77, version=4))


def fcm_token(n: int) -> str:
    return f"zulip-device-{n:04d}:APA91b" + "y" * 40


def error(code: str, msg: str, **data: Any) -> dict[str, Any]:
    return {"result": "error", "msg": msg, "code": code, **data}


OK = {"result": "success", "msg": ""}


@pytest.fixture
async def bouncer(start_bouncer: Any) -> Pushd:
    pushd: Pushd = await start_bouncer()
    return pushd


def zulip_server(pushd: Pushd, **fields: Any) -> ZulipServer:
    return ZulipServer(client=pushd.client, services_url=pushd.url, **fields)


@pytest.fixture
async def zulip(bouncer: Pushd) -> ZulipServer:
    """A registered Zulip server with one realm."""
    server = zulip_server(bouncer)
    assert (await server.register_server()).json() == {**OK, "created": True}
    assert (await server.upload_analytics([realm(1)])).status_code == 200
    return server


# --- server registration and auth ----------------------------------------------------------


async def test_services_url_with_a_trailing_slash(bouncer: Pushd, simulator: ApnsSimulator) -> None:
    # register_server concatenates: "https://pushd.example.com/" + "/api/v1/..." asks
    # for //api/v1/remotes/server/register, which Zulip's bouncer (nginx, merge_slashes)
    # serves; the other requests go through urljoin, which drops the slash.
    server = ZulipServer(client=bouncer.client, services_url=bouncer.url + "/")
    assert server.command_url("server/register").endswith("//api/v1/remotes/server/register")
    assert (await server.register_server()).json() == {**OK, "created": True}
    assert (await server.upload_analytics([realm(1)])).status_code == 200
    response = await server.register_device(token(1), APNS, ios_app_id=TOPIC)
    assert response.json()["result"] == "success"


async def test_register_server_then_rotate_key(bouncer: Pushd) -> None:
    server = zulip_server(bouncer)
    first = await server.register_server()
    assert first.status_code == 200
    assert first.json() == {"result": "success", "msg": "", "created": True}
    again = await server.register_server(contact_email="other@zulip.example.com")
    assert again.json() == {**OK, "created": False}

    rotated = new_org_key()
    assert (await server.register_server(new_key=rotated)).json() == {**OK, "created": False}
    old = await server.get("server/analytics/status")
    assert old.status_code == 401
    assert old.json() == error(
        "UNAUTHORIZED", f"Zulip server auth failure: key does not match role {server.org_id}"
    )
    server.org_key = rotated
    status = await server.get("server/analytics/status")
    assert status.json() == {
        **OK,
        "last_realm_count_id": 0,
        "last_installation_count_id": 0,
        "last_realmauditlog_id": 0,
    }


async def test_register_server_with_a_wrong_key(zulip: ZulipServer) -> None:
    zulip.org_key = new_org_key()
    response = await zulip.register_server()
    assert response.status_code == 400
    assert response.json() == error(
        "INVALID_ZULIP_SERVER",
        f"Zulip server auth failure: key does not match role {zulip.org_id}",
        role=zulip.org_id,
    )


@pytest.mark.parametrize(
    ("fields", "msg"),
    [
        ({"org_id": "not-a-uuid"}, "zulip_org_id is not length 36"),
        ({"org_key": "short"}, "zulip_org_key is not length 64"),
        ({"org_id": "x" * 36}, "Invalid UUID"),
        ({"hostname": "bad host"}, "bad host is not a valid hostname"),
        (
            {"hostname": "zulip.example.com/path"},
            "zulip.example.com/path contains invalid components (e.g., path, query, fragment).",
        ),
    ],
)
async def test_register_server_bad_input(bouncer: Pushd, fields: dict[str, str], msg: str) -> None:
    response = await zulip_server(bouncer, **fields).register_server()
    assert response.status_code == 400
    assert response.json() == error("BAD_REQUEST", msg)


async def test_register_server_bad_email_and_missing_field(bouncer: Pushd) -> None:
    server = zulip_server(bouncer)
    response = await server.register_server(contact_email="nobody")
    reason = "Enter a valid email address."
    assert response.json() == error(
        "BAD_REQUEST", f"Invalid server administrator email address: {reason}", email_reason=reason
    )
    missing = await bouncer.client.post(
        server.url("server/register"), data={"zulip_org_id": server.org_id}
    )
    assert missing.status_code == 400
    assert missing.json()["msg"] == "Missing 'zulip_org_key' argument"


async def test_hostname_already_in_use(zulip: ZulipServer, bouncer: Pushd) -> None:
    second = zulip_server(bouncer, hostname=zulip.hostname)
    response = await second.register_server()
    assert response.status_code == 400
    assert response.json() == error(
        "HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR",
        f"A server with hostname {zulip.hostname} already exists",
        hostname=zulip.hostname,
    )


async def test_auth_failures_answer_zulips_bodies(zulip: ZulipServer, bouncer: Pushd) -> None:
    url = zulip.url("server/analytics/status")
    unknown = str(uuid.uuid4())
    cases = [
        ({}, 401, "UNAUTHORIZED", "Missing authorization header for basic auth"),
        (
            {"authorization": "Basic"},
            401,
            "UNAUTHORIZED",
            "Invalid authorization header for basic auth",
        ),
        (
            {"authorization": "Basic !!!"},
            401,
            "UNAUTHORIZED",
            "Invalid authorization header for basic auth",
        ),
        (
            {"authorization": "Bearer abc"},
            400,
            "BAD_REQUEST",
            "This endpoint requires HTTP basic authentication.",
        ),
        (
            zulip.headers(org_id="me@example.com"),
            400,
            "BAD_REQUEST",
            "Must validate with valid Zulip server API key",
        ),
        (
            zulip.headers(org_id=unknown),
            401,
            "UNAUTHORIZED",
            f"Zulip server auth failure: {unknown} is not registered -- "
            "did you run `manage.py register_server`?",
        ),
    ]
    for headers, status, code, msg in cases:
        response = await bouncer.client.get(url, headers={"user-agent": USER_AGENT, **headers})
        assert (response.status_code, response.json()) == (status, error(code, msg)), headers
        if status == 401:
            assert response.headers["www-authenticate"] == 'Basic realm="zulip"'


async def test_deactivated_server_is_refused(zulip: ZulipServer) -> None:
    assert (await zulip.json("server/deactivate", {})).json() == OK
    deactivated = (
        "The mobile push notification service registration for your server has been deactivated"
    )
    status = await zulip.get("server/analytics/status")
    assert (status.status_code, status.json()) == (401, error("UNAUTHORIZED", deactivated))
    again = await zulip.register_server()
    assert (again.status_code, again.json()) == (401, error("REALM_DEACTIVATED", deactivated))


REAL_ORG = str(uuid.UUID(int=4242, version=4))
PINNED = "chat.example.org"


def not_allowed(hostname: str, org_id: str) -> dict[str, Any]:
    return error(
        "INVALID_ZULIP_SERVER",
        f"{hostname} is not allowed to register with this push notification service under "
        f"zulip_org_id {org_id}; ask its operator to pin it to your zulip_org_id",
        role=org_id,
    )


def in_use(hostname: str) -> dict[str, Any]:
    return error(
        "HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR",
        f"A server with hostname {hostname} already exists",
        hostname=hostname,
    )


async def test_allowlist_refuses_a_squatter_and_admits_the_pinned_server(
    start_bouncer: Any, simulator: ApnsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    pushd = await start_bouncer(
        registration="allowlist", allowlist=[{"hostname": PINNED, "org_id": REAL_ORG}]
    )
    # Someone who can reach pushd tries the allowed hostname first, in every spelling
    # of it, with an org id of their own: refused, and the name stays free.
    for spelling in (PINNED, "CHAT.Example.org.", "chat.example.org:443", "chat.example.org.:0443"):
        squatter = zulip_server(pushd, hostname=spelling)
        refused = await squatter.register_server()
        assert (refused.status_code, refused.json()) == (
            400,
            not_allowed(spelling, squatter.org_id),
        )
    # Another port is another origin, not pinned; so is any other hostname.
    for hostname in ("chat.example.org:8443", "evil.example.net"):
        other = zulip_server(pushd, hostname=hostname)
        assert (await other.register_server()).json() == not_allowed(hostname, other.org_id)
    refusals = [r for r in caplog.records if "refused Zulip server registration" in r.message]
    assert len(refusals) == 6
    assert all(squatter.org_id not in r.getMessage() for r in refusals)

    # The server whose zulip_org_id is pinned registers (however it spells its name),
    # uploads its realms and pushes.
    real = zulip_server(pushd, org_id=REAL_ORG, hostname="Chat.Example.org:443")
    assert (await real.register_server()).json() == {**OK, "created": True}
    assert (await real.register_server()).json() == {**OK, "created": False}
    assert (await real.upload_analytics([realm(1)])).status_code == 200
    registered = await real.register_device(
        token(1), APNS, user_uuid=USER_UUID, realm_uuid=realm(1)["uuid"], ios_app_id=TOPIC
    )
    assert registered.status_code == 200, registered.text
    notify = await real.json(
        "push/notify",
        {"user_uuid": USER_UUID, "realm_uuid": realm(1)["uuid"], "apns_payload": APNS_PAYLOAD},
    )
    assert notify.json()["total_apple_devices"] == 1
    assert [r.token for r in simulator.received] == [token(1)]
    # Now that the name is held, the squatter is still refused by the pin.
    late = zulip_server(pushd, hostname=PINNED)
    assert (await late.register_server()).json() == not_allowed(PINNED, late.org_id)


async def test_hostname_spellings_name_one_server(bouncer: Pushd) -> None:
    first = zulip_server(bouncer, hostname="chat.example.com")
    assert (await first.register_server()).json() == {**OK, "created": True}
    for spelling in ("CHAT.example.com.", "chat.example.com:443", "Chat.Example.Com.:443"):
        second = await zulip_server(bouncer, hostname=spelling).register_server()
        assert (second.status_code, second.json()) == (400, in_use(spelling))
    # Another port is another origin (possibly another installation on the machine).
    elsewhere = zulip_server(bouncer, hostname="chat.example.com:8443")
    assert (await elsewhere.register_server()).json() == {**OK, "created": True}
    # A registered server cannot move onto a name another one holds either.
    elsewhere.hostname = "chat.example.com."
    moved = await elsewhere.register_server()
    assert (moved.status_code, moved.json()) == (400, in_use("chat.example.com."))
    bad = await zulip_server(bouncer, hostname="chat.example.com..").register_server()
    assert bad.json() == error("BAD_REQUEST", "chat.example.com.. is not a valid hostname")


async def test_open_mode_still_keeps_a_pinned_hostname_for_its_server(
    start_bouncer: Any,
) -> None:
    pushd = await start_bouncer(
        registration="open", allowlist=[{"hostname": PINNED, "org_id": REAL_ORG}]
    )
    squatter = zulip_server(pushd, hostname=PINNED)
    assert (await squatter.register_server()).json() == not_allowed(PINNED, squatter.org_id)
    # Registering elsewhere first and then moving onto the pinned name fails too.
    squatter.hostname = "squatter.example.net"
    assert (await squatter.register_server()).json() == {**OK, "created": True}
    squatter.hostname = PINNED
    assert (await squatter.register_server()).json() == not_allowed(PINNED, squatter.org_id)
    real = zulip_server(pushd, org_id=REAL_ORG, hostname=PINNED)
    assert (await real.register_server()).json() == {**OK, "created": True}


async def test_a_deactivated_servers_hostname_stays_taken_until_released(
    start_bouncer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pushd = await start_bouncer(registration="open")
    store = pushd.config.store.path
    old = zulip_server(pushd, hostname="chat.example.com")
    assert (await old.register_server()).json() == {**OK, "created": True}
    assert (await old.json("server/deactivate", {})).json() == OK
    new = zulip_server(pushd, hostname="chat.example.com")
    taken = await new.register_server()
    assert (taken.status_code, taken.json()) == (400, in_use("chat.example.com"))
    # Without its key, nobody learns the old registration was deactivated.
    old_key = old.org_key
    old.org_key = new_org_key()
    wrong = await old.register_server()
    assert wrong.json()["code"] == "INVALID_ZULIP_SERVER"
    old.org_key = old_key

    assert await run_cli(["zulip", "servers", "release", "chat.example.com", "--store", store]) == 0
    assert "released chat.example.com" in capsys.readouterr().out
    assert (await new.register_server()).json() == {**OK, "created": True}
    # The old server cannot take the name back now.
    assert await run_cli(["zulip", "servers", "reactivate", old.org_id, "--store", store]) == 1
    assert f"held by Zulip server {new.org_id}" in capsys.readouterr().err


async def test_closed_mode_takes_only_servers_added_with_the_cli(
    start_bouncer: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pushd = await start_bouncer(registration="closed")
    stranger = await zulip_server(pushd).register_server()
    assert stranger.status_code == 400
    assert stranger.json()["code"] == "INVALID_ZULIP_SERVER"

    store = pushd.config.store.path
    assert await run_cli(["zulip", "servers", "add", "chat.example.org", "--store", store]) == 0
    printed = capsys.readouterr().out
    org_id = printed.split("zulip_org_id = ")[1].split()[0]
    org_key = printed.split("zulip_org_key = ")[1].split()[0]
    added = zulip_server(pushd, org_id=org_id, org_key=org_key, hostname="chat.example.org")
    assert (await added.register_server()).json() == {**OK, "created": False}
    assert (await added.get("server/analytics/status")).status_code == 200

    assert await run_cli(["zulip", "servers", "deactivate", org_id, "--store", store]) == 0
    assert (await added.get("server/analytics/status")).status_code == 401
    assert await run_cli(["zulip", "servers", "reactivate", org_id, "--store", store]) == 0
    assert (await added.get("server/analytics/status")).status_code == 200
    assert await run_cli(["zulip", "servers", "list", "--store", store]) == 0
    assert org_id in capsys.readouterr().out


# --- analytics ------------------------------------------------------------------------------


async def test_analytics_learns_realms_and_high_water_marks(bouncer: Pushd) -> None:
    server = zulip_server(bouncer)
    await server.register_server()
    counts = [
        {
            "property": "active_users_audit:is_bot:day",
            "realm": 1,
            "id": n,
            "end_time": 1.0,
            "subgroup": None,
            "value": 5,
        }
        for n in (3, 9)
    ]
    installation = [{"property": "x", "id": 4, "end_time": 1.0, "subgroup": None, "value": 1}]
    response = await server.upload_analytics([realm(1), realm(2)], counts, installation)
    assert response.status_code == 200, response.text
    status = {"can_push": True, "expected_end_timestamp": None}
    assert response.json() == {
        **OK,
        "realms": {realm(1)["uuid"]: status, realm(2)["uuid"]: status},
    }
    marks = (await server.get("server/analytics/status")).json()
    assert (marks["last_realm_count_id"], marks["last_installation_count_id"]) == (9, 4)
    # Nothing else of the upload is kept: only realm uuid, host and name.
    database = await open_store(bouncer.config.store)
    try:
        stored = await database.zulip_realm(realm(2)["uuid"])
    finally:
        await database.close()
    assert stored is not None and (stored.host, stored.name) == ("zulip.example.com", "Realm 2")


async def test_analytics_from_a_server_that_sends_no_realm_names(bouncer: Pushd) -> None:
    # Servers before realm names were uploaded send realms without "name"; Zulip's
    # bouncer reads it as "" (RealmDataForAnalytics).  A 400 here is a warning in the
    # server's log on every upload, and the realms never registered.
    server = zulip_server(bouncer)
    await server.register_server()
    old = {key: value for key, value in realm(1).items() if key not in ("name", "org_type")}
    response = await server.upload_analytics([old])
    assert response.status_code == 200, response.text
    assert list(response.json()["realms"]) == [old["uuid"]]


async def test_a_realm_of_another_server(zulip: ZulipServer, bouncer: Pushd) -> None:
    other = zulip_server(bouncer, hostname="other.example.com")
    await other.register_server()
    duplicate = await other.upload_analytics([realm(1)])
    assert duplicate.status_code == 400
    assert duplicate.json() == error("BAD_REQUEST", "Duplicate registration detected.")
    mismatch = await other.register_device(
        token(1), APNS, user_uuid=USER_UUID, realm_uuid=realm(1)["uuid"], ios_app_id=TOPIC
    )
    assert mismatch.status_code == 403
    assert mismatch.json() == error(
        "REMOTE_REALM_SERVER_MISMATCH_ERROR",
        "Your organization is registered to a different Zulip server. Please contact Zulip "
        "support for assistance in resolving this issue.",
    )
    notify = await other.json(
        "push/notify", {"user_id": 10, "user_uuid": USER_UUID, "realm_uuid": realm(1)["uuid"]}
    )
    assert notify.status_code == 403


# --- registrations ----------------------------------------------------------------------------


async def test_register_unregister_and_unregister_all(zulip: ZulipServer) -> None:
    registered = await zulip.register_device(
        token(1).upper(), APNS, user_uuid=USER_UUID, realm_uuid=realm(1)["uuid"], ios_app_id=TOPIC
    )
    assert registered.status_code == 200
    assert registered.json() == {**OK, "ignored_parameters_unsupported": ["server_uuid"]}
    again = await zulip.register_device(token(1), APNS, user_uuid=USER_UUID, ios_app_id=TOPIC)
    assert again.status_code == 200
    await zulip.register_device(fcm_token(1), FCM, user_uuid=USER_UUID)
    await zulip.register_device(fcm_token(2), FCM, user_id=11)

    gone = await zulip.form(
        "push/unregister", {"token": token(1).upper(), "token_kind": 1, "user_uuid": USER_UUID}
    )
    assert gone.json() == OK
    missing = await zulip.form(
        "push/unregister", {"token": token(1), "token_kind": 1, "user_uuid": USER_UUID}
    )
    assert (missing.status_code, missing.json()) == (
        400,
        error("BAD_REQUEST", "Token does not exist"),
    )

    cleared = await zulip.form("push/unregister/all", {"user_id": "10", "user_uuid": USER_UUID})
    assert cleared.json() == OK
    answer = (await zulip.json("push/notify", {"user_uuid": USER_UUID, "user_id": 10})).json()
    assert (answer["total_android_devices"], answer["total_apple_devices"]) == (0, 0)
    other = (await zulip.json("push/notify", {"user_id": 11})).json()
    assert other["total_android_devices"] == 1


@pytest.mark.parametrize(
    ("data", "msg"),
    [
        ({"token_kind": "1", "user_id": "1"}, "Missing 'token' argument"),
        ({"token": token(1), "user_id": "1"}, "Missing 'token_kind' argument"),
        ({"token": token(1), "token_kind": "3", "user_id": "1"}, "Invalid token type"),
        ({"token": "", "token_kind": "1", "user_id": "1"}, "Empty or invalid length token"),
        ({"token": "x" * 4097, "token_kind": "2", "user_id": "1"}, "Empty or invalid length token"),
        (
            {"token": "xyz", "token_kind": "1", "user_id": "1", "ios_app_id": TOPIC},
            "Invalid APNS token",
        ),
        ({"token": token(1), "token_kind": "1", "user_id": "1"}, "Missing ios_app_id"),
        (
            {"token": token(1), "token_kind": "1", "user_id": "1", "ios_app_id": "a b"},
            "ios_app_id has invalid format",
        ),
        (
            {"token": token(1), "token_kind": "1", "ios_app_id": TOPIC},
            "Missing user_id or user_uuid",
        ),
        (
            {"token": token(1), "token_kind": "1", "user_id": "1", "ios_app_id": "org.unknown"},
            "This push notification service has no app for ios_app_id org.unknown",
        ),
    ],
)
async def test_register_bad_input(zulip: ZulipServer, data: dict[str, str], msg: str) -> None:
    response = await zulip.form("push/register", data)
    assert response.status_code == 400
    assert response.json()["msg"] == msg
    assert response.json()["code"] in ("BAD_REQUEST", "REQUEST_VARIABLE_MISSING")


# --- notifications --------------------------------------------------------------------------

APNS_PAYLOAD = {
    "alert": {"title": "Iago", "subtitle": "", "body": "secret content"},
    "sound": "default",
    "badge": 0,
    "custom": {"zulip": {"message_ids": [7], "server": "zulip.example.com", "user_id": 10}},
}
GCM_PAYLOAD = {
    "event": "message",
    "zulip_message_id": 7,
    "time": 1700000000,
    "content": "secret content",
    "server": "zulip.example.com",
    "realm_id": 1,
    "user_id": 10,
    "content_truncated": False,
}


async def test_notify_reaches_apns_and_fcm_devices(
    zulip: ZulipServer, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    realm_uuid = realm(1)["uuid"]
    await zulip.register_device(
        token(1), APNS, user_uuid=USER_UUID, realm_uuid=realm_uuid, ios_app_id=TOPIC
    )
    await zulip.register_device(fcm_token(1), FCM, user_uuid=USER_UUID, realm_uuid=realm_uuid)
    await zulip.register_device(fcm_token(2), FCM)  # user_id 10 only
    before = time.time()
    response = await zulip.json(
        "push/notify",
        {
            "user_id": 10,
            "user_uuid": USER_UUID,
            "realm_uuid": realm_uuid,
            "apns_payload": APNS_PAYLOAD,
            "gcm_payload": GCM_PAYLOAD,
            "gcm_options": {"priority": "high"},
            "android_devices": [fcm_token(1), fcm_token(2)],
            "apple_devices": [token(1).upper()],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        **OK,
        "total_android_devices": 2,
        "total_apple_devices": 1,
        "deleted_devices": {"android_devices": [], "apple_devices": []},
        "realm": {"can_push": True, "expected_end_timestamp": None},
    }
    (apns,) = simulator.received
    assert apns.token == token(1) and apns.topic == TOPIC
    assert json.loads(apns.payload) == {
        "aps": {"alert": APNS_PAYLOAD["alert"], "sound": "default", "badge": 0},
        "zulip": APNS_PAYLOAD["custom"]["zulip"],  # type: ignore[index]
    }
    assert apns.priority is None  # no apns-priority header: APNs' default
    assert apns.expiration is not None
    assert before + 86400 - 2 <= apns.expiration <= time.time() + 86400
    messages = {r.token: r.message for r in fcm_simulator.received}
    assert set(messages) == {fcm_token(1), fcm_token(2)}
    message = messages[fcm_token(1)]
    assert message["data"] == {
        "event": "message",
        "zulip_message_id": "7",
        "time": "1700000000",
        "content": "secret content",
        "server": "zulip.example.com",
        "realm_id": "1",
        "user_id": "10",
        "content_truncated": "False",
    }
    assert "notification" not in message
    assert message["android"]["priority"].lower() == "high"


async def test_dead_tokens_come_back_in_deleted_devices(
    zulip: ZulipServer, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    for n in (1, 2):
        await zulip.register_device(token(n), APNS, ios_app_id=TOPIC)
        await zulip.register_device(fcm_token(n), FCM)
    simulator.script(
        token(1),
        SimReply(status=410, reason="Unregistered", timestamp_ms=int(time.time() * 1000) + 60_000),
    )
    fcm_simulator.script(fcm_token(1), FcmReply(error_code="UNREGISTERED"))
    body = {
        "user_id": 10,
        "apns_payload": APNS_PAYLOAD,
        "gcm_payload": GCM_PAYLOAD,
        "android_devices": [fcm_token(2), fcm_token(1), fcm_token(9)],
        "apple_devices": [token(1).upper(), token(2)],
    }
    answer = (await zulip.json("push/notify", body)).json()
    assert answer["deleted_devices"] == {
        "android_devices": sorted([fcm_token(1), fcm_token(9)]),
        "apple_devices": [token(1).upper()],
    }
    assert (answer["total_android_devices"], answer["total_apple_devices"]) == (2, 2)
    assert answer["realm"] is None
    again = (await zulip.json("push/notify", body)).json()
    assert (again["total_android_devices"], again["total_apple_devices"]) == (1, 1)


async def test_a_token_found_dead_by_a_retry_is_in_the_next_deleted_devices(
    zulip: ZulipServer, bouncer: Pushd, simulator: ApnsSimulator
) -> None:
    """Issue 11, item 8: a dead token learned after the answer (by a spooled retry) is
    reported in ``deleted_devices`` of the server's next push to it, without a send."""
    await zulip.register_device(token(1), APNS, ios_app_id=TOPIC)
    simulator.script(
        token(1),
        SimReply(status=503, reason="ServiceUnavailable"),
        SimReply(status=410, reason="Unregistered"),
    )
    body = {"user_id": 10, "apns_payload": APNS_PAYLOAD, "apple_devices": [token(1)]}
    answer = (await zulip.json("push/notify", body)).json()
    assert answer["deleted_devices"]["apple_devices"] == []  # spooled, not known dead yet
    with trio.fail_after(10):
        await simulator.wait_for(2)
        while bouncer.services.dispatcher.depth.get("ios", 0):  # noqa: ASYNC110
            await trio.sleep(0.05)
    again = (await zulip.json("push/notify", body)).json()
    assert again["deleted_devices"]["apple_devices"] == [token(1)]
    assert again["total_apple_devices"] == 0
    assert len(simulator.received) == 2  # the report needed no send


async def test_removal_lists_are_cut_to_the_newest_200(
    zulip: ZulipServer, simulator: ApnsSimulator, fcm_simulator: FcmSimulator
) -> None:
    await zulip.register_device(token(1), APNS, ios_app_id=TOPIC)
    await zulip.register_device(fcm_token(1), FCM)
    ids = ",".join(str(n) for n in reversed(range(1, 251)))
    newest = ",".join(str(n) for n in range(51, 251))
    response = await zulip.json(
        "push/notify",
        {
            "user_id": 10,
            "apns_payload": {
                "badge": 0,
                "custom": {"zulip": {"event": "remove", "zulip_message_ids": ids}},
            },
            "gcm_payload": {"event": "remove", "zulip_message_ids": ids},
            "gcm_options": {},
        },
    )
    assert response.status_code == 200, response.text
    (apns,) = simulator.received
    assert json.loads(apns.payload)["zulip"]["zulip_message_ids"] == newest
    (fcm,) = fcm_simulator.received
    assert fcm.message["data"]["zulip_message_ids"] == newest
    assert fcm.message["android"]["priority"].lower() == "normal"  # removals default


@pytest.mark.parametrize(
    ("options", "msg"),
    [
        ({"priority": "urgent"}, "Invalid GCM option to bouncer: priority 'urgent'"),
        ({"ttl": 5}, 'Invalid GCM options to bouncer: {"ttl": 5}'),
    ],
)
async def test_notify_bad_gcm_options(
    zulip: ZulipServer, options: dict[str, Any], msg: str
) -> None:
    response = await zulip.json("push/notify", {"user_id": 10, "gcm_options": options})
    assert (response.status_code, response.json()) == (400, error("BAD_REQUEST", msg))


async def test_notify_bad_input_is_a_400(zulip: ZulipServer, bouncer: Pushd) -> None:
    for content in (
        b"not json",
        b"[1]",
        b'{"user_id": "x"}',
        b'{"apple_devices": [1], "user_id": 1}',
    ):
        response = await bouncer.client.post(
            zulip.url("push/notify"), content=content, headers=zulip.headers()
        )
        assert response.status_code == 400, content
        assert response.json()["result"] == "error"


async def test_test_notification(zulip: ZulipServer, simulator: ApnsSimulator) -> None:
    await zulip.register_device(token(3), APNS, user_uuid=USER_UUID, ios_app_id=TOPIC)
    base = {
        "server": "zulip.example.com",
        "realm_id": 1,
        "realm_uri": "https://zulip.example.com",
        "realm_url": "https://zulip.example.com",
        "realm_name": "Realm 1",
        "user_id": 10,
    }
    body = {
        "token": token(3).upper(),
        "token_kind": APNS,
        "user_id": 10,
        "user_uuid": USER_UUID,
        "realm_uuid": None,
        "base_payload": base,
    }
    assert (await zulip.json("push/test_notification", body)).json() == OK
    (received,) = simulator.received
    assert json.loads(received.payload) == {
        "aps": {
            "alert": {
                "title": "Test notification",
                "body": "This is a test notification from Realm 1 (https://zulip.example.com).",
            },
            "sound": "default",
        },
        "zulip": {**base, "event": "test"},
    }
    unknown = await zulip.json("push/test_notification", {**body, "token": token(4)})
    assert (unknown.status_code, unknown.json()) == (
        400,
        error("INVALID_REMOTE_PUSH_DEVICE_TOKEN", "Device not recognized by the push bouncer"),
    )
    extra = await zulip.json("push/test_notification", {**body, "surprise": 1})
    assert extra.status_code == 400


async def test_rate_limit(start_bouncer: Any) -> None:
    pushd = await start_bouncer(rate_limit=3)
    server = zulip_server(pushd)
    await server.register_server()  # not authenticated: not counted
    for _ in range(3):
        assert (await server.get("server/analytics/status")).status_code == 200
    limited = await server.get("server/analytics/status")
    assert limited.status_code == 429
    body = limited.json()
    assert body["code"] == "RATE_LIMIT_HIT" and body["msg"] == "API usage exceeded rate limit"
    assert 0 < body["retry-after"] <= 60
    assert float(limited.headers["retry-after"]) == body["retry-after"]


async def test_transfer_and_billing_answer_a_clean_4xx(zulip: ZulipServer, bouncer: Pushd) -> None:
    for endpoint in ("server/register/transfer", "server/register/verify_challenge"):
        response = await bouncer.client.post(zulip.url(endpoint), data={"hostname": zulip.hostname})
        assert response.status_code == 400
        assert response.json()["code"] == "BAD_REQUEST"
    billing = await zulip.form("server/billing", {})
    assert billing.status_code == 400 and billing.json()["result"] == "error"


async def test_fcm_test_notification_and_privacy(
    zulip: ZulipServer, fcm_simulator: FcmSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await zulip.register_device(fcm_token(5), FCM)
    base = {"server": "zulip.example.com", "realm_name": "Realm 1", "user_id": 10}
    body = {
        "token": fcm_token(5),
        "token_kind": FCM,
        "user_id": 10,
        "user_uuid": USER_UUID,
        "base_payload": base,
    }
    before = int(time.time())
    assert (await zulip.json("push/test_notification", body)).json() == OK
    (received,) = fcm_simulator.received
    data = received.message["data"]
    assert {k: v for k, v in data.items() if k != "time"} == {
        "server": "zulip.example.com",
        "realm_name": "Realm 1",
        "user_id": "10",
        "event": "test",
    }
    assert before <= int(data["time"]) <= time.time()
    assert received.message["android"]["priority"].lower() == "high"

    await zulip.json(
        "push/notify", {"user_id": 10, "gcm_payload": GCM_PAYLOAD, "apns_payload": APNS_PAYLOAD}
    )
    logged = caplog.text
    assert "secret content" not in logged
    assert fcm_token(5) not in logged
    assert zulip.org_key not in logged


async def test_unknown_endpoints_answer_in_zulips_format(zulip: ZulipServer) -> None:
    response = await zulip.json("push/e2ee/unknown", {})
    assert response.status_code == 404
    assert response.json() == error("BAD_REQUEST", "Endpoint not found")


async def test_a_large_analytics_upload_passes_the_default_body_limit(
    bouncer: Pushd,
) -> None:
    """The first upload, sent by register_server, can be megabytes (64 KiB default limit)."""
    server = zulip_server(bouncer)
    await server.register_server()
    counts = [
        {
            "property": "messages_sent:message_type:day",
            "realm": 1,
            "id": n,
            "end_time": 1.0,
            "subgroup": "public_stream",
            "value": n,
        }
        for n in range(1, 10_001)
    ]
    response = await server.upload_analytics([realm(1)], counts)
    assert response.status_code == 200, response.text
    marks = (await server.get("server/analytics/status")).json()
    assert marks["last_realm_count_id"] == 10_000


async def test_a_too_large_body_is_refused_in_zulips_format(zulip: ZulipServer) -> None:
    """Past the route's limit (push/notify takes 1 MiB, for users with many devices)."""
    response = await zulip.json("push/notify", {"padding": "x" * (NOTIFY_MAX_BODY + 1)})
    assert response.status_code == 413
    body = response.json()
    assert body["result"] == "error" and body["code"] == "BAD_REQUEST"
