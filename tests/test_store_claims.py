"""One pushd per SQLite *file*, whatever path it is reached by.

The claim was keyed by the path (``realpath``): a second pushd on the same file
through a bind mount of its directory, or a hard link, started, released the first
one's spool leases and sent its pushes in flight twice.  Now the claim names the
directory's identity with the file name, and the file's own identity: a second pushd
by another path is refused, naming the store.  Keyed by identities, the claim's name is
short whatever the path: a path too long for an abstract socket address (107 bytes)
made every start fail ("processes of other users hold every slot").
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from pushd.config import StoreConfig
from pushd.store import open_store
from tests.conftest import TOPIC, app_entry
from tests.process import PushdProcess, start_pushd_process, write_config

DOWN_UPSTREAM = "https://127.0.0.1:9"
REFUSED = "another pushd has store "


async def make_store(path: Path) -> None:
    store = await open_store(StoreConfig(path=str(path)))
    await store.close()


def config_for(path: Path, store: Path, key_file: Path, ca_file: Path) -> Path:
    sections: dict[str, Any] = {
        "server": {"port": 0},
        "store": {"path": str(store)},
        "apps": [app_entry("chat", TOPIC, DOWN_UPSTREAM, key_file, ca_file)],
    }
    return write_config(path, sections)


async def refused(process: PushdProcess) -> None:
    assert await process.wait() == 1, process.log
    assert REFUSED in process.log, process.log
    assert "spool: " not in process.log  # it stopped before touching the spool


async def test_a_second_pushd_on_the_same_file_by_a_hard_link_is_refused(
    nursery: trio.Nursery, key_file: Path, ca_file: Path, tmp_path: Path
) -> None:
    database = tmp_path / "a" / "pushd.sqlite3"
    database.parent.mkdir()
    await make_store(database)
    other = tmp_path / "b"
    other.mkdir()
    os.link(database, other / "linked.sqlite3")
    first = await start_pushd_process(
        nursery, config_for(tmp_path / "a.toml", database, key_file, ca_file)
    )
    second = await start_pushd_process(
        nursery,
        config_for(tmp_path / "b.toml", other / "linked.sqlite3", key_file, ca_file),
        wait_listening=False,
    )
    await refused(second)
    assert str(other / "linked.sqlite3") in second.log  # the path it was given
    assert first.process.returncode is None
    first.signal(signal.SIGTERM)
    assert await first.wait() == 0


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to bind-mount a directory in a mount namespace",
)
@pytest.mark.parametrize("exists", [True, False])
async def test_a_second_pushd_through_a_bind_mount_of_the_directory_is_refused(
    nursery: trio.Nursery, key_file: Path, ca_file: Path, tmp_path: Path, exists: bool
) -> None:
    """The second pushd sees the first one's directory at another path (its own mount
    namespace, so nothing is left mounted); with the file there or not yet made."""
    directory, mount_point = tmp_path / "data", tmp_path / "mnt"
    directory.mkdir()
    mount_point.mkdir()
    if exists:
        await make_store(directory / "pushd.sqlite3")
    first = await start_pushd_process(
        nursery, config_for(tmp_path / "a.toml", directory / "pushd.sqlite3", key_file, ca_file)
    )
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    second = await start_pushd_process(
        nursery,
        config_for(tmp_path / "b.toml", mount_point / "pushd.sqlite3", key_file, ca_file),
        command=["unshare", "-m", "sh", "-c", script, "sh", str(directory), str(mount_point)],
        wait_listening=False,
    )
    await refused(second)
    assert first.process.returncode is None
    first.signal(signal.SIGTERM)
    assert await first.wait() == 0


async def test_a_store_path_longer_than_an_abstract_address_starts(
    nursery: trio.Nursery, key_file: Path, ca_file: Path, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    process = await start_pushd_process(
        nursery, config_for(tmp_path / "a.toml", deep / "pushd.sqlite3", key_file, ca_file)
    )
    process.signal(signal.SIGTERM)
    assert await process.wait() == 0, process.log
