"""The spool's table, on SQLite and on PostgreSQL, and the spool as pushd uses it.

Store level: rows added and claimed with leases (a leased row is not claimed again; an
expired lease is taken over; on PostgreSQL concurrent claimers never share a row and do
not wait on each other, ``FOR UPDATE SKIP LOCKED``), settled in one transaction,
counted, purged, re-sealed under another key.  Through a running pushd: ``max_queued``
refuses what does not fit (``spool_full``), an expired row is dropped unsent, and what
is stored is sealed: the message text is nowhere in the database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from pushd.config import StoreConfig
from pushd.model import ApnsPush
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.spool.seal import SpoolKeys, create_key_file, key_id, prepend_key, read_keys
from pushd.store import Store, open_store
from pushd.store.spool import Reschedule, SpoolEntry
from tests.conftest import Pushd, PushdFactory, token

APP = "chat"
#: A message whose text must never reach the store.
SECRET = "the eagle lands at midnight 7f3a"


def entry(n: int, *, due: float, app: str = APP, **fields: Any) -> SpoolEntry:
    values: dict[str, Any] = {
        "app": app,
        "token": token(n),
        "protocol": "native",
        "ref": None,
        "caller": None,
        "registered_at": None,
        "key_id": "k1",
        "sealed": b"sealed-%d" % n,
        "attempt": 1,
        "due_at": due,
        "expires_at": due + 3600,
        "created_at": due,
        **fields,
    }
    return SpoolEntry(**values)


async def claim(store: Store, owner: str, now: float, *, limit: int = 100, lease: float = 30,
                unknown: bool = True, app: str = APP) -> list[int]:  # fmt: skip
    rows = await store.spool_claim(app, owner, now, now + lease, limit, unknown=unknown)
    return [row.id for row in rows]


# --- adding and claiming ----------------------------------------------------------------


async def test_claim_takes_due_rows_of_the_app_oldest_first_up_to_the_limit(
    store: Store,
) -> None:
    now = time.time()
    ids = await store.spool_add(
        [entry(1, due=now - 1), entry(2, due=now - 5), entry(3, due=now + 60),
         entry(4, due=now - 3, app="other")]
    )  # fmt: skip
    assert len(ids) == 4 and len(set(ids)) == 4
    rows = await store.spool_claim(APP, "a", now, now + 3600, 1, unknown=True)
    assert [(row.id, row.token, row.sealed) for row in rows] == [(ids[1], token(2), b"sealed-2")]
    assert await claim(store, "a", now, lease=3600) == [ids[0]]  # the future row waits
    assert await claim(store, "a", now + 61) == [ids[2]]
    assert await claim(store, "a", now, app="other") == [ids[3]]


async def test_a_claim_takes_half_the_oldest_and_half_the_newest_due_rows(
    store: Store,
) -> None:
    """A row spooled last is not starved behind a backlog, nor the oldest by new ones."""
    now = time.time()
    ids = await store.spool_add([entry(n, due=now - 100 + n) for n in range(10)])
    rows = await store.spool_claim(APP, "a", now, now + 3600, 5, unknown=True)
    assert [row.id for row in rows] == [ids[0], ids[1], ids[2], ids[8], ids[9]]
    rows = await store.spool_claim(APP, "a", now, now + 3600, 4, unknown=True)
    assert [row.id for row in rows] == [ids[3], ids[4], ids[6], ids[7]]


async def test_a_leased_row_is_not_claimed_again_until_its_lease_expires(store: Store) -> None:
    now = time.time()
    (row_id,) = await store.spool_add([entry(1, due=now)])
    assert await claim(store, "instance-a", now, lease=10) == [row_id]
    assert await claim(store, "instance-b", now + 5) == []
    (stats,) = await store.spool_stats(now + 5)
    assert (stats.depth, stats.leased, stats.due) == (1, 1, 0)
    # Instance A died: once its lease is over, B takes the row over.
    assert await claim(store, "instance-b", now + 11) == [row_id]
    owner = await store.engine.read(lambda tx: tx.one("SELECT lease_owner FROM spool"))
    assert owner == ("instance-b",)


async def test_a_row_added_in_flight_is_leased_to_its_sender(store: Store) -> None:
    now = time.time()
    await store.spool_add([entry(1, due=now, lease_owner="a", lease_until=now + 60)])
    assert await claim(store, "b", now + 1) == []
    assert await store.spool_release("a") == 1
    assert len(await claim(store, "b", now + 1)) == 1


async def test_rows_whose_outcome_is_unknown_wait_for_a_healthy_upstream(store: Store) -> None:
    now = time.time()
    known, unknown = await store.spool_add([entry(1, due=now), entry(2, due=now, unknown=True)])
    assert await claim(store, "a", now, unknown=False) == [known]
    assert await claim(store, "a", now, unknown=True) == [unknown]


async def test_concurrent_claimers_never_get_the_same_row(
    store: Store, store_config: StoreConfig
) -> None:
    """Four instances draining one backlog at once: every row goes to exactly one."""
    now = time.time()
    total = 300
    await store.spool_add([entry(n, due=now - n / 1000) for n in range(total)])
    stores = [store, *[await open_store(store_config) for _ in range(3)]]
    claimed: dict[str, list[int]] = {}
    try:

        async def drain(into: Store, owner: str) -> None:
            mine = claimed.setdefault(owner, [])
            while ids := await claim(into, owner, now, limit=7):
                mine.extend(ids)

        async with trio.open_nursery() as nursery:
            for n, into in enumerate(stores):
                nursery.start_soon(drain, into, f"instance-{n}")
    finally:
        for other in stores[1:]:
            await other.close()
    every = [row_id for ids in claimed.values() for row_id in ids]
    assert len(every) == total
    assert len(set(every)) == total, "a row was claimed twice"


async def test_on_postgresql_a_claimer_skips_rows_another_transaction_holds(
    store: Store, store_config: StoreConfig
) -> None:
    """FOR UPDATE SKIP LOCKED: rows locked by another instance's claim are passed over
    at once, not waited for."""
    if store_config.url is None:
        pytest.skip("SQLite has one writer at a time: there is nothing to skip")
    import psycopg

    now = time.time()
    ids = await store.spool_add([entry(n, due=now - 10 + n) for n in range(6)])
    with psycopg.connect(store_config.url) as other:  # an instance mid-claim
        other.execute("SELECT id FROM spool WHERE id = ANY(%s) FOR UPDATE", (ids[:3],)).fetchall()
        with trio.fail_after(3):  # a claim that waited would sit here until the rollback
            assert await claim(store, "b", now) == ids[3:]
        other.rollback()
    assert await claim(store, "b", now) == ids[:3]


# --- settling ---------------------------------------------------------------------------


async def test_settle_removes_final_rows_reschedules_others_and_counts_in_one_transaction(
    store: Store,
) -> None:
    now = time.time()
    done, again = await store.spool_add([entry(1, due=now), entry(2, due=now)])
    await claim(store, "a", now)
    await store.spool_settle(
        [done], [Reschedule(again, 2, now + 30, True, "upstream 503")], [(APP, "delivered", 1)]
    )
    row = await store.engine.read(
        lambda tx: tx.one(
            "SELECT id, attempt, due_at, unknown, last_reason, lease_owner, lease_until FROM spool"
        )
    )
    assert row is not None
    assert (row[0], row[1], row[3], row[4], row[5], row[6]) == (
        again, 2, 1, "upstream 503", None, None,
    )  # fmt: skip
    assert abs(float(row[2]) - (now + 30)) < 1e-3
    assert await store.spool_counters() == {(APP, "delivered"): 1}
    assert await store.spool_next_due() == pytest.approx(now + 30)

    # If any part fails (here the dead-token step), none of it is written.
    def broken(_: object) -> None:
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError):
        await store.spool_settle([again], [], [(APP, "delivered", 5)], also=broken)
    assert (await store.spool_stats(now))[0].depth == 1
    assert await store.spool_counters() == {(APP, "delivered"): 1}


async def test_a_late_reschedule_leaves_a_row_another_instance_took_over(store: Store) -> None:
    """A's attempt outlived its lease and B claimed the row: A's transient failure must
    not clear B's lease (a third instance would send it too).  A final outcome removes
    the row whoever holds it."""
    now = time.time()
    row_id, other_id = await store.spool_add([entry(1, due=now), entry(2, due=now)])
    assert await claim(store, "a", now, lease=1) == [row_id, other_id]
    assert await claim(store, "b", now + 2, lease=30) == [row_id, other_id]
    late = [Reschedule(row_id, 2, now + 5, False, "upstream 503")]
    await store.spool_settle([], late, owner="a")
    assert await claim(store, "c", now + 6) == []  # still B's
    await store.spool_settle([], late, owner="b")
    assert await claim(store, "c", now + 6) == [row_id]
    await store.spool_settle([other_id], [], owner="a")
    assert [row.id for row in await store.spool_page(0, 10)] == [row_id]


async def test_expired_rows_are_claimed_to_be_dropped_and_purge_is_counted(store: Store) -> None:
    now = time.time()
    await store.spool_add([entry(1, due=now - 10, expires_at=now - 1), entry(2, due=now)])
    rows = await store.spool_claim(APP, "a", now, now + 30, 10, unknown=True)
    expired = [row.id for row in rows if row.expires_at <= now]
    assert len(expired) == 1
    await store.spool_settle(expired, [], [(APP, "expired", 1)])
    assert await store.spool_purge(APP) == 1
    assert await store.spool_counters() == {(APP, "expired"): 1, (APP, "purged"): 1}
    assert await store.spool_stats(now) == []
    assert await store.spool_next_due() is None


# --- sealing ----------------------------------------------------------------------------


async def test_rows_name_their_key_are_sealed_and_can_be_resealed(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "spool.key"
    create_key_file(path)
    keys = SpoolKeys.load(path)
    first = keys.current
    assert first == key_id(read_keys(path)[0])
    push = ApnsPush(payload=b'{"aps":{"alert":"%s"}}' % SECRET.encode(), push_type="alert")
    now = time.time()

    async def add(n: int) -> None:
        kid, sealed = keys.seal(APP, token(n), push)
        await store.spool_add([entry(n, due=now, key_id=kid, sealed=sealed)])

    await add(1)
    second = prepend_key(path)
    keys.refresh()
    await add(2)
    assert await store.spool_key_ids() == {first: 1, second: 1}
    raw = await store.engine.read(lambda tx: tx.all("SELECT * FROM spool"))
    assert SECRET.encode() not in b"".join(str(value).encode() for row in raw for value in row)
    assert all(SECRET.encode() not in bytes(row[8]) for row in raw)  # the sealed column

    # Re-seal every row under the current key (pushd spool rotate-key).
    rows = await store.spool_page(0, 10)
    assert [row.key_id for row in rows] == [first, second]
    resealed = []
    for row in rows:
        opened = keys.open(row.key_id, row.sealed, row.app, row.token)
        assert opened == push
        resealed.append((row.id, *keys.seal(row.app, row.token, opened)))
    await store.spool_reseal(resealed)
    assert await store.spool_key_ids() == {second: 2}
    (row, _) = await store.spool_page(0, 10)
    assert keys.open(row.key_id, row.sealed, row.app, row.token) == push


# --- through a running pushd ------------------------------------------------------------


async def counter(pushd: Pushd, event: str) -> int:
    """The app's spool counter of ``event``, as the ledger last wrote it."""
    return (await pushd.services.store.spool_counters()).get(("chat", event), 0)


async def spool_rows(pushd: Pushd) -> list[tuple[Any, ...]]:
    return await pushd.services.store.engine.read(lambda tx: tx.all("SELECT * FROM spool"))


async def test_max_queued_refuses_what_does_not_fit_as_spool_full(
    start_pushd: PushdFactory, simulator: ApnsSimulator, store_sections: dict[str, Any]
) -> None:
    pushd: Pushd = await start_pushd(retry={"max_queued": 2}, **store_sections)
    for n in range(3):
        await pushd.register("u", token(n))
    simulator.set_default(SimReply(status=429, reason="TooManyRequests", retry_after=60))
    answer = await pushd.send({"user": "u", "alert": "x"})
    statuses = sorted((r["status"], r.get("reason") or "") for r in answer["results"])
    assert [s for s, _ in statuses] == ["failed", "retrying", "retrying"]
    assert ("failed", "spool_full") in statuses
    assert len(await spool_rows(pushd)) == 2
    with trio.fail_after(5):  # the ledger writes its counters in a batch
        while await counter(pushd, "spool_full") != 1:  # noqa: ASYNC110 (nothing to wait on)
            await trio.sleep(0.05)


async def test_a_row_that_expired_while_waiting_is_dropped_unsent(
    start_pushd: PushdFactory, simulator: ApnsSimulator, store_sections: dict[str, Any]
) -> None:
    """A row left by an instance that died, found after its push expired (the upstream
    was down longer than the push's lifetime): dropped, counted, never sent."""
    pushd: Pushd = await start_pushd(**store_sections)
    now = time.time()
    push = ApnsPush(payload=b'{"aps":{"alert":"late"}}', push_type="alert")
    kid, sealed = pushd.services.dispatcher.keys.seal("chat", token(1), push)
    await pushd.services.store.spool_add(
        [entry(1, due=now - 60, expires_at=now - 1, key_id=kid, sealed=sealed, app="chat")]
    )
    pushd.services.dispatcher.worker.wake()
    with trio.fail_after(8):
        while await counter(pushd, "expired") != 1:  # noqa: ASYNC110 (nothing to wait on)
            await trio.sleep(0.05)
    assert await spool_rows(pushd) == []
    assert simulator.received == []


async def test_the_spool_holds_no_message_text(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    store_sections: dict[str, Any],
    store_config: StoreConfig,
) -> None:
    pushd: Pushd = await start_pushd(**store_sections)
    await pushd.register("u", token(1))
    simulator.set_default(SimReply(status=503, reason="ServiceUnavailable"))
    simulator.script(token(1), SimReply(status=429, reason="TooManyRequests", retry_after=60))
    answer = await pushd.send({"user": "u", "alert": {"title": SECRET, "body": SECRET}})
    assert answer["results"][0]["status"] == "retrying"
    (row,) = await spool_rows(pushd)
    sealed = bytes(row[8])
    assert len(sealed) > len(SECRET) and SECRET.encode() not in sealed
    assert SECRET not in repr(row)
    if store_config.url is None:  # nor in the file, its WAL, or anything beside them
        folder = Path(store_config.path).parent
        for path in folder.glob(Path(store_config.path).name + "*"):
            assert SECRET.encode() not in path.read_bytes(), path
    # It is the push, sealed: the spool key opens it to the text.
    store: Store = pushd.services.store
    (spooled,) = await store.spool_page(0, 10)
    opened = pushd.services.dispatcher.keys.open(
        spooled.key_id, spooled.sealed, spooled.app, spooled.token
    )
    assert isinstance(opened, ApnsPush) and SECRET.encode() in opened.payload
