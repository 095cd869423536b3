"""One log line per message in a real pushd process's text log, whatever a caller sent.

Log lines name values from the caller (a Mattermost push's ``type``, a Zulip user id):
one holding a line break wrote a forged line of its own, ``ERROR`` and all.  The text
formatter writes such characters as escapes; a traceback keeps its own lines.
"""

from __future__ import annotations

import io
import json
import logging
import signal
from pathlib import Path

import httpx
import pytest
import trio

from pushd import logs
from pushd.config import LogConfig
from pushd.simulators.apns import ApnsSimulator
from tests.conftest import TOPIC, app_entry
from tests.process import start_pushd_process, write_config

SECRET = "s3cret-path-0123456789"
FORGED = "ERROR   pushd.routing: forged"


async def test_a_mattermost_type_with_line_breaks_stays_on_its_line(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    app = {**app_entry("ios", TOPIC, upstream, key_file, ca_file), "mattermost_type": "apple_rn"}
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "log": {"level": "info"},
            "mattermost": {"servers": [{"name": "chat.example.com", "path_secret": SECRET}]},
            "apps": [app],
        },
    )
    process = await start_pushd_process(nursery, config)
    kind = f"message\n2026-12-07 03:00:00,000 {FORGED}\x00\r\x1b[2K"
    push = {"platform": "apple_rn", "server_id": "s", "device_id": "not a token", "type": kind}
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            answer = await client.post(f"/{SECRET}/api/v1/send_push", json=push)
        # Not a token: removed at once, as MPNS does, and said on an info line.
        assert answer.status_code == 200 and answer.json()["status"] == "REMOVE", answer.text
        line = await process.wait_for_line(r"mattermost: .* push to .*: (removed|failed)")
    finally:
        process.signal(signal.SIGTERM)
        await process.wait()
    assert "\\n2026-12-07 03:00:00,000 ERROR" in line and "\\x00\\r\\x1b[2K" in line, line
    assert not any(text.startswith("2026-12-07 03:00:00") for text in process.lines)
    assert all("\x00" not in text and "\x1b" not in text for text in process.lines)


def test_the_text_formatter_escapes_the_message_but_keeps_a_tracebacks_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.setup(LogConfig(level="info", format="text"))
        log = logging.getLogger("pushd.test")
        log.info("user %s\there", "a\u2028b\x85c")
        try:
            raise ValueError("inner")
        except ValueError:
            log.exception("failed for %s", "x\ny")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("pushd.test: user a\\u2028b\\x85c\there"), lines
    assert lines[1].endswith("pushd.test: failed for x\\ny"), lines
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: inner"


def test_a_workers_lines_name_it_in_text_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.setup(LogConfig(level="info", format="text"), worker=1)
        logging.getLogger("pushd.test").info("hello")
        logs.setup(LogConfig(level="info", format="json"), worker=1)
        logging.getLogger("pushd.test").info("hello")
    finally:
        root.handlers[:], root.level = handlers, level
    text, line = stream.getvalue().splitlines()
    assert text.endswith(" [worker 1] pushd.test: hello"), text
    assert json.loads(line)["worker"] == 1


async def test_serve_names_a_key_file_other_users_can_read(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    p8 = tmp_path / "open.p8"
    await trio.Path(p8).write_bytes(await trio.Path(key_file).read_bytes())
    await trio.Path(p8).chmod(0o644)
    app = {**app_entry("ios", TOPIC, upstream, key_file, ca_file), "key_file": str(p8)}
    config = write_config(
        tmp_path / "pushd.toml",
        {
            "server": {"port": 0},
            "store": {"path": str(tmp_path / "pushd.sqlite3")},
            "apps": [app],
        },
    )
    process = await start_pushd_process(nursery, config)
    try:
        line = await process.wait_for_line(r"open to every user")
    finally:
        process.signal(signal.SIGTERM)
        await process.wait()
    assert f"apps[0].key_file: {p8} is open to every user on this machine (mode 0644)" in line
