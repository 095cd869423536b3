"""The benchmark's FCM upstream: pushd's bundled FCM simulator, quiet and keeping nothing.

``pushd simulate --fcm-port`` prints a line per message; this launcher runs the same
:class:`FcmSimulator` with ``record=False`` (it would otherwise keep every message it
answered, the largest memory user on the machine after a few 10,000 sends) and only
counts answers by status, printed to stderr when it stops.

Unlike the APNs simulator it checks credentials for real: pushd's service-account key
signs an RS256 assertion, the simulator verifies it against ``--public-key`` and issues
an access token, and every send's bearer token is checked.  That is one assertion per
access token (an hour), so it costs nothing per notification, and it proves that pushd's
OAuth path works under load.  The runner makes the key pair: it writes the public half
for this process before starting it, and the service-account JSON
(``make_service_account``, ``token_uri`` pointing here) once this process has printed
its port, because the JSON must name that port.

Serves HTTP/2 and HTTP/1.1 over TLS, as FCM does; pushd's httpx client picks HTTP/2.
Prints ``READY <port>`` once listening; exits by itself when its stdin closes (the
runner holds the other end) or after ``--max-seconds``, so an interrupted benchmark
leaves nothing running.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio
from common import FCM_CLIENT_EMAIL, FCM_PROJECT, READY_PREFIX, wait_for_stdin_eof
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.simulators.certs import make_self_signed
from pushd.simulators.fcm import FcmReceived, FcmSimulator, configure_alpn

#: A benchmark run takes about three minutes; nothing should outlive it by much.
DEFAULT_MAX_SECONDS = 600.0


class Counter:
    """Counts answers by HTTP status: the only trace of a run kept in memory."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}

    def __call__(self, received: FcmReceived) -> None:
        self.by_status[received.status] = self.by_status.get(received.status, 0) + 1


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """The service account's public key, as PEM (SubjectPublicKeyInfo)."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise SystemExit(f"fcm_simulator: {path} is not an RSA public key")
    return key


async def _main(args: argparse.Namespace) -> None:
    tls = make_self_signed()
    tls.write_ca(args.ca_out)
    counter = Counter()
    sim = FcmSimulator(record=False, on_received=counter)
    sim.add_account(FCM_CLIENT_EMAIL, load_public_key(args.public_key), FCM_PROJECT)
    context = configure_alpn(tls.server_context())
    with trio.move_on_after(args.max_seconds):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sim.serve, context, "127.0.0.1", args.port)
            print(f"{READY_PREFIX}{port}", flush=True)
            await wait_for_stdin_eof()
            nursery.cancel_scope.cancel()
    print(
        f"fcm simulator: answers by status {counter.by_status},"
        f" access tokens issued {sim.tokens_issued}, connections {sim.connections_opened},"
        f" HTTP versions {dict(sim.http_versions)}",
        file=sys.stderr,
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--ca-out", required=True, help="write the TLS CA here for pushd")
    parser.add_argument(
        "--public-key", type=Path, required=True, help="the service account's RSA public key"
    )
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    trio.run(_main, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
