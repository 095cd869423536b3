"""SQLite, PostgreSQL with one instance, PostgreSQL with two: the same end-to-end workload.

What scale-out costs and buys.  Each setup serves the same work: native API sends
(``POST /v1/notifications``, one APNs device per request, ``load.py``'s ``one`` mode)
through real ``pushd serve`` processes to the APNs simulator, over a store holding the
same fixed registrations.  Per setup and run:

- **end to end**: notifications/s, and CPU-ms per notification of the pushd processes
  and of the PostgreSQL server processes serving the benchmark's database (the
  backends whose title names it: ``postgres: ... <user> <database> ...``, read from
  ``/proc``; the server's shared background processes are left out, since other
  databases on the server use them too).  With two instances, one load driver per
  instance sends half the requests at half the concurrency, as a round-robin balancer
  would;
- **store micro-rates**, through :class:`pushd.store.Store` in this process:
  registrations/s (``Store.register``, one transaction each, as ``POST /v1/devices``
  makes them, which is also how the fixed registrations are stored), spool rows/s
  (``spool_add`` of sealed rows, then ``spool_claim`` + ``spool_settle`` in batches of
  :data:`SPOOL_BATCH` until none are left: what retrying costs the store), and the
  shared rate-limit check (``Store.rate_hit``, the upsert every native, Zulip or
  Rocket.Chat request makes on PostgreSQL), as CPU-ms per check of this process plus
  its PostgreSQL backend.  On SQLite the check stays in memory (``RateLimit.check``).

With ``--api zulip`` the sends are Zulip servers' ``push/notify`` to pushd's Zulip
bouncer instead (``load.py``'s ``zulip`` mode: one server, its realm, 10 APNs devices a
user, stored through the same store API as a bouncer's registrations), and the figures
are per request too: what a Zulip notify costs before it sends is the store's work.
With ``--api matrix`` they are Matrix notifies with one device each (``load.py``'s
``matrix`` mode; the pushers need nothing stored): on a shared store every notify reads
the device's kept verdicts and records its dedupe key in the database.

Medians and ranges over ``--runs`` runs (3 by default).  Run it with::

    .venv/bin/python benchmarks/postgres_store.py [--runs 3] [--requests 4000]
        [--api native|zulip|matrix] [--postgres postgresql://root@127.0.0.1:5432/test]

It creates a database per setup and run on that server (it needs CREATEDB) and drops
it afterwards; everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
from common import (
    APP_NAME,
    KEY_ID,
    MATRIX_APP_ID,
    MATRIX_DEVICES,
    READY_PREFIX,
    SERVER_NAME,
    TEAM_ID,
    TOPIC,
    ZULIP_DEVICES,
    ZULIP_HOSTNAME,
    ZULIP_KIND_APNS,
    ZULIP_REALM_UUID,
    ZULIP_SERVER_KEY,
    ZULIP_SERVER_UUID,
    cpu_seconds,
    free_port,
    token,
    zulip_token,
    zulip_user_uuid,
)

from pushd.config import StoreConfig
from pushd.frontends.ratelimit import RateLimit
from pushd.spool.seal import create_key_file
from pushd.store import Store, ZulipRealm, open_store
from pushd.store.spool import SpoolEntry
from pushd.upstream.apns.jwt import write_p8

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Registered users (one APNs device each) the sends are spread over.
USERS = 2000
#: Spool rows added, then claimed and settled, per run.
SPOOL_ROWS = 2000
#: Rows per claim (and per settle), as the spool worker takes them.
SPOOL_BATCH = 100
#: Shared rate-limit checks timed per run.
RATE_CHECKS = 2000
#: Concurrent requests over all instances.
CONCURRENCY = 16
#: Zulip users (``--api zulip``), each with ZULIP_DEVICES APNs devices.
ZULIP_USERS = 200
SETUPS = ("sqlite", "postgres x1", "postgres x2")
#: Figures of :func:`micro`: one process on the store, whatever the instance count.
MICRO = (
    "registrations/s",
    "spool rows/s (add+claim+settle)",
    "rate check CPU-ms, pushd side",
    "rate check CPU-ms, PostgreSQL side",
)


def pg_backends(database: str) -> list[int]:
    """Pids of the PostgreSQL backends connected to ``database``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and f" {database} " in title:
            pids.append(int(entry))
    return pids


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # exited meanwhile
            total += cpu_seconds(pid)
    return total


@contextmanager
def database(admin_url: str | None) -> Iterator[tuple[str | None, str | None]]:
    """A fresh PostgreSQL database (its URL and name), dropped afterwards."""
    if admin_url is None:
        yield None, None
        return
    import psycopg

    name = "pushd_bench_" + secrets.token_hex(4)
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        yield url, name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def micro(store: Store, db_name: str | None) -> tuple[str, dict[str, float]]:
    """Store the fixed registrations (timed) and time the spool and rate checks."""
    server, key = await store.add_server(SERVER_NAME)
    started = time.perf_counter()
    for n in range(USERS):
        await store.register(server.id, f"one-{n}", token(n), APP_NAME, "sandbox")
    figures = {"registrations/s": USERS / (time.perf_counter() - started)}
    now = time.time()
    entries = [
        SpoolEntry("bench-spool", token(n), "native", None, None, None, "bench",
                   secrets.token_bytes(200), 1, now, now + 3600, now)
        for n in range(SPOOL_ROWS)
    ]  # fmt: skip
    started = time.perf_counter()
    for first in range(0, SPOOL_ROWS, SPOOL_BATCH):
        await store.spool_add(entries[first : first + SPOOL_BATCH])
    while rows := await store.spool_claim(
        "bench-spool", "bench", time.time(), time.time() + 60, SPOOL_BATCH, unknown=True
    ):
        await store.spool_settle([row.id for row in rows], [])
    figures["spool rows/s (add+claim+settle)"] = SPOOL_ROWS / (time.perf_counter() - started)
    backends = pg_backends(db_name) if db_name else []
    before = time.process_time(), cpu_of(backends)
    if db_name:
        limit = RateLimit("native", 10**9, shared=store)
        for _ in range(RATE_CHECKS):
            await limit.acquire("server bench", time.time())
    else:
        limit = RateLimit("native", 10**9)
        for _ in range(RATE_CHECKS):
            limit.check("server bench", time.time())
    ours, server = time.process_time() - before[0], cpu_of(backends) - before[1]
    figures["rate check CPU-ms, pushd side"] = ours * 1000 / RATE_CHECKS
    figures["rate check CPU-ms, PostgreSQL side"] = server * 1000 / RATE_CHECKS
    return key, figures


async def add_zulip(store: Store) -> None:
    """The Zulip server, its realm and ZULIP_USERS users' devices, as a bouncer stores
    them (``server/register``, the analytics upload, ``push/register``)."""
    await store.zulip_add_server(ZULIP_SERVER_UUID, ZULIP_SERVER_KEY, ZULIP_HOSTNAME)
    realm = ZulipRealm(ZULIP_REALM_UUID, ZULIP_SERVER_UUID, ZULIP_HOSTNAME, "Bench")
    await store.zulip_record_analytics(ZULIP_SERVER_UUID, [realm], (0, 0, 0))
    for n in range(ZULIP_USERS):
        for device in range(ZULIP_DEVICES):
            await store.zulip_register(
                ZULIP_SERVER_UUID, ZULIP_KIND_APNS, zulip_token(n, device), TOPIC,
                None, zulip_user_uuid(n), ZULIP_REALM_UUID,
            )  # fmt: skip


def write_config(
    path: Path, listen: int, store: dict[str, Any], key_file: Path, sim: tuple[int, Path]
) -> Path:
    port, ca = sim
    path.write_text(
        f"[server]\nlisten = \"127.0.0.1\"\nport = {listen}\n"
        "[store]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in store.items())
        + f"[spool]\nkey_file = {json.dumps(str(path.parent / 'spool.key'))}\n"
        "[metrics]\nport = 0\n"  # two instances on one host: each its own, any free
        "[log]\nlevel = \"warning\"\n[native]\nrate_limit = 100000000\n"
        "[zulip]\nrate_limit = 100000000\n[matrix]\nrate_limit = 100000000\n"
        f"[[apps]]\nname = \"{APP_NAME}\"\nprovider = \"apns\"\nenvironment = \"sandbox\"\n"
        f"topic = \"{TOPIC}\"\nkey_file = {json.dumps(str(key_file))}\nkey_id = \"{KEY_ID}\"\n"
        f"team_id = \"{TEAM_ID}\"\nupstream_url = \"https://127.0.0.1:{port}\"\n"
        f"upstream_ca_file = {json.dumps(str(ca))}\nconnections = 2\n"
        f"[apps.matrix]\napp_ids = [\"{MATRIX_APP_ID}\"]\nconvert_pushkey_to_hex = true\n"
    )  # fmt: skip
    return path


async def start_pushd(config: Path, port: int, log: Path) -> trio.Process:
    """``pushd serve`` (the real CLI) on ``port``, its log to a file, once it listens."""
    with log.open("wb") as sink:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "pushd", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        with trio.fail_after(30):
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"pushd exited: see {log}")
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return process
    except BaseException:
        process.kill()
        raise


async def drive(ports: list[int], key: str, requests: int, api: str) -> tuple[float, int, int]:
    """One ``load.py`` per instance, concurrently; (notifications/s, notifications,
    requests)."""
    results: list[dict[str, Any]] = []
    mode, users = {
        "zulip": ("zulip", ZULIP_USERS),
        "matrix": ("matrix", MATRIX_DEVICES),
    }.get(api, ("one", USERS))

    async def one(port: int) -> None:
        done = await trio.run_process(
            [sys.executable, str(HERE / "load.py"), f"--port={port}", f"--key={key}",
             f"--mode={mode}", f"--users={users}", f"--concurrency={CONCURRENCY // len(ports)}",
             f"--requests={requests // len(ports)}", "--max-seconds=60"],
            stdin=subprocess.DEVNULL, capture_stdout=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        results.append(json.loads(done.stdout))

    async with trio.open_nursery() as nursery:
        for port in ports:
            nursery.start_soon(one, port)
    for result in results:
        if result["failures"]:
            raise RuntimeError(f"the driver saw failures: {result['first_failure']}")
    rate = sum(r["notifications"] / r["elapsed"] for r in results)
    return rate, sum(r["apns_sent"] for r in results), sum(r["requests"] for r in results)


async def run_setup(
    setup: str, args: argparse.Namespace, sim: tuple[int, Path]
) -> dict[str, float]:
    instances = 2 if setup.endswith("x2") else 1
    with (
        tempfile.TemporaryDirectory(prefix="pushd-pgbench-") as tmp,
        database(args.postgres if setup.startswith("postgres") else None) as (url, name),
    ):
        work = Path(tmp)
        where = {"url": url, "pool_size": 4} if url else {"path": str(work / "pushd.sqlite3")}
        store = await open_store(StoreConfig(**where))  # type: ignore[arg-type]
        print(f"{setup}: store micro-rates", file=sys.stderr)
        try:
            key, figures = await micro(store, name)
            if args.api == "zulip":
                await add_zulip(store)
        finally:
            await store.close()
        key_file = work / f"AuthKey_{KEY_ID}.p8"
        write_p8(key_file)
        create_key_file(work / "spool.key")
        ports = [free_port() for _ in range(instances)]
        processes: list[trio.Process] = []
        for n, port in enumerate(ports):
            config = write_config(work / f"pushd-{n}.toml", port, where, key_file, sim)
            processes.append(await start_pushd(config, port, work / f"pushd-{n}.log"))
        print(f"{setup}: {args.requests} sends", file=sys.stderr)
        try:
            pids = [p.pid for p in processes]
            backends = pg_backends(name) if name else []
            before = cpu_of(pids), cpu_of(backends)
            try:
                rate, sent, requests = await drive(ports, key, args.requests, args.api)
            except RuntimeError:
                for n in range(instances):
                    log = work / f"pushd-{n}.log"
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {log.name}, last lines:", *tail, sep="\n", file=sys.stderr)
                raise
            backends_after = pg_backends(name) if name else []
            new = [pid for pid in backends_after if pid not in backends]
            pushd_cpu = cpu_of(pids) - before[0]
            pg_cpu = cpu_of(backends) + cpu_of(new) - before[1]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                await process.wait()
        figures["notifications/s"] = rate
        figures["pushd CPU-ms/notification"] = pushd_cpu * 1000 / sent
        figures["PostgreSQL CPU-ms/notification"] = pg_cpu * 1000 / sent
        if args.api == "zulip":
            figures["pushd CPU-ms/request"] = pushd_cpu * 1000 / requests
            figures["PostgreSQL CPU-ms/request"] = pg_cpu * 1000 / requests
        return figures


async def start_simulator(work: Path) -> tuple[trio.Process, int, Path]:
    ca = work / "sim-ca.pem"
    process = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "simulator.py"), f"--ca-out={ca}", "--max-seconds=3600"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert process.stdout is not None
    line = b""
    with trio.fail_after(30):
        while b"\n" not in line:
            line += await process.stdout.receive_some()
    text = line.decode().splitlines()[0]
    assert text.startswith(READY_PREFIX), text
    return process, int(text[len(READY_PREFIX) :]), ca


def summary(values: list[float]) -> str:
    digits: Callable[[float], str] = lambda v: f"{v:.3g}" if v < 100 else f"{v:.0f}"  # noqa: E731
    return f"{digits(statistics.median(values))} ({digits(min(values))}-{digits(max(values))})"


async def main(args: argparse.Namespace) -> None:
    runs: dict[str, list[dict[str, float]]] = {setup: [] for setup in SETUPS}
    with tempfile.TemporaryDirectory(prefix="pushd-pgbench-sim-") as tmp:
        sim, port, ca = await start_simulator(Path(tmp))
        try:
            for run in range(args.runs):
                for setup in SETUPS:  # interleaved, so drift in the machine's load is shared
                    figures = await run_setup(setup, args, (port, ca))
                    runs[setup].append(figures)
                    print(f"run {run + 1} {setup}: {json.dumps(figures)}", file=sys.stderr)
        finally:
            sim.terminate()
            await sim.wait()
    names = list(runs[SETUPS[0]][0])
    print(f"\nload average at the end (1, 5, 15 min): {os.getloadavg()}; this machine's "
          f"{os.cpu_count()} cores were shared with whatever else ran (say what)")  # fmt: skip
    users = {"zulip": ZULIP_USERS, "matrix": MATRIX_DEVICES}.get(args.api, USERS)
    print(f"\n{args.requests} {args.api} sends, {users} users, concurrency {CONCURRENCY}; "
          f"median (min-max) over {args.runs} runs\n")  # fmt: skip
    print("| figure | " + " | ".join(SETUPS) + " |")
    print("|---|" + "---|" * len(SETUPS))
    for name in names:
        if name in MICRO:
            # Measured in this process before the instances start: the instance count
            # plays no part, so PostgreSQL's figure pools the x1 and x2 runs.
            pooled = [r[name] for setup in SETUPS[1:] for r in runs[setup]]
            cells = [summary([r[name] for r in runs[SETUPS[0]]]), summary(pooled), "(same)"]
        else:
            cells = [summary([r[name] for r in runs[setup]]) for setup in SETUPS]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=4000, help="sends per setup and run")
    parser.add_argument(
        "--api",
        choices=("native", "zulip", "matrix"),
        default="native",
        help="what the sends are",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("PUSHD_TEST_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test"),
        help="a server where this user may create databases",
    )
    trio.run(main, parser.parse_args())
