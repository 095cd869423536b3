"""``[upstream] proxy``: APNs, FCM and OAuth through an HTTP proxy's CONNECT tunnel.

The proxy is real: Debian's tinyproxy, started per test on a free port with a generated
config (``.ci/run`` installs it; without it those tests skip and say so).  pushd runs
in-process with real sockets, the simulators behind the proxy.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd import config
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.fcm import FcmSimulator
from pushd.upstream.proxy import (
    Proxy,
    no_proxy_from_env,
    parse_no_proxy,
    parse_proxy_url,
    route,
)
from tests.conftest import OTHER_TOPIC, TOPIC, PushdFactory, app_entry, fcm_entry, token

USER, PASSWORD = "alice", "s3cret-Pa55"
FCM_TOKEN = "fcm-device-0001:APA91b" + "x" * 40
#: How long tinyproxy may take to listen.
PROXY_START_DEADLINE = 10


def free_port() -> int:
    """A port nothing listens on (bound and released: good enough on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- parsing, no sockets ----------------------------------------------------------------


def test_a_proxy_url_is_parsed_and_its_password_never_shown() -> None:
    proxy = parse_proxy_url(f"http://{USER}:s3cret%40x@proxy.example:3128/")
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == (
        "proxy.example",
        3128,
        USER,
        "s3cret@x",
    )
    assert proxy.display == f"http://{USER}@proxy.example:3128"
    assert "s3cret" not in repr(proxy) and "s3cret" not in proxy.display
    assert proxy.authorization() == "Basic YWxpY2U6czNjcmV0QHg="  # alice:s3cret@x
    assert parse_proxy_url("http://[::1]:8080").display == "http://[::1]:8080"
    assert parse_proxy_url("http://p.example:1").authorization() is None
    # The password may come from a file instead, with the user in the URL.
    assert parse_proxy_url(f"http://{USER}@p:1", password="pw").password == "pw"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://proxy.example:3128", "must start with http://"),
        ("socks5://proxy.example:1080", "must start with http://"),
        ("proxy.example:3128", "must start with http://"),
        ("http://:3128", "names no host"),
        ("http://proxy.example", "needs a port"),
        ("http://proxy.example:http", "check the port"),
        ("http://proxy.example:99999", "check the port"),
        ("http://proxy.example:3128/path", "without a path"),
    ],
)
def test_a_bad_proxy_url_says_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_proxy_url(url)


def test_a_password_twice_or_without_a_user_is_refused() -> None:
    with pytest.raises(ValueError, match="password file is given too") as raised:
        parse_proxy_url(f"http://{USER}:{PASSWORD}@p:1", password="other")
    assert PASSWORD not in str(raised.value)
    with pytest.raises(ValueError, match="needs a user name"):
        parse_proxy_url("http://p:1", password="pw")


def test_no_proxy_follows_the_usual_convention() -> None:
    proxy = Proxy("proxy", 3128, no_proxy=parse_no_proxy([".example.org", "10.0.0.0/8", "h:443"]))
    assert route(proxy, "api.push.apple.com") is proxy
    for direct in ("example.org", "fcm.example.org", "10.1.2.3", "h", "H."):
        assert route(proxy, direct) is None, direct
    assert route(proxy, "notexample.org") is proxy
    assert route(Proxy("p", 1, no_proxy=("*",)), "anything") is None
    assert no_proxy_from_env({"NO_PROXY": "a.example, .b.example,,[::1]:80"}) == (
        "a.example",
        "b.example",
        "::1",
    )
    assert Proxy("p", 1, no_proxy=("::1",)).bypasses("[::1]")


# --- configuration ----------------------------------------------------------------------


def _config(tmp_path: Path, upstream: dict[str, Any], **app: Any) -> config.Config:
    data = {
        "store": {"path": str(tmp_path / "db.sqlite3")},
        "upstream": upstream,
        "apps": [{"name": "chat", "provider": "apns", "topic": TOPIC, **app}],
    }
    return config.parse(data, base=tmp_path)


def _proxy_problems(cfg: config.Config) -> list[str]:
    return [p for p in config.check(cfg) if "proxy" in p]


def test_check_config_names_each_proxy_problem_without_the_password(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        {"proxy": f"https://{USER}:{PASSWORD}@proxy.example:3128"},
        proxy="http://proxy.example",
    )
    problems = _proxy_problems(cfg)
    assert problems == [
        "upstream.proxy: must start with http:// (not https://): pushd asks the proxy for a "
        "tunnel in plain HTTP and runs TLS inside it",
        "apps[0].proxy: needs a port, e.g. http://proxy.example:3128",
    ]
    assert PASSWORD not in repr(cfg)  # the URL is kept out of repr
    cfg = _config(tmp_path, {"proxy_password_file": "missing.password"})
    assert _proxy_problems(cfg) == ["upstream.proxy_password_file: set upstream.proxy too"]
    cfg = _config(
        tmp_path,
        {"proxy": f"http://{USER}@proxy.example:3128", "proxy_password_file": "missing"},
    )
    assert _proxy_problems(cfg) == [
        f"upstream.proxy_password_file: no such file {tmp_path / 'missing'}"
    ]


def test_an_app_overrides_the_proxy_and_empty_means_direct(tmp_path: Path) -> None:
    (tmp_path / "proxy.password").write_text(PASSWORD + "\n")
    upstream = {
        "proxy": f"http://{USER}@proxy.example:3128",
        "proxy_password_file": "proxy.password",  # relative to the config's directory
    }
    cfg = _config(tmp_path, upstream)
    assert _proxy_problems(cfg) == []
    proxy = config.app_proxy(cfg.apps[0], cfg.upstream, environ={"NO_PROXY": "apple.com"})
    assert proxy is not None
    assert (proxy.username, proxy.password, proxy.no_proxy) == (USER, PASSWORD, ("apple.com",))
    cfg = _config(tmp_path, {**upstream, "no_proxy": []}, proxy="")
    assert config.app_proxy(cfg.apps[0], cfg.upstream) is None
    cfg = _config(tmp_path, {**upstream, "no_proxy": ["x.example"]}, proxy="http://other:8080")
    proxy = config.app_proxy(cfg.apps[0], cfg.upstream, environ={"NO_PROXY": "ignored"})
    assert proxy == Proxy("other", 8080, no_proxy=("x.example",))


# --- a real proxy -----------------------------------------------------------------------


@attrs.define
class TinyProxy:
    """A running tinyproxy: its URL parts and what it logged (one line per CONNECT)."""

    port: int
    output: bytearray

    def connects(self, port: int) -> int:
        """CONNECT requests for ``127.0.0.1:port`` it has logged."""
        return self.output.count(f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode())


StartProxy = Callable[..., Any]


@pytest.fixture
async def start_tinyproxy(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartProxy]:
    """Start tinyproxy on a free port: ``await start_tinyproxy(auth=(user, password))``."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy); proxy test skipped")
    processes: list[trio.Process] = []

    async def start(*, auth: tuple[str, str] | None = None) -> TinyProxy:
        port = free_port()
        conf = tmp_path / f"tinyproxy-{port}.conf"
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            "LogLevel Connect",
            "MaxClients 50",
            "Allow 127.0.0.1",
            # No ConnectPort line: CONNECT to any port (the simulators' are random).
        ]
        if auth is not None:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        conf.write_text("\n".join(lines) + "\n")
        process = await trio.lowlevel.open_process(
            [binary, "-d", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        processes.append(process)
        output = bytearray()

        async def pump() -> None:
            assert process.stdout is not None
            while chunk := await process.stdout.receive_some(4096):
                output.extend(chunk)

        nursery.start_soon(pump)
        with trio.fail_after(PROXY_START_DEADLINE):
            for _ in range(PROXY_START_DEADLINE * 20):
                try:
                    probe = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    assert process.poll() is None, output.decode()
                    await trio.sleep(0.05)
                    continue
                await probe.aclose()
                break
        return TinyProxy(port, output)

    yield start
    for process in processes:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.poll() is None:
            process.kill()


async def all_tunnelled(proxy: TinyProxy, sim: ApnsSimulator | FcmSimulator) -> None:
    """Assert every connection ``sim`` accepted came through ``proxy``.

    The proxy logs a CONNECT before the simulator accepts it: late ones get a moment.
    """
    assert sim.port is not None
    for _ in range(100):
        if proxy.connects(sim.port) == sim.connections_opened:
            break
        await trio.sleep(0.05)
    assert sim.connections_opened == proxy.connects(sim.port) >= 1


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


async def test_apns_fcm_and_oauth_go_through_the_proxy_with_basic_auth(
    start_pushd: PushdFactory,
    start_tinyproxy: StartProxy,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "pushd")
    proxy = await start_tinyproxy(auth=(USER, PASSWORD))
    (tmp_path / "proxy.password").write_text(PASSWORD + "\n")
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd = await start_pushd(
        apps=[
            app_entry("chat", TOPIC, upstream, key_file, ca_file),
            fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
        ],
        upstream={
            "proxy": f"http://{USER}@127.0.0.1:{proxy.port}",
            "proxy_password_file": str(tmp_path / "proxy.password"),
            "no_proxy": [],  # the test's hosts are 127.0.0.1, often in a real NO_PROXY
        },
    )
    await pushd.register("ada", token(1))
    await pushd.register("ada", FCM_TOKEN, app="android")
    answer = await pushd.send({"user": "ada", "alert": "hello"})
    assert [r["status"] for r in answer["results"]] == ["delivered", "delivered"], answer
    assert [r.token for r in simulator.received] == [token(1)]
    assert [r.token for r in fcm_simulator.received] == [FCM_TOKEN]
    assert fcm_simulator.tokens_issued == 1
    # Every connection the simulators saw came through a tunnel: APNs' HTTP/2, and on
    # FCM's port the OAuth token request (httpx) and the HTTP/2 connections.  The
    # proxy logs a CONNECT before the simulator accepts it: let late ones land.
    await all_tunnelled(proxy, simulator)
    await all_tunnelled(proxy, fcm_simulator)
    assert fcm_simulator.connections_opened >= 2  # a token request and a send
    text = log_text(caplog)
    assert f"via http://{USER}@127.0.0.1:{proxy.port}" in text
    assert PASSWORD not in text


async def test_an_app_may_use_its_own_proxy_or_none(
    start_pushd: PushdFactory,
    start_tinyproxy: StartProxy,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
) -> None:
    proxy = await start_tinyproxy()
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd = await start_pushd(
        apps=[
            {
                **app_entry("chat", TOPIC, upstream, key_file, ca_file),
                "proxy": f"http://127.0.0.1:{proxy.port}",
                "connections": 1,
            },
            {**app_entry("other", OTHER_TOPIC, upstream, key_file, ca_file), "proxy": ""},
        ],
        # Everyone else's proxy is down: only the apps' own choices can work.
        upstream={"proxy": f"http://127.0.0.1:{free_port()}", "no_proxy": []},
    )
    await pushd.register("bea", token(2))
    answer = await pushd.send({"user": "bea", "alert": "via the app's proxy"})
    assert [r["status"] for r in answer["results"]] == ["delivered"]
    tunnels = proxy.connects(simulator.port)
    assert 1 <= simulator.connections_opened <= tunnels
    await pushd.register("bea", token(3), app="other")
    answer = await pushd.send({"user": "bea", "alert": "direct"})
    assert [r["status"] for r in answer["results"]] == ["delivered", "delivered"]
    assert simulator.connections_opened > tunnels == proxy.connects(simulator.port)
    assert {r.token for r in simulator.received} == {token(2), token(3)}


async def test_a_wrong_proxy_password_is_a_failed_connect_named_without_the_password(
    start_pushd: PushdFactory,
    start_tinyproxy: StartProxy,
    simulator: ApnsSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "pushd")
    proxy = await start_tinyproxy(auth=(USER, PASSWORD))
    pushd = await start_pushd(
        upstream={"proxy": f"http://{USER}:wrong-{PASSWORD}@127.0.0.1:{proxy.port}"}
    )
    await pushd.register("cid", token(4))
    answer = await pushd.send({"user": "cid", "alert": "x"})
    assert [r["status"] for r in answer["results"]] == ["retrying"], answer
    assert simulator.received == []
    text = log_text(caplog)
    # tinyproxy answers a wrong password 401 (no credentials at all: 407).
    assert f"refused CONNECT 127.0.0.1:{simulator.port}: 401" in text
    assert PASSWORD not in text


async def test_a_proxy_that_is_down_makes_deliveries_retry_and_logs_no_password(
    start_pushd: PushdFactory, simulator: ApnsSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "pushd")
    port = free_port()
    pushd = await start_pushd(
        upstream={"proxy": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}", "no_proxy": []}
    )
    await pushd.register("dan", token(5))
    answer = await pushd.send({"user": "dan", "alert": "x"})
    (result,) = answer["results"]
    assert result["status"] == "retrying", answer
    text = log_text(caplog)
    assert f"via http://{USER}@127.0.0.1:{port} failed (ProxyError: proxy " in text
    assert "unreachable" in text
    assert PASSWORD not in text
    assert simulator.received == []


async def test_no_proxy_sends_a_host_direct(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    pushd = await start_pushd(
        upstream={"proxy": f"http://127.0.0.1:{free_port()}", "no_proxy": ["127.0.0.1"]}
    )
    await pushd.register("eve", token(6))
    answer = await pushd.send({"user": "eve", "alert": "x"})
    assert [r["status"] for r in answer["results"]] == ["delivered"]
