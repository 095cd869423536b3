"""pushd's Matrix push gateway beside Sygnal's, on the same upstream and driver (issue 15).

Issue 15 measured pushd against Sygnal (the Matrix project's push gateway) and set the
goal at a quarter of Sygnal's CPU per notification.  This runs both, interleaved, as
the issue did: the same Matrix ``notify`` requests (``load.py --mode matrix``: what
Synapse posts, one device per request; ``matrix-4``: four), the same concurrency, the
same APNs upstream over TLS + HTTP/2 (``lean_apns.py``, which takes a few CPU-us a
notification, so neither gateway's figure carries the other's upstream), and each
gateway's CPU read from the kernel for exactly the driver's measured window.

Sygnal is not a dependency of pushd: give ``--sygnal-python``, the interpreter of a
virtualenv where ``matrix-sygnal`` is installed (its own dependencies conflict with
none of pushd's, but it need not share pushd's environment).  Without one the script
says so and exits 2.  Sygnal reaches APNs through ``aioapns``, which only knows
Apple's hosts: its launcher points aioapns' sandbox host and port at the upstream
(two class attributes, set before Sygnal starts) and ``SSL_CERT_FILE`` at the
upstream's CA, so Sygnal's code runs unchanged.  Sygnal logs at WARNING (no access
line per request: its best case); pushd at its default, info, which logs no line per
request either.

Every answer must be 200 ``{"rejected": []}``, and the upstream must have answered
exactly one 200 per notification the drivers sent to both gateways, warm-ups included.

    python benchmarks/sygnal_side.py --sygnal-python /path/to/venv/bin/python --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from children import HERE, PYTHON, Child, apns_answers, running, write_provider_key
from common import (
    DRIVER,
    KEY_ID,
    MACHINE,
    MATRIX_APP_ID,
    MATRIX_DEVICES,
    SIMULATOR,
    STEAL,
    TEAM_ID,
    TOPIC,
    UPSTREAMS,
    free_port,
    placement,
)
from pushd_under_test import MATRIX_RATE_LIMIT, apns_app
from workers import pushd, spread, toml

PUSHD, SYGNAL, UPSTREAM = "pushd", "sygnal", "upstream"
MODES = ("matrix", "matrix-4")
CONCURRENCY = 64
#: Measured requests per run: several seconds of Sygnal's ~1,000-2,000 notifications/s,
#: a couple of pushd's; the same work for both.
REQUESTS = {"matrix": 8000, "matrix-4": 4000}
#: Unmeasured requests per connection first (connections, TLS, provider tokens, caches).
WARMUP = 20
MAX_SECONDS = 40.0
DRIVER_TIMEOUT = 180.0
#: How long a gateway may take to listen, and to exit once told to.
START_SECONDS = 30.0
#: The upstream outlives every round of a long run (the simulator's own default is 600 s).
UPSTREAM_MAX_SECONDS = 3600
STOP_SECONDS = 10.0
#: What each row prints and the summary reads, from :func:`drive`'s report.
ROW_FIELDS = ("rate", "server_ms", "upstream_ms", "p50_ms", "p99_ms", "others", "steal")
#: aioapns opens a burst of streams on a new connection before the server's SETTINGS
#: can reach it, and counts the simulator's REFUSED_STREAM beyond APNs' first 1 as a
#: lost connection (Sygnal answers 500): both gateways get connections that allow the
#: authenticated limit from the start, so the comparison is of steady-state cost.
SIMULATOR_INITIAL_STREAMS = 1000
#: What Sygnal's launcher runs: aioapns pointed at the upstream, then Sygnal's own main.
#: aioapns offers no ALPN, which APNs tolerates and pushd's simulator does not (it wants
#: ``h2``, as pushd and every other client offer): the launcher's context offers it.
_SYGNAL_LAUNCHER = """
import ssl
import sys
import aioapns.connection as connection
connection.APNsDevelopmentClientProtocol.APNS_SERVER = "127.0.0.1"
connection.APNsTLSClientProtocol.APNS_PORT = int(sys.argv[1])
_default_context = ssl.create_default_context
def _with_alpn(*args, **kwargs):
    context = _default_context(*args, **kwargs)
    context.set_alpn_protocols(["h2"])
    return context
connection.ssl.create_default_context = _with_alpn
from sygnal.sygnal import main
main()
"""


def write_pushd_config(directory: Path, upstream_port: int, ca: Path, p8: Path) -> Path:
    """pushd serving the Matrix gateway through one APNs app, as the benchmark's does."""
    lines = [
        "[server]", 'listen = "127.0.0.1"', "port = 0", "drain_seconds = 1.0",
        "[store]", f"path = {toml(str(directory / 'pushd.sqlite3'))}",
        "[spool]", f"key_file = {toml(str(directory / 'spool.key'))}",
        "[log]", 'level = "info"',
        "[metrics]", "port = 0",
        "[matrix]", f"rate_limit = {MATRIX_RATE_LIMIT}",
        "[[apps]]",
    ]  # fmt: skip
    lines += [f"{key} = {toml(value)}" for key, value in apns_app(p8, upstream_port, ca).items()]
    lines += ["[apps.matrix]", f"app_ids = [{toml(MATRIX_APP_ID)}]"]
    lines += ["convert_pushkey_to_hex = true"]  # Element iOS's pushkeys are base64
    path = directory / "pushd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_sygnal_config(directory: Path, p8: Path, port: int) -> Path:
    """Sygnal's YAML (JSON is YAML): one APNs app for the Matrix app id, sandbox."""
    config = {
        "log": {
            "setup": {
                "version": 1,
                "handlers": {"stderr": {"class": "logging.StreamHandler"}},
                "root": {"handlers": ["stderr"], "level": "WARNING"},
                "disable_existing_loggers": False,
            },
            "access": {"x_forwarded_for": False},
        },
        "http": {"bind_addresses": ["127.0.0.1"], "port": port},
        "apps": {
            MATRIX_APP_ID: {
                "type": "apns",
                "keyfile": str(p8),
                "key_id": KEY_ID,
                "team_id": TEAM_ID,
                "topic": TOPIC,
                "platform": "sandbox",
            }
        },
    }
    path = directory / "sygnal.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


@attrs.frozen
class Rig:
    """What every round shares: the upstream, both gateways' configs, Sygnal's python."""

    directory: Path
    python: str
    upstream_port: int
    upstream_pid: int
    ca: Path
    pushd_config: Path
    sygnal_config: Path
    sygnal_port: int

    @contextlib.contextmanager
    def serving(self, role: str, round_number: int) -> Iterator[tuple[int, int]]:
        """A fresh ``role`` gateway; yields its port and pid."""
        log = self.directory / f"{role}-{round_number}.log"
        if role == PUSHD:
            with pushd(self.pushd_config, log) as started:
                yield started["port"], started["pids"]["w0"]
        else:
            with self._sygnal(log) as pid:
                yield self.sygnal_port, pid

    @contextlib.contextmanager
    def _sygnal(self, log: Path) -> Iterator[int]:
        env = {**os.environ, "SYGNAL_CONF": str(self.sygnal_config), "SSL_CERT_FILE": str(self.ca)}
        argv = [self.python, "-c", _SYGNAL_LAUNCHER, str(self.upstream_port)]
        with open(log, "wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
        try:
            wait_listening(self.sygnal_port, process, log)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"Sygnal did not start:\n{log.read_text(errors='replace')[-3000:]}")


def drive(
    port: int, mode: str, concurrency: int, role: str, pid: int, upstream: int
) -> dict[str, Any]:
    """One ``load.py`` run; its report with the server's and upstream's CPU-ms each."""
    argv = [
        PYTHON, str(HERE / "load.py"), f"--port={port}", "--key=unused", f"--mode={mode}",
        f"--users={MATRIX_DEVICES}", f"--concurrency={concurrency}",
        f"--requests={REQUESTS[mode]}", f"--warmup={WARMUP}", f"--max-seconds={MAX_SECONDS}",
        f"--watch={role}={pid}", f"--watch={UPSTREAM}={upstream}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DRIVER_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"driver failed against {role}:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    if report["failures"] or not report["requests"]:
        raise RuntimeError(f"{role} {mode}: {report['failures']} failures, first: "
                           f"{report['first_failure']}")  # fmt: skip
    cpu = report["cpu_seconds"]
    report["server_ms"] = cpu[role] / report["notifications"] * 1000
    report["upstream_ms"] = cpu[UPSTREAM] / report["notifications"] * 1000
    report["rate"] = report["notifications"] / report["elapsed"]
    # Everything else on the machine (and the kernel's networking), in cores, and what
    # the hypervisor took: a noisy neighbour shows here, not in the per-process CPU.
    known = cpu[role] + cpu[UPSTREAM] + cpu[DRIVER]
    report["others"] = (cpu[MACHINE] - known) / report["elapsed"]
    report["steal"] = cpu[STEAL] / report["elapsed"]
    return report


def run_round(
    rig: Rig, round_number: int, modes: list[str], concurrencies: list[int]
) -> list[dict[str, Any]]:
    """Both gateways, each fresh, in alternating order, every mode and concurrency."""
    rows = []
    order = (PUSHD, SYGNAL) if round_number % 2 == 0 else (SYGNAL, PUSHD)
    for role in order:
        with rig.serving(role, round_number) as (port, pid):
            for mode in modes:
                for concurrency in concurrencies:
                    report = drive(port, mode, concurrency, role, pid, rig.upstream_pid)
                    row = {"round": round_number + 1, "server": role, "mode": mode,
                           "concurrency": concurrency}  # fmt: skip
                    row |= {field: report[field] for field in ROW_FIELDS}
                    print(json.dumps(row), flush=True)
                    rows.append({**row, "apns_sent": report["apns_sent"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sygnal-python", help="python of a virtualenv with matrix-sygnal")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[CONCURRENCY])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--upstream", choices=sorted(UPSTREAMS), default=SIMULATOR)
    args = parser.parse_args()
    python = args.sygnal_python
    probe = [python, "-c", "import sygnal, aioapns"] if python else None
    if probe is None or subprocess.run(probe, capture_output=True, check=False).returncode:
        print("no Sygnal: give --sygnal-python, the python of a virtualenv where "
              "`pip install matrix-sygnal` succeeded")  # fmt: skip
        return 2
    directory = Path(tempfile.mkdtemp(prefix="pushd-sygnal-side-"))
    p8 = write_provider_key(directory)
    ca = directory / "upstream-ca.pem"
    upstream_argv = [PYTHON, str(HERE / UPSTREAMS[args.upstream]), f"--ca-out={ca}"]
    upstream_argv.append(f"--max-seconds={UPSTREAM_MAX_SECONDS}")
    if args.upstream == SIMULATOR:
        upstream_argv.append(f"--initial-streams={SIMULATOR_INITIAL_STREAMS}")
    else:
        upstream_argv.append("--echo-apns-id")
    upstream_log = directory / "upstream.log"
    rows: list[dict[str, Any]] = []
    with running(Child(args.upstream, upstream_argv, upstream_log)) as upstream:
        upstream_port = int(upstream.wait_ready())
        sygnal_port = free_port()
        rig = Rig(
            directory=directory,
            python=python,
            upstream_port=upstream_port,
            upstream_pid=upstream.pid,
            ca=ca,
            pushd_config=write_pushd_config(directory, upstream_port, ca, p8),
            sygnal_config=write_sygnal_config(directory, p8, sygnal_port),
            sygnal_port=sygnal_port,
        )
        for round_number in range(args.rounds):
            rows += run_round(rig, round_number, args.modes, args.concurrency)
    sent = sum(row.pop("apns_sent") for row in rows)
    answers = apns_answers(upstream_log)
    if answers != {"200": sent}:
        raise RuntimeError(f"the upstream answered {answers}, the drivers sent {sent}")
    print(f"upstream answered {sent:,} notifications, all 200, as the drivers sent")
    print(f"runner: {placement(os.getpid())} (children inherit); {os.cpu_count()} CPUs")
    summarize(rows, args.modes, args.concurrency)
    print(f"(logs in {directory})")
    return 0


def summarize(rows: list[dict[str, Any]], modes: list[str], concurrencies: list[int]) -> None:
    """Per mode and concurrency: each gateway's medians, and pushd / Sygnal per round."""
    for mode in modes:
        for concurrency in concurrencies:
            label = f"{mode} x{concurrency}"
            mine = {
                role: [r for r in rows if (r["server"], r["mode"], r["concurrency"])
                       == (role, mode, concurrency)]
                for role in (PUSHD, SYGNAL)
            }  # fmt: skip
            for role, got in mine.items():
                cpu = spread([r["server_ms"] for r in got], 3)
                print(
                    f"{label} {role}: CPU-ms/notification {cpu}"
                    f", p99 {spread([r['p99_ms'] for r in got], 1)} ms, "
                    f"{spread([r['rate'] for r in got], 0)} notifications/s"
                )
            pairs = zip(mine[PUSHD], mine[SYGNAL], strict=True)
            ratios = [p["server_ms"] / s["server_ms"] for p, s in pairs]
            print(f"{label} pushd / Sygnal CPU per notification, per round: {spread(ratios, 2)}")


if __name__ == "__main__":
    sys.exit(main())
