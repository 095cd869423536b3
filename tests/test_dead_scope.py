"""A dead verdict removes only what the app and environment that produced it serve.

Issue 10, hole 2: an open Matrix notify for an app of the other APNs environment got
BadDeviceToken and deleted another tenant's registrations of the same token.  These
tests drive the verdicts over HTTP (Matrix notify, native send) against the APNs
simulator and look at what is left in the store.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import trio

from pushd.simulators.apns import ApnsSimulator, SimReply
from tests import matrix_homeserver as hs
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token

VICTIM = token(7)


async def start(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> tuple[Pushd, hs.Homeserver]:
    """``prod`` (production) is listed first, so Zulip's iOS devices of TOPIC go to it;
    ``sandbox`` has the same topic in the other environment and serves Matrix."""
    upstream = f"https://127.0.0.1:{simulator.port}"
    prod = {**app_entry("prod", TOPIC, upstream, key_file, ca_file), "environment": "production"}
    sandbox = {
        **app_entry("sandbox", TOPIC, upstream, key_file, ca_file),
        "matrix": {"app_ids": [hs.IOS_APP]},
    }
    pushd: Pushd = await start_pushd(apps=[prod, sandbox], matrix={"answer_within": 2.0})
    return pushd, hs.Homeserver(pushd.client, pushd.url)


async def stored_tokens(pushd: Pushd) -> dict[str, Any]:
    store = pushd.services.store
    server = await store.authenticate(pushd.key)
    assert server is not None
    native = sorted(r.app for r in await store.user_registrations(server.id, "alice"))
    zulip = await store.zulip_user_registrations(ZULIP_SERVER, 10, None)
    return {"native": native, "zulip": [r.token for r in zulip]}


ZULIP_SERVER = str(uuid.UUID(int=1))


async def prove(pushd: Pushd, app: str) -> None:
    """Deliver one push through ``app``: only an app that has delivered believes
    BadDeviceToken (a wrong environment earns it for every token: pushd.proof)."""
    device = token(0xA11)
    await pushd.register("prover", device, app=app)
    answer = await pushd.send({"tokens": [device], "app": app, "alert": "proof"})
    assert [r["status"] for r in answer["results"]] == ["delivered"]


async def register_everywhere(pushd: Pushd) -> None:
    """alice's device token, registered natively for both apps and by a Zulip server."""
    await pushd.register("alice", VICTIM, app="prod")
    await pushd.register("alice", VICTIM, app="sandbox")
    store = pushd.services.store
    await store.zulip_add_server(ZULIP_SERVER, "k" * 64, "chat.example.com", "")
    await store.zulip_register(ZULIP_SERVER, 1, VICTIM, TOPIC, 10, None, None)


async def test_a_matrix_verdict_removes_no_stored_registration(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    pushd, homeserver = await start(start_pushd, simulator, key_file, ca_file)
    await register_everywhere(pushd)
    await prove(pushd, "sandbox")
    simulator.script(VICTIM, SimReply(400, "BadDeviceToken"))
    device = hs.device(hs.IOS_APP, hs.pushkey_for(VICTIM), pushkey_ts=int(time.time()) - 60)
    assert await homeserver.rejected(hs.full_event([device])) == [device["pushkey"]]
    await trio.sleep(0.2)  # the reaper would have run by now
    assert await stored_tokens(pushd) == {"native": ["prod", "sandbox"], "zulip": [VICTIM]}


async def test_a_native_verdict_removes_only_its_app_and_environment(
    start_pushd: PushdFactory, simulator: ApnsSimulator, key_file: Path, ca_file: Path
) -> None:
    pushd, _ = await start(start_pushd, simulator, key_file, ca_file)
    await register_everywhere(pushd)
    await prove(pushd, "sandbox")
    await prove(pushd, "prod")
    simulator.script(VICTIM, SimReply(400, "BadDeviceToken"))
    result = await pushd.send({"user": "alice", "alert": "hi", "app": "sandbox"})
    assert result["summary"]["removed"] == 1
    # The sandbox verdict says nothing of production: the prod registration and the
    # Zulip device (served by prod) stay.
    assert await stored_tokens(pushd) == {"native": ["prod"], "zulip": [VICTIM]}

    simulator.script(VICTIM, SimReply(400, "BadDeviceToken"))
    result = await pushd.send({"user": "alice", "alert": "hi", "app": "prod"})
    assert result["summary"]["removed"] == 1
    # prod's verdict removes what prod serves: its own row and the Zulip device.
    assert await stored_tokens(pushd) == {"native": [], "zulip": []}
