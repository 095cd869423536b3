"""Files pushd creates are private whatever the umask (issue 10, hole 6).

``init`` and ``serve`` run as real processes under a umask of 022, the usual default,
which would leave files 0644 and directories 0755.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import trio

from tests.process import ROOT, start_pushd_process


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def lax_umask() -> None:
    os.umask(0o022)


def test_init_makes_private_directories_store_and_key(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "pushd" / "pushd.toml"
    store = tmp_path / "var" / "lib" / "pushd" / "pushd.sqlite3"
    done = subprocess.run(
        [sys.executable, "-m", "pushd", "init", "--config", str(config), "--store", str(store)],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lax_umask,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0, done.stderr
    for directory in (config.parent, tmp_path / "etc", store.parent, tmp_path / "var" / "lib"):
        assert mode(directory) == 0o700, directory
    assert mode(store) == 0o600
    assert mode(config.parent / "default.key") == 0o600
    for side in store.parent.glob("pushd.sqlite3-*"):
        assert mode(side) == 0o600, side


async def test_serve_keeps_the_store_and_its_side_files_private(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    store = tmp_path / "pushd.sqlite3"
    # A store left 0644 by an older pushd, with a lax side file: both are tightened.
    store.touch(mode=0o644)
    os.chmod(store, 0o644)
    wal = tmp_path / "pushd.sqlite3-wal"
    wal.touch()
    os.chmod(wal, 0o644)
    config = tmp_path / "pushd.toml"
    config.write_text(f'[server]\nport = 0\n[store]\npath = "{store}"\n')
    process = await start_pushd_process(nursery, config, preexec_fn=lax_umask)
    try:
        assert mode(store) == 0o600
        sides = sorted(store.parent.glob("pushd.sqlite3-*"))
        assert [side.name for side in sides] == ["pushd.sqlite3-shm", "pushd.sqlite3-wal"]
        for side in sides:
            assert mode(side) == 0o600, side
    finally:
        process.kill()
        await process.wait()
