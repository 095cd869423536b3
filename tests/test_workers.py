"""``[server] workers = N`` with real processes and real signals (issue 15).

Every test runs ``pushd serve`` as a process (a supervisor and its workers) and, where
deliveries matter, the APNs simulator as a process of its own (``tests/trouble.py``),
whose record survives anything.  Which worker answered a request is read from the
detail of ``/healthz`` (``"worker": {"index", "pid"}``); each request opens a
connection of its own, since the kernel spreads connections, not requests.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trustme

from pushd import claims
from pushd.spool.seal import create_key_file
from pushd.workers import store_claim_names
from tests import matrix_homeserver as hs
from tests.conftest import TOPIC, app_entry, token
from tests.process import PushdProcess, start_pushd_process
from tests.storefixtures import add_server
from tests.trouble import SimProcess, free_port, pushd_cli, pushd_config

#: Connections opened to see both workers answer: the kernel hashes each to one
#: socket, so all of N landing on one worker has odds 2^-(N-1).
SPREAD = 24


def worker_pids(process: PushdProcess) -> dict[int, int]:
    """The latest pid of each worker slot, from the supervisor's log."""
    pids: dict[int, int] = {}
    for line in process.lines:
        match = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
        if match:
            pids[int(match.group(1))] = int(match.group(2))
    return pids


@attrs.define
class Rig:
    nursery: trio.Nursery
    tmp_path: Path
    sim: SimProcess
    key_file: Path
    ca_file: Path
    config: Path = Path()
    key: str = ""
    pushd: PushdProcess | None = None

    async def configure(self, **sections: Any) -> None:
        server = {"workers": 2, **sections.pop("server", {})}
        self.config = pushd_config(
            self.tmp_path, self.sim, self.key_file, self.ca_file, server=server, **sections
        )
        store = str(self.tmp_path / "pushd.sqlite3")
        if not self.key:
            self.key = await trio.to_thread.run_sync(add_server, store, "chat")

    async def start(self) -> PushdProcess:
        self.pushd = await start_pushd_process(self.nursery, self.config)
        return self.pushd

    @property
    def url(self) -> str:
        assert self.pushd is not None
        return self.pushd.url

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request on a connection of its own."""
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.request(method, self.url + path, headers=self.auth, **kw)

    async def answering_pid(self) -> int:
        response = await self.request("GET", "/healthz")
        assert response.status_code == 200, response.text
        return int(response.json()["worker"]["pid"])

    async def pids_seen(self, count: int = SPREAD) -> set[int]:
        return {await self.answering_pid() for _ in range(count)}

    async def register(self, devices: list[str]) -> None:
        for n, device in enumerate(devices):
            body = {"user": f"u{n}", "token": device, "app": "chat"}
            response = await self.request("POST", "/v1/devices", json=body)
            assert response.status_code in (200, 201), response.text

    async def send(self, seq: int, device: str) -> dict[str, Any]:
        body = {"tokens": [device], "alert": f"#{seq}", "data": {"seq": seq}}
        response = await self.request("POST", "/v1/notifications", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["results"][0]
        return result

    def spool_rows(self) -> int:
        with sqlite3.connect(self.tmp_path / "pushd.sqlite3") as db:
            row = db.execute("SELECT count(*) FROM spool").fetchone()
        return int(row[0])


@pytest.fixture
async def rig(
    nursery: trio.Nursery, ca: trustme.CA, key_file: Path, ca_file: Path, tmp_path: Path
) -> AsyncIterator[Rig]:
    sim = SimProcess.prepare(ca, key_file, tmp_path)
    rig = Rig(nursery, tmp_path, sim, key_file, ca_file)
    try:
        yield rig
    finally:
        if rig.pushd is not None:
            print(rig.pushd.log)  # shown by pytest if the test failed
        if rig.pushd is not None and rig.pushd.process.returncode is None:
            rig.pushd.signal(signal.SIGTERM)
            await rig.pushd.wait()
        await sim.kill()
    if rig.pushd is not None:
        assert "Traceback" not in rig.pushd.log, rig.pushd.log


async def test_two_workers_answer_on_one_port(rig: Rig) -> None:
    """Both workers serve the one port, the pid file names the supervisor, and the
    metrics port serves both workers' series, labelled."""
    await rig.configure(server={"pid_file": str(rig.tmp_path / "pushd.pid")})
    pushd = await rig.start()
    pids = worker_pids(pushd)
    assert len(pids) == 2
    assert await rig.pids_seen() == set(pids.values())
    assert (rig.tmp_path / "pushd.pid").read_text().strip() == str(pushd.process.pid)
    line = await pushd.wait_for_line(r"merged, on http")
    metrics_url = line.rsplit(" ", 1)[-1]
    # Both workers write to the one log: each of their lines says whose it is.
    for index in (0, 1):
        await pushd.wait_for_line(
            rf" \[worker {index}\] pushd\.server: worker {index} \(pid \d+\) serving "
        )
    async with httpx.AsyncClient() as client:
        text = (await client.get(metrics_url)).text
    assert "pushd_workers 2" in text
    for index in (0, 1):
        assert f'pushd_worker_up{{worker="{index}"}} 1' in text
        assert f'pushd_build_info{{worker="{index}",' in text
    # Each family's header once (the text format's rule), however many workers.
    assert text.count("# TYPE pushd_build_info gauge") == 1


async def test_the_merged_metrics_show_each_workers_open_connections(rig: Rig) -> None:
    """Connections kept open to the one port: each worker's gauge counts those the
    kernel gave it, and together they are all of them (the spread an operator sees)."""
    await rig.configure()
    pushd = await rig.start()
    line = await pushd.wait_for_line(r"merged, on http")
    metrics_url = line.rsplit(" ", 1)[-1]
    clients = [httpx.AsyncClient(headers=rig.auth) for _ in range(SPREAD)]
    pids: set[int] = set()
    try:
        for client in clients:
            response = await client.get(rig.url + "/healthz")
            pids.add(int(response.json()["worker"]["pid"]))
        async with httpx.AsyncClient() as scraper:
            with trio.fail_after(10):  # rig.start()'s own requests' connections closing
                while True:
                    text = (await scraper.get(metrics_url)).text
                    shares = _per_worker(text, "pushd_http_open_connections", "")
                    if sum(shares.values()) == SPREAD:
                        break
                    await trio.sleep(0.05)
    finally:
        for client in clients:
            await client.aclose()
    assert set(shares) == {"0", "1"}, text
    # Both workers answered, so both hold some: the gauges say how many each.
    assert len(pids) == 2 and all(shares.values()), shares


async def test_check_config_reports_workers(rig: Rig) -> None:
    await rig.configure(server={"workers": 3})
    out = await pushd_cli("check-config", str(rig.config))
    assert "workers: 3 processes on one port (SO_REUSEPORT)" in out, out
    if len(os.sched_getaffinity(0)) < 3:
        assert "server.workers is 3 but this machine gives pushd" in out, out


async def test_a_second_supervisor_on_the_same_port_is_refused(rig: Rig) -> None:
    """SO_REUSEPORT would let a second supervisor of the same user bind the port and
    take half its connections: it is refused, and the first serves on."""
    await rig.configure(server={"port": free_port()})
    first = await rig.start()
    second = await start_pushd_process(rig.nursery, rig.config, wait_listening=False)
    assert await second.wait() == 1
    assert "another pushd has port 127.0.0.1:" in second.log, second.log
    assert "worker 0 started" not in second.log
    assert len(await rig.pids_seen()) == 2
    assert first.process.returncode is None


async def test_a_killed_worker_is_replaced_and_nothing_accepted_is_lost(rig: Rig) -> None:
    """Sends answered ``retrying`` while their attempts are in flight in both workers;
    one worker SIGKILLed: the supervisor starts another, which releases the dead one's
    leases at once (the lease is 60 s, the wait here far shorter), and every send
    arrives; the survivor kept serving throughout."""
    count = 24
    await rig.sim.start(delay=4.0)  # attempts outlive first_attempt_deadline (1 s)
    await rig.configure()
    pushd = await rig.start()
    devices = [token(n) for n in range(count)]
    await rig.register(devices)
    results: dict[int, dict[str, Any]] = {}

    async def send(n: int) -> None:
        results[n] = await rig.send(n, devices[n])

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(send, n)
    assert {r["status"] for r in results.values()} == {"retrying"}, results
    assert rig.spool_rows() == count  # accepted: in the store before the answers left
    victim = worker_pids(pushd)[0]
    with sqlite3.connect(rig.tmp_path / "pushd.sqlite3") as db:
        owners = {o for (o,) in db.execute("SELECT lease_owner FROM spool")}
    assert any(str(o).split(":")[1] == str(victim) for o in owners), owners
    os.kill(victim, signal.SIGKILL)
    await pushd.wait_for_line(rf"worker 0 \(pid {victim}\) was killed by SIGKILL; starting")
    await pushd.wait_for_line(r"worker 0 \(pid \d+\) is ready", within=30)
    assert worker_pids(pushd)[0] != victim
    await rig.sim.kill()
    await rig.sim.start(delay=0.0)
    delivered = await rig.sim.wait_delivered(set(range(count)), within=40)
    assert {s.seq for s in delivered} >= set(range(count))
    assert len(await rig.pids_seen()) == 2  # both slots serve again


async def test_sighup_reaches_every_worker(rig: Rig, key_file: Path, ca_file: Path) -> None:
    """An app added to the config and ``pushd reload`` (SIGHUP to the pid file's
    process, the supervisor): both workers have the app."""
    await rig.configure(server={"pid_file": str(rig.tmp_path / "pushd.pid")})
    pushd = await rig.start()
    text = rig.config.read_text()
    extra = app_entry("second", TOPIC + ".two", f"https://127.0.0.1:{rig.sim.port}",
                      key_file, ca_file)  # fmt: skip
    lines = ["[[apps]]", *(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
                            for k, v in extra.items())]  # fmt: skip
    rig.config.write_text(text + "\n".join(lines) + "\n")
    out = await pushd_cli("reload", "--config", str(rig.config))
    assert f"sent SIGHUP to pushd (pid {pushd.process.pid})" in out, out
    with trio.fail_after(20):
        while pushd.log.count("app(s) unchanged") < 2:  # noqa: ASYNC110
            await trio.sleep(0.05)
    seen: dict[int, set[str]] = collections.defaultdict(set)
    for _ in range(SPREAD):
        response = await rig.request("GET", "/healthz")
        body = response.json()
        seen[body["worker"]["pid"]] |= set(body["apps"])
    assert set(seen) == set(worker_pids(pushd).values())
    assert all(apps == {"chat", "second"} for apps in seen.values()), seen


async def test_a_worker_starting_during_a_reload_takes_it_once_ready(
    rig: Rig, key_file: Path, ca_file: Path
) -> None:
    """A replacement worker still starting (held by SIGSTOP) when SIGHUP came: the
    reload went to the ready worker only, and the replacement, started on the config
    before, served it until its next restart.  Now it is sent SIGHUP once ready, and
    both workers have the added app."""
    await rig.configure()
    pushd = await rig.start()
    first = worker_pids(pushd)[0]
    os.kill(first, signal.SIGKILL)
    with trio.fail_after(10):
        while worker_pids(pushd)[0] == first:  # noqa: ASYNC110
            await trio.sleep(0.01)
    starting = worker_pids(pushd)[0]
    os.kill(starting, signal.SIGSTOP)  # held before it is ready (it takes about a second)
    assert f"worker 0 (pid {starting}) is ready" not in pushd.log
    try:
        extra = app_entry("second", TOPIC + ".two", f"https://127.0.0.1:{rig.sim.port}",
                          key_file, ca_file)  # fmt: skip
        lines = ["[[apps]]", *(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
                                for k, v in extra.items())]  # fmt: skip
        rig.config.write_text(rig.config.read_text() + "\n".join(lines) + "\n")
        pushd.signal(signal.SIGHUP)
        await pushd.wait_for_line(r"\[worker 1\] .*app\(s\) unchanged", within=20)
    finally:
        os.kill(starting, signal.SIGCONT)
    await pushd.wait_for_line(rf"worker 0 \(pid {starting}\) started before the last reload")
    await pushd.wait_for_line(r"\[worker 0\] .*app\(s\) unchanged", within=20)
    seen: dict[int, set[str]] = collections.defaultdict(set)
    for _ in range(SPREAD):
        body = (await rig.request("GET", "/healthz")).json()
        seen[body["worker"]["pid"]] |= set(body["apps"])
    assert set(seen) == set(worker_pids(pushd).values()), seen
    assert all(apps == {"chat", "second"} for apps in seen.values()), seen


async def test_sigterm_drains_every_worker(rig: Rig) -> None:
    """Sends in flight in both workers when the supervisor gets SIGTERM: every one is
    answered ``delivered``, both workers exit 0, then the supervisor does."""
    count = 16
    await rig.sim.start(delay=1.5)
    # The attempt's own timeout well past the simulator's delay: on a loaded machine the
    # answer to 16 streams took over the rig's 2 s, and a timed-out attempt is spooled
    # for the next start ("retrying"), which is not what this test is about.
    await rig.configure(
        server={"first_attempt_deadline": 10.0, "drain_seconds": 10.0},
        app={"request_timeout": 8.0},
    )
    pushd = await rig.start()
    devices = [token(n) for n in range(count)]
    await rig.register(devices)
    results: dict[int, dict[str, Any]] = {}
    pids: set[int] = set()

    async def send(n: int) -> None:
        results[n] = await rig.send(n, devices[n])

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(send, n)
        with trio.fail_after(20):  # every attempt in flight at the simulator
            while len([s for s in rig.sim.seen() if s.kind == "req"]) < count:  # noqa: ASYNC110
                await trio.sleep(0.02)
        pids = set(worker_pids(pushd).values())
        pushd.signal(signal.SIGTERM)
    assert await pushd.wait() == 0
    assert {r["status"] for r in results.values()} == {"delivered"}, results
    for pid in pids:
        assert re.search(rf"worker \d \(pid {pid}\) exited with status 0", pushd.log), pushd.log
    assert "draining every worker" in pushd.log


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_backlog_is_drained_by_two_workers_without_double_sends(
    rig: Rig, backend: str, request: pytest.FixtureRequest
) -> None:
    """The upstream down: N sends spooled by both workers.  Back up: both workers claim
    from the one spool at once, and each delivery reaches APNs exactly once."""
    count = 150  # enough for both workers to claim at once; 300 took 31-37 s
    store: dict[str, Any] = {}
    if backend == "postgres":
        store = {"url": request.getfixturevalue("pg_url")}
        rig.key = await trio.to_thread.run_sync(add_server, _pg(store["url"]), "chat")
        create_key_file(rig.tmp_path / "spool.key")  # SQLite's pushd creates its own
    await rig.configure(store=store, retry={"base_delay": 0.5, "max_delay": 0.5})
    pushd = await rig.start()
    devices = [token(n) for n in range(count)]
    await rig.register(devices)
    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(rig.send, n, devices[n])
    # Answers take a while, so each worker's circuit (8 in flight, doubling each second)
    # leaves rows for the other: both claim from the one spool at once.
    await rig.sim.start(delay=0.2)
    delivered = await rig.sim.wait_delivered(set(range(count)), within=60)
    await trio.sleep(2.0)  # anything sent twice would have arrived by now
    requests = collections.Counter(s.seq for s in rig.sim.seen() if s.kind == "req")
    delivered = rig.sim.delivered()
    assert collections.Counter(s.seq for s in delivered) == collections.Counter(range(count))
    assert max(requests.values()) == 1, [seq for seq, n in requests.items() if n > 1]
    # Both workers sent retries from the spool (the race is real).
    line = await pushd.wait_for_line(r"merged, on http")
    async with httpx.AsyncClient() as client:
        text = (await client.get(line.rsplit(" ", 1)[-1])).text
    retried = _per_worker(text, "pushd_notifications_total", 'outcome="delivered"')
    assert set(retried) == {"0", "1"} and all(retried.values()), retried


def _pg(url: str) -> Any:
    from pushd.config import StoreConfig

    return StoreConfig(url=url, pool_size=2)


def _per_worker(text: str, name: str, having: str) -> dict[str, float]:
    found: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if line.startswith(name + "{") and having in line:
            worker = re.search(r'worker="(\d+)"', line)
            assert worker is not None
            found[worker.group(1)] += float(line.rsplit(" ", 1)[1])
    return dict(found)


async def test_a_rate_limit_holds_across_workers(rig: Rig) -> None:
    """``native.rate_limit = 10``: of 30 requests spread over both workers, 10 pass."""
    await rig.configure(native={"rate_limit": 10})
    await rig.start()
    if time.time() % 60 > 50:  # the shared window is the clock's minute: stay in one
        await trio.sleep(61 - time.time() % 60)
    statuses: collections.Counter[int] = collections.Counter()
    pids: set[int] = set()
    for _ in range(30):
        response = await rig.request("POST", "/v1/users/devices", json={"user": "u0"})
        statuses[response.status_code] += 1
    pids = await rig.pids_seen(SPREAD)  # /healthz is not rate limited: which answered
    assert len(pids) == 2
    assert statuses == {200: 10, 429: 20}, statuses


async def test_a_worker_that_cannot_start_stops_the_supervisor(rig: Rig) -> None:
    """A worker killed (the OOM killer, say) before pushd was ever ready: the supervisor
    stops the other one and exits 1 (systemd's Restart= decides), where it would have
    restarted a worker that died once serving.  (What fails a worker's start in the
    config, a key or file that does not load, the supervisor finds first; an app's
    broken credential no longer fails a start: test_unusable_credential.py.)"""
    await rig.configure()
    pushd = await start_pushd_process(rig.nursery, rig.config, wait_listening=False)
    rig.pushd = pushd
    line = await pushd.wait_for_line(r"worker 0 started \(pid \d+\)")
    pid = int(re.findall(r"pid (\d+)", line)[0])
    os.kill(pid, signal.SIGSTOP)  # held where it is: a worker takes about a second to start
    assert "listening on" not in pushd.log, "the worker was ready before the test held it"
    os.kill(pid, signal.SIGKILL)
    assert await pushd.wait() == 1
    assert re.search(rf"worker 0 \(pid {pid}\) was killed by SIGKILL before pushd was "
                     "ready: stopping", pushd.log), pushd.log  # fmt: skip
    # The other, still starting, is stopped with it, not left running.
    assert re.search(r"worker 1 \(pid \d+\) (exited with status 0|was killed by SIGTERM)",
                     pushd.log), pushd.log  # fmt: skip


async def test_an_app_with_a_broken_ca_file_starts_paused_in_every_worker(rig: Rig) -> None:
    """An app whose CA file OpenSSL cannot use: every worker starts, the app paused in
    each with its ALARM, and pushd serves (the other apps would go on sending)."""
    garbage = rig.tmp_path / "garbage-ca.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    await rig.configure(app={"upstream_ca_file": str(garbage)})
    pushd = await rig.start()
    alarms = [line for line in pushd.lines if "ALARM app chat started paused" in line]
    assert sorted(line.split("]")[0][-1] for line in alarms) == ["0", "1"], pushd.log


async def test_a_worker_that_keeps_crashing_stops_the_supervisor(rig: Rig) -> None:
    """Serving, then the spool key file broken on disk and a worker killed: its
    replacement cannot start (the file is not the config the supervisor keeps), again
    and again with growing pauses, until the supervisor gives up with status 1; the
    other worker is drained, not killed."""
    await rig.configure()
    pushd = await rig.start()
    key_file = rig.tmp_path / "spool.key"
    key_file.write_text(key_file.read_text() + "not a key\n")
    os.kill(worker_pids(pushd)[1], signal.SIGKILL)
    assert await pushd.wait(within=60) == 1
    assert "worker 1 failed to start 5 times in a row" in pushd.log, pushd.log
    assert re.search(r"worker 0 \(pid \d+\) exited with status 0", pushd.log), pushd.log


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(rig: Rig) -> None:
    """A SIGKILLed supervisor forwards nothing: its workers notice and exit."""
    await rig.configure()
    pushd = await rig.start()
    pids = list(worker_pids(pushd).values())
    pushd.kill()
    with trio.fail_after(20):
        while any(_running(pid) for pid in pids):  # noqa: ASYNC110
            await trio.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_supervisor_speaks_sd_notify_for_all_workers(rig: Rig) -> None:
    """systemd hears the supervisor only: READY=1 once both workers are ready (both
    answer at that moment), WATCHDOG=1, RELOADING=1 then READY=1 around a SIGHUP that
    every worker answered, STOPPING=1 on SIGTERM; no worker's message reaches it."""
    await rig.configure()
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = rig.tmp_path / "notify"
    await receiver.bind(str(notify_path))
    messages: list[dict[str, str]] = []
    env = {"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    pushd = await start_pushd_process(rig.nursery, rig.config, env=env, wait_listening=False)
    rig.pushd = pushd

    async def until(field: str) -> dict[str, str]:
        with trio.fail_after(30):
            while True:
                data = await receiver.recv(65536)
                fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                messages.append(fields)
                if field in fields:
                    return fields

    ready = await until("READY")
    assert ready["STATUS"].startswith("2/2 workers ready"), ready
    line = await pushd.wait_for_line(r"listening on http")
    rig.pushd.url = line.split("listening on ")[1].split()[0]
    assert len(await rig.pids_seen()) == 2
    await until("WATCHDOG")
    pushd.signal(signal.SIGHUP)
    await until("RELOADING")
    await until("READY")
    # Both reloaded (each logs it just after its own READY=1 to the supervisor).
    with trio.fail_after(10):
        while pushd.log.count("app(s) unchanged") < 2:  # noqa: ASYNC110
            await trio.sleep(0.02)
    pushd.signal(signal.SIGTERM)
    await until("STOPPING")
    assert await pushd.wait() == 0
    assert not any("PUSHD_WORKER" in fields for fields in messages)
    receiver.close()


async def test_matrix_dedupe_holds_across_workers(rig: Rig) -> None:
    """A homeserver retrying one notify (same event, same pushkey) on fresh connections,
    so both workers get it: APNs gets the push once."""
    await rig.sim.start()
    await rig.configure(app={"matrix": {"app_ids": [hs.IOS_APP]}})
    await rig.start()
    device = token(7)
    body = hs.full_event([hs.device(hs.IOS_APP, hs.pushkey_for(device))], event_id="$once")
    for _ in range(12):
        response = await rig.request("POST", hs.NOTIFY, json=body)
        assert response.status_code == 200, response.text
        assert response.json() == {"rejected": []}
    assert len(await rig.pids_seen()) == 2  # connections do reach both workers
    await rig.request("POST", hs.NOTIFY, json=hs.full_event(
        [hs.device(hs.IOS_APP, hs.pushkey_for(token(8)))], event_id="$after"))  # fmt: skip
    with trio.fail_after(20):  # the later push arrived, so the earlier ones had time to
        while token(8) not in {s.token for s in rig.sim.delivered()}:  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert [s.token for s in rig.sim.seen() if s.kind == "req"].count(device) == 1


async def test_a_single_process_beside_a_supervisor_on_its_sqlite_file_is_refused(
    rig: Rig, tmp_path: Path
) -> None:
    """A plain ``pushd serve`` (one worker, another port) on a SQLite file that a
    supervisor serves would release the supervisor's spool leases at start and send
    its pushes in flight again: it is refused, naming the file, and so is a second
    plain one beside the first."""
    await rig.configure()
    first = await rig.start()
    single = tmp_path / "single.toml"
    text = rig.config.read_text().replace("workers = 2", "workers = 1")
    assert "workers = 1" in text
    single.write_text(text)
    second = await start_pushd_process(rig.nursery, single, wait_listening=False)
    assert await second.wait() == 1
    assert "another pushd has store " in second.log and "spool: " not in second.log
    assert first.process.returncode is None


async def test_a_replacement_worker_starts_on_the_accepted_config_not_the_file(
    rig: Rig,
) -> None:
    """The config file broken and not reloaded, then a worker SIGKILLed: its replacement
    starts on what the supervisor last accepted and serves (it had read the broken file,
    failed five times and taken every worker down); a reload of the broken file is
    refused and both keep serving; once the file is fixed, a reload is taken."""
    await rig.configure()
    pushd = await rig.start()
    good = rig.config.read_text()
    rig.config.write_text(good + "\n[server\n")  # not TOML
    victim = worker_pids(pushd)[0]
    os.kill(victim, signal.SIGKILL)
    await pushd.wait_for_line(rf"worker 0 \(pid {victim}\) was killed by SIGKILL; starting")
    await pushd.wait_for_line(r"worker 0 \(pid \d+\) is ready", within=30)
    assert len(await rig.pids_seen()) == 2  # both slots serve
    pushd.signal(signal.SIGHUP)
    await pushd.wait_for_line(r"reload refused.*not valid TOML", within=30)
    assert pushd.process.returncode is None
    rig.config.write_text(good)
    before = len(pushd.lines)
    pushd.signal(signal.SIGHUP)
    with trio.fail_after(30):
        while not any("reloaded" in line for line in pushd.lines[before:]):  # noqa: ASYNC110
            await trio.sleep(0.05)


SETPRIV = "/usr/bin/setpriv"
#: Binds the abstract names given, as another user would, and waits to be killed.
SQUATTER = (
    "import socket, sys, time\n"
    "held = []\n"
    "for name in sys.argv[1:]:\n"
    "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "    s.bind(b'\\0' + name.encode())\n"
    "    held.append(s)\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SETPRIV),
    reason="needs root and setpriv to run a squatter as another user",
)
async def test_another_users_squatter_on_the_claims_neither_blocks_nor_doubles_pushd(
    rig: Rig, tmp_path: Path
) -> None:
    """Any local user could bind the abstract names pushd claims its port and SQLite
    file by, and pushd refused to start ("another pushd has port ... already"): now a
    name another user holds is passed by, and a second pushd is still refused."""
    port = free_port()
    await rig.configure(server={"port": port})
    store = str(await trio.Path(rig.tmp_path / "pushd.sqlite3").resolve())
    names = [
        claims.claim_address(what, 0)
        for what in (f"port 127.0.0.1:{port}", *(key for key, _ in store_claim_names(store)))
    ]
    squatter = await trio.lowlevel.open_process(
        [
            SETPRIV,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            SQUATTER,
            *names,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert squatter.stdout is not None
        with trio.fail_after(10):
            assert b"ready" in await squatter.stdout.receive_some()
        first = await rig.start()
        assert len(await rig.pids_seen()) == 2
        single = tmp_path / "single.toml"
        single.write_text(rig.config.read_text().replace("workers = 2", "workers = 1"))
        second = await start_pushd_process(rig.nursery, single, wait_listening=False)
        assert await second.wait() == 1
        assert "another pushd has port 127.0.0.1:" in second.log, second.log
        assert first.process.returncode is None
    finally:
        squatter.kill()
        await squatter.wait()
