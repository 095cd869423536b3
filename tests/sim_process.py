"""The APNs simulator as a process of its own, for ``tests/trouble.py``.

Kept apart from the test helpers so that it starts quickly (no pytest, no pushd server
imports).  Every request taken and every answer given is a line in ``--record``,
written with ``os.write`` (so a SIGKILL cannot lose it) before the answer's bytes
leave: whatever pushd saw answered is on record.  Prints ``READY`` once listening.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import time
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.simulators.apns import ApnsSimulator, Received

#: What tests/conftest.py's apps use (not imported: that would load pytest here).
KEY_ID = "TESTKEY001"
TEAM_ID = "TESTTEAM01"
TOPIC = "org.example.chat"


async def _serve(args: argparse.Namespace, p8: bytes) -> None:
    key = serialization.load_pem_private_key(p8, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def seq_of(body: bytes) -> int:
        try:
            value = json.loads(body).get("seq", -1)
        except (ValueError, AttributeError):
            return -1
        return value if isinstance(value, int) else -1

    def on_received(received: Received) -> None:
        line = f"ans {received.status} {received.token} {seq_of(received.payload)} {time.time()}"
        os.write(fd, line.encode() + b"\n")

    sim = ApnsSimulator(
        topics=frozenset({TOPIC}),
        answer_delay=args.delay,
        record=False,
        on_received=on_received,
    )
    sim.add_key(KEY_ID, TEAM_ID, key.public_key())
    process = sim._process

    def taken(conn: Any, st: Any) -> None:  # every request, answered or not
        token = st.headers.get(b":path", b"").rsplit(b"/", 1)[-1].decode(errors="replace")
        os.write(fd, f"req 0 {token} {seq_of(bytes(st.body))} {time.time()}\n".encode())
        process(conn, st)

    sim._process = taken  # type: ignore[method-assign]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert)
    context.set_alpn_protocols(["h2"])
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.serve, context, "127.0.0.1", args.port)
        print("READY", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="APNs simulator with a SIGKILL-proof record")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--p8", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    trio.run(_serve, args, Path(args.p8).read_bytes())


if __name__ == "__main__":
    main()
