"""``pushd simulate``: run the APNs simulator in the foreground until Ctrl-C.

Meant for a first look at pushd without an Apple account, for demos, and as the upstream
of a benchmark.  It prints one line per notification (never the payload unless
``--show-payload`` asks for it: payloads are private by default here as everywhere in
pushd) and connection events on stderr.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushd.model import mask_token
from pushd.simulators import certs
from pushd.simulators.apns import DEFAULT_MAX_STREAMS, ApnsSimulator, Received

#: Apple's alternative APNs port; 443 would need privileges.
DEFAULT_PORT = 2197
DEFAULT_HOST = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``pushd simulate`` to ``parser``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: any free port)"
    )
    parser.add_argument("--cert", help="server certificate (PEM); default: a fresh self-signed one")
    parser.add_argument("--key", help="private key of --cert, if not in the same file")
    parser.add_argument(
        "--ca-out",
        metavar="FILE",
        help="with a self-signed certificate, write its CA here (use it as the app's ca_file)",
    )
    parser.add_argument(
        "--trust-key",
        action="append",
        default=[],
        metavar="KID:TEAM:FILE",
        help="accept provider tokens of this key id and team; FILE is the .p8 key or its "
        "public key PEM (repeatable)",
    )
    parser.add_argument(
        "--accept-any-key",
        action="store_true",
        help="check provider tokens' shape, kid and iat but not their signature",
    )
    parser.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="BUNDLE_ID",
        help="allowed bundle id (repeatable; default: any)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        metavar="N",
        help="concurrent streams allowed once a connection is authenticated",
    )
    parser.add_argument(
        "--show-payload", action="store_true", help="print each notification's payload"
    )


class UsageError(Exception):
    """A command-line value that cannot work; the message is for the user."""


def load_public_key(path: str) -> ec.EllipticCurvePublicKey:
    """Read an ES256 key from a ``.p8`` private key or a public key PEM file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from exc
    public: object
    try:
        public = serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError):
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise UsageError(f"{path} holds neither a .p8 key nor a public key PEM") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise UsageError(f"{path} is not a P-256 (ES256) key, as APNs keys are")
    return public


def parse_trust_key(spec: str) -> tuple[str, str, ec.EllipticCurvePublicKey]:
    """Split ``KID:TEAM:FILE`` (FILE may itself contain colons) and load the key."""
    kid, sep1, rest = spec.partition(":")
    team, sep2, path = rest.partition(":")
    if not (sep1 and sep2 and kid and team and path):
        raise UsageError(f"--trust-key {spec!r}: expected KID:TEAM:FILE")
    return kid, team, load_public_key(path)


def format_line(received: Received, show_payload: bool) -> str:
    """One line per notification: time, masked token, topic, push type, size, status."""
    stamp = time.strftime("%H:%M:%S", time.localtime(received.at))
    millis = int(received.at * 1000) % 1000
    status = str(received.status)
    if received.reason:
        status += f" {received.reason}"
    line = (
        f"{stamp}.{millis:03d}  {mask_token(received.token) or '-'}  "
        f"{received.topic or '-'}  {received.push_type or '-'}  "
        f"{len(received.payload)}B  {status}"
    )
    if show_payload:
        line += "  " + received.payload.decode("utf-8", "backslashreplace")
    return line


def _print_received(show_payload: bool, received: Received) -> None:
    print(format_line(received, show_payload), flush=True)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run ``pushd simulate`` with parsed ``args``; returns the exit status."""
    try:
        keys = [parse_trust_key(spec) for spec in args.trust_key]
        if args.max_streams < 1:
            raise UsageError("--max-streams must be at least 1")
        if args.key and not args.cert:
            raise UsageError("--key needs --cert")
        if args.cert:
            context = certs.server_context_from_files(args.cert, args.key)
        else:
            tls = certs.make_self_signed(sorted({args.host, *certs.DEFAULT_NAMES}))
            context = tls.server_context()
            if args.ca_out:
                tls.write_ca(args.ca_out)
                _log(f"CA certificate written to {args.ca_out}")
            else:
                _log("self-signed certificate; pass --ca-out FILE to save its CA. CA PEM:")
                _log(tls.ca_cert_pem.decode("ascii").rstrip())
    except (UsageError, OSError) as exc:
        print(f"pushd simulate: {exc}", file=sys.stderr)
        return 2

    sim = ApnsSimulator(
        max_streams=args.max_streams,
        accept_any_key=args.accept_any_key,
        topics=frozenset(args.topic) if args.topic else None,
        record=False,
        on_received=functools.partial(_print_received, args.show_payload),
        log=_log,
    )
    for kid, team, public in keys:
        sim.add_key(kid, team, public)
    if not keys and not args.accept_any_key:
        _log("warning: no --trust-key given: every provider token will be rejected")

    async def main() -> int:
        errors: list[OSError] = []
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(sim.serve, context, args.host, args.port)
                _log(f"APNs simulator listening on https://{args.host}:{port} (Ctrl-C to stop)")
        except* OSError as group:  # cannot bind, typically: say so without a traceback
            errors.extend(e for e in group.exceptions if isinstance(e, OSError))
        for exc in errors:
            print(f"pushd simulate: {exc}", file=sys.stderr)
        return 1 if errors else 0

    # Ctrl-C reaches us wrapped in the nursery's exception group.
    interrupted = False
    try:
        return trio.run(main)
    except* KeyboardInterrupt:
        interrupted = True
    if interrupted:
        _log(f"stopped after {sim.answered} notifications")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pushd.simulators.cli``) until pushd/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="pushd simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
