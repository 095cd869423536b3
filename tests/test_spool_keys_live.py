"""The spool's sealing keys beside a running pushd (real processes, see
``tests/spoolrig.py``): a rotation with ``--prune`` under load strands no row, a key
file broken while running is logged and ignored (and refused by a reload), and rows
whose key is missing say so in ``/healthz`` and the metrics until it is back."""

from __future__ import annotations

import shutil
import signal
import sys

import httpx
import trio

from pushd.spool.seal import key_id, read_keys
from tests import spoolrig
from tests.conftest import token
from tests.spoolrig import Rig, spool_rows
from tests.trouble import ROOT

rig = spoolrig.rig  # the fixture, shared with test_spool_trouble.py

#: Concurrent senders while the key is rotated.
SENDERS = 4


async def run_cli(*args: str) -> tuple[int, str]:
    """``pushd ARGS`` beside the daemon: its exit code and what it printed."""
    done = await trio.run_process(
        [sys.executable, "-m", "pushd", *args],
        capture_stdout=True,
        capture_stderr=True,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_a_pruning_rotation_under_load_leaves_no_row_without_its_key(rig: Rig) -> None:
    """Upstream down, pushes spooled without pause while ``rotate-key --prune`` runs
    beside the daemon: every row opens with a key still in the file, and every push
    is delivered once the upstream is back."""
    await rig.configure()
    await rig.start()
    devices = [token(n) for n in range(SENDERS)]
    await rig.register(devices)
    answered: list[int] = []
    rotating = True

    async def sender(n: int) -> None:
        seq = n
        while rotating:
            assert (await rig.send(seq, devices[n]))["status"] == "retrying"
            answered.append(seq)
            seq += SENDERS

    async with trio.open_nursery() as nursery:
        for n in range(SENDERS):
            nursery.start_soon(sender, n)
        await trio.sleep(0.5)
        code, output = await run_cli("spool", "rotate-key", "--prune", "--config", str(rig.config))
        await trio.sleep(0.5)  # rows keep coming after the file changed
        rotating = False
    assert code == 0, output
    assert "now holds 1 key(s)" in output, output
    held = {key_id(key) for key in read_keys(rig.tmp_path / "spool.key")}
    used = {key for key, _ in spool_rows(rig)}
    assert used <= held, (used, held, output)
    await rig.sim.start()
    await rig.sim.wait_delivered(set(answered), within=30)


async def test_a_key_file_broken_while_running_is_ignored_and_a_reload_refused(
    rig: Rig,
) -> None:
    """A typo in the key file: the daemon logs it once and seals and opens with the keys
    it read before; a reload is refused; check-config names the line."""
    await rig.configure()
    pushd = await rig.start()
    await rig.register([token(1)])
    path = rig.tmp_path / "spool.key"
    good = path.read_text()
    path.write_text(good + "not a key!!\n")
    await pushd.wait_for_line(r"spool: .*line \d+: not base64; still sealing with key", 10)
    assert (await rig.send(1, token(1)))["status"] == "retrying"  # sealed, spooled
    code, output = await run_cli("check-config", str(rig.config))
    assert code != 0 and "spool.key_file" in output and "not base64" in output, output
    pushd.signal(signal.SIGHUP)
    await pushd.wait_for_line(r"reload refused.*spool.key_file.*not base64", 10)
    assert pushd.process.returncode is None
    path.write_text(good)
    await rig.sim.start()
    await rig.sim.wait_delivered({1}, within=20)
    lines = [line for line in pushd.lines if "not base64; still sealing" in line]
    assert len(lines) == 1, lines  # once per change of the file, not every few seconds


async def test_rows_under_a_missing_key_say_so_until_the_key_is_back(rig: Rig) -> None:
    """The key file replaced while rows wait: at start pushd names the missing key, the
    app is ``key_missing`` in ``/healthz`` (1 in the metric); the old file put back,
    the app is ``ok`` again and the rows are delivered."""
    await rig.configure(metrics={"port": 0}, spool={"key_file": str(rig.tmp_path / "spool.key")})
    await rig.start()
    await rig.register([token(n) for n in range(3)])
    for n in range(3):
        assert (await rig.send(n, token(n)))["status"] == "retrying"
    assert await rig.stop() == 0
    path = rig.tmp_path / "spool.key"
    shutil.move(path, rig.tmp_path / "spool.key.saved")
    (old,) = {key for key, _ in spool_rows(rig)}
    pushd = await rig.start()  # creates a new key file, without the rows' key
    await pushd.wait_for_line(rf"rows are sealed with key\(s\) {old}, which", 10)
    await rig.sim.start()
    with trio.fail_after(15):
        while (detail := await rig.health())["status"] == "ok":  # noqa: ASYNC110
            await trio.sleep(0.1)
    chat = detail["apps"]["chat"]
    assert chat["state"] == "key_missing" and old in chat["reason"], chat
    metrics = await pushd.wait_for_line(r"metrics on http://", 1)
    url = metrics.split("metrics on ", 1)[1].split()[0]
    async with httpx.AsyncClient() as client:
        text = (await client.get(url)).text
    assert 'pushd_spool_key_missing{app="chat"} 1.0' in text
    keys = read_keys(rig.tmp_path / "spool.key.saved") + read_keys(path)
    path.write_text("".join(f"{line}\n" for line in _lines(keys)))
    with trio.fail_after(10):
        while (await rig.health())["status"] != "ok":  # noqa: ASYNC110
            await trio.sleep(0.1)
    assert not rig.sim.delivered()  # the rows wait for their next try (SEAL_RETRY)


def _lines(keys: list[bytes]) -> list[str]:
    import base64

    return [base64.b64encode(key).decode() for key in keys]
