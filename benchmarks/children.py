"""The runner's child processes: start, wait for ``READY``, stop; drive one scenario.

Split from ``run.py``.  Every child is started with a pipe on its stdin and exits when
that pipe closes, so none can outlive the runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import (
    ANSWERS_PREFIX,
    KEY_ID,
    MATRIX_DEVICES,
    MATTERMOST_DEVICES,
    PUSHD,
    READY_PREFIX,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from load import MODES
from populate import Population
from rows import Scenario

from pushd.upstream.apns.jwt import write_p8

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
#: The one-round check of a Zulip notify to 10 devices (``zulip_fanout.py``) ends by
#: itself within 60 s; this is the runner's backstop.
FANOUT_CHECK_TIMEOUT = 90.0
#: How long a child may take to start serving.
START_TIMEOUT = 30.0
#: How long a child may take to exit after its stdin closes, before it is killed.
STOP_TIMEOUT = 10.0
#: The RSA exponent every service-account key has.
RSA_PUBLIC_EXPONENT = 65537
HTTP_OK = 200


class BenchmarkError(Exception):
    """Something that makes the numbers worthless; the message says what."""


class Child:
    """A long-lived helper process that prints ``READY <address>`` and stops on stdin EOF."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> str:
        """The address from the child's ``READY`` line; raises if it exits or is slow."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT):
                raise BenchmarkError(f"{self.name} did not start in {START_TIMEOUT} s{self.tail()}")
        line = stdout.readline().decode().strip()
        if not line.startswith(READY_PREFIX):
            raise BenchmarkError(f"{self.name} failed to start: {line!r}{self.tail()}")
        return line[len(READY_PREFIX) :]

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "".join(f"\n  {self.name}: {line}" for line in text)

    def stop(self) -> None:
        """Close stdin (a graceful stop), then terminate, then kill: never leave it running."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.stop()


def write_provider_key(directory: Path) -> Path:
    """A fresh ES256 key in Apple's .p8 format: pushd signs its provider tokens with it."""
    path = directory / f"AuthKey_{KEY_ID}.p8"
    write_p8(path)
    return path


def write_public_key(key: rsa.RSAPrivateKey, path: Path) -> Path:
    """The public half of the service-account key, for the FCM simulator to trust."""
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def check_zulip_fanout() -> str:
    """Run ``zulip_fanout.py``: one notify to 10 delayed devices must take one delay.

    It needs an APNs simulator scripted in its own process, so it is not a load-driver
    scenario; a failure stops the benchmark, because the Zulip rows would then measure
    a pushd that sends a user's devices one by one.
    """
    argv = [PYTHON, str(HERE / "zulip_fanout.py")]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=FANOUT_CHECK_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise BenchmarkError(
            f"Zulip fan-out check failed ({done.returncode}):\n{done.stdout}{done.stderr[-3000:]}"
        )
    return done.stdout.strip()


def apns_answers(log_path: Path) -> dict[str, int]:
    """The APNs simulator's answers by status, from the line it logs as it exits."""
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith(ANSWERS_PREFIX):
            answers: dict[str, int] = json.loads(line[len(ANSWERS_PREFIX) :])
            return answers
    raise BenchmarkError(f"the APNs simulator logged no answers line in {log_path}")


def check_apns_count(log_path: Path, sent: int) -> str:
    """The simulator must have answered exactly the drivers' APNs notifications, all 200.

    A notify's answer cannot show every delivery (a Zulip notify counts the user's
    devices before sending), so this is what proves that every notification of every
    run, warm-ups included, reached the APNs simulator once: no fewer (a device
    skipped), no more (a retry, or a device sent twice), and no error status.
    """
    answers = apns_answers(log_path)
    if answers != ({str(HTTP_OK): sent} if sent else {}):  # a plan of FCM rows sends none
        raise BenchmarkError(
            f"the APNs simulator answered {answers}, the drivers sent {sent} APNs notifications"
        )
    return f"the APNs simulator answered {sent:,} notifications, all 200, as the drivers sent"


#: When set, every open-loop driver run writes its requests' trace (``load.py --trace``)
#: into this directory, one file a run, for ``tail_causes.py``.
TRACE_DIR_ENV = "PUSHD_BENCH_TRACE_DIR"


def trace_argument(scenario: Scenario) -> list[str]:
    """``--trace=<dir>/<mode>-<load %>-<n>.trace`` for an open-loop run, if asked for."""
    directory = os.environ.get(TRACE_DIR_ENV)
    if not directory or scenario.load_fraction is None:
        return []
    stem = f"{scenario.mode}-{scenario.load_fraction * 100:.0f}"
    number = sum(1 for _ in Path(directory).glob(f"{stem}-*.trace")) + 1
    return [f"--trace={Path(directory) / f'{stem}-{number}.trace'}"]


def drive(
    scenario: Scenario, port: int, population: Population, pids: dict[str, int]
) -> dict[str, Any]:
    """Run the load driver once and return its JSON report (raises on any failure)."""
    mode = MODES[scenario.mode]
    # Nothing stored (Mattermost, Matrix): the driver cycles through its own devices.
    if mode.user_prefix is not None:
        users = population.users(mode.user_prefix)
    else:
        users = MATRIX_DEVICES if mode.matrix else MATTERMOST_DEVICES
    argv = [
        PYTHON,
        str(HERE / "load.py"),
        f"--port={port}",
        f"--key={population.key}",
        f"--mode={scenario.mode}",
        f"--users={users}",
        f"--concurrency={scenario.concurrency}",
        f"--requests={scenario.requests}",
        f"--warmup={scenario.warmup}",
        *(["--reset-timings"] if scenario.server == PUSHD else []),
        f"--max-seconds={scenario.max_seconds}",
        *([f"--rate={scenario.rate}"] if scenario.rate is not None else []),
        *trace_argument(scenario),
        *(f"--watch={role}={pid}" for role, pid in pids.items()),
    ]
    limit = scenario.max_seconds * 2 + START_TIMEOUT
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"load driver failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    if report["failures"]:
        raise BenchmarkError(
            f"{scenario.mode} x{scenario.concurrency}: {report['failures']} failed requests,"
            f" first: {report['first_failure']}"
        )
    if not report["requests"]:
        raise BenchmarkError(f"{scenario.mode} x{scenario.concurrency}: no request completed")
    return report
