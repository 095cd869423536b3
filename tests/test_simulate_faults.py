"""``pushd simulate``'s fault options: a real ``python -m pushd simulate`` child process, a
running pushd in front of it, and the admin's view of the result.

The README shows an admin how to watch a dead token leave their chat server with
``--reply TOKEN=410:Unregistered``; these tests do exactly that, for APNs and FCM, and
check that GOAWAY, drops and delays are survived.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from pushd.simulators import faults
from pushd.simulators.apns import SimReply
from pushd.simulators.fcm import FcmReply
from tests.conftest import KEY_ID, TEAM_ID, TOPIC, PushdFactory, token

#: A child Python must start and import pushd first: generous on a loaded machine.
SUBPROCESS_DEADLINE = 60
#: How long a background retry may take to show up in the simulator's output.
RETRY_DEADLINE = 20
FCM_APP = "android"


def fcm_token(n: int) -> str:
    """A plausible FCM registration token whose masked form is distinct per ``n``."""
    return f"f{n:05d}:APA91b" + "x" * 40 + f"{n:04d}"


@attrs.define
class Output:
    """What a child printed so far, and waiting for more without polling."""

    out: bytearray = attrs.Factory(bytearray)
    err: bytearray = attrs.Factory(bytearray)
    changed: trio.Event = attrs.Factory(trio.Event)
    #: Set when a stream ends: the child is exiting, waiting longer is pointless.
    closed: bool = False

    async def pump(self, stream: Any, into: bytearray) -> None:
        while chunk := await stream.receive_some(4096):
            into.extend(chunk)
            self.changed.set()
            self.changed = trio.Event()
        self.closed = True
        self.changed.set()

    async def wait(self, done: Callable[[], bool], deadline: float = RETRY_DEADLINE) -> None:
        with trio.fail_after(deadline):
            while not done():
                assert not self.closed, (self.out + self.err).decode()
                await self.changed.wait()


@attrs.define
class Simulate:
    """A running ``pushd simulate``: its ports, CA and everything it printed so far."""

    apns_port: int
    fcm_port: int
    ca_file: Path
    account_file: Path
    output: Output

    @property
    def out(self) -> bytearray:
        return self.output.out

    @property
    def err(self) -> bytearray:
        return self.output.err

    def answered(self, device: str, status: str) -> int:
        """How many answers with ``status`` (e.g. ``200``) the simulator printed for
        ``device`` (its lines show tokens masked)."""
        line = re.escape(masked(device)) + rb"  .*  " + re.escape(status.encode()) + rb"\n"
        return len(re.findall(line, bytes(self.out)))

    async def wait_answered(self, device: str, status: str) -> None:
        await self.output.wait(lambda: self.answered(device, status) > 0)

    async def wait_err(self, pattern: bytes) -> None:
        await self.output.wait(lambda: pattern in self.err)


@asynccontextmanager
async def simulate(tmp_path: Path, key_file: Path, *args: str) -> AsyncIterator[Simulate]:
    """Run ``python -m pushd simulate`` with APNs and FCM on free ports, and ``args``."""
    ca_file = tmp_path / "sim-ca.pem"
    account = tmp_path / "sim-account.json"
    cmd = [
        sys.executable, "-m", "pushd", "simulate", "--port", "0", "--ca-out", str(ca_file),
        "--trust-key", f"{KEY_ID}:{TEAM_ID}:{key_file}",
        "--fcm-port", "0", "--fcm-new-account", str(account), *args,
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output = Output()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(output.pump, process.stdout, output.out)
            nursery.start_soon(output.pump, process.stderr, output.err)
            await output.wait(lambda: b"(Ctrl-C" in output.err, SUBPROCESS_DEADLINE)
            err = bytes(output.err)
            apns = re.search(rb"APNs simulator listening on https://127.0.0.1:(\d+)", err)
            fcm = re.search(rb"FCM simulator listening on https://127.0.0.1:(\d+)", err)
            assert apns is not None and fcm is not None, err.decode()
            yield Simulate(int(apns[1]), int(fcm[1]), ca_file, account, output)
            process.send_signal(signal.SIGINT)
            with trio.fail_after(SUBPROCESS_DEADLINE):
                await process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            await process.wait()


def apps_for(sim: Simulate, key_file: Path) -> list[dict[str, Any]]:
    """pushd's apps pointing at a ``pushd simulate``: APNs ``chat`` and FCM ``android``."""
    return [
        {
            "name": "chat",
            "provider": "apns",
            "environment": "sandbox",
            "topic": TOPIC,
            "key_file": str(key_file),
            "key_id": KEY_ID,
            "team_id": TEAM_ID,
            "upstream_url": f"https://127.0.0.1:{sim.apns_port}",
            "upstream_ca_file": str(sim.ca_file),
        },
        {
            "name": FCM_APP,
            "provider": "fcm",
            "service_account_file": str(sim.account_file),
            "upstream_url": f"https://127.0.0.1:{sim.fcm_port}",
            "upstream_ca_file": str(sim.ca_file),
        },
    ]


def masked(value: str) -> bytes:
    return f"{value[:6]}\u2026{value[-4:]}".encode()


# --- the command line, parsed -----------------------------------------------------------


def test_a_reason_names_its_provider_and_a_status_goes_by_the_token() -> None:
    apns_token, fcm = token(1), fcm_token(1)
    plan = faults.parse_plan(
        [
            f"{apns_token.upper()}=410:Unregistered",
            f"{apns_token}=500",
            f"{fcm}=UNREGISTERED",
            f"{fcm_token(2)}=429",
            f"{fcm_token(3)}=goaway:Draining",
            "*=drop",
        ],
        delay=0.25,
        goaway_after=3,
        fcm=True,
    )
    # pushd sends APNs tokens in lower case; the replies are used in order.
    assert plan.apns == {
        apns_token: (SimReply(status=410, reason="Unregistered"), SimReply(status=500))
    }
    assert plan.fcm == {
        fcm: (FcmReply(error_code="UNREGISTERED"),),
        fcm_token(2): (FcmReply(status=429),),
        fcm_token(3): (FcmReply(action="goaway", message="Draining"),),
    }
    assert plan.apns_default == SimReply(action="drop")
    assert plan.fcm_default == FcmReply(action="drop")
    assert (plan.delay, plan.goaway_after) == (0.25, 3)
    described = "\n".join(plan.describe())
    assert "410 Unregistered then 500" in described and apns_token not in described
    assert "404 UNREGISTERED" in described and "429 QUOTA_EXCEEDED" in described
    # A reason alone carries its usual status.
    assert faults.parse_reply("t=BadDeviceToken").apns == SimReply(
        status=400, reason="BadDeviceToken"
    )
    assert faults.parse_reply("t=404:UNREGISTERED").fcm == FcmReply(
        status=404, error_code="UNREGISTERED"
    )


@pytest.mark.parametrize(
    ("specs", "fcm", "message"),
    [
        (["no-equals-sign"], True, "expected TOKEN=WHAT"),
        ([f"{token(1)}=700"], True, "not an HTTP status"),
        ([f"{token(1)}=410:Unregisterd"], True, "neither an APNs reason"),
        ([f"{token(1)}=gone:Unregistered"], True, "not an HTTP status, goaway or drop"),
        ([f"{token(1)}=200:Unregistered"], True, "carries no reason"),
        ([f"{fcm_token(1)}=410:Unregistered"], True, "not an APNs device token"),
        ([f"{fcm_token(1)}=UNREGISTERED"], False, "needs --fcm-port"),
        ([f"{fcm_token(1)}=500"], False, "FCM is off"),
        (["*=500", "*=503"], True, "has a reply already"),
    ],
)
def test_a_bad_fault_option_says_what_is_wrong(specs: list[str], fcm: bool, message: str) -> None:
    with pytest.raises(faults.FaultError, match=message):
        faults.parse_plan(specs, fcm=fcm)


def test_bad_delay_and_goaway_after_are_refused() -> None:
    with pytest.raises(faults.FaultError, match="--delay"):
        faults.parse_plan([], delay=-1)
    with pytest.raises(faults.FaultError, match="--goaway-after"):
        faults.parse_plan([], goaway_after=0)


def test_the_command_refuses_a_bad_reply_without_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pushd", "simulate", "--reply", f"{token(1)}=410:Gone"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_DEADLINE,
    )
    assert done.returncode == 2
    assert "neither an APNs reason" in done.stderr and "Traceback" not in done.stderr


# --- against a running pushd ------------------------------------------------------------


async def test_a_scripted_dead_token_leaves_pushd_and_a_500_is_retried(
    start_pushd: PushdFactory, key_file: Path, tmp_path: Path
) -> None:
    dead, flaky = token(0xD1), token(0xF1)
    dead_fcm, flaky_fcm = fcm_token(1), fcm_token(2)
    async with simulate(
        tmp_path, key_file,
        "--reply", f"{dead}=410:Unregistered",
        "--reply", f"{dead_fcm}=404:UNREGISTERED",
        "--reply", f"{flaky}=500", "--reply", f"{flaky}=200",
        "--reply", f"{flaky_fcm}=INTERNAL", "--reply", f"{flaky_fcm}=200",
    ) as sim:  # fmt: skip
        assert b"fault: APNs " + masked(dead) + b": 410 Unregistered" in sim.err
        pushd = await start_pushd(apps=apps_for(sim, key_file))
        for device, app in ((dead, "chat"), (flaky, "chat")):
            await pushd.register("ada", device, app=app)
        for device in (dead_fcm, flaky_fcm):
            await pushd.register("ada", device, app=FCM_APP)
        answer = await pushd.send({"user": "ada", "alert": "hello"})
        results = {r["token"]: (r["status"], r.get("reason")) for r in answer["results"]}
        assert results[dead] == ("removed", "Unregistered")
        assert results[dead_fcm][0] == "removed" and "UNREGISTERED" in results[dead_fcm][1]
        assert results[flaky][0] == "retrying" and results[flaky_fcm][0] == "retrying"
        # The dead tokens are gone from pushd; the flaky ones stay and are delivered by
        # the background retry (the simulator prints one line per answer).
        devices = await pushd.post("/v1/users/devices", {"user": "ada"})
        assert {d["token"] for d in devices.json()["devices"]} == {flaky, flaky_fcm}
        await sim.wait_answered(flaky, "200")
        await sim.wait_answered(flaky_fcm, "200")
        assert sim.answered(flaky, "500 InternalServerError") == 1
        assert sim.answered(flaky_fcm, "500 INTERNAL") == 1
        assert sim.answered(dead, "410 Unregistered") == 1
        assert sim.answered(dead_fcm, "404 UNREGISTERED") == 1
        assert dead.encode() not in sim.out  # tokens stay masked in the simulator's lines


async def test_goaway_drop_and_delay_are_survived(
    start_pushd: PushdFactory, key_file: Path, tmp_path: Path
) -> None:
    steady, steady_fcm = token(0x51), fcm_token(51)
    dropped, dropped_fcm = token(0xD2), fcm_token(52)
    sent_away, sent_away_fcm = token(0x60), fcm_token(60)
    async with simulate(
        tmp_path, key_file,
        "--goaway-after", "2", "--delay", "0.3",
        "--reply", f"{dropped}=drop", "--reply", f"{dropped}=200",
        "--reply", f"{dropped_fcm}=drop", "--reply", f"{dropped_fcm}=200",
        "--reply", f"{sent_away}=goaway", "--reply", f"{sent_away}=200",
        "--reply", f"{sent_away_fcm}=goaway:Draining", "--reply", f"{sent_away_fcm}=200",
    ) as sim:  # fmt: skip
        pushd = await start_pushd(apps=apps_for(sim, key_file))
        await pushd.register("bea", steady, app="chat")
        await pushd.register("bea", steady_fcm, app=FCM_APP)
        # Every connection takes two requests, then sends GOAWAY: pushd moves the third
        # to a new connection and the sender never notices.
        for n in range(3):
            started = trio.current_time()
            answer = await pushd.send({"user": "bea", "alert": f"n{n}"})
            assert {r["status"] for r in answer["results"]} == {"delivered"}, answer
            assert trio.current_time() - started >= 0.3  # --delay
        assert sim.answered(steady, "200") == 3 and sim.answered(steady_fcm, "200") == 3
        await sim.wait_err(b"connection 1: GOAWAY Shutdown")  # APNs
        assert sim.err.count(b"GOAWAY Shutdown") >= 2  # and FCM
        # A request on a dropped connection may have been delivered: pushd answers
        # "retrying" and the background retry delivers it.  One above a GOAWAY's last
        # stream was certainly not processed: pushd resends it on a new connection at
        # once and the sender hears "delivered".
        expected = {dropped: "retrying", dropped_fcm: "retrying"}
        expected |= {sent_away: "delivered", sent_away_fcm: "delivered"}
        for n, (device, status) in enumerate(expected.items()):
            await pushd.register(f"user{n}", device, app="chat" if device[0] == "0" else FCM_APP)
            answer = await pushd.send({"user": f"user{n}", "alert": "x"})
            assert [r["status"] for r in answer["results"]] == [status], answer
        for device in expected:
            await sim.wait_answered(device, "200")
        assert sim.err.count(b"dropped (scripted)") == 2
        assert b"GOAWAY Draining" in sim.err
