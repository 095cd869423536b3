"""No message content in any log line, at any level, on any path; tokens only masked."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from pushd import logs
from pushd.model import mask_token
from pushd.simulators.apns import SimReply
from tests.conftest import Pushd, token

SECRET = "the-launch-code-is-0000"


async def test_logs_never_hold_content_or_full_tokens(
    pushd: Pushd, simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logs.quiet_libraries()  # as `pushd serve` does: h2/hpack debug lines carry raw headers
    tokens = [token(n) for n in range(1, 6)]
    for t in tokens:
        await pushd.register("user", t)
    await pushd.register("user", token(9), app="other")
    simulator.script(
        tokens[0],
        SimReply(status=410, reason="Unregistered", timestamp_ms=int(time.time() * 1000) + 5000),
    )
    simulator.script(
        tokens[1], SimReply(status=500, reason="InternalServerError"), SimReply(status=500)
    )
    simulator.script(tokens[2], SimReply(status=413, reason="PayloadTooLarge"))
    simulator.script(tokens[3], SimReply(action="drop"))
    simulator.script(token(9), SimReply(status=403, reason="InvalidProviderToken"))
    body = {
        "user": "user",
        "alert": {"title": SECRET, "body": SECRET},
        "data": {"secret": SECRET},
        "collapse_id": "c1",
    }
    await pushd.send(body)
    # Bad input with content must not be logged either.
    await pushd.post("/v1/notifications", {**body, "badge": SECRET})
    await pushd.post("/v1/notifications", {**body, "alert": SECRET * 300})
    with trio.fail_after(5):
        # 410, 500 x2 then 200, 413, drop (unanswered) then 200, 200, 403
        await simulator.wait_for(8)
    await trio.sleep(0.3)  # let background retries log whatever they log
    text = "\n".join(
        record.getMessage() + (str(record.exc_info) if record.exc_info else "")
        for record in caplog.records
    )
    assert caplog.records, "expected pushd to log something on these failures"
    assert SECRET not in text
    for t in [*tokens, token(9)]:
        assert t not in text
    assert mask_token(tokens[0]) in text  # the dead token is named, masked


async def test_fcm_sends_are_not_logged_one_line_each(
    start_pushd, fcm_simulator, fcm_key, ca_file, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import fcm_entry

    caplog.set_level(logging.INFO)  # pushd's default level
    logs.quiet_libraries()  # as `pushd serve` does
    pushd = await start_pushd(
        apps=[fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path)]
    )
    device = "fcm-device-0001:APA91b" + "x" * 40
    await pushd.register("user", device, app="android")
    caplog.clear()
    for _ in range(3):
        await pushd.send({"user": "user", "alert": SECRET})
    assert [r for r in caplog.records if r.name.startswith("httpx")] == []
    assert SECRET not in caplog.text and device not in caplog.text
