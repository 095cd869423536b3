"""``[server] trusted_proxies`` on the wire: a running pushd behind a "proxy" on
127.0.0.1 (the test's own client, sending the headers a proxy would) takes the client's
address from X-Forwarded-For or Forwarded, for Matrix's and Mattermost's
``allowed_networks``, Mattermost's per-source throttle and the log lines."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pushd import config
from pushd.simulators.apns import ApnsSimulator
from tests import matrix_homeserver as hs
from tests import mattermost_client as mm
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token

LOOPBACK = ["127.0.0.1/32"]
CLIENT = "203.0.113.7"
OTHER = "198.51.100.1"
SECRET = "s3cret-path-0123456789"


@pytest.fixture
async def clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    made: list[httpx.AsyncClient] = []
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture
def start(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> Any:
    """pushd with one APNs app serving Matrix and Mattermost, and ``sections``."""

    async def run(**sections: Any) -> Pushd:
        app = {
            **app_entry("ios", TOPIC, f"https://127.0.0.1:{simulator.port}", key_file, ca_file),
            "matrix": {"app_ids": [hs.IOS_APP]},
            "mattermost_type": "apple_rn",
        }
        pushd: Pushd = await start_pushd(apps=[app], **sections)
        return pushd

    return run


async def notify(pushd: Pushd, headers: dict[str, str]) -> int:
    body = hs.full_event([hs.device(hs.IOS_APP, hs.pushkey_for(token(1)))])
    response = await pushd.client.post(pushd.url + hs.NOTIFY, json=body, headers=headers)
    return response.status_code


async def test_matrix_allowed_networks_see_the_forwarded_client(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pushd")
    caplog.set_level(logging.DEBUG, logger="pushd.http1conn")  # the access line
    pushd = await start(
        server={"trusted_proxies": LOOPBACK}, matrix={"allowed_networks": [f"{CLIENT}/32"]}
    )
    assert await notify(pushd, {"x-forwarded-for": CLIENT}) == 200
    assert await notify(pushd, {"x-forwarded-for": f"{OTHER}, {CLIENT}"}) == 200
    assert await notify(pushd, {"forwarded": f'for="{CLIENT}:4711";proto=https'}) == 200
    assert await notify(pushd, {"x-forwarded-for": OTHER}) == 403
    assert f"matrix: refused a notify from {OTHER} (not allowed)" in caplog.text
    assert f"POST matrix_notify from {OTHER} (peer 127.0.0.1): 403" in caplog.text
    # A client cannot pick its address: the proxy appends the one it saw, on the right.
    assert await notify(pushd, {"x-forwarded-for": f"{CLIENT}, {OTHER}"}) == 403
    # The proxy's own address (no header, or one that names nobody) is not the client's.
    assert await notify(pushd, {}) == 403
    assert await notify(pushd, {"x-forwarded-for": "unknown"}) == 403
    assert "from 127.0.0.1 (not allowed)" in caplog.text


async def test_forwarding_headers_from_an_untrusted_peer_are_ignored(start: Any) -> None:
    pushd = await start(matrix={"allowed_networks": [f"{CLIENT}/32"]})
    assert await notify(pushd, {"x-forwarded-for": CLIENT}) == 403
    assert await notify(pushd, {"forwarded": f"for={CLIENT}"}) == 403
    # Trusting some other proxy changes nothing for requests from 127.0.0.1.
    pushd = await start(
        server={"trusted_proxies": ["10.0.0.0/8"]}, matrix={"allowed_networks": [f"{CLIENT}/32"]}
    )
    assert await notify(pushd, {"x-forwarded-for": CLIENT}) == 403
    # And a loopback allowlist still passes the real peer.
    pushd = await start(
        server={"trusted_proxies": ["10.0.0.0/8"]}, matrix={"allowed_networks": LOOPBACK}
    )
    assert await notify(pushd, {"x-forwarded-for": CLIENT}) == 200


async def test_mattermost_allowlist_and_throttle_are_per_forwarded_client(
    start: Any, clients: list[httpx.AsyncClient]
) -> None:
    pushd = await start(
        server={"trusted_proxies": LOOPBACK},
        mattermost={
            "throttle_per_second": 1,
            "servers": [
                {"name": "chat", "path_secret": SECRET, "allowed_networks": ["203.0.113.0/24"]}
            ],
        },
    )

    def server(forwarded_for: str) -> mm.MattermostServer:
        client = httpx.AsyncClient(timeout=30, headers={"x-forwarded-for": forwarded_for})
        clients.append(client)
        return mm.MattermostServer(client, f"{pushd.url}/{SECRET}")

    first, second = server(CLIENT), server("203.0.113.8")
    assert await first.send(mm.message(token(1))) == {"status": "OK"}
    # Another client behind the same proxy has its own throttle window...
    assert await second.send(mm.message(token(1))) == {"status": "OK"}
    # ...and the first one's is used up.
    assert (await first.send_push(mm.message(token(1)))).status_code == 429
    outside = await server(OTHER).send(mm.message(token(1)))
    assert outside == {"status": "FAIL", "error": "pushd: source address not allowed for chat"}


def test_check_config_names_a_bad_trusted_proxy(tmp_path: Path) -> None:
    cfg = config.parse(
        {"server": {"trusted_proxies": ["10.0.0.0/8", "proxy.example.org"]}}, base=tmp_path
    )
    assert "server.trusted_proxies[1]: not a network like 10.0.0.0/8" in config.check(cfg)
