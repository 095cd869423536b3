"""contrib/nginx/pushd-upstream.conf, run by a real nginx in front of two pushd instances.

Two pushd processes on one PostgreSQL database, nginx (Debian's nginx-light) started
by the test on a free port with the contrib file as written (only its addresses, port
and certificates swapped for the test's): pushes through nginx reach the simulator;
one instance is SIGKILLed and pushes keep working, nginx taking the failed connection
to the other instance.  Skipped with a plain message where nginx is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from pushd.config import StoreConfig
from pushd.simulators.apns import ApnsSimulator
from pushd.spool.seal import create_key_file
from tests.conftest import TOPIC, app_entry, token
from tests.process import PushdProcess, start_pushd_process, write_config
from tests.storefixtures import add_server

CONTRIB = Path(__file__).resolve().parents[1] / "contrib" / "nginx" / "pushd-upstream.conf"
#: Pushes sent through nginx before and after one instance is killed.
PUSHES = 10


def find_nginx() -> str:
    found = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        pytest.skip("nginx not installed (apt-get install nginx-light): nginx test skipped")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def site_config(upstreams: list[str], port: int) -> str:
    """The contrib file with the test's instances, a plain listener and no TLS."""
    text = CONTRIB.read_text()
    servers = re.findall(r"^\s*server \d+\.\d+\.\d+\.\d+:\d+ .*;$", text, re.MULTILINE)
    assert len(servers) == 2, "the contrib file's upstream changed shape"
    for line, address in zip(servers, upstreams, strict=True):
        text = text.replace(line, re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", address, line))
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
    text = re.sub(r"^\s*ssl_certificate.*$", "", text, flags=re.MULTILINE)
    assert f"listen 127.0.0.1:{port};" in text
    # Test only: which instances nginx tried for each request.
    return text.replace(
        "proxy_pass http://pushd;",
        "proxy_pass http://pushd;\n        add_header X-Tried $upstream_addr always;",
    )


def main_config(prefix: Path, site: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the temp prefix
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log off;\n{temp}\n    include {site};\n}}\n"
    )


@pytest.fixture
async def behind_nginx(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    pg_url: str,
) -> AsyncIterator[tuple[str, list[PushdProcess], str]]:
    """nginx's URL, the two instances behind it, and the chat server's key."""
    nginx = find_nginx()
    key = await trio.to_thread.run_sync(add_server, StoreConfig(url=pg_url, pool_size=2), "chat")
    spool_key = tmp_path / "spool.key"
    create_key_file(spool_key)
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0, "trusted_proxies": ["127.0.0.1/32"]},
            "store": {"url": pg_url, "pool_size": 2},
            "spool": {"key_file": str(spool_key)},
            "apps": [
                app_entry("chat", TOPIC, f"https://127.0.0.1:{simulator.port}", key_file, ca_file)
            ],
        },
    )
    instances = [await start_pushd_process(nursery, config) for _ in range(2)]
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    site = prefix / "pushd.conf"
    site.write_text(site_config([urlsplit(i.url).netloc for i in instances], port))
    main = prefix / "nginx.conf"
    main.write_text(main_config(prefix, site))
    checked = await trio.run_process(
        [nginx, "-t", "-p", str(prefix), "-c", str(main)], capture_stderr=True, check=False
    )
    assert checked.returncode == 0, checked.stderr.decode()
    server = await trio.lowlevel.open_process(
        [nginx, "-p", str(prefix), "-c", str(main), "-g", "daemon off;"]
    )
    try:
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield f"http://127.0.0.1:{port}", instances, key
    finally:
        server.send_signal(signal.SIGQUIT)  # nginx's graceful stop
        with trio.move_on_after(10):
            await server.wait()
        if server.returncode is None:
            server.kill()
        for instance in instances:
            if instance.process.returncode is None:
                instance.signal(signal.SIGTERM)
        for instance in instances:
            await instance.wait()
            assert "Traceback" not in instance.log, instance.log


async def test_pushes_through_nginx_survive_the_death_of_an_instance(
    behind_nginx: tuple[str, list[PushdProcess], str], simulator: ApnsSimulator
) -> None:
    url, (a, b), key = behind_nginx
    at_a, at_b = urlsplit(a.url).netloc, urlsplit(b.url).netloc
    auth = {"authorization": f"Bearer {key}"}
    tried: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth) as client:
        device = {"user": "u", "token": token(1), "app": "chat"}
        assert (await client.post("/v1/devices", json=device)).is_success
        for n in range(PUSHES):
            sent = await client.post("/v1/notifications", json={"user": "u", "alert": f"{n}"})
            assert sent.status_code == 200, sent.text
            assert sent.json()["results"][0]["status"] == "delivered", sent.text
            tried.append(sent.headers["x-tried"])
        assert set(tried) == {at_a, at_b}, tried  # round robin over both
        a.kill()
        await a.wait()
        tried.clear()
        for n in range(PUSHES):
            sent = await client.post("/v1/notifications", json={"user": "u", "alert": f"+{n}"})
            assert sent.status_code == 200, sent.text
            assert sent.json()["results"][0]["status"] == "delivered", sent.text
            tried.append(sent.headers["x-tried"])
    # A's refused connection was taken to B (a POST nginx had not sent), then A was
    # left alone for fail_timeout: every push was answered by B.
    assert f"{at_a}, {at_b}" in tried, tried
    assert all(t.endswith(at_b) for t in tried), tried
    assert len([r for r in simulator.received if r.status == 200]) == 2 * PUSHES
    assert b.process.returncode is None
