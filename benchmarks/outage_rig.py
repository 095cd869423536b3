"""The processes of one run of :mod:`outage`: pushd, the APNs simulator, their files.

Split from ``outage.py`` so that the measurement there (phases, figures, the seeded
spool) reads apart from how its processes are started, stopped, killed and read back:
the simulator's record of every answer (``record.txt``, which a SIGKILL cannot lose),
pushd's log line with its URL, its ``/healthz`` spool depth.  Importing this module
puts the repository on ``sys.path`` for the ``pushd`` and ``tests`` imports.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pushd.config import StoreConfig  # noqa: E402
from pushd.simulators.certs import make_self_signed  # noqa: E402
from pushd.store import open_store  # noqa: E402
from pushd.upstream.apns.jwt import write_p8  # noqa: E402
from tests.sim_process import KEY_ID, TEAM_ID, TOPIC  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def config_text(work: Path, port: int) -> str:
    return f"""
[server]
port = 0
first_attempt_deadline = 1.0
drain_seconds = 2.0
[store]
path = "{work}/pushd.sqlite3"
[spool]
key_file = "{work}/spool.key"
[native]
rate_limit = 10000000
[[apps]]
name = "chat"
provider = "apns"
environment = "sandbox"
topic = "{TOPIC}"
key_file = "{work}/AuthKey.p8"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
upstream_url = "https://127.0.0.1:{port}"
upstream_ca_file = "{work}/ca.pem"
connections = 2
request_timeout = 2.0
"""


class Rig:
    """The processes of one run."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = 0
        self.sim: trio.Process | None = None
        self.pushd: trio.Process | None = None
        self.url = ""
        self.key = ""
        self.restarted_at = 0.0

    async def setup(self) -> None:
        tls = make_self_signed()
        tls.write_ca(self.work / "ca.pem")
        (self.work / "sim.pem").write_bytes(tls.server_key_pem + tls.server_cert_pem)
        write_p8(self.work / "AuthKey.p8")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        (self.work / "pushd.toml").write_text(config_text(self.work, self.port))
        store = await open_store(StoreConfig(path=str(self.work / "pushd.sqlite3")))
        try:
            _, self.key = await store.add_server("bench")
        finally:
            await store.close()

    async def start_sim(self) -> None:
        argv = [
            sys.executable, "-m", "tests.sim_process", "--port", str(self.port),
            "--cert", str(self.work / "sim.pem"), "--p8", str(self.work / "AuthKey.p8"),
            "--record", str(self.work / "record.txt"),
        ]  # fmt: skip
        self.sim = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, env=ENV)
        assert self.sim.stdout is not None
        with trio.fail_after(30):
            while b"READY" not in await self.sim.stdout.receive_some():
                pass
        self.restarted_at = time.time()

    async def kill_sim(self) -> None:
        assert self.sim is not None
        self.sim.send_signal(signal.SIGKILL)
        await self.sim.wait()

    async def start_pushd(self) -> None:
        log_path = self.work / "pushd.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: ASYNC230, SIM115
        argv = [sys.executable, "-m", "pushd", "serve", "--config", str(self.work / "pushd.toml")]
        self.pushd = await trio.lowlevel.open_process(argv, stderr=log, env=ENV)
        self.url = ""
        async with httpx.AsyncClient() as client:
            with trio.fail_after(30):
                while not self.url:
                    text = log_path.read_bytes()[offset:].decode(errors="replace")
                    for line in text.splitlines()[::-1]:
                        if "listening on http" in line:
                            self.url = line.split("listening on ")[1].split(",")[0].split()[0]
                            break
                    await trio.sleep(0.05)
            await client.get(self.url + "/health")

    async def stop_pushd(self) -> None:
        assert self.pushd is not None
        self.pushd.send_signal(signal.SIGTERM)
        await self.pushd.wait()

    @property
    def pid(self) -> int:
        assert self.pushd is not None
        return self.pushd.pid

    def delivered(self) -> collections.Counter[int]:
        counts: collections.Counter[int] = collections.Counter()
        for line in (self.work / "record.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "ans" and parts[1] == "200":
                counts[int(parts[3])] += 1
        return counts

    def first_delivery(self, seq: int) -> float:
        for line in (self.work / "record.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 5 and parts[0] == "ans" and parts[1] == "200" and parts[3] == str(seq):
                return float(parts[4])
        raise AssertionError(f"seq {seq} was never delivered")

    async def spooled(self, client: httpx.AsyncClient) -> int:
        headers = {"authorization": f"Bearer {self.key}"}
        response = await client.get(self.url + "/healthz", headers=headers)
        return int(response.json()["spooled"])
