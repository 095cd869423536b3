"""Rate limits of the native API, Rocket.Chat and Matrix, over real sockets: each
protocol refuses past its limit in its own form with ``Retry-After``, counts each chat
server (or, for Matrix, each source address) apart, and logs one line, not one a
request."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from pushd import config
from pushd.simulators.apns import ApnsSimulator
from pushd.store import open_store
from tests import matrix_homeserver as hs
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token
from tests.rocketchat_client import RocketChat, options

SECRET = "rc-rate-secret-0123456789"


def ratelimit_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "pushd.frontends.ratelimit" and record.levelno == logging.WARNING
    ]


def retry_after(response: httpx.Response) -> int:
    seconds = int(response.headers["retry-after"])  # whole seconds, as HTTP writes them
    assert 1 <= seconds <= 60
    return seconds


async def test_native_api_limits_each_chat_server(
    start_pushd: PushdFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pushd: Pushd = await start_pushd(native={"rate_limit": 3})
    for _ in range(3):
        assert (await pushd.post("/v1/users/devices", {"user": "u"})).status_code == 200
    for _ in range(2):
        limited = await pushd.post("/v1/users/devices", {"user": "u"})
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/json"
        error = limited.json()["error"]
        assert error["code"] == "rate_limited"
        assert "3 requests a minute" in error["message"]
        retry_after(limited)
    # Another chat server has its own window.
    database = await open_store(pushd.config.store)
    try:
        _, other_key = await database.add_server("other-server")
    finally:
        await database.close()
    assert (await pushd.post("/v1/users/devices", {"user": "u"}, other_key)).status_code == 200
    # A wrong key is a 401 as ever, not counted against anyone.
    assert (await pushd.post("/v1/users/devices", {"user": "u"}, "wrong")).status_code == 401
    (line,) = ratelimit_warnings(caplog)
    assert line.startswith("native: server test-server is over its rate limit")


async def test_rocketchat_limits_each_configured_server(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd: Pushd = await start_pushd(
        apps=[app_entry("ios", TOPIC, upstream, key_file, ca_file)],
        rocketchat={
            "rate_limit": 2,
            "servers": [
                {"name": "rc1", "tokens": ["Bearer cloud-token"]},
                {"name": "rc2", "path_secret": SECRET},
            ],
        },
    )
    rc1 = RocketChat(client=pushd.client, gateway=pushd.url, cloud_token="cloud-token")
    for n in range(2):
        assert (await rc1.send("apn", token(n), options(topic=TOPIC))).status_code == 200
    for _ in range(2):
        limited = await rc1.send("apn", token(9), options(topic=TOPIC))
        assert limited.status_code == 429
        body = limited.json()
        assert body["status"] == 429 and body["errorId"] and "too many requests" in body["error"]
        retry_after(limited)
    assert len(simulator.received) == 2  # refused requests are not sent
    rc2 = RocketChat(client=pushd.client, gateway=f"{pushd.url}/{SECRET}", cloud_token=None)
    assert (await rc2.send("apn", token(3), options(topic=TOPIC))).status_code == 200
    # Not authenticated: a 401, as before, whatever the limit.
    stranger = RocketChat(client=pushd.client, gateway=pushd.url, cloud_token="nope")
    assert (await stranger.send("apn", token(4), options(topic=TOPIC))).status_code == 401
    (line,) = ratelimit_warnings(caplog)
    assert line.startswith("rocketchat: server rc1 is over its rate limit")


async def test_matrix_limits_each_source_address(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = {
        **app_entry("ios", TOPIC, upstream, key_file, ca_file),
        "matrix": {"app_ids": [hs.IOS_APP]},
    }
    pushd: Pushd = await start_pushd(apps=[app], matrix={"rate_limit": 2, "answer_within": 1.0})
    homeserver = hs.Homeserver(pushd.client, pushd.url)
    device = hs.device(hs.IOS_APP, hs.pushkey_for(token(1)))
    for n in range(2):
        assert await homeserver.rejected(hs.full_event([device], event_id=f"$e{n}")) == []
    for _ in range(2):
        limited = await homeserver.notify(hs.full_event([device], event_id="$late"))
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/json"
        body = limited.json()
        assert body["errcode"] == "M_LIMIT_EXCEEDED" and isinstance(body["error"], str)
        assert 0 < body["retry_after_ms"] <= 60_000
        assert retry_after(limited) * 1000 >= body["retry_after_ms"]
    assert len(simulator.received) == 2
    # Another source address (all of 127/8 is loopback) has its own window.
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        other = hs.Homeserver(client, pushd.url)
        assert await other.rejected(hs.full_event([device], event_id="$other")) == []
    (line,) = ratelimit_warnings(caplog)
    assert line.startswith("matrix: 127.0.0.1 is over its rate limit")
    detail = await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())
    assert detail.json()["matrix"]["rate_limited"] == 2


def test_limits_are_requests_a_minute_and_checked(tmp_path: Path) -> None:
    defaults = config.Config()
    assert defaults.native.rate_limit == defaults.rocketchat.rate_limit == 18_000
    assert defaults.matrix.rate_limit == 18_000
    data: dict[str, Any] = {
        "store": {"path": str(tmp_path / "db.sqlite3")},
        "native": {"rate_limit": 0},
        "rocketchat": {"rate_limit": 0},
        "matrix": {"rate_limit": -1},
    }
    problems = config.check(config.parse(data, base=tmp_path))
    for key in ("native", "rocketchat", "matrix"):
        assert f"{key}.rate_limit: must be at least 1 (requests a minute)" in problems
