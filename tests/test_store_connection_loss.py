"""PostgreSQL connection loss while pushd serves: 503 in each protocol's form, the pool
reconnects, and nothing is half-written.

pushd runs in this process (``start_pushd``) on a database of the test's own; a second
connection, which pushd does not own, ends pushd's backends with
``pg_terminate_backend``, as a database restart, a failover or an administrator would.

- *Mid-transaction*: pushd's backend is terminated inside a write of two statements
  (a Zulip re-registration with both ids: the user-id row goes, the uuid row comes),
  held there by a row this test keeps uncommitted.  The answer is 503
  ``STORE_UNAVAILABLE`` and the first statement is undone; the same through the native
  API.  Idle connections terminated (a failover) cost no request anything: a read, or a
  write whose ``BEGIN`` fails, runs again on a live connection.
- *An outage*: the database refuses connections.  Requests are answered 503 within
  seconds (native JSON and Zulip forms, with Retry-After), ``/healthz`` says degraded;
  when the database takes connections again, pushd serves again within seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import trio

from pushd.spool.seal import create_key_file
from pushd.store.postgres import POOL_TIMEOUT, RECONNECT_TIMEOUT, UNREACHABLE_WAIT
from tests.conftest import TOPIC, Pushd, PushdFactory, token
from tests.pg import server_url
from tests.zulip_client import ZulipServer, realm

#: A 503 during an outage must come well before the pool's own timeout.
OUTAGE_ANSWER_WITHIN = POOL_TIMEOUT / 3
#: Requests sent at once during the outage: four times the pool.
CONCURRENT_DURING_OUTAGE = 16
#: After the database is back, pushd serves again within this (the capped backoff).
BACK_WITHIN = RECONNECT_TIMEOUT + 3.0
APNS = 1


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@pytest.fixture
def admin(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the server's own database: not one of pushd's backends."""
    url = server_url()
    assert url is not None
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection
        connection.execute(f'ALTER DATABASE "{database_of(pg_url)}" ALLOW_CONNECTIONS true')


def terminate(admin: psycopg.Connection[Any], database: str) -> int:
    """End every backend of ``database`` (pushd's); how many there were."""
    row = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


async def start(start_pushd: PushdFactory, pg_url: str, tmp_path: Path) -> Pushd:
    key_file = tmp_path / "spool.key"
    create_key_file(key_file)
    pushd: Pushd = await start_pushd(
        store={"url": pg_url, "pool_size": 4},
        spool={"key_file": str(key_file)},
        zulip={"registration": "open"},
        native={"rate_limit": 100_000},
    )
    return pushd


def user_uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def assert_store_unavailable(response: httpx.Response, *, zulip: bool) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    if zulip:
        assert (body["result"], body["code"]) == ("error", "STORE_UNAVAILABLE"), body
    else:
        assert body["error"]["code"] == "store_unavailable", body


def terminate_waiting(admin: psycopg.Connection[Any], database: str) -> int:
    """End the backends of ``database`` that wait for a lock (pushd's, mid-transaction)."""
    row = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = %s AND wait_event_type = 'Lock'",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


async def cut_mid_transaction(
    admin: psycopg.Connection[Any], database: str, request: Any
) -> httpx.Response:
    """Run ``request`` (a coroutine function) until pushd's transaction waits on the
    lock a test holds, then terminate that backend; the request's answer."""
    answer: list[httpx.Response] = []

    async def send() -> None:
        answer.append(await request())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.fail_after(10):
            while not await trio.to_thread.run_sync(terminate_waiting, admin, database):  # noqa: ASYNC110
                await trio.sleep(0.02)
    return answer[0]


async def test_a_backend_terminated_mid_transaction_is_a_503_and_leaves_nothing_half_written(
    start_pushd: PushdFactory, pg_url: str, admin: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """A Zulip re-registration with both ids deletes the user-id row and inserts the
    uuid row, in one transaction.  pushd's backend is terminated between the two (the
    insert waits on a row this test holds uncommitted): the answer is 503, and the
    delete did not happen."""
    pushd = await start(start_pushd, pg_url, tmp_path)
    store = pushd.services.store
    database = database_of(pg_url)
    zulip = ZulipServer(client=pushd.client, services_url=pushd.url)
    assert (await zulip.register_server()).status_code == 200
    assert (await zulip.upload_analytics([realm(1)])).status_code == 200
    realm_uuid = realm(1)["uuid"]
    assert (await zulip.register_device(token(1), APNS, user_id=1, ios_app_id=TOPIC)).is_success

    # Idle connections lost (a failover): the first use of a dead one finds it, the
    # pool's other idle connections are checked, and the read or write runs again on a
    # live one, unnoticed by the caller; first a read (authentication), then a write.
    assert await trio.to_thread.run_sync(terminate, admin, database) > 0
    for n in range(3):
        body = {"user": "carol", "token": token(40 + n), "app": "chat"}
        assert (await pushd.post("/v1/devices", body)).status_code == 201
    assert await trio.to_thread.run_sync(terminate, admin, database) > 0
    assert await store.rate_hit("failover", 0) == 1
    assert await store.rate_hit("failover", 0) == 2  # the first counted once

    async def rows() -> list[tuple[Any, ...]]:
        return await store.engine.read(
            lambda tx: tx.all(
                "SELECT user_id, user_uuid FROM zulip_registrations WHERE token = ?", (token(1),)
            )
        )

    async def reregister() -> httpx.Response:
        return await zulip.register_device(
            token(1), APNS, user_id=1, user_uuid=user_uuid(1), realm_uuid=realm_uuid,
            ios_app_id=TOPIC,
        )  # fmt: skip

    with psycopg.connect(pg_url) as blocker:  # another instance, mid-transaction
        blocker.execute(
            "INSERT INTO zulip_registrations (server_uuid, kind, token, ios_app_id, user_uuid,"
            " registered_at) VALUES (%s, 1, %s, %s, %s, 0)",
            (zulip.org_id, token(1), TOPIC, user_uuid(1)),
        )
        cut = await cut_mid_transaction(admin, database, reregister)
        blocker.rollback()
    assert_store_unavailable(cut, zulip=True)
    assert await rows() == [(1, None)]  # the delete before the cut was rolled back
    assert (await reregister()).status_code == 200
    assert await rows() == [(None, user_uuid(1))]

    # The same through the native API.
    server = await store.authenticate(pushd.key)
    assert server is not None

    async def register() -> httpx.Response:
        return await pushd.post("/v1/devices", {"user": "dave", "token": token(50), "app": "chat"})

    with psycopg.connect(pg_url) as blocker:
        blocker.execute(
            "INSERT INTO registrations (server_id, user_id, token, app, environment,"
            " registered_at) VALUES (%s, 'someone', %s, 'chat', 'sandbox', 0)",
            (server.id, token(50)),
        )
        cut = await cut_mid_transaction(admin, database, register)
        blocker.rollback()
    assert_store_unavailable(cut, zulip=False)
    assert await store.token_registrations(server.id, [token(50)]) == []
    assert (await register()).status_code == 201
    (stored,) = await store.token_registrations(server.id, [token(50)])
    assert stored.user_id == "dave"


async def test_a_database_that_refuses_connections_is_a_prompt_503_until_it_is_back(
    start_pushd: PushdFactory, pg_url: str, admin: psycopg.Connection[Any], tmp_path: Path
) -> None:
    pushd = await start(start_pushd, pg_url, tmp_path)
    zulip = ZulipServer(client=pushd.client, services_url=pushd.url)
    assert (await zulip.register_server()).status_code == 200
    await pushd.register("alice", token(1))
    database = database_of(pg_url)

    await trio.to_thread.run_sync(
        admin.execute, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'
    )
    assert await trio.to_thread.run_sync(terminate, admin, database) > 0
    for n in range(3):
        started = time.monotonic()
        body = {"user": "bob", "token": token(10 + n), "app": "chat"}
        assert_store_unavailable(await pushd.post("/v1/devices", body), zulip=False)
        assert time.monotonic() - started < OUTAGE_ANSWER_WITHIN
    # Many at once, more than the pool's 4 worker slots: each still hears its 503
    # promptly (each had waited a whole UNREACHABLE_WAIT holding a slot: 1.0-5.0 s).
    waits: list[float] = []

    async def register(n: int) -> None:
        began = time.monotonic()
        body = {"user": "carol", "token": token(40 + n), "app": "chat"}
        assert_store_unavailable(await pushd.post("/v1/devices", body), zulip=False)
        waits.append(time.monotonic() - began)

    async with trio.open_nursery() as nursery:
        for n in range(CONCURRENT_DURING_OUTAGE):
            nursery.start_soon(register, n)
    assert max(waits) < UNREACHABLE_WAIT * 2, sorted(waits)
    print(f"{len(waits)} at once during the outage: 503 after {min(waits):.2f}-{max(waits):.2f} s")
    started = time.monotonic()
    refused = await zulip.register_device(token(20), APNS, user_id=1, ios_app_id=TOPIC)
    assert_store_unavailable(refused, zulip=True)
    assert time.monotonic() - started < OUTAGE_ANSWER_WITHIN
    health = (await pushd.client.get(pushd.url + "/healthz", headers={})).json()
    assert health["status"] == "degraded"

    await trio.to_thread.run_sync(
        admin.execute, f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'
    )
    back = time.monotonic()
    with trio.fail_after(BACK_WITHIN):
        while True:
            response = await pushd.post(
                "/v1/devices", {"user": "bob", "token": token(30), "app": "chat"}
            )
            if response.status_code == 201:
                break
            assert_store_unavailable(response, zulip=False)
            await trio.sleep(0.2)
    print(f"serving again {time.monotonic() - back:.2f} s after the database was")
    health = (await pushd.client.get(pushd.url + "/healthz", headers={})).json()
    assert health["status"] == "ok"
    # What was refused was not written; what was answered is there.
    tokens = {r.token for r in await pushd.services.store.token_registrations(
        1, [token(n) for n in (1, 10, 11, 12, 30)])}  # fmt: skip
    assert tokens == {token(1), token(30)}


async def test_sessions_free_their_locks_and_notice_a_vanished_database(pg_url: str) -> None:
    """pushd's connections ask the server to end a session left inside a transaction
    (a client gone mid-claim: the spool rows it locked free again for the other
    instances) and use TCP keepalives and a bound on unanswered data, so a database that
    vanished without a word is noticed in about 30 s, not TCP's hours (a proxy that
    swallowed every byte had held a claim's locks for as long as it ran)."""
    from pushd.config import StoreConfig
    from pushd.store import open_store
    from pushd.store.postgres import IDLE_IN_TRANSACTION_MS, TCP_SETTINGS

    store = await open_store(StoreConfig(url=pg_url, pool_size=1))
    try:

        def settings() -> tuple[str, dict[str, str]]:
            with store.engine.pool.connection() as connection:  # type: ignore[attr-defined]
                (value,) = connection.execute("SHOW idle_in_transaction_session_timeout").fetchone()
                return str(value), dict(connection.info.get_parameters())

        idle, parameters = await trio.to_thread.run_sync(settings)
    finally:
        await store.close()
    assert idle == f"{IDLE_IN_TRANSACTION_MS // 1000}s"
    for name, value in TCP_SETTINGS.items():
        assert parameters.get(name) == str(value), (name, parameters)
