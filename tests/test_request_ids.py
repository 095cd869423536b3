"""A request id on every log line of a delivery, in a real pushd process's log.

The lines of one push (a dead token removed, a retry decided) carry the id of the
request that brought it; the retries of a spooled delivery carry the id its decision
line named, so an admin can follow one push with two greps.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import trio

from pushd.config import load
from pushd.model import mask_token
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.faults import parse_plan
from pushd.store import open_store
from tests.conftest import TOPIC, app_entry, token
from tests.process import start_pushd_process, write_config

ID = r"\[(r[0-9a-f]{8}|s\d+)\] "


async def test_every_line_of_a_delivery_carries_its_request_id(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    store_path = tmp_path / "pushd.sqlite3"
    upstream = f"https://127.0.0.1:{simulator.port}"
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"path": str(store_path)},
            "retry": {"base_delay": 0.2, "max_delay": 0.5},
            "log": {"level": "info"},
            "apps": [app_entry("chat", TOPIC, upstream, key_file, ca_file)],
        },
    )
    store = await open_store(load(config).store)
    try:
        _, key = await store.add_server("chat-server")
    finally:
        await store.close()
    dead, flaky = token(1), token(2)
    parse_plan([f"{dead}=410:Unregistered", f"{flaky}=503", f"{flaky}=503", f"{flaky}=200"]).apply(
        simulator, None
    )
    process = await start_pushd_process(nursery, config)
    auth = {"authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(base_url=process.url, headers=auth, timeout=30) as client:
            for device in (dead, flaky):
                registered = await client.post(
                    "/v1/devices", json={"user": "ann", "token": device, "app": "chat"}
                )
                assert registered.status_code in (200, 201)
            sent = await client.post("/v1/notifications", json={"user": "ann", "alert": "hi"})
            assert sent.status_code == 200
        removed = await process.wait_for_line(rf"token {re.escape(mask_token(dead))} is dead")
        first = await process.wait_for_line(
            rf"{re.escape(mask_token(flaky))} attempt 1 failed .* as s\d+"
        )
        second = await process.wait_for_line(
            rf"{re.escape(mask_token(flaky))} attempt 2 failed", within=20
        )
    finally:
        process.signal(signal.SIGTERM)
        await process.wait()
    request = re.search(ID, removed)
    assert request is not None and request.group(1).startswith("r"), removed
    # The first attempt's decision is logged under the same request, and names the row
    # its retries log under.
    assert f"[{request.group(1)}] " in first, first
    row = re.search(r" as (s\d+)", first)
    assert row is not None
    assert f"[{row.group(1)}] " in second, second
    # Lines outside a delivery (start-up, shutdown) carry none.
    listening = next(line for line in process.lines if "listening on" in line)
    assert not re.search(ID, listening)


def test_json_lines_carry_the_request_id_as_a_field() -> None:
    import io
    import json
    import logging

    from pushd.logs import JsonFormatter
    from pushd.requestid import REQUEST_ID, RequestIdFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("pushd.test_request_ids")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("outside a request")
        current = REQUEST_ID.set("r0badcafe")
        try:
            logger.warning("inside one")
        finally:
            REQUEST_ID.reset(current)
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "request_id" not in outside
    assert inside["request_id"] == "r0badcafe"
    assert inside["msg"] == "inside one"
