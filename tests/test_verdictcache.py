"""The dispatcher's verdict cache: which pushes read the store for a kept verdict.

On SQLite (one process, the only writer) a push whose device has no kept verdict reads
nothing; one kept before this process started, or by this process, is still found and
told once.  On PostgreSQL another instance may keep one at any time: every push reads.
Real stores on both backends; the store's read is replaced by a failing one only to
prove where no read happens.
"""

from __future__ import annotations

from typing import Any

import pytest

from pushd.store import DeadToken, Store
from pushd.store.errors import StoreUnavailable
from pushd.verdictcache import VerdictCache


def kept(ref: str) -> DeadToken:
    return DeadToken("app", "token-" + ref, None, "Unregistered", ref)


async def test_a_verdict_kept_before_the_start_is_found_and_told_once(store: Store) -> None:
    await store.remove_dead([kept("earlier")])  # by a previous process
    cache = VerdictCache(store)
    await cache.load()
    found = await cache.late_verdicts(["earlier", "other"])
    assert set(found) == {"earlier"}
    await cache.forget(["earlier"])
    assert await cache.late_verdicts(["earlier"]) == {}
    assert await store.late_verdicts(["earlier"]) == {}


async def test_on_sqlite_a_device_without_a_verdict_reads_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = VerdictCache(store)
    await cache.load()
    cache.add("mine")  # kept by this process's dispatcher
    await store.remove_dead([kept("mine")])

    def broken(refs: Any) -> Any:
        raise StoreUnavailable("io_error")

    monkeypatch.setattr(store, "late_verdicts", broken)
    if store.shared:  # another instance may have kept one: always read
        assert not cache.exact
        with pytest.raises(StoreUnavailable):
            await cache.late_verdicts(["fresh"])
        return
    assert cache.exact
    assert await cache.late_verdicts(["fresh", "other"]) == {}  # no read
    with pytest.raises(StoreUnavailable):  # a device that may have one: read
        await cache.late_verdicts(["mine"])


async def test_a_verdict_kept_again_while_the_first_is_told_is_not_forgotten(
    store: Store,
) -> None:
    cache = VerdictCache(store)
    await cache.load()
    cache.add("pusher")
    await store.remove_dead([kept("pusher")])
    assert set(await cache.late_verdicts(["pusher"])) == {"pusher"}
    cache.add("pusher")  # a newer verdict, about to be written
    await cache.forget(["pusher"])
    await store.remove_dead([kept("pusher")])
    assert set(await cache.late_verdicts(["pusher"])) == {"pusher"}


async def test_a_store_down_at_start_means_every_push_reads(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Any:
        raise StoreUnavailable("io_error")

    monkeypatch.setattr(store, "verdict_refs", broken)
    cache = VerdictCache(store)
    await cache.load()
    assert not cache.exact
    await store.remove_dead([kept("unseen")])
    assert set(await cache.late_verdicts(["unseen"])) == {"unseen"}
