"""SIGHUP reload of a real ``pushd serve`` process, against the APNs and FCM simulators.

Each test rewrites pushd.toml (or a key file), sends SIGHUP as systemd's ExecReload or
``pushd reload`` would, and checks what the running process does over HTTP: apps
added, changed and removed; a broken config refused; deliveries in flight finished;
unchanged apps on the connections they had.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushd.cli_ops import is_pushd_serve
from pushd.config import StoreConfig
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.fcm import FcmSimulator
from pushd.upstream.apns.jwt import write_p8
from tests.conftest import KEY_ID, OTHER_TOPIC, TEAM_ID, TOPIC, app_entry, fcm_entry, token
from tests.process import ROOT, PushdProcess, start_pushd_process, write_config
from tests.storefixtures import add_server

RELOADED = r"reloaded .* in [\d.]+ ms"
REFUSED = r"reload refused"


@attrs.define
class Gateway:
    """A pushd process, its config file (rewritten by tests) and a chat server key."""

    process: PushdProcess
    path: Path
    sections: dict[str, Any]
    client: httpx.AsyncClient
    key: str

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    async def post(self, path: str, body: Any) -> httpx.Response:
        return await self.client.post(self.process.url + path, json=body, headers=self.auth())

    async def register(self, user: str, device: str, app: str) -> httpx.Response:
        return await self.post("/v1/devices", {"user": user, "token": device, "app": app})

    async def send(self, user: str) -> list[dict[str, Any]]:
        response = await self.post("/v1/notifications", {"user": user, "alert": "hi"})
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def count(self, pattern: str) -> int:
        compiled = re.compile(pattern)
        return sum(1 for line in self.process.lines if compiled.search(line))

    async def hup(self, pattern: str = RELOADED, within: float = 30.0) -> str:
        """SIGHUP, then the log line that says how it went (the next ``pattern``)."""
        before = self.count(pattern)
        self.process.signal(signal.SIGHUP)
        compiled = re.compile(pattern)
        with trio.fail_after(within):
            while self.count(pattern) <= before:
                assert self.process.process.returncode is None, self.process.log
                await trio.sleep(0.02)
        return [line for line in self.process.lines if compiled.search(line)][-1]

    def rewrite(self, **changes: Any) -> None:
        self.sections.update(changes)
        write_config(self.path, self.sections)


@pytest.fixture
def apns_upstream(simulator: ApnsSimulator) -> str:
    return f"https://127.0.0.1:{simulator.port}"


@pytest.fixture
async def start(nursery: trio.Nursery, tmp_path: Path) -> Any:
    clients: list[httpx.AsyncClient] = []
    processes: list[PushdProcess] = []

    async def starting(apps: list[dict[str, Any]], **sections: Any) -> Gateway:
        store = tmp_path / "pushd.sqlite3"
        key = await trio.to_thread.run_sync(add_server, StoreConfig(path=str(store)), "chat")
        server = {"listen": "127.0.0.1", "port": 0, "pid_file": str(tmp_path / "pid")}
        data: dict[str, Any] = {
            "server": {**server, **sections.pop("server", {})},
            "store": {"path": str(store)},
            "retry": {"base_delay": 0.05, "max_delay": 0.2},
            **sections,
            "apps": apps,
        }
        path = write_config(tmp_path / "pushd.toml", data)
        process = await start_pushd_process(nursery, path)
        processes.append(process)
        client = httpx.AsyncClient(timeout=30)
        clients.append(client)
        return Gateway(process, path, data, client, key)

    yield starting
    for client in clients:
        await client.aclose()
    for process in processes:  # a pushd left running would outlive the test
        await stop(process)


async def wait_until(condition: Callable[[], bool], within: float = 20.0) -> None:
    """Poll ``condition`` (log lines and counters have no event to wait on)."""
    with trio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def stop(process: PushdProcess) -> None:
    """SIGTERM (SIGKILL if it does not end within 30 s) unless it has ended."""
    if process.process.returncode is not None:
        return
    process.signal(signal.SIGTERM)
    try:
        await process.wait(30)
    except trio.TooSlowError:
        process.kill()
        await process.wait(30)


def statuses(results: list[dict[str, Any]]) -> dict[str, str]:
    return {r["app"]: r["status"] for r in results}


async def test_an_app_added_by_sighup_delivers_and_the_others_keep_their_connections(
    start: Any,
    simulator: ApnsSimulator,
    apns_upstream: str,
    key_file: Path,
    ca_file: Path,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> None:
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    assert (await gateway.register("alice", token(1), "chat")).status_code == 201
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}
    before = {r.connection_id for r in simulator.received}
    opened = simulator.connections_opened

    other = app_entry("other", OTHER_TOPIC, apns_upstream, key_file, ca_file)
    android = fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path)
    gateway.rewrite(apps=[chat, other, android])
    line = await gateway.hup()
    assert "added other, android; 1 app(s) unchanged" in line

    assert (await gateway.register("bob", token(2), "other")).status_code == 201
    assert (await gateway.register("bob", "f" * 40, "android")).status_code == 201
    assert statuses(await gateway.send("bob")) == {"other": "delivered", "android": "delivered"}
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}
    chat_after = [r.connection_id for r in simulator.received if r.topic == TOPIC]
    assert set(chat_after) <= before  # chat went on over the connections it had
    other_ids = {r.connection_id for r in simulator.received if r.topic == OTHER_TOPIC}
    assert not other_ids & before and simulator.connections_opened > opened
    assert [m.token for m in fcm_simulator.received] == ["f" * 40]
    # /healthz and the status page follow the reload.
    health = await gateway.client.get(gateway.process.url + "/healthz", headers=gateway.auth())
    assert sorted(health.json()["apps"]) == ["android", "chat", "other"]
    page = await gateway.client.get(gateway.process.url + "/status.json", headers=gateway.auth())
    assert [app["name"] for app in page.json()["apps"]] == ["chat", "other", "android"]


async def test_a_rotated_p8_is_read_on_sighup(
    start: Any, simulator: ApnsSimulator, apns_upstream: str, ca_file: Path, tmp_path: Path
) -> None:
    """The config does not change, the key file does: Apple now trusts only the new key
    (same key id), and after SIGHUP pushd signs with it on new connections."""
    key_file = tmp_path / "rotating.p8"
    write_p8(key_file, old := ec.generate_private_key(ec.SECP256R1()))
    simulator.add_key(KEY_ID, TEAM_ID, old.public_key())
    gateway = await start([app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)])
    await gateway.register("alice", token(1), "chat")
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}
    before = {r.connection_id for r in simulator.received}

    new = ec.generate_private_key(ec.SECP256R1())
    write_p8(key_file, new)
    simulator.add_key(KEY_ID, TEAM_ID, new.public_key())  # the old key is revoked
    line = await gateway.hup()
    assert "changed chat" in line
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}
    last = simulator.received[-1]
    assert last.token == token(1) and last.connection_id not in before


async def test_a_removed_app_is_unknown_after_sighup(
    start: Any, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    other = app_entry("other", OTHER_TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat, other])
    assert (await gateway.register("bob", token(2), "other")).status_code == 201
    gateway.rewrite(apps=[chat])
    assert "removed other" in await gateway.hup()
    refused = await gateway.register("bob", token(3), "other")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unknown_app"
    sent = await gateway.post("/v1/notifications", {"tokens": [token(2)], "app": "other"})
    assert sent.status_code == 400 and sent.json()["error"]["code"] == "unknown_app"


async def test_a_broken_config_is_refused_and_the_old_one_serves(
    start: Any, simulator: ApnsSimulator, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    await gateway.register("alice", token(1), "chat")
    gateway.rewrite(apps=[{**chat, "key_id": "short"}, {**chat, "name": "x", "team_id": 5}])
    await gateway.hup(REFUSED)
    refused = [line for line in gateway.process.lines if "reload refused" in line]
    assert any("apps[1].team_id" in line for line in refused), refused
    assert "Traceback" not in gateway.process.log
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}

    gateway.rewrite(apps=[{**chat, "key_id": "SHORT"}])  # structure fine, check fails
    line = await gateway.hup(REFUSED)
    assert "apps[0].key_id: must be the 10-character id from Apple" in line
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}
    assert gateway.count(RELOADED) == 0


async def test_settings_that_need_a_restart_are_named_and_kept(
    start: Any, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    gateway.rewrite(server={**gateway.sections["server"], "port": 1}, metrics={"port": 2})
    await gateway.hup()
    assert "server.port changed but needs a restart" in gateway.process.log
    log = gateway.process.log
    assert "metrics.port changed but needs a restart to take effect (still 0)" in log
    await gateway.register("alice", token(1), "chat")  # still on the old port
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}


async def test_a_delivery_in_flight_during_a_reload_is_delivered(
    start: Any, simulator: ApnsSimulator, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    """The app's connections are replaced (its request timeout changed) while APNs
    holds a push for 3 s: the old connection answers it before it is closed (cut, it
    would have been answered "retrying" and sent twice)."""
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    await gateway.register("alice", token(1), "chat")
    simulator.script(token(1), SimReply(delay=3.0))
    answers: list[list[dict[str, Any]]] = []
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            answers.append(await gateway.send("alice"))

        nursery.start_soon(send)
        await trio.sleep(1.0)  # at APNs by now, answered in 2 s more
        assert not answers and not simulator.received
        gateway.rewrite(apps=[{**chat, "request_timeout": 20.0}])
        assert "changed chat" in await gateway.hup()
    assert statuses(answers[0]) == {"chat": "delivered"}
    assert [r.token for r in simulator.received] == [token(1)]
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}


async def test_sighup_under_steady_traffic_does_not_stall(
    start: Any, simulator: ApnsSimulator, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    """Senders keep pushing while pushd is reloaded again and again, every other time
    with a changed app: every request is answered, each reload finishes, and traffic
    goes on between them."""
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    for n in range(4):
        await gateway.register(f"user{n}", token(100 + n), "chat")
    done: list[str] = []
    stop = trio.Event()

    async def traffic_goes_on() -> None:
        seen = len(done)
        await wait_until(lambda: len(done) >= seen + 20)

    async def sender(n: int) -> None:
        while not stop.is_set():
            result = await gateway.send(f"user{n}")
            done.append(result[0]["status"])

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(sender, n)
            for round_ in range(6):
                await traffic_goes_on()
                if round_ % 2:
                    gateway.rewrite(apps=[{**chat, "request_timeout": 10.0 + round_}])
                await gateway.hup()
            # A burst, as a careless logrotate sends: trio may coalesce signals that
            # arrive during a reload, so wait for "at least one more", never for three.
            gateway.rewrite(apps=[{**chat, "request_timeout": 30.0}])
            for _ in range(3):
                gateway.process.signal(signal.SIGHUP)
            await wait_until(lambda: gateway.count(RELOADED) >= 7)
            await traffic_goes_on()
            stop.set()
    assert done and set(done) == {"delivered"}, set(done)
    assert 7 <= gateway.count(RELOADED) <= 9


async def test_pushd_reload_signals_the_pid_file(
    start: Any, apns_upstream: str, key_file: Path, ca_file: Path, tmp_path: Path
) -> None:
    """``pushd reload --config`` checks the file, then SIGHUPs the pid in pid_file;
    a broken file is reported to the admin and nothing is sent."""
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    pid = int((tmp_path / "pid").read_text())
    assert pid == gateway.process.process.pid

    def reload(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pushd", "reload", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        )

    other = app_entry("other", OTHER_TOPIC, apns_upstream, key_file, ca_file)
    gateway.rewrite(apps=[chat, other])
    done = await trio.to_thread.run_sync(reload, "--config", str(gateway.path))
    assert done.returncode == 0, done.stderr
    assert f"sent SIGHUP to pushd (pid {pid})" in done.stdout
    await wait_until(lambda: gateway.count(RELOADED) >= 1)
    assert (await gateway.register("bob", token(2), "other")).status_code == 201

    gateway.rewrite(apps=[{k: v for k, v in chat.items() if k != "topic"}])
    done = await trio.to_thread.run_sync(reload, "--config", str(gateway.path))
    assert done.returncode == 1
    assert "apps[0].topic" in done.stderr and "not reloading" in done.stderr
    assert gateway.count(r"received SIGHUP") == 1

    gateway.process.signal(signal.SIGTERM)
    assert await gateway.process.wait() == 0
    assert not (tmp_path / "pid").exists()
    done = await trio.to_thread.run_sync(reload, "--pid", str(tmp_path / "pid"))
    assert done.returncode == 1 and "no such file" in done.stderr
    # A stale pid file naming another program, even one with "pushd" in its command
    # line (an admin's `tail -f pushd.log`): SIGHUP would end it.
    log_file = tmp_path / "pushd.log"
    log_file.write_text("")
    for argv in (["sleep", "30"], ["tail", "-f", str(log_file)]):
        other = await trio.lowlevel.open_process(argv)
        try:
            (tmp_path / "pid").write_text(f"{other.pid}\n")
            done = await trio.to_thread.run_sync(reload, "--pid", str(tmp_path / "pid"))
            assert done.returncode == 1 and "is not pushd" in done.stderr, (argv, done.stderr)
            assert other.poll() is None
        finally:
            other.kill()
            await other.wait()


async def test_a_renewed_tls_certificate_is_served_after_sighup(
    start: Any, ca: trustme.CA, tmp_path: Path
) -> None:
    """certbot's deploy hook runs ``systemctl reload pushd``: the same files, a new
    certificate, which new connections get."""
    cert, key = tmp_path / "tls.pem", tmp_path / "tls.key"

    def issue() -> bytes:
        leaf = ca.issue_cert("127.0.0.1")
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        return leaf.cert_chain_pems[0].bytes()

    first = issue()
    gateway = await start([], server={"tls_cert": str(cert), "tls_key": str(key)})

    async def served() -> bytes:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        host, port = gateway.process.url.removeprefix("https://").rsplit(":", 1)
        stream = await trio.open_ssl_over_tcp_stream(host, int(port), ssl_context=context)
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        await stream.aclose()
        assert der is not None
        return ssl.DER_cert_to_PEM_cert(der).encode()

    assert _pem_body(await served()) == _pem_body(first)
    second = issue()
    await gateway.hup()
    assert _pem_body(await served()) == _pem_body(second)


def _pem_body(pem: bytes) -> bytes:
    return b"".join(pem.split())


async def test_rate_limit_windows_carry_over_a_reload(
    start: Any, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    """A chat server at its limit stays there across a reload (a SIGHUP must not be a
    way around it); a changed limit starts afresh."""
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat], native={"rate_limit": 3})
    for n in range(3):
        assert (await gateway.register("alice", token(n), "chat")).status_code == 201
    assert (await gateway.register("alice", token(9), "chat")).status_code == 429
    await gateway.hup()
    assert (await gateway.register("alice", token(9), "chat")).status_code == 429
    gateway.rewrite(native={"rate_limit": 5})
    await gateway.hup()
    assert (await gateway.register("alice", token(9), "chat")).status_code == 201


async def test_reloads_are_counted_and_followed_by_the_metrics(
    start: Any, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    """An admin alerts on refused reloads: the counters move, and an app added by a
    reload shows up in the per-app series without a restart."""
    port = free_port()
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat], metrics={"port": port})
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    async def sample(name: str, labels: str = "") -> float | None:
        text = (await gateway.client.get(metrics_url)).text
        match = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
        return None if match is None else float(match.group(1))

    assert await sample("pushd_config_reloads_total") == 0
    assert await sample("pushd_app_paused", '{app="other",reason=""}') is None
    gateway.rewrite(apps=[chat, app_entry("other", OTHER_TOPIC, apns_upstream, key_file, ca_file)])
    await gateway.hup()
    gateway.rewrite(apps=[{**chat, "key_id": "SHORT"}])
    await gateway.hup(REFUSED)
    assert await sample("pushd_config_reloads_total") == 2
    assert await sample("pushd_config_reload_failures_total") == 1
    assert await sample("pushd_config_last_reload_successful") == 0
    assert await sample("pushd_app_paused", '{app="other",reason=""}') == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_a_removed_app_keeps_its_metric_labels_and_its_spool_stays_visible(
    start: Any, simulator: ApnsSimulator, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    """An app removed by a reload with a delivery still spooled: its counters keep
    ``provider="apns"`` (it had turned empty, breaking the series), and its waiting
    delivery stays in ``pushd_spool_depth`` and ``/healthz`` (it had vanished)."""
    port = free_port()
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    other = app_entry("other", OTHER_TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat, other], metrics={"port": port})
    await gateway.register("bob", token(2), "other")
    simulator.set_token_reply(token(2), SimReply(status=500, reason="InternalServerError"))
    assert statuses(await gateway.send("bob")) == {"other": "retrying"}
    gateway.rewrite(apps=[chat])
    assert "removed other" in await gateway.hup()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with trio.fail_after(10):
        while True:
            text = (await gateway.client.get(metrics_url)).text
            if 'pushd_spool_depth{app="other"} 1.0' in text:
                break
            await trio.sleep(0.2)
    counters = re.findall(r'^pushd_notifications_total\{app="other",.*provider="(\w*)"', text, re.M)
    assert counters and set(counters) == {"apns"}, text
    url = gateway.process.url + "/healthz"
    health = (await gateway.client.get(url, headers=gateway.auth())).json()
    assert health["unconfigured_spool"] == {"other": 1} and health["spooled"] == 1, health


@pytest.mark.parametrize(
    ("command", "serving"),
    [
        (b"/usr/local/bin/pushd\0serve\0--config\0/etc/pushd/pushd.toml\0", True),
        (b"/usr/bin/python3\0-m\0pushd\0serve\0--config\0pushd.toml\0", True),
        (b"tail\0-f\0/var/log/pushd.log\0", False),
        (b"journalctl\0-u\0pushd\0-f\0", False),
        (b"vim\0/etc/pushd/pushd.toml\0", False),
        (b"/usr/local/bin/pushd\0simulate\0", False),
    ],
)
def test_only_pushd_serve_counts_as_pushd(command: bytes, serving: bool) -> None:
    assert is_pushd_serve(command.split(b"\0")) is serving


async def test_a_fixed_credential_sends_the_paused_apps_spool_at_once(
    start: Any, simulator: ApnsSimulator, apns_upstream: str, key_file: Path, ca_file: Path
) -> None:
    """APNs refuses the app's key: the app pauses for ``credential_pause`` and pushes
    sent meanwhile are spooled to wait it out.  The admin fixes the key and reloads:
    the spooled pushes went only when the old pause ran out (up to 300 s by default);
    now they go at once."""
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    broken = {**chat, "key_id": "WRONGKEY01"}  # a key APNs does not know: 403
    gateway = await start([broken], retry={"credential_pause": 120, "base_delay": 0.05})
    held = [token(n) for n in range(2, 5)]
    for n, device in enumerate([token(1), *held]):
        assert (await gateway.register(f"u{n}", device, "chat")).status_code == 201
    first = await gateway.send("u0")
    assert [r["status"] for r in first] == ["failed"]  # the key refused: the app pauses
    for n in range(1, 4):
        assert [r["status"] for r in await gateway.send(f"u{n}")] == ["retrying"]
    gateway.rewrite(apps=[chat])
    await gateway.hup()
    with trio.fail_after(15):  # not the 120 s pause
        while {r.token for r in simulator.received if r.status == 200} != set(held):  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert gateway.count(r"spool: 3 deliveries of chat go now") == 1


async def test_an_app_whose_provider_a_reload_changed_fails_its_old_spool_and_serves(
    start: Any,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    apns_upstream: str,
    key_file: Path,
    ca_file: Path,
    fcm_key: rsa.RSAPrivateKey,
    tmp_path: Path,
) -> None:
    """An app moved from APNs to FCM by a reload while an APNs push of it waited in the
    spool: that push cannot go to FCM.  It is failed with a reason saying so (counted,
    its row gone), and pushd goes on serving the app on FCM."""
    chat = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    gateway = await start([chat])
    await gateway.register("bob", token(2), "chat")
    simulator.set_token_reply(token(2), SimReply(status=500, reason="InternalServerError"))
    assert statuses(await gateway.send("bob")) == {"chat": "retrying"}
    gateway.rewrite(apps=[fcm_entry("chat", fcm_simulator, fcm_key, ca_file, tmp_path)])
    await gateway.hup()
    url = gateway.process.url + "/healthz"
    with trio.fail_after(20):
        while True:
            try:
                health = (await gateway.client.get(url, headers=gateway.auth())).json()
            except httpx.ConnectError:
                await gateway.process.wait()
                raise AssertionError(gateway.process.log) from None
            if not health["spooled"]:
                break
            await trio.sleep(0.1)
    assert gateway.count(r"ERROR .*Traceback|Traceback") == 0, gateway.process.log
    assert gateway.count(r"app chat: a push spooled for apns cannot go to fcm \(") == 1, (
        gateway.process.log
    )
    await gateway.register("carol", "fcm-token-0001:APA91b" + "x" * 40, "chat")
    assert statuses(await gateway.send("carol")) == {"chat": "delivered"}
