"""``pushd simulate``: run the APNs (and, asked, FCM) simulator in the foreground until Ctrl-C.

Meant for a first look at pushd without an Apple or Google account, for demos, and as the
upstream of a benchmark.  It prints one line per notification (never the payload unless
``--show-payload`` asks for it: payloads are private by default here as everywhere in
pushd) and connection events on stderr.

FCM is off unless ``--fcm-port`` is given (so the APNs-only behaviour stays as it was);
it then serves Google's token endpoint and FCM's send endpoint on that port, on the same
certificate as APNs.  Point an FCM app's ``upstream_url`` at ``https://HOST:PORT`` and give
it a service-account file whose ``token_uri`` is ``https://HOST:PORT/token``:
``--fcm-new-account FILE`` writes such a file and trusts it, ``--fcm-account FILE``
trusts an existing one.

Faults, to watch pushd cope: ``--reply TOKEN=410:Unregistered`` (APNs) or
``--reply TOKEN=404:UNREGISTERED`` (FCM) makes a device dead, ``--reply TOKEN=500`` fails
it for a while, ``--reply TOKEN=goaway`` or ``=drop`` ends its connection unanswered,
``--delay`` slows every answer and ``--goaway-after N`` rotates connections
(:mod:`pushd.simulators.faults` has the whole syntax).
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushd.model import mask_token
from pushd.simulators import certs, faults
from pushd.simulators.apns import DEFAULT_MAX_STREAMS, ApnsSimulator, Received
from pushd.simulators.fcm import FcmReceived, FcmSimulator, configure_alpn, make_service_account

#: Apple's alternative APNs port; 443 would need privileges.
DEFAULT_PORT = 2197
DEFAULT_HOST = "127.0.0.1"
#: Project of the service account ``--fcm-new-account`` writes.
DEFAULT_FCM_PROJECT = "pushd-sim"


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
    faults = parser.add_argument_group("faults (APNs and FCM alike)")
    faults.add_argument(
        "--reply",
        action="append",
        default=[],
        metavar="TOKEN=WHAT",
        help="answer TOKEN (* = every other token) with WHAT: STATUS, STATUS:REASON, "
        "REASON, goaway[:REASON] or drop; e.g. TOKEN=410:Unregistered (APNs), "
        "TOKEN=404:UNREGISTERED (FCM), TOKEN=500.  Repeat for one token to answer in "
        "order; the last reply repeats",
    )
    faults.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="every notification's answer waits this long",
    )
    faults.add_argument(
        "--goaway-after",
        type=int,
        default=None,
        metavar="N",
        help="each connection takes N notifications, then answers with GOAWAY Shutdown",
    )
    fcm = parser.add_argument_group("FCM (off unless --fcm-port is given)")
    fcm.add_argument(
        "--fcm-port",
        type=int,
        default=None,
        metavar="N",
        help="serve FCM's send and token endpoints on this port (0: any free port)",
    )
    fcm.add_argument(
        "--fcm-account",
        action="append",
        default=[],
        metavar="FILE",
        help="trust this service-account JSON file: its key, client_email and project (repeatable)",
    )
    fcm.add_argument(
        "--fcm-new-account",
        metavar="FILE",
        help="write a fresh service-account file pointing at the simulator, and trust it",
    )
    fcm.add_argument(
        "--fcm-project",
        default=DEFAULT_FCM_PROJECT,
        help=f"project id of --fcm-new-account (default {DEFAULT_FCM_PROJECT})",
    )
    fcm.add_argument(
        "--fcm-accept-any-assertion",
        action="store_true",
        help="check OAuth assertions' shape and claims but not their signature",
    )
    fcm.add_argument(
        "--fcm-token-url",
        metavar="URL",
        help="the aud assertions must carry (default: https://HOST:PORT/token)",
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


def load_fcm_account(path: str) -> tuple[str, rsa.RSAPublicKey, str]:
    """Read ``(client_email, public key, project_id)`` from a service-account JSON file."""
    try:
        with open(path, "rb") as f:
            document = json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read service-account file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from exc
    fields = ("client_email", "private_key", "project_id")
    if not isinstance(document, dict) or not all(
        isinstance(document.get(name), str) for name in fields
    ):
        raise UsageError(f"{path} is not a service-account file (needs {', '.join(fields)})")
    try:
        key = serialization.load_pem_private_key(
            document["private_key"].encode("ascii"), password=None
        )
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise UsageError(f"{path}: private_key is not an unencrypted PEM key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"{path}: private_key is not an RSA key, as service-account keys are")
    return document["client_email"], key.public_key(), document["project_id"]


def format_fcm_line(received: FcmReceived, show_payload: bool) -> str:
    """One line per FCM message: time, masked token (or topic), project, size, status."""
    stamp = time.strftime("%H:%M:%S", time.localtime(received.at))
    millis = int(received.at * 1000) % 1000
    if received.token is not None:
        target = mask_token(received.token) or "-"
    else:
        topic = received.message.get("topic")
        target = f"topic:{topic}" if isinstance(topic, str) else "condition/none"
    status = str(received.status)
    if received.error_code:
        status += f" {received.error_code}"
    if received.validate_only:
        status += " (validate_only)"
    line = f"{stamp}.{millis:03d}  fcm  {target}  {received.project_id}  {received.size}B  {status}"
    if show_payload:
        line += "  " + json.dumps(received.message, ensure_ascii=False)
    return line


def _print_fcm_received(show_payload: bool, received: FcmReceived) -> None:
    print(format_fcm_line(received, show_payload), flush=True)


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
        fcm_accounts = [load_fcm_account(path) for path in args.fcm_account]
        fcm_wanted = args.fcm_port is not None
        if not fcm_wanted and (fcm_accounts or args.fcm_new_account):
            raise UsageError("--fcm-account and --fcm-new-account need --fcm-port")
        plan = faults.parse_plan(
            args.reply, delay=args.delay, goaway_after=args.goaway_after, fcm=fcm_wanted
        )
        fcm_context = None
        if args.cert:
            context = certs.server_context_from_files(args.cert, args.key)
            if fcm_wanted:
                fcm_context = configure_alpn(certs.server_context_from_files(args.cert, args.key))
        else:
            tls = certs.make_self_signed(sorted({args.host, *certs.DEFAULT_NAMES}))
            context = tls.server_context()
            if fcm_wanted:
                fcm_context = configure_alpn(tls.server_context())
            if args.ca_out:
                tls.write_ca(args.ca_out)
                _log(f"CA certificate written to {args.ca_out}")
            else:
                _log("self-signed certificate; pass --ca-out FILE to save its CA. CA PEM:")
                _log(tls.ca_cert_pem.decode("ascii").rstrip())
    except (UsageError, faults.FaultError, OSError) as exc:
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
    fcm_sim: FcmSimulator | None = None
    if fcm_context is not None:
        fcm_sim = FcmSimulator(
            token_url=args.fcm_token_url,
            accept_any_assertion=args.fcm_accept_any_assertion,
            record=False,
            on_received=functools.partial(_print_fcm_received, args.show_payload),
            log=_log,
        )
        for email, account_key, project in fcm_accounts:
            fcm_sim.add_account(email, account_key, project)
        if not fcm_accounts and not args.fcm_new_account and not args.fcm_accept_any_assertion:
            _log("warning: no --fcm-account given: every OAuth assertion will be rejected")
    plan.apply(sim, fcm_sim)
    for line in plan.describe():
        _log(f"fault: {line}")

    async def start_fcm(nursery: trio.Nursery) -> None:
        if fcm_sim is None:
            return
        port = await nursery.start(fcm_sim.serve, fcm_context, args.host, args.fcm_port)
        if args.fcm_new_account:
            # Written once the port is known, since its token_uri names the port.
            email = f"pushd-sim@{args.fcm_project}.iam.gserviceaccount.com"
            key = make_service_account(
                Path(args.fcm_new_account), args.fcm_project, fcm_sim.token_url, email
            )
            fcm_sim.add_account(email, key.public_key(), args.fcm_project)
            _log(f"service account of {args.fcm_project} written to {args.fcm_new_account}")
        _log(
            f"FCM simulator listening on https://{args.host}:{port} "
            f"(token endpoint {fcm_sim.token_url})"
        )

    async def main() -> int:
        errors: list[OSError] = []
        try:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(sim.serve, context, args.host, args.port)
                await start_fcm(nursery)
                _log(f"APNs simulator listening on https://{args.host}:{port} (Ctrl-C to stop)")
        except* OSError as group:  # cannot bind, typically: say so without a traceback
            errors.extend(e for e in group.exceptions if isinstance(e, OSError))
        for exc in errors:
            print(f"pushd simulate: {exc}", file=sys.stderr)
        return 1 if errors else 0

    # Ctrl-C reaches us wrapped in the nursery's exception group.  A shell without job
    # control starts a background command with SIGINT ignored, and Python then leaves
    # it ignored: a script that starts the simulator with ``&`` and stops it with
    # ``kill -INT`` would wait forever.  Ctrl-C and SIGINT stop it however it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = False
    try:
        return trio.run(main)
    except* KeyboardInterrupt:
        interrupted = True
    if interrupted:
        _log(f"stopped after {sim.answered} notifications")
        if fcm_sim is not None:
            _log(f"FCM: {fcm_sim.answered} messages, {fcm_sim.tokens_issued} access tokens")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m pushd.simulators.cli``) until pushd/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="pushd simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
