"""How long a SIGHUP reload takes in a real ``pushd serve`` process.

pushd runs as a child process with three apps (two APNs, one FCM) against the APNs
and FCM simulators (in this process, over TLS + HTTP/2).  The script sends SIGHUP and
waits for the "reloaded ... in N ms" log line, in two cases:

- unchanged: the same file again (re-read and re-check everything, keep every lane);
- one app changed: one APNs app's request_timeout toggled (a new lane and client
  for it, the old one retired once idle).

Each reload is timed twice: ``pushd`` is the duration pushd logs (from the signal
being read to the new config in place), ``wall`` is from ``kill`` to the log line as
read here (adds signal delivery and the pipe).  Each run is a fresh process; the
table gives per-run medians, and the median and range over all reloads.

Meanwhile a probe sends ``GET /health`` one after another on a keep-alive connection:
its slowest answer while reloads run, against its slowest between them, shows how long
a reload holds up pushd's event loop (file reads, key parsing and TLS setup run on
worker threads; rebuilding frontends and swapping lanes on the loop).

    .venv/bin/python benchmarks/reload.py [--runs 3] [--reloads 15]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pushd.simulators.apns import ApnsSimulator  # noqa: E402
from pushd.simulators.fcm import FcmSimulator, configure_alpn, make_service_account  # noqa: E402
from pushd.upstream.apns.jwt import write_p8  # noqa: E402
from tests.process import PushdProcess, start_pushd_process, write_config  # noqa: E402

KEY_ID = "BENCHKEY01"
TEAM_ID = "BENCHTEAM1"
RELOADED = re.compile(r"reloaded .* in ([\d.]+) ms")


def tls(ca: trustme.CA, *, fcm: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if fcm:
        return configure_alpn(context)
    context.set_alpn_protocols(["h2"])
    return context


def apps(work: Path, apns: ApnsSimulator, fcm: FcmSimulator, timeout: float) -> list[Any]:
    upstream = f"https://127.0.0.1:{apns.port}"
    common = {"upstream_ca_file": str(work / "ca.pem"), "connections": 2}
    return [
        {
            "name": name,
            "provider": "apns",
            "environment": "sandbox",
            "topic": topic,
            "key_file": str(work / "key.p8"),
            "key_id": KEY_ID,
            "team_id": TEAM_ID,
            "upstream_url": upstream,
            "request_timeout": timeout if name == "ios-a" else 10.0,
            **common,
        }
        for name, topic in (("ios-a", "org.example.a"), ("ios-b", "org.example.b"))
    ] + [
        {
            "name": "android",
            "provider": "fcm",
            "service_account_file": str(work / "account.json"),
            "upstream_url": fcm.base_url,
            **common,
        }
    ]


async def probe(url: str, reloading: list[bool], into: dict[bool, list[float]]) -> None:
    """``GET /health`` in a loop; each latency (ms) filed under "a reload was running"."""
    async with httpx.AsyncClient() as client:
        while True:
            during = reloading[0]
            started = time.perf_counter()
            response = await client.get(url + "/health")
            assert response.status_code == 200
            into[during or reloading[0]].append((time.perf_counter() - started) * 1000)


async def one_run(
    reloads: int, latencies: dict[bool, list[float]]
) -> dict[str, list[tuple[float, float]]]:
    """Timings (pushd ms, wall ms) per case, from one fresh pushd process."""
    results: dict[str, list[tuple[float, float]]] = {"unchanged": [], "one app changed": []}
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        apns_key = ec.generate_private_key(ec.SECP256R1())
        write_p8(work / "key.p8", apns_key)
        fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        async with trio.open_nursery() as nursery:
            apns = ApnsSimulator(record=False)
            apns.add_key(KEY_ID, TEAM_ID, apns_key.public_key())
            await nursery.start(apns.serve, tls(ca, fcm=False))
            fcm = FcmSimulator(record=False)
            await nursery.start(fcm.serve, tls(ca, fcm=True))
            email = "bench@bench.iam.gserviceaccount.com"
            fcm.add_account(email, fcm_key.public_key(), "bench")
            make_service_account(work / "account.json", "bench", fcm.token_url, email, key=fcm_key)
            sections: dict[str, Any] = {
                "server": {"listen": "127.0.0.1", "port": 0},
                "store": {"path": str(work / "pushd.sqlite3")},
                "log": {"level": "info"},
                "apps": apps(work, apns, fcm, 10.0),
            }
            path = write_config(work / "pushd.toml", sections)
            process = await start_pushd_process(nursery, path)
            try:
                await reload_many(
                    process, path, sections, work, apns, fcm, reloads, results, latencies
                )
            finally:
                if process.process.returncode is None:  # never leave pushd running
                    process.signal(signal.SIGTERM)
                    with trio.move_on_after(30):
                        await process.wait(30)
                    if process.process.returncode is None:
                        process.kill()
            nursery.cancel_scope.cancel()
    return results


async def reload_many(
    process: PushdProcess,
    path: Path,
    sections: dict[str, Any],
    work: Path,
    apns: ApnsSimulator,
    fcm: FcmSimulator,
    reloads: int,
    results: dict[str, list[tuple[float, float]]],
    latencies: dict[bool, list[float]],
) -> None:
    """SIGHUP ``reloads`` times per case, timing each; probe /health meanwhile."""
    reloading = [False]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, process.url, reloading, latencies)
        for n in range(reloads * 2):
            case = "unchanged" if n % 2 == 0 else "one app changed"
            if case == "one app changed":
                sections["apps"] = apps(work, apns, fcm, 10.0 + n)
                write_config(path, sections)
            before = sum(1 for line in process.lines if RELOADED.search(line))
            started = time.perf_counter()
            reloading[0] = True
            process.signal(signal.SIGHUP)
            with trio.fail_after(30):
                while True:
                    matched = [m for line in process.lines if (m := RELOADED.search(line))]
                    if len(matched) > before:
                        break
                    await trio.sleep(0.001)
            wall = (time.perf_counter() - started) * 1000
            reloading[0] = False
            results[case].append((float(matched[-1].group(1)), wall))
            await trio.sleep(0.2)  # let a retired lane close before the next one
        nursery.cancel_scope.cancel()  # the probe, before pushd stops


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):6.1f}  range {min(values):6.1f}-{max(values):6.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reloads", type=int, default=15, help="per case and run")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"pushd reload: {args.runs} runs x {args.reloads} reloads per case; 3 apps")
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} at start")
    everything: dict[str, list[tuple[float, float]]] = {}
    latencies: dict[bool, list[float]] = {True: [], False: []}
    for run in range(args.runs):
        results = trio.run(one_run, args.reloads, latencies)
        for case, timings in results.items():
            everything.setdefault(case, []).extend(timings)
            pushd_ms = statistics.median(t[0] for t in timings)
            wall_ms = statistics.median(t[1] for t in timings)
            print(f"  run {run + 1} {case:<16} pushd {pushd_ms:6.1f} ms  wall {wall_ms:6.1f} ms")
    print("all runs (ms per reload):")
    for case, timings in everything.items():
        print(f"  {case:<16} pushd {describe([t[0] for t in timings])}")
        print(f"  {'':<16} wall  {describe([t[1] for t in timings])}")
    for during, label in ((False, "between reloads"), (True, "during a reload")):
        values = sorted(latencies[during])
        p99 = values[int(len(values) * 0.99)] if values else float("nan")
        print(
            f"GET /health {label}: {len(values)} requests, median "
            f"{statistics.median(values):.2f} ms, p99 {p99:.2f} ms, max {max(values):.2f} ms"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
