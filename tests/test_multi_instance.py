"""Three pushd processes on one PostgreSQL database, the APNs simulator behind them.

Issue 12's scale-out promises, held by real processes: any instance serves any request
(a Zulip server registers on A and notifies through B), a dead token found by one is
gone for all, and a backlog spooled while the upstream is down survives the SIGKILL of
the instance that spooled it: the others deliver every row once the upstream is back.
"""

from __future__ import annotations

import collections
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from pushd.config import StoreConfig
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.spool.seal import create_key_file
from tests import matrix_homeserver as hs
from tests.conftest import TOPIC, app_entry, token
from tests.process import PushdProcess, start_pushd_process, write_config
from tests.storefixtures import add_server
from tests.zulip_client import ZulipServer, realm

#: A lease short enough that a killed instance's rows are taken over within the test.
LEASE_SECONDS = 1.0
#: Notifications spooled on B before it is killed.
BACKLOG = 30
APNS = 1


@pytest.fixture
async def instances(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    pg_url: str,
) -> AsyncIterator[tuple[list[PushdProcess], str]]:
    """Instances A, B and C, and the native API key of their one chat server."""
    key = await trio.to_thread.run_sync(add_server, StoreConfig(url=pg_url, pool_size=2), "chat")
    spool_key = tmp_path / "spool.key"
    create_key_file(spool_key)  # one file, shared by every instance
    upstream = f"https://127.0.0.1:{simulator.port}"
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"url": pg_url, "pool_size": 3},
            "spool": {"key_file": str(spool_key), "lease_seconds": LEASE_SECONDS},
            "retry": {"base_delay": 0.05, "max_delay": 0.3, "max_attempts": 100},
            "zulip": {"registration": "open"},
            "apps": [
                {
                    **app_entry("chat", TOPIC, upstream, key_file, ca_file),
                    "matrix": {"app_ids": [hs.IOS_APP]},
                }
            ],
        },
    )
    processes = [await start_pushd_process(nursery, config) for _ in range(3)]
    yield processes, key
    for process in processes:
        if process.process.returncode is None:
            process.signal(signal.SIGTERM)
    for process in processes:
        await process.wait()
        assert "Traceback" not in process.log, process.log


def spool_rows(url: str, instance: PushdProcess) -> tuple[int, int]:
    """Rows in the spool, and how many ``instance`` holds leased now."""
    with psycopg.connect(url) as connection:
        row = connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE lease_owner LIKE %s"
            " AND lease_until > extract(epoch FROM now())) FROM spool",
            (f"%:{instance.process.pid}:%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_any_instance_serves_any_request_and_a_dead_token_is_gone_for_all(
    instances: tuple[list[PushdProcess], str], simulator: ApnsSimulator
) -> None:
    (a, b, c), key = instances
    async with httpx.AsyncClient(timeout=30) as client:
        # A Zulip server registers on A and notifies through B.
        on_a = ZulipServer(client=client, services_url=a.url)
        assert (await on_a.register_server()).status_code == 200
        assert (await on_a.upload_analytics([realm(1)])).status_code == 200
        done = await on_a.register_device(token(1), APNS, user_id=10, ios_app_id=TOPIC)
        assert done.status_code == 200, done.text
        on_b = ZulipServer(
            client=client, services_url=b.url, org_id=on_a.org_id, org_key=on_a.org_key
        )
        body = {"user_id": 10, "apns_payload": {"alert": {"title": "A", "body": "hi"}}}
        notified = await on_b.json("push/notify", body)
        assert notified.status_code == 200, notified.text
        assert notified.json()["total_apple_devices"] == 1
        with trio.fail_after(5):
            (received,) = await simulator.wait_for(1)
        assert received.token == token(1)

        # A dead token found by C is gone on A too.
        auth = {"authorization": f"Bearer {key}"}
        device = {"user": "u", "token": token(2), "app": "chat"}
        assert (await client.post(a.url + "/v1/devices", json=device, headers=auth)).is_success
        simulator.script(token(2), SimReply(status=410, reason="Unregistered"))
        sent = await client.post(
            c.url + "/v1/notifications", json={"user": "u", "alert": "x"}, headers=auth
        )
        assert sent.json()["results"][0]["status"] == "removed", sent.text
        listed = await client.post(a.url + "/v1/users/devices", json={"user": "u"}, headers=auth)
        assert listed.status_code == 200
        assert token(2) not in listed.text, listed.text


async def test_a_killed_instances_backlog_is_delivered_by_the_others(
    instances: tuple[list[PushdProcess], str], simulator: ApnsSimulator, pg_url: str
) -> None:
    (a, b, _), key = instances
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(BACKLOG):
            device = {"user": f"u{n}", "token": token(100 + n), "app": "chat"}
            assert (await client.post(a.url + "/v1/devices", json=device, headers=auth)).is_success
        # The upstream is down, and slow to say so: the instances' retries of the
        # backlog are in flight, under their leases, at any moment.
        simulator.set_default(SimReply(status=503, reason="ServiceUnavailable", delay=0.3))
        for n in range(BACKLOG):
            sent = await client.post(
                b.url + "/v1/notifications", json={"user": f"u{n}", "alert": "x"}, headers=auth
            )
            assert sent.json()["results"][0]["status"] == "retrying", sent.text
        # Every row is in the shared database, not in B's memory; some B holds leased.
        with trio.fail_after(10):
            while True:
                rows, leased_by_b = await trio.to_thread.run_sync(spool_rows, pg_url, b)
                assert rows == BACKLOG
                if leased_by_b:
                    break
                await trio.sleep(0.02)
        b.kill()
        await b.wait()
        # What B held when it died (its leases outlive it by up to LEASE_SECONDS).
        _, in_flight = await trio.to_thread.run_sync(spool_rows, pg_url, b)
        simulator.set_default(SimReply(status=200))
        with trio.fail_after(30):
            while True:
                delivered = {r.token for r in simulator.received if r.status == 200}
                if len(delivered) == BACKLOG:
                    break
                await simulator.wait_for(len(simulator.received) + 1)
    ok = collections.Counter(r.token for r in simulator.received if r.status == 200)
    assert set(ok) == {token(100 + n) for n in range(BACKLOG)}  # nothing lost
    assert sum(ok.values()) - len(ok) <= in_flight, ok  # duplicates: B's in flight at most
    with trio.fail_after(10):  # and the rows are settled: the spool is empty
        while (await trio.to_thread.run_sync(spool_rows, pg_url, b))[0]:  # noqa: ASYNC110
            await trio.sleep(0.1)
    print(
        f"delivered {len(ok)} rows ({in_flight} leased by B when it was killed),"
        f" duplicates: {sum(ok.values()) - len(ok)}"
    )


@pytest.mark.xfail(
    strict=True,
    reason="Matrix dedupe is still per process (frontends/matrix/gateway.py Dedupe); "
    "issue 12 item 3 moves it to the store's dedupe_seen",
)
async def test_a_matrix_notify_retried_to_another_instance_is_sent_once(
    instances: tuple[list[PushdProcess], str], simulator: ApnsSimulator
) -> None:
    (a, b, _), _ = instances
    body = hs.full_event([hs.device(hs.IOS_APP, hs.pushkey_for(token(7)))], event_id="$once")
    async with httpx.AsyncClient(timeout=30) as client:
        for instance in (a, b):  # the homeserver timed out on A and retried on B
            answer = await client.post(instance.url + hs.NOTIFY, json=body)
            assert answer.status_code == 200, answer.text
    await trio.sleep(0.5)
    assert [r.token for r in simulator.received] == [token(7)]
