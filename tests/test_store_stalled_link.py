"""One instance's link to PostgreSQL stalls: its callers hear 503, it serves once the
link moves again, and the other instance goes on delivering.

A stall (a hung proxy or connection pooler between pushd and the database) keeps the
TCP connections open and acknowledged, so no statement ends by itself: a request that
had taken a connection waited for as long as the stall lasted, and the requests queued
behind the pool's threads waited with it, however long.  A store call is now given up
``GIVE_UP_AFTER`` after it began (its connection shut), and its wait for a thread
counts against ``POOL_TIMEOUT`` as its wait for a connection does.  Real pushd
processes on one database, each through a proxy of its own (:mod:`tests.dbproxy`), the
APNs simulator behind them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from pushd.config import StoreConfig
from pushd.simulators.apns import ApnsSimulator
from pushd.spool.seal import create_key_file
from pushd.store.postgres import GIVE_UP_AFTER, POOL_TIMEOUT, RECONNECT_TIMEOUT
from tests.conftest import TOPIC, app_entry, token
from tests.dbproxy import DbProxy
from tests.process import PushdProcess, start_pushd_process, write_config
from tests.storefixtures import add_server

POOL_SIZE = 2
#: Sends made at once to the stalled instance: more than its pool's threads.
SENDS = 4
#: Every send to the stalled instance is answered within this: a store call's wait for
#: a thread, for a connection and for the database's answer share one bound (and a
#: margin for a loaded machine).  Before the change, one was never answered.
ANSWER_WITHIN = max(GIVE_UP_AFTER, POOL_TIMEOUT) + 4.0
#: After the link moves again, the instance serves again within this.
BACK_WITHIN = RECONNECT_TIMEOUT + 5.0


@pytest.fixture
async def instances(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    pg_url: str,
) -> AsyncIterator[tuple[list[PushdProcess], DbProxy, str]]:
    """Instances A (through the proxy it returns) and B (straight), and their chat
    server's key."""
    key = await trio.to_thread.run_sync(add_server, StoreConfig(url=pg_url, pool_size=1), "chat")
    database = urlsplit(pg_url)
    proxy = DbProxy((database.hostname or "127.0.0.1", database.port or 5432))
    await nursery.start(proxy.serve)
    spool_key = tmp_path / "spool.key"
    create_key_file(spool_key)
    upstream = f"https://127.0.0.1:{simulator.port}"
    processes = []
    for name, url in (("a", proxy.url_for(pg_url)), ("b", pg_url)):
        config = write_config(
            tmp_path / f"pushd-{name}.toml",
            {
                "server": {"port": 0},
                "store": {"url": url, "pool_size": POOL_SIZE},
                "spool": {"key_file": str(spool_key)},
                "native": {"rate_limit": 100_000},
                "apps": [app_entry("chat", TOPIC, upstream, key_file, ca_file)],
            },
        )
        processes.append(await start_pushd_process(nursery, config))
    yield processes, proxy, key
    proxy.resume()
    for process in processes:
        process.signal(signal.SIGTERM)
    for process in processes:
        await process.wait()
        assert "Traceback" not in process.log, process.log


async def test_a_stalled_link_is_a_503_for_its_callers_and_the_others_deliver(
    instances: tuple[list[PushdProcess], DbProxy, str], simulator: ApnsSimulator
) -> None:
    (a, b), proxy, key = instances
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=60) as client:

        async def send(instance: PushdProcess, user: str) -> httpx.Response:
            body = {"user": user, "alert": "x"}
            return await client.post(instance.url + "/v1/notifications", json=body, headers=auth)

        for n in range(SENDS):
            device = {"user": f"u{n}", "token": token(n + 1), "app": "chat"}
            added = await client.post(a.url + "/v1/devices", json=device, headers=auth)
            assert added.status_code == 201, added.text
        proxy.stall()
        answers: list[tuple[float, httpx.Response]] = []
        began = time.monotonic()

        async def send_to_a(n: int) -> None:
            answer = await send(a, f"u{n}")
            answers.append((time.monotonic() - began, answer))

        with trio.move_on_after(ANSWER_WITHIN):
            async with trio.open_nursery() as nursery:
                for n in range(SENDS):
                    nursery.start_soon(send_to_a, n)
                # Meanwhile B, whose link is fine, delivers.
                delivered = await send(b, "u0")
                assert delivered.status_code == 200, delivered.text
                assert delivered.json()["summary"]["delivered"] == 1, delivered.text
        assert len(answers) == SENDS, f"{SENDS - len(answers)} of {SENDS} sends unanswered"
        for took, answer in answers:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "store_unavailable", answer.text
            assert took < ANSWER_WITHIN, took
        health = await client.get(a.url + "/healthz")
        assert health.status_code == 503, health.text

        proxy.resume()
        with trio.fail_after(BACK_WITHIN):
            while (answer := await send(a, "u1")).status_code == 503:  # noqa: ASYNC110
                await trio.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert answer.json()["summary"]["delivered"] == 1, answer.text
        health = await client.get(a.url + "/healthz")
        assert health.status_code == 200, health.text
    await a.wait_for_line(r"store unavailable: (stalled|pool_exhausted)")
