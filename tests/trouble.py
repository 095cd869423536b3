"""Trouble on demand for the spool tests: an APNs simulator in a process of its own.

An outage is a process that dies: its sockets vanish mid-stream, as APNs' would behind
a network fault, and it comes back on the same port.  The in-process simulator of
``tests/conftest.py`` cannot die that way, so this module runs the same
:class:`~pushd.simulators.apns.ApnsSimulator` as ``python -m tests.sim_process`` and keeps
its record where a SIGKILL cannot take it: one line per request and per answer,
written with ``os.write`` before the answer's bytes leave (so anything pushd saw
answered is on record).  The test reads the file.

Also here: what the tests read of a pushd process (VmRSS, ``pushd spool status``,
``/healthz``) and a config writer with short timeouts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
import trustme

from tests.conftest import TOPIC, app_entry
from tests.process import ROOT, write_config

#: How long the simulator process may take to listen.
SIM_START_TIMEOUT = 20.0


@attrs.frozen
class Seen:
    """One line of the simulator's record: a request taken, or an answer given."""

    kind: str  # "req" or "ans"
    status: int
    token: str
    #: The ``seq`` the test put in the push's data (-1 for pushes without one).
    seq: int
    at: float


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class SimProcess:
    """The APNs simulator as a process: start, kill, start again on the same port."""

    port: int
    record: Path
    cert: Path
    p8: Path
    delay: float = 0.0
    process: trio.Process | None = None
    restarted_at: float = 0.0

    @classmethod
    def prepare(cls, ca: trustme.CA, p8: Path, tmp_path: Path, **kw: Any) -> SimProcess:
        cert = tmp_path / "sim-cert.pem"
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(cert)
        )
        return cls(port=free_port(), record=tmp_path / "sim-record.txt", cert=cert, p8=p8, **kw)

    async def start(self, delay: float | None = None) -> None:
        """Start listening on :attr:`port`, answering after ``delay`` seconds."""
        if delay is not None:
            self.delay = delay
        argv = [
            sys.executable, "-m", "tests.sim_process", "--port", str(self.port),
            "--cert", str(self.cert), "--p8", str(self.p8), "--record", str(self.record),
            "--delay", str(self.delay),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": ROOT}
        self.process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=env)
        assert self.process.stdout is not None
        seen = b""
        with trio.fail_after(SIM_START_TIMEOUT):
            while b"READY" not in seen:
                chunk = await self.process.stdout.receive_some()
                assert chunk, "the simulator process exited before listening"
                seen += chunk
        self.restarted_at = time.time()

    async def kill(self) -> None:
        """SIGKILL: an outage, sockets and all."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        self.process = None

    def seen(self) -> list[Seen]:
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        result = []
        for line in lines:
            parts = line.split()
            if len(parts) == 5:  # a line cut by a SIGKILL is not whole
                kind, status, token, seq, at = parts
                result.append(Seen(kind, int(status), token, int(seq), float(at)))
        return result

    def delivered(self) -> list[Seen]:
        """Answers 200: notifications APNs took."""
        return [s for s in self.seen() if s.kind == "ans" and s.status == 200]

    async def wait_delivered(self, seqs: set[int], within: float) -> list[Seen]:
        """Wait until every seq in ``seqs`` has been delivered at least once."""
        with trio.fail_after(within):
            while True:
                delivered = self.delivered()
                if seqs <= {s.seq for s in delivered}:
                    return delivered
                await trio.sleep(0.1)


def pushd_config(
    tmp_path: Path, sim: SimProcess, key_file: Path, ca_file: Path, **sections: Any
) -> Path:
    """A pushd.toml for a process: one APNs app ``chat`` at the simulator's port, short
    timeouts (overridden by ``sections``; ``app`` updates the app's table)."""
    app = {
        **app_entry("chat", TOPIC, f"https://127.0.0.1:{sim.port}", key_file, ca_file),
        "request_timeout": 2.0,
        **sections.pop("app", {}),
    }
    data: dict[str, Any] = {
        "server": {"port": 0, "first_attempt_deadline": 1.0, "drain_seconds": 2.0},
        "store": {"path": str(tmp_path / "pushd.sqlite3")},
        "spool": {"key_file": str(tmp_path / "spool.key")},
        "retry": {"base_delay": 0.1, "max_delay": 0.5, "max_attempts": 8},
        "native": {"rate_limit": 10_000_000},
    }
    for name, table in sections.items():
        data[name] = {**data.get(name, {}), **table}
    data["apps"] = [app]
    return write_config(tmp_path / "pushd.toml", data)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


async def pushd_cli(*args: str) -> str:
    """``pushd ARGS`` as a process of its own (beside the running daemon); its stdout."""
    done = await trio.run_process(
        [sys.executable, "-m", "pushd", *args],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def spool_status(config: Path) -> str:
    return await pushd_cli("spool", "status", "--config", str(config))


async def health(client: httpx.AsyncClient, url: str, key: str) -> dict[str, Any]:
    response = await client.get(url + "/healthz", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def files_under(path: Path) -> Iterator[Path]:
    """The SQLite file and its companions (WAL, shared memory, journal)."""
    yield from sorted(path.parent.glob(path.name + "*"))
