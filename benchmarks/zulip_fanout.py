"""Check that one Zulip ``push/notify`` to 10 devices takes one upstream round trip, not 10.

A Zulip user has several phones and tablets; if pushd sent to them one after another,
every notification would wait for the slowest sum of APNs round trips.  This slows the
APNs simulator's answer to *every* notification by ``--delay`` seconds (a scripted
delay, :class:`~pushd.simulators.apns.SimReply`, which only works on a simulator in the
same process, hence this separate script) and times one ``push/notify`` for a user with
10 devices and one for a user with 1 device.  Sent one by one, the 10 would take 10
delays; sent as one round of concurrent streams, about one, like the single device.

Everything runs in this one process on 127.0.0.1: the simulator, the real
``server.serve()`` with the benchmark's APNs app, and a request written by the load
driver's own code (:func:`load.zulip_notify_body`, the same bytes as the benchmark
sends).  The store is a fresh one in a temporary directory, filled through pushd's
``Store.zulip_*`` methods.  Prints one line and exits 0 if the 10-device notify took
less than ``ROUND_LIMIT`` delays, 1 otherwise.  Bounded by ``TIME_LIMIT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import trio
from common import (
    TOPIC,
    ZULIP_DEVICES,
    ZULIP_HOSTNAME,
    ZULIP_KIND_APNS,
    ZULIP_NOTIFY_PATH,
    ZULIP_REALM_UUID,
    ZULIP_SERVER_KEY,
    ZULIP_SERVER_UUID,
    zulip_token,
    zulip_user_uuid,
)
from load import (
    MODES,
    ZULIP_SUCCESS,
    ZULIP_USER_AGENT,
    Connection,
    basic_auth,
    check,
    encode_request,
    zulip_notify_body,
)
from pushd_under_test import apns_app

from pushd import config, server
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.simulators.certs import make_self_signed
from pushd.store import ZulipRealm, open_store
from pushd.upstream.apns.jwt import write_p8

#: How long the simulator holds each answer: long against loopback and pushd's own
#: work (a few ms), so that 1 and 10 round trips cannot be confused.
DEFAULT_DELAY = 0.5
#: The 10-device notify must finish within this many delays: 1 round plus slack for
#: pushd's work; sent one by one it would take at least ZULIP_DEVICES.
ROUND_LIMIT = 2.0
#: The whole check (start-up, warm-up, two timed notifies) must end within this.
TIME_LIMIT = 60.0
#: Zulip users in the check's store: user 0 has 10 devices, user 1 has one.
FANOUT_USER = 0
SINGLE_USER = 1
#: The provider key's identity; the simulator accepts any key, these only fill the JWT.
KEY_ID = "FANOUTKEY1"
#: Requests a minute the Zulip server may make (a handful here; the default is 1,000).
RATE_LIMIT = 1_000


async def fill_store(path: Path) -> None:
    """The Zulip server, its realm, and the two users' registrations, via ``Store``."""
    database = await open_store(config.StoreConfig(path=str(path)))
    try:
        await database.zulip_add_server(ZULIP_SERVER_UUID, ZULIP_SERVER_KEY, ZULIP_HOSTNAME)
        realm = ZulipRealm(ZULIP_REALM_UUID, ZULIP_SERVER_UUID, ZULIP_HOSTNAME, "Bench")
        await database.zulip_record_analytics(ZULIP_SERVER_UUID, [realm], (0, 0, 0))
        for user, devices in ((FANOUT_USER, ZULIP_DEVICES), (SINGLE_USER, 1)):
            for device in range(devices):
                await database.zulip_register(
                    ZULIP_SERVER_UUID,
                    ZULIP_KIND_APNS,
                    zulip_token(user, device),
                    TOPIC,
                    None,
                    zulip_user_uuid(user),
                    ZULIP_REALM_UUID,
                )
    finally:
        await database.close()


def notify_request(port: int, user: int, devices: int, message_id: int) -> bytes:
    """The driver's ``push/notify`` for ``user``, listing the first ``devices`` tokens."""
    body = zulip_notify_body(user, message_id)
    body["apple_devices"] = body["apple_devices"][:devices]
    headers = {
        "User-Agent": ZULIP_USER_AGENT,
        "Authorization": basic_auth(ZULIP_SERVER_UUID, ZULIP_SERVER_KEY),
    }
    encoded = json.dumps(body, separators=(",", ":")).encode()
    return encode_request(ZULIP_NOTIFY_PATH, port, headers, encoded)


async def timed_notify(connection: Connection, request: bytes, devices: int) -> float:
    """Send one notify; return its wall time, raising unless it is Zulip's full success."""
    started = time.perf_counter()
    status, body = await connection.exchange(request)
    elapsed = time.perf_counter() - started
    if devices == ZULIP_DEVICES:
        check(MODES["zulip"], status, body)
    elif status != 200 or json.loads(body) != {**ZULIP_SUCCESS, "total_apple_devices": devices}:
        raise RuntimeError(f"notify to {devices} device(s) answered {status}: {body[:300]!r}")
    return elapsed


async def measure(workdir: Path, delay: float) -> tuple[float, float, int]:
    """Seconds for the 1-device and the 10-device notify, and notifications received."""
    store = workdir / "pushd.sqlite3"
    await fill_store(store)
    key_file = workdir / f"AuthKey_{KEY_ID}.p8"
    write_p8(key_file)
    tls = make_self_signed()
    ca_file = workdir / "ca.pem"
    tls.write_ca(ca_file)
    simulator = ApnsSimulator(accept_any_key=True, topics=frozenset({TOPIC}))
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        upstream_port = await nursery.start(simulator.serve, tls.server_context(), "127.0.0.1", 0)
        cfg = config.parse(
            {
                "server": {"listen": "127.0.0.1", "port": 0},
                "store": {"path": str(store)},
                "log": {"level": "warning"},
                "zulip": {"rate_limit": RATE_LIMIT},
                "apps": [apns_app(key_file, upstream_port, ca_file)],
            },
            base=workdir,
            source="(fan-out check)",
        )
        urls: list[str] = await nursery.start(
            lambda task_status: server.serve(
                cfg, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        port = int(urls[0].rsplit(":", 1)[1])
        connection = Connection(port)
        try:
            # Unmeasured and undelayed: the provider token and the upstream connections.
            await timed_notify(connection, notify_request(port, SINGLE_USER, 1, 1), 1)
            simulator.set_default(SimReply(delay=delay))
            single = await timed_notify(connection, notify_request(port, SINGLE_USER, 1, 2), 1)
            fanout = await timed_notify(
                connection, notify_request(port, FANOUT_USER, ZULIP_DEVICES, 3), ZULIP_DEVICES
            )
        finally:
            await connection.close()
            stop.set()
        received = len(simulator.received)
        nursery.cancel_scope.cancel()
    return single, fanout, received


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=DEFAULT_DELAY, help="simulator delay, s")
    args = parser.parse_args()
    delay: float = args.delay

    async def bounded(workdir: Path) -> tuple[float, float, int]:
        with trio.fail_after(TIME_LIMIT):
            return await measure(workdir, delay)

    with tempfile.TemporaryDirectory(prefix="pushd-zulip-fanout-") as directory:
        single, fanout, received = trio.run(bounded, Path(directory))
    expected = 1 + 1 + ZULIP_DEVICES
    one_round = fanout < ROUND_LIMIT * delay and received == expected
    print(
        f"Zulip notify, every APNs answer delayed {delay * 1000:.0f} ms: 1 device"
        f" {single * 1000:.0f} ms, {ZULIP_DEVICES} devices {fanout * 1000:.0f} ms"
        f" ({fanout / delay:.2f} delays; one by one would be >= {ZULIP_DEVICES});"
        f" simulator got {received}/{expected}: {'one round' if one_round else 'NOT one round'}"
    )
    return 0 if one_round else 1


if __name__ == "__main__":
    sys.exit(main())
