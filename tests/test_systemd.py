"""pushd under systemd: the unit file, and sd_notify spoken by a real ``pushd serve``.

The notify test plays systemd's side: it binds the datagram socket named by
``$NOTIFY_SOCKET``, sets ``$WATCHDOG_USEC``, and reads what a real pushd process sends.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from pushd.sdnotify import Notifier, monotonic_usec, watchdog_interval
from tests.process import ROOT, start_pushd_process, write_config

UNIT = Path(ROOT) / "systemd" / "pushd.service"
#: systemd asks for a ping within this long; pushd pings at half of it.
WATCHDOG_USEC = 400_000


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the shipped unit.  It checks that ExecStart's
    program exists, so /usr/local/bin/pushd (where the README installs it) is replaced
    by the ``pushd`` this test runs; everything else is verified as shipped.  verify
    exits 0 on some bad settings (an unknown Type= is only "ignoring"), so any message
    about the unit fails the test too."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    installed = Path(sys.executable).parent / "pushd"
    if not installed.exists():
        installed = tmp_path / "pushd"
        installed.write_text(f'#!/bin/sh\nexec {sys.executable} -m pushd "$@"\n')
        installed.chmod(0o755)
    text = UNIT.read_text()
    for setting in (
        "Type=notify\n",
        "NotifyAccess=main\n",
        "WatchdogSec=30s\n",
        "ExecReload=/bin/kill -HUP $MAINPID\n",
    ):
        assert setting in text
    unit = tmp_path / "pushd.service"
    unit.write_text(text.replace("/usr/local/bin/pushd", str(installed)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    about_unit = [line for line in done.stderr.splitlines() if "pushd.service" in line]
    assert done.returncode == 0, done.stderr
    assert about_unit == []


def test_watchdog_interval_is_half_and_only_for_this_process() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


def test_abstract_socket_names_are_reached() -> None:
    """``@name`` is an abstract socket (what systemd uses in containers)."""
    name = f"pushd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        notifier = Notifier("@" + name)
        assert notifier.send(READY=1, STATUS="hello")
        notifier.close()
        assert receiver.recv(4096) == b"READY=1\nSTATUS=hello"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.send(READY=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_pushd_serve_speaks_sd_notify(tmp_path: Path, nursery: trio.Nursery) -> None:
    """READY=1 once the API and metrics ports accept connections (checked the moment
    READY=1 arrives), WATCHDOG=1 every half WATCHDOG_USEC, STATUS= lines, STOPPING=1 on SIGTERM."""
    port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"listen": "127.0.0.1", "port": port},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "metrics": {"port": metrics_port},
        },
    )
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify"
    await receiver.bind(str(notify_path))
    messages: list[dict[str, str]] = []
    process = await start_pushd_process(
        nursery,
        config,
        env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        wait_listening=False,
    )

    async def receive() -> dict[str, str]:
        data = await receiver.recv(65536)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        messages.append(fields)
        return fields

    with trio.fail_after(30):
        while "READY" not in (fields := await receive()):
            pass
    # READY=1 means every listener is bound: connections are accepted now, not "soon".
    for listening in (port, metrics_port):
        probe = trio.socket.socket()
        await probe.connect(("127.0.0.1", listening))
        probe.close()
    assert fields["READY"] == "1"
    assert fields["STATUS"].startswith(f"serving 0 app(s) on http://127.0.0.1:{port}; spool 0")

    with trio.fail_after(10):
        start = trio.current_time()
        pings = 0
        while pings < 6:
            if "WATCHDOG" in await receive():
                pings += 1
        elapsed = trio.current_time() - start
    # Half of 0.4 s: six pings take about 1.2 s (generous bounds: a busy machine).
    assert 0.6 < elapsed < 8, elapsed
    assert any("STATUS" in m and "READY" not in m for m in messages), messages

    # A reload: RELOADING=1 with the monotonic clock (systemd 253's notify-reload
    # needs it), then READY=1; a refused one says so in STATUS=.
    for broken in (False, True):
        if broken:
            config.write_text(config.read_text() + "\n[retry]\nmax_attempts = 0\n")
        process.signal(signal.SIGHUP)
        with trio.fail_after(30):
            while "RELOADING" not in (fields := await receive()):
                pass
            assert abs(int(fields["MONOTONIC_USEC"]) - monotonic_usec()) < 30_000_000
            while "READY" not in (fields := await receive()):
                pass
        assert ("last reload refused" in fields["STATUS"]) is broken

    process.signal(signal.SIGTERM)
    with trio.fail_after(30):
        while "STOPPING" not in (fields := await receive()):
            pass
    assert fields["STOPPING"] == "1"
    assert await process.wait() == 0
    receiver.close()


async def test_a_wedged_event_loop_stops_the_watchdog_pings(tmp_path: Path) -> None:
    """The pings come from the event loop itself: while a blocking call holds the loop,
    none is sent, so systemd's WatchdogSec sees the gap and restarts pushd."""
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(str(tmp_path / "notify"))
    notifier = Notifier(str(tmp_path / "notify"), watchdog=0.05)
    pings: list[float] = []

    async def collect() -> None:
        while True:
            if b"WATCHDOG=1" in await receiver.recv(4096):
                pings.append(time.monotonic())

    async with trio.open_nursery() as watching:
        watching.start_soon(collect)
        await watching.start(notifier.run, lambda: "status")
        await trio.sleep(0.5)
        time.sleep(1.0)  # noqa: ASYNC251 (the wedge under test)
        await trio.sleep(0.5)
        watching.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 8
    assert max(gaps) >= 0.9  # nothing while wedged
    assert sorted(gaps)[len(gaps) // 2] < 0.5  # otherwise every ~0.05 s
    notifier.close()
    receiver.close()


def proc_mount_options(unit: str) -> str:
    """The procfs options systemd mounts for a service with ``unit``'s settings."""
    options = []
    if "\nProtectProc=invisible\n" in unit:
        options.append("hidepid=invisible")
    if "\nProcSubset=pid\n" in unit:
        options.append("subset=pid")
    return ",".join(options) or "defaults"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare to mount /proc as the unit has systemd mount it",
)
async def test_process_metrics_are_exported_under_the_units_proc_settings(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The unit had ``ProcSubset=pid``, which hides /proc/stat: prometheus-client's
    process collector then exports nothing, and every ``process_*`` metric the README
    lists was gone.  pushd runs here with /proc mounted as the unit has it mounted."""
    metrics_port = free_port()
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"listen": "127.0.0.1", "port": 0},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "metrics": {"port": metrics_port},
        },
    )
    options = proc_mount_options(UNIT.read_text())
    mount = f'mount -t proc -o {options} proc /proc && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh"]
    process = await start_pushd_process(nursery, config, command=command)
    try:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    finally:
        process.signal(signal.SIGTERM)
        await process.wait()
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
