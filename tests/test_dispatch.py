"""The delivery engine's retry rules, observed at the simulator."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
import trio.testing

from pushd.config import RetryConfig
from pushd.lanes import backoff
from pushd.simulators.apns import ApnsSimulator, SimReply
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token


def test_backoff_grows_is_capped_and_jittered() -> None:
    config = RetryConfig(base_delay=1.0, max_delay=30.0)
    assert [backoff(n, config, rng=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [backoff(n, config, rng=lambda: 1.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff(20, config, rng=lambda: 1.0) == 30.0
    assert backoff(20, config, rng=lambda: 0.0) == 15.0


async def test_retry_after_is_honoured(pushd: Pushd, simulator: ApnsSimulator) -> None:
    await pushd.register("u", token(1))
    simulator.script(token(1), SimReply(status=429, reason="TooManyRequests", retry_after=1))
    answer = await pushd.send({"user": "u", "alert": "x"})
    assert answer["results"][0]["status"] == "retrying"
    with trio.fail_after(5):
        first, second = await simulator.wait_for(2)
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0  # base_delay is 0.05 s here: Retry-After ruled


async def test_retries_stop_after_max_attempts(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    pushd: Pushd = await start_pushd(retry={"max_attempts": 3})
    await pushd.register("u", token(1))
    simulator.set_default(SimReply(status=500, reason="InternalServerError"))
    await pushd.send({"user": "u", "alert": "x"})
    with trio.fail_after(5):
        await simulator.wait_for(3)
    await trio.sleep(0.5)  # several backoff periods: no fourth attempt comes
    assert len(simulator.received) == 3
    health = (await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())).json()
    assert health["apps"]["chat"]["dropped"] == 1
    assert health["spooled"] == 0


async def test_ttl_zero_means_one_attempt(pushd: Pushd, simulator: ApnsSimulator) -> None:
    await pushd.register("u", token(1))
    simulator.script(token(1), SimReply(status=503, reason="ServiceUnavailable"))
    answer = await pushd.send({"user": "u", "alert": "x", "ttl": 0})
    (result,) = answer["results"]
    assert result["status"] == "failed"
    assert result["reason"].startswith("gave up")
    await trio.sleep(0.3)
    assert len(simulator.received) == 1
    assert simulator.received[0].expiration == 0


async def test_slow_upstream_answers_retrying_then_delivers_in_background(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    pushd: Pushd = await start_pushd(server={"first_attempt_deadline": 0.2})
    await pushd.register("u", token(1))
    await pushd.register("u", token(2))
    simulator.script(token(1), SimReply(delay=0.6))
    answer = await pushd.send({"user": "u", "alert": "x"})
    statuses = {r["token"]: r["status"] for r in answer["results"]}
    assert statuses == {token(1): "retrying", token(2): "delivered"}
    with trio.fail_after(5):
        await simulator.wait_for(2)
    # The slow one was not cancelled and sent again: it arrived exactly once.
    await trio.sleep(0.2)
    assert [r.token for r in simulator.received].count(token(1)) == 1
    health = (await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())).json()
    assert health["apps"]["chat"]["delivered"] == 2


async def test_one_app_at_its_concurrency_limit_does_not_slow_another(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file, ca_file
) -> None:
    from tests.conftest import OTHER_TOPIC, TOPIC, app_entry

    upstream = f"https://127.0.0.1:{simulator.port}"
    slow = {**app_entry("chat", TOPIC, upstream, key_file, ca_file), "concurrency": 1}
    fast = app_entry("other", OTHER_TOPIC, upstream, key_file, ca_file)
    pushd: Pushd = await start_pushd(apps=[slow, fast], server={"first_attempt_deadline": 5})
    for n in range(3):
        await pushd.register("slow", token(n), app="chat")
        simulator.script(token(n), SimReply(delay=0.5))
    await pushd.register("fast", token(50), app="other")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pushd.send, {"user": "slow", "alert": "x"})
        await trio.sleep(0.1)
        started = trio.current_time()
        answer = await pushd.send({"user": "fast", "alert": "y"})
        elapsed = trio.current_time() - started
    assert answer["results"][0]["status"] == "delivered"
    # Queued behind chat's three 0.5 s sends in a row it would take 1.4 s at least; the
    # bound leaves room for the TLS set-up of other's first send on a loaded machine.
    assert elapsed < 1.0


async def test_budget_grants_what_is_free_and_wakes_waiters() -> None:
    from pushd.lanes import Budget

    budget = Budget(10)
    assert await budget.take(7) == 7
    assert await budget.take(7) == 3  # only what is free
    got: list[int] = []

    async def waiter() -> None:
        got.append(await budget.take(5))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # nothing free: it waits
        budget.give(2)
    assert got == [2]
    assert budget.used == 10


async def test_an_unreachable_app_does_not_slow_the_others(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file, ca_file
) -> None:
    from tests.conftest import OTHER_TOPIC, TOPIC, app_entry

    with trio.socket.socket() as sock:  # a port nobody listens on: a dead upstream
        await sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    dead = app_entry("chat", TOPIC, f"https://127.0.0.1:{dead_port}", key_file, ca_file)
    alive = app_entry(
        "other", OTHER_TOPIC, f"https://127.0.0.1:{simulator.port}", key_file, ca_file
    )
    pushd: Pushd = await start_pushd(apps=[dead, alive])
    await pushd.register("u", token(1), app="chat")
    await pushd.register("u", token(2), app="other")
    for _ in range(3):
        started = trio.current_time()
        answer = await pushd.send({"user": "u", "alert": "x"})
        elapsed = trio.current_time() - started
        statuses = {r["app"]: (r["status"], r.get("reason", "")) for r in answer["results"]}
        assert statuses["other"] == ("delivered", "")
        assert statuses["chat"][0] == "retrying"
        assert statuses["chat"][1].startswith("APNs unreachable")
        assert elapsed < 2.0  # neither the dead app's connect attempts nor its timeout
    assert [r.token for r in simulator.received] == [token(2)] * 3


async def test_a_claim_that_waited_past_its_lease_is_not_sent_twice(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    tmp_path: Path,
    key_file: Path,
    ca_file: Path,
) -> None:
    """A spool claim held up by the store (here SQLite's write lock, taken by another
    connection) returns with too little of its lease left for an attempt: its row is not
    sent then, but after the lease, once.  Sent at once, the slow attempt outlived the
    lease, the row was claimed again and the device got the push twice."""
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = {**app_entry("chat", TOPIC, upstream, key_file, ca_file), "request_timeout": 1.9}
    pushd: Pushd = await start_pushd(
        apps=[app], spool={"lease_seconds": 3.0}, retry={"base_delay": 0.5, "max_delay": 0.5}
    )
    await pushd.register("u", token(1))
    simulator.script(token(1), SimReply(status=500), SimReply(delay=1.8))
    answer = await pushd.send({"user": "u", "alert": "x"})
    assert answer["results"][0]["status"] == "retrying"
    database = sqlite3.connect(tmp_path / "pushd-0.sqlite3", isolation_level=None)
    database.execute("BEGIN IMMEDIATE")  # the next claim waits for this lock
    await trio.sleep(3.5)  # under SQLite's busy timeout (5 s): the claim waits, then runs
    database.execute("COMMIT")
    database.close()
    with trio.fail_after(15):
        await simulator.wait_for(2)
    await trio.sleep(3.0)  # a second claim of the row would have sent it again by now
    assert [r.token for r in simulator.received].count(token(1)) == 2  # the 500, then once
    health = (await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())).json()
    assert health["spooled"] == 0 and health["apps"]["chat"]["delivered"] == 1
