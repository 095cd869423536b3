"""The host's shared tables (:mod:`pushd.hostshared`): what a supervisor's workers on
one SQLite file share instead of a database write per request.  Two handles on one
file are two open file descriptions, as two worker processes have, so the ``flock``
that makes each operation atomic works between them as between processes; the last
test runs two real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from pushd.hostshared import PROBES, HostSharedStore, HostTable, create_tables
from pushd.store.engine import SqliteEngine
from pushd.store.schema import migrate
from tests.process import ROOT


def table(path: Path, slots: int = 64) -> tuple[HostTable, HostTable]:
    HostTable.create(path, slots)
    return HostTable(path, slots), HostTable(path, slots)


def test_a_window_counts_every_worker_and_a_new_window_starts_over(tmp_path: Path) -> None:
    one, two = table(tmp_path / "rates")
    assert [one.hit("native:1", 60), two.hit("native:1", 60), one.hit("native:1", 60)] == [
        1,
        2,
        3,
    ]
    assert two.hit("native:2", 60) == 1
    assert two.hit("native:1", 120) == 1  # the next minute
    assert one.hit("native:1", 120) == 2


def test_a_key_behind_expired_slots_is_still_found(tmp_path: Path) -> None:
    """Slots are reused once stale; a key further along its probes is still found."""
    one, two = table(tmp_path / "dedupe", slots=PROBES)  # every key probes every slot
    assert one.seen([f"short:{n}" for n in range(PROBES - 1)], 5.0, 1000.0) == [False] * (
        PROBES - 1
    )
    assert one.seen(["long"], 100.0, 1000.0) == [False]  # the one slot left
    assert two.seen(["long"], 100.0, 1010.0) == [True]  # the others have expired


def test_dedupe_is_seen_by_the_other_worker_until_it_expires(tmp_path: Path) -> None:
    one, two = table(tmp_path / "dedupe")
    assert one.seen(["a", "b"], 10.0, 1000.0) == [False, False]
    assert two.seen(["a", "c", "c"], 10.0, 1001.0) == [True, False, True]
    assert two.seen(["a"], 10.0, 1011.0) == [False]  # expired, recorded again
    assert one.seen(["a"], 10.0, 1012.0) == [True]


def test_two_processes_count_exactly(tmp_path: Path) -> None:
    """Two processes hitting one window at once: not one hit lost."""
    path = tmp_path / "rates"
    HostTable.create(path, 64)
    script = (
        "import sys; from pathlib import Path; from pushd.hostshared import HostTable\n"
        "t = HostTable(Path(sys.argv[1]), 64)\n"
        "for _ in range(5000): t.hit('native:1', 60)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path)], cwd=ROOT) for _ in range(2)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert HostTable(path, 64).hit("native:1", 60) == 10_001


async def test_a_workers_store_counts_in_the_hosts_table_not_the_database(
    tmp_path: Path,
) -> None:
    """The calls that count a request as they authenticate it (a native send, a Zulip
    request), and a Matrix notify's dedupe, use the host's tables on SQLite workers: no
    database write."""
    create_tables(tmp_path)
    engine = await trio.to_thread.run_sync(SqliteEngine.open_sync, str(tmp_path / "s.sqlite3"))
    await migrate(engine, upgrade=False, hint="")
    one, two = HostSharedStore(engine, tmp_path), HostSharedStore(engine, tmp_path)
    try:
        key = "k" * 64
        zulip = "00000000-0000-4000-8000-00000000000a"
        await one.zulip_add_server(zulip, key, "z.example")
        server, key_b = await one.add_server("chat")
        rate = "zulip:server " + zulip
        assert (await one.zulip_server_counted(zulip, key, rate, 60))[1] == 1
        assert (await two.zulip_server_counted(zulip, key, rate, 60))[1] == 2
        assert (await two.zulip_server_counted(zulip, "x" * 64, rate, 60))[1] is None
        assert await one.authenticate_counted(key_b, "native:", 60) == (server, 1)
        assert await two.authenticate_counted(key_b, "native:", 60) == (server, 2)
        assert two.rates.hit(rate, 60) == 3  # the host's table holds the counts
        rows = await engine.read(lambda tx: tx.all("SELECT * FROM rate_windows", ()))
        assert rows == []
        # A Matrix notify's verdicts and dedupe: the keys in the host's table too.
        verdicts, seen = await one.verdicts_and_dedupe([], ["m:1"], 60.0, lambda v: [False])
        assert (verdicts, seen) == ({}, [False])
        assert await two.verdicts_and_dedupe([], ["m:1"], 60.0, lambda v: [False]) == ({}, [True])
        rows = await engine.read(lambda tx: tx.all("SELECT * FROM dedupe", ()))
        assert rows == []
    finally:
        one.rates.close()
        one.dedupe.close()
        await two.close()
