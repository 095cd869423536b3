"""The native API on a shared store (PostgreSQL): a send to a user reads the user's
registrations in the store call that authenticates and counts it, so its body is read
before its key.  What a caller hears must not change: a wrong key is a 401 whatever the
body, a bad body with a good key a 400, a deactivated server a 403, and each request
counts once against the server's limit."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from pushd.simulators.apns import ApnsSimulator
from pushd.spool.seal import create_key_file
from tests.conftest import Pushd, PushdFactory, token

#: Requests a minute for the test's chat server: reached within the test.
LIMIT = 6
WRONG_KEY = "pushd_" + "x" * 40
TOO_LONG_USER = "u" * 257


async def start(start_pushd: PushdFactory, pg_url: str, tmp_path: Path, limit: int) -> Pushd:
    key_file = tmp_path / "spool.key"
    create_key_file(key_file)
    pushd: Pushd = await start_pushd(
        store={"url": pg_url, "pool_size": 2},
        spool={"key_file": str(key_file)},
        native={"rate_limit": limit},
    )
    assert pushd.services.store.shared
    return pushd


async def send(
    pushd: Pushd, body: bytes | dict[str, object], key: str | None = None
) -> tuple[int, dict[str, object]]:
    content = body if isinstance(body, bytes) else None
    json_body = None if isinstance(body, bytes) else body
    answer = await pushd.client.post(
        pushd.url + "/v1/notifications", content=content, json=json_body, headers=pushd.auth(key)
    )
    return answer.status_code, answer.json()


def code(answer: dict[str, object]) -> object:
    error = answer["error"]
    assert isinstance(error, dict)
    return error["code"]


async def test_a_send_reaches_the_users_devices_and_counts_once(
    start_pushd: PushdFactory, pg_url: str, tmp_path: Path, simulator: ApnsSimulator
) -> None:
    pushd = await start(start_pushd, pg_url, tmp_path, LIMIT)
    # Windows are the clock's minutes: start well inside one, so every request below
    # is counted in one window.
    if time.time() % 60 > 50:
        await trio.sleep(61 - time.time() % 60)
    for n in (1, 2):
        answer = await pushd.client.post(
            pushd.url + "/v1/devices",
            json={"user": "alice", "token": token(n), "app": "chat"},
            headers=pushd.auth(),
        )
        assert answer.status_code == 201, answer.text
    status, answer = await send(pushd, {"user": "alice", "alert": "hi"})
    assert status == 200, answer
    assert answer["summary"] == {"delivered": 2, "removed": 0, "retrying": 0, "failed": 0}
    assert sorted(r.token for r in simulator.received) == [token(1), token(2)]
    status, answer = await send(pushd, {"user": "bob", "alert": "hi"})
    assert (status, answer["results"]) == (200, [])
    # A wrong key counts nothing; the registrations, the two sends and these fill it.
    assert (await send(pushd, {"user": "alice", "alert": "hi"}, WRONG_KEY))[0] == 401
    assert (await send(pushd, {"user": "alice", "alert": "hi"}))[0] == 200
    assert (await send(pushd, {"user": "alice", "alert": "hi"}))[0] == 200
    status, answer = await send(pushd, {"user": "alice", "alert": "hi"})
    assert (status, code(answer)) == (429, "rate_limited")


async def test_keys_and_bodies_are_judged_as_on_every_route(
    start_pushd: PushdFactory, pg_url: str, tmp_path: Path
) -> None:
    pushd = await start(start_pushd, pg_url, tmp_path, 1000)
    good = {"user": "alice", "alert": "hi"}
    for body in (good, b"{not json", {"user": TOO_LONG_USER, "alert": "hi"}, {"alert": "x"}):
        status, answer = await send(pushd, body, WRONG_KEY)
        assert (status, code(answer)) == (401, "unauthorized"), body
    status, answer = await send(pushd, b"{not json")
    assert (status, code(answer)) == (400, "malformed_json")
    status, answer = await send(pushd, {"user": TOO_LONG_USER, "alert": "hi"})
    assert (status, code(answer)) == (400, "invalid_request")
    status, answer = await send(pushd, {"user": "alice", "alert": "hi", "app": "nope"})
    assert (status, code(answer)) == (400, "unknown_app")
    big = {"user": "alice", "alert": "hi", "data": {"filler": "x" * 20_000}}
    status, answer = await send(pushd, big, WRONG_KEY)
    assert (status, code(answer)) == (401, "unauthorized")
    status, answer = await send(pushd, big)  # the usual path: authenticated, then judged
    assert (status, code(answer)) == (413, "payload_too_large"), answer
    await pushd.services.store.set_active("test-server", False)
    status, answer = await send(pushd, good)
    assert (status, code(answer)) == (403, "forbidden")
