"""The spool key file as an operator meets it: made by root, read by pushd's own user,
rotated beside a running pushd, and written on a disk that may fill up.

Everything runs as real processes on real files.  Where another user matters, uid and
gid 65534 (``nobody``) stand in for the ``pushd`` user of README's "Running it for
real", through ``setpriv``; those tests need root, as installing pushd does.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from pushd.spool.seal import create_key_file, read_keys
from tests.process import ROOT, start_pushd_process, write_config

README = Path(ROOT) / "README.md"
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


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the service user can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pushd-keyfiles-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def readme_install_steps(root: Path) -> list[str]:
    """The shell lines of README's "Running it for real" that prepare files, moved under
    ``root``, with the service user's name replaced by its id: what a test can run of
    the install (no useradd, no editor, no systemd)."""
    text = README.read_text()
    block = text.split("## Running it for real", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    steps = []
    for line in block.splitlines():
        command = re.sub(r"\s+#.*$", "", line)
        if not command.startswith(("install -d", "python -m pushd init", "chgrp", "chown")):
            continue
        for name, value in (
            ("/etc/pushd", f"{root}/etc/pushd"),
            ("/var/lib/pushd", f"{root}/var/lib/pushd"),
            ("python -m pushd", f"{sys.executable} -m pushd"),
            ("-o pushd", f"-o {SERVICE_ID}"),
            ("-g pushd", f"-g {SERVICE_ID}"),
            ("chgrp pushd", f"chgrp {SERVICE_ID}"),
            ("chown pushd:", f"chown {SERVICE_ID}:{SERVICE_ID}"),
        ):
            command = command.replace(name, value)
        steps.append(command)
    return steps


@needs_root
async def test_the_readme_install_gives_a_service_that_reads_its_config_and_starts(
    nursery: trio.Nursery, shared_dir: Path
) -> None:
    """README's install, run as root, left spool.key root:root 0600: as the service
    user check-config and serve failed "spool.key_file: cannot read ...: Permission
    denied" and the unit never started.  Now init writes it like the config (0640, the
    config's group) and the README gives both the service's group."""
    steps = readme_install_steps(shared_dir)
    assert any("init" in step for step in steps) and any("chgrp" in step for step in steps)
    for step in steps:
        done = await trio.run_process(
            ["bash", "-c", step],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "PYTHONPATH": ROOT},
            preexec_fn=lambda: os.umask(0o077),  # a hardened root's umask
        )
        assert done.returncode == 0, (step, done.stderr)
    config = shared_dir / "etc" / "pushd" / "pushd.toml"
    spool_key = config.parent / "spool.key"
    assert (spool_key.stat().st_uid, spool_key.stat().st_gid) == (0, SERVICE_ID)
    assert mode(spool_key) == mode(config) == 0o640
    assert mode(config.parent / "default.key") == 0o600  # only the admin needs it
    # The admin's edit ($EDITOR): free ports, as tests run side by side.
    config.write_text(
        config.read_text().replace("port = 8080", "port = 0") + "\n[metrics]\nport = 0\n"
    )
    checked = await trio.to_thread.run_sync(
        lambda: pushd("check-config", str(config), user=AS_SERVICE)
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    served = await start_pushd_process(nursery, config, command=AS_SERVICE)
    try:
        assert "listening on" in served.log
    finally:
        served.kill()
        await served.wait()


def service_install(root: Path) -> Path:
    """A config and a key file as README's install leaves them: /etc/pushd root:pushd
    0750, pushd.toml and spool.key root:pushd 0640, the store's directory pushd's."""
    etc, lib = root / "etc", root / "lib"
    etc.mkdir(mode=0o750)
    lib.mkdir(mode=0o750)
    os.chown(etc, 0, SERVICE_ID)
    os.chown(lib, SERVICE_ID, SERVICE_ID)
    spool_key = etc / "spool.key"
    create_key_file(spool_key)
    config = write_config(
        etc / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"path": str(lib / "pushd.sqlite3")},
            "spool": {"key_file": "spool.key"},
        },
    )
    for path in (config, spool_key):
        os.chown(path, 0, SERVICE_ID)
        path.chmod(0o640)
    return config


@needs_root
def test_new_key_and_rotate_key_as_root_keep_the_key_files_owner_group_and_mode(
    shared_dir: Path,
) -> None:
    """``spool new-key`` and ``rotate-key`` run as root replaced spool.key with a new
    root:root 0600 file: the running pushd (another uid) could not read it, kept the old
    key, could not open rows re-sealed under the new one, and its restart failed.  Now
    every rewrite keeps the file's owner, group and mode."""
    config = service_install(shared_dir)
    spool_key = config.parent / "spool.key"
    before = spool_key.stat()
    added = pushd("spool", "new-key", "--config", str(config))
    assert added.returncode == 0, added.stderr
    rotated = pushd("spool", "rotate-key", "--keep-key", "--prune", "--config", str(config))
    assert rotated.returncode == 0, rotated.stderr
    after = spool_key.stat()
    assert after.st_ino != before.st_ino  # replaced (so never read half written)...
    assert (after.st_uid, after.st_gid, mode(spool_key)) == (0, SERVICE_ID, 0o640)  # ...alike
    assert len(read_keys(spool_key)) == 1  # pruned down to the new key
    for path in (shared_dir / "lib").iterdir():  # root made the store: the README's chown
        os.chown(path, SERVICE_ID, SERVICE_ID)
    checked = pushd("check-config", str(config), user=AS_SERVICE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert sorted(path.name for path in config.parent.iterdir()) == ["pushd.toml", "spool.key"]


@needs_root
def test_new_key_creates_a_missing_key_file_as_the_config_is_shared(shared_dir: Path) -> None:
    """A PostgreSQL deployment's first step, ``spool new-key`` as root with no key file
    yet, made it root:root 0600: the service's user could not read it and every instance
    refused to start.  It now gets the config's group and mode 0640, as ``init`` does."""
    config = service_install(shared_dir)
    spool_key = config.parent / "spool.key"
    spool_key.unlink()
    created = pushd("spool", "new-key", "--config", str(config))
    assert created.returncode == 0, created.stderr
    assert (spool_key.stat().st_uid, spool_key.stat().st_gid) == (0, SERVICE_ID)
    assert mode(spool_key) == 0o640
    for path in (shared_dir / "lib").iterdir():
        os.chown(path, SERVICE_ID, SERVICE_ID)
    checked = pushd("check-config", str(config), user=AS_SERVICE)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_root
def test_a_rewrite_that_cannot_keep_the_owner_is_refused_and_changes_nothing(
    shared_dir: Path,
) -> None:
    """A user who may write the directory but not give a file root's ownership (here
    the service user itself) would have left a key file of its own instead: refused."""
    config = service_install(shared_dir)
    os.chown(config.parent, SERVICE_ID, SERVICE_ID)  # it may create files there
    spool_key = config.parent / "spool.key"
    text = spool_key.read_text()
    refused = pushd("spool", "new-key", "--config", str(config), user=AS_SERVICE)
    assert refused.returncode == 1
    assert f"owner and group 0:{SERVICE_ID}" in refused.stderr, refused.stderr
    assert "run this as root or as that owner" in refused.stderr
    assert spool_key.read_text() == text
    assert (spool_key.stat().st_uid, mode(spool_key)) == (0, 0o640)
    assert sorted(path.name for path in config.parent.iterdir()) == ["pushd.toml", "spool.key"]


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
    pushd writes a key into its place, keeping its mode.  A file holding anything, even
    only a comment, is never overwritten: it is refused as before."""
    spool_key = tmp_path / "spool.key"
    spool_key.touch()
    spool_key.chmod(0o640)
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
    assert mode(spool_key) == 0o640

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
