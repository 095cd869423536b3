"""``pushd serve`` with no config: a self-contained demo on the embedded defaults.

It runs the bundled APNs simulator in the same process as the upstream, makes a throwaway
ES256 key and TLS CA for it, keeps the SQLite store in a temporary directory, and
creates one chat server with a well-known key and one registered device, so that a
single curl from the README sends a notification end to end and the simulator prints
it.  It listens on 127.0.0.1 only: the demo key is public knowledge.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import tempfile
from pathlib import Path

import trio

from pushd import config, logs, server
from pushd.simulators.apns import ApnsSimulator, Received
from pushd.simulators.certs import make_self_signed
from pushd.simulators.cli import format_line
from pushd.store import open_store
from pushd.upstream.apns.jwt import write_p8

#: Published in the README; only ever accepted by a demo bound to 127.0.0.1.
DEMO_KEY = "pushd_demo_key_for_local_testing_only"
DEMO_APP = "demo-ios"
DEMO_TOPIC = "org.example.pushd.demo"
DEMO_USER = "alice"
DEMO_TOKEN = "a1" * 32
#: The Matrix app id the demo app serves, and the demo device's Matrix pushkey (the
#: base64 of its token, as Element iOS registers it).
DEMO_MATRIX_APP_ID = "org.example.pushd.demo.ios"
DEMO_PUSHKEY = base64.b64encode(bytes.fromhex(DEMO_TOKEN)).decode()
DEMO_KEY_ID = "DEMOKEY001"
DEMO_TEAM_ID = "DEMOTEAM01"

log = logging.getLogger("pushd.demo")


def _print_received(item: Received) -> None:
    print("simulated APNs received:", format_line(item, show_payload=False), flush=True)


def demo_config(directory: Path, port: int, upstream_port: int) -> config.Config:
    return config.parse(
        {
            "server": {"listen": "127.0.0.1", "port": port},
            "store": {"path": "pushd.sqlite3"},
            # Any free port (logged): a demo must not take a real deployment's 9464.
            "metrics": {"port": 0},
            "apps": [
                {
                    "name": DEMO_APP,
                    "provider": "apns",
                    "environment": "sandbox",
                    "topic": DEMO_TOPIC,
                    "key_file": f"AuthKey_{DEMO_KEY_ID}.p8",
                    "key_id": DEMO_KEY_ID,
                    "team_id": DEMO_TEAM_ID,
                    "upstream_url": f"https://127.0.0.1:{upstream_port}",
                    "upstream_ca_file": "simulator-ca.pem",
                    "matrix": {"app_ids": [DEMO_MATRIX_APP_ID]},
                }
            ],
        },
        base=directory,
        source="(embedded demo defaults)",
    )


def matrix_demo_body() -> str:
    """A Synapse-shaped notify for the demo device (printed for curl, and tested)."""
    device = {"app_id": DEMO_MATRIX_APP_ID, "pushkey": DEMO_PUSHKEY}
    notification = {
        "event_id": "$demo",
        "room_id": "!demo:example.org",
        "type": "m.room.message",
        "sender": "@bob:example.org",
        "content": {"msgtype": "m.text", "body": "Hello"},
        "counts": {"unread": 1},
        "devices": [device],
    }
    return json.dumps({"notification": notification}, separators=(",", ":"))


async def _run(directory: Path, port: int) -> None:
    public_key = write_p8(directory / f"AuthKey_{DEMO_KEY_ID}.p8")
    tls = make_self_signed()
    tls.write_ca(directory / "simulator-ca.pem")
    simulator = ApnsSimulator(topics=frozenset({DEMO_TOPIC}), on_received=_print_received)
    simulator.add_key(DEMO_KEY_ID, DEMO_TEAM_ID, public_key)
    async with trio.open_nursery() as nursery:
        upstream_port: int = await nursery.start(simulator.serve, tls.server_context())
        cfg = demo_config(directory, port, upstream_port)
        store = await open_store(cfg.store)
        try:
            demo_server, key = await store.add_server("demo", key=DEMO_KEY)
            await store.register(demo_server.id, DEMO_USER, DEMO_TOKEN, DEMO_APP, "sandbox")
        finally:
            await store.close()
        print(
            "\npushd demo: no config file given, so running on embedded defaults:\n"
            f"  upstream: the bundled APNs simulator on https://127.0.0.1:{upstream_port}\n"
            f"  store:    {cfg.store.path} (temporary)\n"
            f"  chat-server key: {key}\n"
            f"  user {DEMO_USER!r} has one device registered for app {DEMO_APP!r}\n"
            "Send a notification:\n"
            f'  curl -s -H \'Authorization: Bearer {key}\' -d \'{{"user":"{DEMO_USER}",'
            f'"alert":"Hello"}}\' http://127.0.0.1:{port}/v1/notifications\n'
            "Or as a Matrix homeserver would:\n"
            f"  curl -s -d '{matrix_demo_body()}' http://127.0.0.1:{port}/_matrix/push/v1/notify\n",
            flush=True,
        )
        await server.serve(cfg)
        nursery.cancel_scope.cancel()


def run(port: int) -> int:
    """Run the demo until Ctrl-C."""
    logs.setup(config.LogConfig())
    with (
        tempfile.TemporaryDirectory(prefix="pushd-demo-") as tmp,
        contextlib.suppress(KeyboardInterrupt),
    ):
        trio.run(_run, Path(tmp), port)
    return 0
