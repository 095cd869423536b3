"""The benchmark's APNs upstream: pushd's bundled simulator, quiet and with bounded memory.

``pushd simulate`` prints a line per notification, which would make the simulator, not
pushd, the bottleneck; this launcher keeps the same :class:`ApnsSimulator` but prints
nothing per notification and records nothing (``record=False``: the simulator keeps
every :class:`Received` for tests, which at 100,000s of notifications would be the
largest memory user on the machine); it only counts answers by status.

It trusts any provider token's signature (``accept_any_key``): the benchmark measures
pushd's cost of *making* tokens, not the simulator's cost of checking them.

Prints ``READY <port>`` once listening; exits by itself when its stdin closes (the
runner holds the other end) or after ``--max-seconds``, so an interrupted benchmark
leaves nothing running.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio
from common import ANSWERS_PREFIX, READY_PREFIX, TOPIC, wait_for_stdin_eof

from pushd.simulators.apns import ApnsSimulator, Received
from pushd.simulators.apns.constants import DEFAULT_INITIAL_MAX_STREAMS
from pushd.simulators.certs import make_self_signed

#: A benchmark run takes about three minutes; nothing should outlive it by much.
DEFAULT_MAX_SECONDS = 600.0


class Counter:
    """Counts answers by status."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}

    def __call__(self, received: Received) -> None:
        self.by_status[received.status] = self.by_status.get(received.status, 0) + 1


async def _main(args: argparse.Namespace) -> None:
    tls = make_self_signed()
    tls.write_ca(args.ca_out)
    counter = Counter()
    sim = ApnsSimulator(
        accept_any_key=True,
        topics=frozenset({TOPIC}),
        record=False,
        on_received=counter,
        initial_max_streams=args.initial_streams,
    )
    with trio.move_on_after(args.max_seconds):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.serve, tls.server_context(), "127.0.0.1", args.port)
            print(f"{READY_PREFIX}{port}", flush=True)
            await wait_for_stdin_eof()
            nursery.cancel_scope.cancel()
    # The runner reads this line to check that the driver's counts add up.
    print(f"{ANSWERS_PREFIX}{json.dumps(counter.by_status)}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--ca-out", required=True, help="write the TLS CA here for pushd")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument(
        "--initial-streams",
        type=int,
        default=DEFAULT_INITIAL_MAX_STREAMS,
        help="streams a connection may open before its first provider token is accepted"
        " (APNs: 1; sygnal_side.py lifts it for aioapns, which opens a burst at once)",
    )
    trio.run(_main, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
