"""The rig of the spool tests with real processes (``test_spool_trouble.py``,
``test_spool_keys_live.py``): pushd as ``pushd serve``, the APNs simulator as a process
of its own, a client and a chat server key; and what they check on disk."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trustme

from tests.process import PushdProcess, start_pushd_process
from tests.storefixtures import add_server
from tests.trouble import SimProcess, files_under, health, pushd_config

#: A string in every test push's content: it must never be readable on disk or in a log.
CANARY = "canary-7f3a9c-the-launch-code"


@attrs.define
class Rig:
    """One test's pushd process, its simulator process, a client and a chat server key."""

    nursery: trio.Nursery
    tmp_path: Path
    sim: SimProcess
    key_file: Path
    ca_file: Path
    client: httpx.AsyncClient
    config: Path = Path()
    key: str = ""
    pushd: PushdProcess | None = None
    logs: list[str] = attrs.Factory(list)

    async def configure(self, **sections: Any) -> None:
        self.config = pushd_config(self.tmp_path, self.sim, self.key_file, self.ca_file, **sections)
        store = str(self.tmp_path / "pushd.sqlite3")
        self.key = await trio.to_thread.run_sync(add_server, store, "chat")

    async def start(self) -> PushdProcess:
        self.pushd = await start_pushd_process(self.nursery, self.config)
        return self.pushd

    @property
    def url(self) -> str:
        assert self.pushd is not None
        return self.pushd.url

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    async def register(self, tokens: list[str]) -> None:
        for n, value in enumerate(tokens):
            body = {"user": f"u{n}", "token": value, "app": "chat"}
            response = await self.client.post(
                self.url + "/v1/devices", json=body, headers=self.auth
            )
            assert response.status_code in (200, 201), response.text

    async def send(self, seq: int, device: str, **extra: Any) -> dict[str, Any]:
        """A native send to one device, its push marked with ``seq``; its one result."""
        body = {"tokens": [device], "alert": f"{CANARY} #{seq}", "data": {"seq": seq}, **extra}
        response = await self.client.post(
            self.url + "/v1/notifications", json=body, headers=self.auth
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["results"][0]
        return result

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.pushd is not None
        self.pushd.signal(signum)
        code = await self.pushd.wait()
        self.logs.append(self.pushd.log)
        self.pushd = None
        return code

    async def health(self) -> dict[str, Any]:
        return await health(self.client, self.url, self.key)

    async def wait_spool_empty(self, within: float = 20.0) -> None:
        with trio.fail_after(within):
            while (await self.health())["spooled"]:  # noqa: ASYNC110
                await trio.sleep(0.1)

    def all_logs(self) -> str:
        return "\n".join([*self.logs, self.pushd.log if self.pushd else ""])


@pytest.fixture
async def rig(
    nursery: trio.Nursery, ca: trustme.CA, key_file: Path, ca_file: Path, tmp_path: Path
) -> AsyncIterator[Rig]:
    sim = SimProcess.prepare(ca, key_file, tmp_path)
    async with httpx.AsyncClient(timeout=30) as client:
        rig = Rig(nursery, tmp_path, sim, key_file, ca_file, client)
        try:
            yield rig
        finally:
            if rig.pushd is not None:
                await rig.stop(signal.SIGKILL)
            await sim.kill()
    assert "Traceback" not in rig.all_logs(), rig.all_logs()


def assert_no_canary(rig: Rig) -> None:
    """The canary is in no file of the store (database, WAL, shared memory) nor a log."""
    store = rig.tmp_path / "pushd.sqlite3"
    files = list(files_under(store))
    assert files, "no store files"
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), path
    assert CANARY not in rig.all_logs()


def spool_rows(rig: Rig) -> list[tuple[str, int]]:
    """(key id, attempt) of every spool row, read beside the running daemon."""
    with sqlite3.connect(rig.tmp_path / "pushd.sqlite3") as db:
        return [(str(k), int(a)) for k, a in db.execute("SELECT key_id, attempt FROM spool")]
