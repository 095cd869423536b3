"""The Zulip bouncer on a shared store (PostgreSQL): a request is authenticated and
counted against its server's rate limit in one store call, and a notify reads the realm
and the user's devices in one.  What a Zulip server hears must not change: a wrong key
or a deactivated registration is a 401 that counts nothing, each request counts once,
the limit's next request is a 429, and a realm of another server is a 403."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import trio

from pushd.simulators.apns import ApnsSimulator
from pushd.spool.seal import create_key_file
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token
from tests.zulip_client import ZulipServer, new_org_key, realm

#: Requests a minute for each Zulip server: reached within the test.
LIMIT = 6
APNS = 1
NOTIFY = {"user_id": 10, "apns_payload": {"alert": {"title": "A", "body": "hi"}}}


@pytest.fixture
async def pushd(
    start_pushd: PushdFactory,
    pg_url: str,
    tmp_path: Path,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
) -> Pushd:
    """pushd on PostgreSQL, its Zulip limit low enough to reach."""
    spool_key = tmp_path / "spool.key"
    create_key_file(spool_key)
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd: Pushd = await start_pushd(
        apps=[app_entry("ios", TOPIC, upstream, key_file, ca_file)],
        store={"url": pg_url, "pool_size": 2},
        spool={"key_file": str(spool_key)},
        zulip={"registration": "open", "rate_limit": LIMIT},
    )
    assert pushd.services.store.shared
    return pushd


async def test_requests_count_once_and_a_wrong_key_counts_nothing(
    pushd: Pushd, simulator: ApnsSimulator
) -> None:
    # Windows are the clock's minutes: start well inside one, so every request below
    # is counted in one window.
    if time.time() % 60 > 45:
        await trio.sleep(61 - time.time() % 60)
    zulip = ZulipServer(client=pushd.client, services_url=pushd.url)
    other = ZulipServer(client=pushd.client, services_url=pushd.url, hostname="b.example.com")
    for server in (zulip, other):
        assert (await server.register_server()).status_code == 200  # not counted
    assert (await zulip.upload_analytics([realm(1)])).status_code == 200  # 1
    assert (await other.upload_analytics([realm(2)])).status_code == 200  # other's 1
    answer = await zulip.register_device(token(1), APNS, ios_app_id=TOPIC)  # 2
    assert answer.status_code == 200, answer.text
    answer = await zulip.json("push/notify", NOTIFY)  # 3
    assert answer.status_code == 200, answer.text
    assert answer.json()["total_apple_devices"] == 1
    with trio.fail_after(5):
        (received,) = await simulator.wait_for(1)
    assert received.token == token(1)
    # The realm is read with the devices: this server's is served, another's is a 403
    # (and sends nothing), an unknown one is served as Zulip's bouncer serves it.
    user_uuid = str(uuid.uuid4())
    own = {**NOTIFY, "user_uuid": user_uuid, "realm_uuid": realm(1)["uuid"]}
    assert (await zulip.json("push/notify", own)).status_code == 200  # 4
    theirs = {**NOTIFY, "user_uuid": user_uuid, "realm_uuid": realm(2)["uuid"]}
    answer = await zulip.json("push/notify", theirs)  # 5
    assert answer.status_code == 403, answer.text
    assert answer.json()["code"] == "REMOTE_REALM_SERVER_MISMATCH_ERROR"
    # A wrong key is refused and counts nothing.
    answer = await zulip.json("push/notify", NOTIFY, org_key=new_org_key())
    assert answer.status_code == 401, answer.text
    assert "key does not match" in answer.json()["msg"]
    assert (await zulip.json("push/notify", NOTIFY)).status_code == 200  # 6: the limit
    answer = await zulip.json("push/notify", NOTIFY)
    assert answer.status_code == 429, answer.text
    assert answer.json()["code"] == "RATE_LIMIT_HIT"
    assert 0 < float(answer.headers["retry-after"]) <= 60  # a float, as Zulip sends it
    # Counted per server: the other one still has room.
    assert (await other.json("push/notify", NOTIFY)).status_code == 200
    assert len(simulator.received) == 3  # the notifies above that reached the device


async def test_a_deactivated_registration_is_refused_and_counts_nothing(pushd: Pushd) -> None:
    zulip = ZulipServer(client=pushd.client, services_url=pushd.url)
    assert (await zulip.register_server()).status_code == 200
    assert (await zulip.form("server/deactivate", {})).status_code == 200
    for _ in range(LIMIT + 2):  # never a 429: nothing is counted
        answer = await zulip.json("push/notify", NOTIFY)
        assert answer.status_code == 401, answer.text
        assert "deactivated" in answer.json()["msg"]
    unknown = ZulipServer(client=pushd.client, services_url=pushd.url)
    answer = await unknown.json("push/notify", NOTIFY)
    assert answer.status_code == 401 and "is not registered" in answer.json()["msg"]
