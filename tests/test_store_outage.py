"""A store that cannot write: 503 ``store_unavailable``, one log line, health degraded.

Issue 10, hole 5.  pushd runs as a real process whose store really fills up: on a small
tmpfs mounted in the process's own mount namespace (a full disk, ENOSPC), or under a
file-size limit (EFBIG, an I/O error to SQLite) where namespaces are not allowed.
Registrations then get 503 in their protocol's own form, the log gets one line per
kind of failure, ``/healthz`` says degraded, and a send, which needs no write, still
delivers.  Once the disk has room again, so does the store.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pushd.config import StoreConfig
from pushd.simulators.apns import ApnsSimulator
from pushd.store import open_store
from tests.conftest import TOPIC, app_entry, token
from tests.process import PushdProcess, start_pushd_process, write_config
from tests.trouble import free_port

#: Room left on the small disk once the seed store and the filler are in.
DISK_BYTES = 400 * 1024
#: Freed by deleting this much filler, so the store can write again.
FILLER_BYTES = 200 * 1024
#: Sends made while the store is full; each must be spooled (the upstream is down).
SENDS_TO_A_FULL_STORE = 3
MOUNT_SCRIPT = (
    'mount -t tmpfs -o size={size} tmpfs "$1" && cp "$2" "$1/pushd.sqlite3" && '
    'head -c {filler} /dev/zero > "$1/filler" && shift 2 && exec "$@"'
)


def can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


async def seed_store(path: Path) -> str:
    """A store with one chat server, made before pushd starts; its key."""
    store = await open_store(StoreConfig(path=str(path)))
    try:
        _, key = await store.add_server("chat-server")
    finally:
        await store.close()
    return key


async def fill(client: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    """Register devices until the store refuses one; that answer."""
    headers = {"authorization": f"Bearer {key}"}
    for n in range(100, 20_000):
        body = {"user": f"user{n}", "token": token(n), "app": "chat"}
        response = await client.post(url + "/v1/devices", json=body, headers=headers)
        if response.status_code != 201:
            return response
    raise AssertionError("the store never filled up")


@pytest.mark.parametrize("disk", ["tmpfs", "file_size_limit"])
async def test_a_full_disk_is_a_503_with_one_log_line_and_sends_still_work(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    disk: str,
) -> None:
    seed = tmp_path / "seed.sqlite3"
    key = await seed_store(seed)
    store_dir = tmp_path / "disk"
    store_dir.mkdir()
    upstream = f"https://127.0.0.1:{simulator.port}"
    sections: dict[str, Any] = {
        "server": {"port": 0},
        "store": {"path": str(store_dir / "pushd.sqlite3")},
        "zulip": {"registration": "open"},
        "apps": [app_entry("chat", TOPIC, upstream, key_file, ca_file)],
    }
    config = write_config(tmp_path / "pushd.toml", sections)
    process: PushdProcess
    if disk == "tmpfs":
        if not can_mount_tmpfs(tmp_path):
            pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
        size = seed.stat().st_size + FILLER_BYTES + DISK_BYTES
        script = MOUNT_SCRIPT.format(size=size, filler=FILLER_BYTES)
        command = ["unshare", "-rm", "sh", "-c", script, "sh", str(store_dir), str(seed)]
        process = await start_pushd_process(nursery, config, command=command)
        expected_kind = "disk_full"
    else:
        shutil.copy(seed, store_dir / "pushd.sqlite3")
        limit = seed.stat().st_size + DISK_BYTES

        def limit_file_size() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        process = await start_pushd_process(nursery, config, preexec_fn=limit_file_size)
        expected_kind = "io_error"

    async with httpx.AsyncClient(timeout=10) as client:
        auth = {"authorization": f"Bearer {key}"}
        body = {"user": "alice", "token": token(1), "app": "chat"}
        first = await client.post(process.url + "/v1/devices", json=body, headers=auth)
        assert first.is_success, (first.text, process.log)

        refused = await fill(client, process.url, key)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert expected_kind in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 0

        for _ in range(20):  # more failures: still one log line for this kind
            await client.post(process.url + "/v1/devices", json=body, headers=auth)
        zulip = await client.post(
            process.url + "/api/v1/remotes/server/register",
            data={
                "zulip_org_id": "5e0b4a6c-8f39-4c3e-9d1b-2a7f6c1e9b40",
                "zulip_org_key": "k" * 64,
                "hostname": "chat.example.com",
                "contact_email": "admin@example.com",
            },
        )
        assert zulip.status_code == 503
        assert zulip.json()["result"] == "error"
        assert zulip.json()["code"] == "STORE_UNAVAILABLE"

        answer = await client.get(process.url + "/healthz", headers=auth)
        health = answer.json()
        assert health["status"] == "degraded"
        assert health["store"] == {"state": "failing", "reason": expected_kind}
        # A status-code check (a load balancer's) sees it too, detail or not.
        assert answer.status_code == 503
        assert (await client.get(process.url + "/healthz")).status_code == 503

        # A send needs no write: alice's device still gets it.
        sent = await client.post(
            process.url + "/v1/notifications", json={"user": "alice", "alert": "hi"}, headers=auth
        )
        assert sent.status_code == 200
        assert sent.json()["summary"]["delivered"] == 1

        # Room again: the next write works and health recovers.
        if disk == "tmpfs":
            (
                Path(f"/proc/{process.process.pid}/root") / store_dir.relative_to("/") / "filler"
            ).unlink()
        else:
            resource.prlimit(
                process.process.pid,
                resource.RLIMIT_FSIZE,
                (resource.RLIM_INFINITY, resource.RLIM_INFINITY),
            )
        again = {"user": "bob", "token": token(2), "app": "chat"}
        response = await client.post(process.url + "/v1/devices", json=again, headers=auth)
        assert response.status_code == 201, response.text
        answer = await client.get(process.url + "/healthz", headers=auth)
        assert (answer.status_code, answer.json()["status"]) == (200, "ok")

    process.kill()
    await process.wait()
    assert "Traceback" not in process.log, process.log
    failures = [line for line in process.lines if "store unavailable: " + expected_kind in line]
    assert len(failures) == 1, process.log


async def test_a_delivery_the_spool_cannot_take_is_counted_failed_not_retrying(
    nursery: trio.Nursery, key_file: Path, ca_file: Path, tmp_path: Path
) -> None:
    """The upstream unreachable, so each send must be spooled; the store full, so it
    cannot be: the caller hears 503, and the metrics and ``/healthz`` count the delivery
    as failed (``store_unavailable``), never as ``retrying``: nothing was spooled."""
    seed = tmp_path / "seed.sqlite3"
    key = await seed_store(seed)
    store = tmp_path / "pushd.sqlite3"
    shutil.copy(seed, store)
    upstream = f"https://127.0.0.1:{free_port()}"  # nothing listens: unreachable
    sections: dict[str, Any] = {
        "server": {"port": 0},
        "store": {"path": str(store)},
        "apps": [app_entry("chat", TOPIC, upstream, key_file, ca_file)],
    }
    config = write_config(tmp_path / "pushd.toml", sections)
    limit = seed.stat().st_size + DISK_BYTES

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    process = await start_pushd_process(nursery, config, preexec_fn=limit_file_size)
    metrics_line = await process.wait_for_line(r"metrics on http://")
    metrics = metrics_line.split("metrics on ", 1)[1].split()[0]
    async with httpx.AsyncClient(timeout=10) as client:
        auth = {"authorization": f"Bearer {key}"}
        body = {"user": "alice", "token": token(1), "app": "chat"}
        first = await client.post(process.url + "/v1/devices", json=body, headers=auth)
        assert first.is_success, (first.text, process.log)
        refused = await fill(client, process.url, key)
        assert refused.status_code == 503, refused.text

        for _ in range(SENDS_TO_A_FULL_STORE):
            sent = await client.post(
                process.url + "/v1/notifications",
                json={"user": "alice", "alert": "hi"},
                headers=auth,
            )
            assert sent.status_code == 503, sent.text
            assert sent.json()["error"]["code"] == "store_unavailable"

        scrape = (await client.get(metrics)).text
        health = (await client.get(process.url + "/healthz", headers=auth)).json()
    counted = {
        outcome: sum(
            float(line.rsplit(" ", 1)[1])
            for line in scrape.splitlines()
            if line.startswith("pushd_notifications_total{") and f'outcome="{outcome}"' in line
        )
        for outcome in ("retrying", "failed")
    }
    assert counted["retrying"] == 0, scrape
    failed = [
        line
        for line in scrape.splitlines()
        if line.startswith("pushd_notifications_total{") and 'reason="store_unavailable"' in line
    ]
    assert len(failed) == 1 and failed[0].endswith(f" {float(SENDS_TO_A_FULL_STORE)}"), scrape
    assert counted["failed"] == SENDS_TO_A_FULL_STORE, scrape
    chat = health["apps"]["chat"]
    assert (chat["retried"], chat["failed"]) == (0, SENDS_TO_A_FULL_STORE), health
    assert health["spooled"] == 0, health
    process.kill()
    await process.wait()
    assert "Traceback" not in process.log, process.log
