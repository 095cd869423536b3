"""An app whose credential file is broken when pushd starts: that app starts paused, the
others serve, and a reload once the file is mended sends what waited.

Real ``pushd serve`` processes against the APNs simulator over TLS and HTTP/2; the
broken files are what a renewal script or a clean-up leaves (garbage, half a key, a
lost permission, a missing file).  Refusing the start, as pushd did, took every app
down after an unattended reboot (:mod:`pushd.unusable`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.simulators.apns import ApnsSimulator
from pushd.upstream.apns.jwt import write_p8
from tests.conftest import KEY_ID, OTHER_TOPIC, TEAM_ID, TOPIC, app_entry, token
from tests.process import run_cli_process
from tests.test_reload import apns_upstream, start, statuses, wait_until

__all__ = ["apns_upstream", "start"]  # fixtures used here


def copy(source: Path, target: Path) -> Path:
    """``source``'s bytes in ``target``, made readable (0600) if it is not."""
    if target.exists():
        target.chmod(0o600)
    target.write_bytes(source.read_bytes())
    return target


def broken(path: Path, how: str) -> Path:
    """Leave ``path`` as ``how`` says: garbage, a key cut short, unreadable, missing."""
    if how == "garbage":
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n")
    elif how == "cut":
        path.write_bytes(path.read_bytes()[:60])
    elif how == "unreadable":
        path.chmod(0)
    else:
        path.unlink()
    return path


@pytest.mark.parametrize("how", ["garbage", "cut", "unreadable", "missing"])
async def test_a_broken_key_file_pauses_its_app_and_the_others_deliver(
    start: Any,
    simulator: ApnsSimulator,
    apns_upstream: str,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    how: str,
) -> None:
    if how == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a file of mode 0")
    good = app_entry("chat", TOPIC, apns_upstream, key_file, ca_file)
    bad_key = broken(copy(key_file, tmp_path / "broken.p8"), how)
    bad = {**app_entry("other", OTHER_TOPIC, apns_upstream, key_file, ca_file)}
    bad["key_file"] = str(bad_key)
    gateway = await start([good, bad])  # started: it listens

    alarm = await gateway.process.wait_for_line(r"ALARM app other started paused")
    assert "apps[1].key_file" in alarm, alarm
    assert (await gateway.register("alice", token(1), "chat")).status_code == 201
    assert (await gateway.register("alice", token(2), "other")).status_code == 201
    # The good app delivers; the broken one's push is promised and waits in the spool.
    assert statuses(await gateway.send("alice")) == {"chat": "delivered", "other": "retrying"}
    assert {r.topic for r in simulator.received} == {TOPIC}
    health = await gateway.client.get(gateway.process.url + "/healthz", headers=gateway.auth())
    apps = health.json()["apps"]
    assert apps["other"]["state"] == "paused", apps
    assert apps["other"]["reason"].startswith("unusable_credential: apps[1].key_file"), apps
    assert apps["chat"]["state"] == "ok", apps

    # check-config still names the file: it is a problem, only no longer a fatal one.
    checked = await run_cli_process("check-config", str(gateway.path))
    assert checked.returncode == 1 and b"apps[1].key_file" in checked.stdout + checked.stderr

    # Mended (the same key as before), then reloaded: what waited is sent.
    copy(key_file, bad_key)
    line = await gateway.hup()
    assert "changed other" in line, line
    await wait_until(lambda: any(r.topic == OTHER_TOPIC for r in simulator.received))
    assert [r.token for r in simulator.received if r.topic == OTHER_TOPIC] == [token(2)]


async def test_a_key_that_breaks_later_is_refused_by_reload_not_taken(
    start: Any,
    simulator: ApnsSimulator,
    apns_upstream: str,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    """A running app's key broken on disk: the reload is refused and the app goes on
    with the key it loaded (pausing it would stop a working app)."""
    key = ec.generate_private_key(ec.SECP256R1())
    simulator.add_key(KEY_ID, TEAM_ID, key.public_key())
    path = tmp_path / "running.p8"
    write_p8(path, key)
    gateway = await start([app_entry("chat", TOPIC, apns_upstream, path, ca_file)])
    assert (await gateway.register("alice", token(1), "chat")).status_code == 201
    broken(path, "garbage")
    line = await gateway.hup(r"reload refused")
    assert "apps[0].key_file" in line
    assert statuses(await gateway.send("alice")) == {"chat": "delivered"}
