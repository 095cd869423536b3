"""The store under test, on each backend, and a way into it from code that is not async.

``store`` (and ``store_config``, where it is opened) runs a test once on SQLite and once
on PostgreSQL: the store has one interface and two engines, and each test holds both to
it.  The PostgreSQL run takes a database of its own from ``pg_url`` (``tests/pg.py``) and
skips, saying how to run it, where no server is configured.

``with_store`` is for the few places that need the store outside a trio run (seeding a
store before a pushd process starts, a sync test): it opens the real async store in a
``trio.run`` of its own, rather than a second, synchronous store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from pushd.config import StoreConfig
from pushd.spool.seal import create_key_file
from pushd.store import Store, open_store

T = TypeVar("T")

#: The backends every store test runs on.
BACKENDS = ("sqlite", "postgres")
#: Connections the PostgreSQL store of a test may open: enough for tests that race
#: several transactions, few enough for five engineers' suites on one server.
TEST_POOL_SIZE = 4


def backend_config(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if backend == "postgres":
        url: str = request.getfixturevalue("pg_url")
        return StoreConfig(url=url, pool_size=TEST_POOL_SIZE)
    return StoreConfig(path=str(tmp_path / "pushd.sqlite3"))


@pytest.fixture(params=BACKENDS)
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    """Where the test's store lives: a SQLite file, or an empty PostgreSQL database."""
    return backend_config(request.param, request, tmp_path)


@pytest.fixture
async def store(store_config: StoreConfig) -> AsyncIterator[Store]:
    """An open store at the current schema, on each backend in turn."""
    opened = await open_store(store_config)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def store_sections(store_config: StoreConfig, tmp_path: Path) -> dict[str, Any]:
    """Config sections for ``start_pushd`` or a process config on the test's backend.

    With PostgreSQL pushd does not create the spool key file (every instance must share
    one), so the test makes it, as an operator would.
    """
    if store_config.url is None:
        return {"store": {"path": store_config.path}}
    key_file = tmp_path / "spool.key"
    if not key_file.exists():
        create_key_file(key_file)
    return {
        "store": {"url": store_config.url, "pool_size": store_config.pool_size},
        "spool": {"key_file": str(key_file)},
    }


def with_store(config: StoreConfig | str, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store ``config`` names (or the SQLite file at that path), run ``fn`` on
    it and close it, in a trio run of its own; for code outside one."""
    where = StoreConfig(path=config) if isinstance(config, str) else config

    async def main() -> T:
        opened = await open_store(where)
        try:
            return await fn(opened)
        finally:
            with trio.CancelScope(shield=True):
                await opened.close()

    return trio.run(main)


def add_server(config: StoreConfig | str, name: str) -> str:
    """Create chat server ``name`` in a store not open in this trio run; its key."""

    async def add(opened: Store) -> str:
        _, key = await opened.add_server(name)
        return key

    return with_store(config, add)


async def run_cli(args: list[str]) -> int:
    """``pushd ARGS`` (``pushd.cli.main``) from inside a test's trio run.

    A store command runs a trio program of its own, as it does beside a running daemon;
    trio runs do not nest, so it goes on a worker thread.
    """
    from pushd import cli

    return await trio.to_thread.run_sync(cli.main, args)
