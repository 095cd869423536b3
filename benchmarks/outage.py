"""pushd under an upstream outage, and draining a spool of 100,000 after a restart.

Issue 11's measurement, repeated on the durable spool: native sends (one device each)
at concurrency 32 against the APNs simulator; the simulator SIGKILLed for 7 s and
started again on its port; then pushd stopped, 100,000 spooled deliveries written into
its store, and pushd started again to drain them.  Processes: ``pushd serve`` (the
real server, one APNs app, 2 connections, SQLite), the simulator as
``tests/sim_process.py`` (it records every request and answer in a file a SIGKILL
cannot lose: duplicates and the fresh send's delivery time come from it), and this
driver (httpx, trio).

Reported per run, then medians and ranges over the runs:

- CPU-ms of pushd per delivered send (healthy) and per spooled send (upstream down:
  the send is answered ``retrying`` once its row is in the store);
- the fresh send's delay: from the simulator's return to its delivery;
- duplicates (notifications the simulator took twice) against the sends in flight
  at the kill;
- pushd's RSS: healthy, peak during the outage and drain, after;
- the drain after a restart: rows/s and CPU-ms per row for ``--restart-rows`` rows,
  RSS at start, peak, after.

Run: ``.venv/bin/python benchmarks/outage.py [--runs 3] [--restart-rows 100000]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
from common import cpu_seconds, status_kib
from outage_rig import Rig  # first: it puts the repository on sys.path

from pushd.config import StoreConfig
from pushd.model import ApnsPush
from pushd.spool.seal import SpoolKeys
from pushd.store import open_store
from pushd.store.spool import SpoolEntry

CONCURRENCY = 32
DEVICES = 64
HEALTHY_SECONDS = 3.0
OUTAGE_SECONDS = 7.0
AFTER_SECONDS = 3.0
#: Rows written per transaction when filling the spool for the restart drain.
SEED_BATCH = 5000
FRESH_SEQ = 10**9


async def outage_run(rig: Rig) -> dict[str, Any]:
    """The outage under load; the figures of one run."""
    await rig.start_sim()
    await rig.start_pushd()
    headers = {"authorization": f"Bearer {rig.key}"}
    devices = [f"{n + 1:064x}" for n in range(DEVICES)]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        for n, device in enumerate(devices):
            body = {"user": f"u{n}", "token": device, "app": "chat"}
            (
                await client.post(rig.url + "/v1/devices", json=body, headers=headers)
            ).raise_for_status()
        state = {"seq": 0, "in_flight": 0}
        answers: dict[int, str] = {}
        phase = ["healthy"]
        sent: collections.Counter[str] = collections.Counter()
        rss: dict[str, int] = collections.defaultdict(int)

        async def send(seq: int) -> str:
            body = {"tokens": [devices[seq % DEVICES]], "alert": "bench", "data": {"seq": seq}}
            response = await client.post(rig.url + "/v1/notifications", json=body, headers=headers)
            return str(response.json()["results"][0]["status"])

        async def worker() -> None:
            while True:
                seq = state["seq"]
                state["seq"] += 1
                state["in_flight"] += 1
                try:
                    status = await send(seq)
                finally:
                    state["in_flight"] -= 1
                answers[seq] = status
                sent[f"{phase[0]}:{status}"] += 1

        async def sample() -> None:
            while True:
                rss[phase[0]] = max(rss[phase[0]], status_kib(rig.pid, "VmRSS"))
                await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker)
            nursery.start_soon(sample)
            await trio.sleep(1.0)  # warm-up
            sent.clear()
            cpu0 = cpu_seconds(rig.pid)
            await trio.sleep(HEALTHY_SECONDS)
            cpu1 = cpu_seconds(rig.pid)
            healthy_sends = sum(sent.values())
            healthy_rss = status_kib(rig.pid, "VmRSS")
            phase[0] = "outage"
            in_flight = state["in_flight"]
            await rig.kill_sim()
            await trio.sleep(OUTAGE_SECONDS)
            cpu2 = cpu_seconds(rig.pid)
            spooled_sends = sent["outage:retrying"]
            await rig.start_sim()
            phase[0] = "after"
            fresh = await send(FRESH_SEQ)
            await trio.sleep(AFTER_SECONDS)
            nursery.cancel_scope.cancel()
        phase[0] = "drain"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            with trio.fail_after(300):
                while await rig.spooled(client):  # noqa: ASYNC110
                    await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        await trio.sleep(1.0)
        after_rss = status_kib(rig.pid, "VmRSS")
    delivered = rig.delivered()
    lost = [
        seq
        for seq, status in answers.items()
        if status in ("delivered", "retrying") and seq not in delivered
    ]
    return {
        "cpu_ms_per_delivered_send": (cpu1 - cpu0) * 1000 / max(1, healthy_sends),
        "cpu_ms_per_spooled_send": (cpu2 - cpu1) * 1000 / max(1, spooled_sends),
        "spooled_sends": spooled_sends,
        "answers": dict(sent),
        "fresh_status": fresh,
        "fresh_delay_s": rig.first_delivery(FRESH_SEQ) - rig.restarted_at,
        "duplicates": sum(n - 1 for n in delivered.values()),
        "in_flight_at_kill": in_flight,
        "lost": len(lost),
        "rss_healthy_mib": healthy_rss / 1024,
        "rss_peak_mib": max(rss.values()) / 1024,
        "rss_after_mib": after_rss / 1024,
    }


async def seed(rig: Rig, rows: int) -> None:
    """Write ``rows`` spooled deliveries, sealed as pushd seals them, due now."""
    keys = SpoolKeys.load(rig.work / "spool.key")
    store = await open_store(StoreConfig(path=str(rig.work / "pushd.sqlite3")))
    now = time.time()
    try:
        for start in range(0, rows, SEED_BATCH):
            entries = []
            for n in range(start, min(rows, start + SEED_BATCH)):
                token = f"{(n % DEVICES) + 1:064x}"
                push = ApnsPush(
                    json.dumps({"aps": {"alert": "bench"}, "seq": 2 * 10**9 + n}).encode()
                )
                key_id, sealed = keys.seal("chat", token, push)
                entries.append(
                    SpoolEntry(
                        app="chat", token=token, protocol="native", ref=None, caller=None,
                        registered_at=None, key_id=key_id, sealed=sealed, attempt=1,
                        due_at=now, expires_at=now + 86400, created_at=now,
                    )
                )  # fmt: skip
            await store.spool_add(entries)
    finally:
        await store.close()


async def restart_run(rig: Rig, rows: int) -> dict[str, Any]:
    """pushd stopped, ``rows`` spooled, pushd started: how fast and how costly the drain."""
    await rig.stop_pushd()
    await seed(rig, rows)
    started = time.monotonic()
    await rig.start_pushd()
    cpu0 = cpu_seconds(rig.pid)
    assert rig.sim is not None
    sim0 = cpu_seconds(rig.sim.pid)
    rss0 = status_kib(rig.pid, "VmRSS")
    peak = rss0
    parts = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0}
    start_parts = {name: status_kib(rig.pid, name) for name in parts}
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(900):
            while await rig.spooled(client):
                rss = status_kib(rig.pid, "VmRSS")
                if rss > peak:
                    peak = rss
                    parts = {name: status_kib(rig.pid, name) for name in parts}
                await trio.sleep(0.1)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(rig.pid) - cpu0
    sim_cpu = cpu_seconds(rig.sim.pid) - sim0
    await trio.sleep(1.0)
    after = status_kib(rig.pid, "VmRSS")
    seeded = {seq for seq in rig.delivered() if seq >= 2 * 10**9}
    await rig.stop_pushd()
    await rig.kill_sim()
    return {
        "drain_rows_per_s": rows / elapsed,
        "drain_cpu_ms_per_row": cpu * 1000 / rows,
        "drain_simulator_cpu_ms_per_row": sim_cpu * 1000 / rows,
        "drain_missing": rows - len(seeded),
        "drain_rss_start_mib": rss0 / 1024,
        "drain_rss_peak_mib": peak / 1024,
        **{f"drain_start_{name}_mib": kib / 1024 for name, kib in start_parts.items()},
        **{f"drain_peak_{name}_mib": kib / 1024 for name, kib in parts.items()},
        "drain_rss_after_mib": after / 1024,
    }


async def one_run(rows: int, keep: Path | None, only_restart: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pushd-outage-", dir=keep) as tmp:
        rig = Rig(Path(tmp))
        await rig.setup()
        try:
            if only_restart:
                await rig.start_sim()
                await rig.start_pushd()
                figures = {}
            else:
                figures = await outage_run(rig)
            figures.update(await restart_run(rig, rows))
        finally:
            for process in (rig.pushd, rig.sim):
                if process is not None and process.returncode is None:
                    process.kill()
            if keep is not None:
                for name in os.listdir(tmp):
                    os.rename(os.path.join(tmp, name), keep / name)
        return figures


def summary(runs: list[dict[str, Any]]) -> None:
    print(f"\n{len(runs)} runs: median [min - max]")
    for name in runs[0]:
        values = [run[name] for run in runs]
        if all(isinstance(v, int | float) for v in values):
            low, high = min(values), max(values)
            print(f"  {name:28} {statistics.median(values):10.3f}  [{low:.3f} - {high:.3f}]")
        else:
            print(f"  {name:28} {values}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--restart-rows", type=int, default=100_000)
    parser.add_argument("--only-restart", action="store_true", help="just the drain")
    parser.add_argument("--keep", type=Path, help="keep each run's files (logs, record) here")
    args = parser.parse_args()
    runs = []
    for number in range(args.runs):
        keep = None
        if args.keep is not None:
            keep = args.keep / f"run-{number + 1}"
            keep.mkdir(parents=True, exist_ok=True)
        figures = trio.run(one_run, args.restart_rows, keep, args.only_restart)
        print(
            f"run {number + 1}: "
            + json.dumps(
                {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
            ),
            flush=True,
        )
        runs.append(figures)
    summary(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
