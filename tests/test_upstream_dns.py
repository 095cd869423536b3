"""One app's upstream host name resolving slowly, the other apps unaffected.

pushd runs as a real process in a mount namespace of its own (``unshare``), whose
/etc/resolv.conf names a DNS server on a loopback address that never answers: lookups
of the broken app's host hang, ``localhost`` still comes from /etc/hosts.  Nothing
changes outside that process.  Needs root, as mounting does.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pushd import config
from pushd.simulators.apns import ApnsSimulator
from pushd.store import open_store
from tests.conftest import OTHER_TOPIC, TOPIC, app_entry, token
from tests.process import start_pushd_process, write_config

UNSHARE = "/usr/bin/unshare"
#: The broken app's connections: each slot resolves its host when the app is unreachable,
#: all at once (trio's shared limiter has 40 threads).
BROKEN_CONNECTIONS = 100
#: The broken app's request_timeout: its own callers are answered soon.
BROKEN_TIMEOUT = 1.0
#: A lookup of the broken host hangs this long (longer than the test).
DNS_TIMEOUT = 30
#: Time for the broken app's lookups to start before the healthy app needs one.
HEAD_START = 0.5

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(UNSHARE),
    reason="needs root and unshare to give pushd its own resolv.conf",
)


def app(name: str, topic: str, url: str, key_file: Path, ca_file: Path) -> dict[str, Any]:
    """conftest's app entry with pushd's default number of connections."""
    entry = app_entry(name, topic, url, key_file, ca_file)
    del entry["connections"]
    return entry


async def test_a_host_whose_dns_hangs_leaves_the_other_apps_their_lookups(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    """trio resolves names on worker threads from one limiter of 40, and a lookup its
    connect gave up on keeps its thread until the resolver gives up.  The broken app's
    connections, resolving a host whose DNS never answers, took all 40: the healthy
    app, needing a lookup of its own (a new connection after a GOAWAY, an FCM token),
    waited for a thread until its connect timed out, and every push of it was spooled
    as "APNs unreachable".  Now each host name has its own limiter: the healthy app
    connects and delivers while the broken one's lookups hang."""
    dns = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    # A loopback address of its own: other tests may run beside this one.
    address = "127." + ".".join(str(random.randrange(2, 255)) for _ in range(3))
    await dns.bind((address, 53))  # receives the queries, answers none
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\noptions timeout:{DNS_TIMEOUT} attempts:1\n")
    broken = app(
        "broken", OTHER_TOPIC, f"https://apns.broken.example:{simulator.port}", key_file, ca_file
    )
    broken.update(connections=BROKEN_CONNECTIONS, request_timeout=BROKEN_TIMEOUT)
    healthy = app("healthy", TOPIC, f"https://localhost:{simulator.port}", key_file, ca_file)
    path = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"listen": "127.0.0.1", "port": 0},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "spool": {"key_file": str(tmp_path / "spool.key")},
            "apps": [broken, healthy],
        },
    )
    database = await open_store(config.load(path).store)
    try:
        _, key = await database.add_server("test-server")
    finally:
        await database.close()
    mount = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    wrapper = (UNSHARE, "--mount", "--propagation", "private", "sh", "-c", mount, str(resolv))
    pushd = await start_pushd_process(nursery, path, command=wrapper)
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=pushd.url, headers=headers, timeout=30) as client:

        async def send(app: str, device: str) -> dict[str, Any]:
            answer = await client.post(
                "/v1/notifications", json={"tokens": [device], "app": app, "alert": "hi"}
            )
            assert answer.status_code == 200, answer.text
            result: dict[str, Any] = answer.json()["results"][0]
            return result

        for user, device, name in (("b", token(1), "broken"), ("h", token(2), "healthy")):
            answer = await client.post(
                "/v1/devices", json={"user": user, "token": device, "app": name}
            )
            assert answer.status_code in (200, 201), answer.text
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(send, "broken", token(1))  # its lookups start, and hang
                await trio.sleep(HEAD_START)
                assert (await send("healthy", token(2)))["status"] == "delivered"
        finally:
            pushd.kill()
            await pushd.wait()
            dns.close()
