"""The spool key file as an operator meets it: made by root, read by pushd's own user,
rotated beside a running pushd, and written on a disk that may fill up.

Everything runs as real processes on real files.  Where another user matters, uid and
gid 65534 (``nobody``) stand in for the ``pushd`` user of README's "Running it for
real", through ``setpriv``; those tests need root, as installing pushd does.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pushd.spool.seal import create_key_file, read_keys
from tests.process import ROOT, start_pushd_process, write_config

SETPRIV = "/usr/bin/setpriv"
UNSHARE = "/usr/bin/unshare"
STRACE = "/usr/bin/strace"
#: The uid and gid standing in for the ``pushd`` user.
SERVICE_ID = 65534
AS_SERVICE = [SETPRIV, f"--reuid={SERVICE_ID}", f"--regid={SERVICE_ID}", "--clear-groups"]
#: A tmpfs this small is full after a few pages.
SMALL_DISK = "64k"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SETPRIV),
    reason="needs root and setpriv to act as another user",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pushd(*args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m pushd ARGS`` from this checkout, as root or as ``user``."""
    return subprocess.run(
        [*(user or []), sys.executable, "-m", "pushd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size={size} tmpfs "$KEYS"
printf 'keep me\\n' > "$KEYS/other.key"   # a key file there before the disk filled up
head -c 200000 /dev/zero > "$KEYS/filler" 2>/dev/null
"$PYTHON" -m pushd serve --config "$CONFIG" 2>&1; echo "serve rc=$?"
echo "left: $(cd "$KEYS" && ls -A | grep -v filler | tr '\\n' ' ')"
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(UNSHARE),
    reason="needs root and unshare to mount a small tmpfs",
)
def test_a_first_start_on_a_full_disk_leaves_no_empty_key_file(tmp_path: Path) -> None:
    """The key file was created in place: a first start on a full disk left a 0-byte
    spool.key, and every later start refused it ("holds no key") until an admin deleted
    it.  Now it is written to a temporary file and put in place only once whole: the
    start fails, naming the full disk, and leaves nothing behind."""
    keys = tmp_path / "keys"
    keys.mkdir()
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "spool": {"key_file": str(keys / "spool.key")},
        },
    )
    script = FULL_DISK_SCRIPT.format(size=SMALL_DISK)
    done = subprocess.run(
        [UNSHARE, "--mount", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": ROOT,
            "PYTHON": sys.executable,
            "KEYS": str(keys),
            "CONFIG": str(config),
        },
    )
    if "mount:" in done.stderr and "serve rc=" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert "serve rc=1" in done.stdout, done.stdout + done.stderr
    assert "spool.key_file: cannot write spool key file" in done.stdout
    assert "No space left on device" in done.stdout
    assert "left: other.key \n" in done.stdout, done.stdout


async def test_an_empty_key_file_left_by_a_failed_start_is_replaced_not_one_with_text(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A 0-byte spool.key (what a start on a full disk left before) is taken for none:
    pushd writes a key into its place.  A file holding anything, even
    only a comment, is never overwritten: it is refused as before."""
    spool_key = tmp_path / "spool.key"
    spool_key.touch()
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "spool": {"key_file": str(spool_key)},
        },
    )
    checked = await trio.to_thread.run_sync(lambda: pushd("check-config", str(config)))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    served = await start_pushd_process(nursery, config)
    served.kill()
    await served.wait()
    assert len(read_keys(spool_key)) == 1

    spool_key.write_text("# keys go here\n")
    refused = await start_pushd_process(nursery, config, wait_listening=False)
    assert await refused.wait() == 1
    assert "holds no key" in refused.log, refused.log
    assert spool_key.read_text() == "# keys go here\n"


@pytest.mark.skipif(not os.path.exists(STRACE), reason="needs strace to watch the writes")
def test_new_key_flushes_the_file_before_renaming_it_and_the_directory_after(
    tmp_path: Path,
) -> None:
    """rotate-key re-seals rows (each batch flushed to disk) under the key new-key adds;
    that key was written without fsync, so a power loss could keep the rows and lose
    their key.  Now the new file is flushed before it replaces the old one, and the
    directory after, all before the command goes on."""
    spool_key = tmp_path / "spool.key"
    create_key_file(spool_key)
    config = write_config(
        tmp_path / "pushd.toml",
        {"store": {"path": str(tmp_path / "pushd.sqlite3")}, "spool": {"key_file": "spool.key"}},
    )
    trace = tmp_path / "trace"
    watch = [STRACE, "-f", "-y", "-o", str(trace), "-e", "trace=fsync,rename,renameat,renameat2"]
    done = subprocess.run(
        [*watch, sys.executable, "-m", "pushd", "spool", "new-key", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    calls = [
        line.split(None, 1)[1] for line in trace.read_text().splitlines() if str(tmp_path) in line
    ]
    temporary = re.escape(f"{tmp_path}/.spool.key.")
    steps = [
        ("fsync", rf"^fsync\(\d+<{temporary}\w+\.tmp>\) = 0"),
        ("rename", rf"^rename(at2?)?\(.*{temporary}\w+\.tmp\".*\"{re.escape(str(spool_key))}\""),
        ("fsync directory", rf"^fsync\(\d+<{re.escape(str(tmp_path))}>\) = 0"),
    ]
    found = [next((i for i, c in enumerate(calls) if re.search(p, c)), -1) for _, p in steps]
    assert -1 not in found and found == sorted(found), (found, calls)
    assert len(read_keys(spool_key)) == 2
