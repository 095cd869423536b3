"""The load driver: closed- or open-loop HTTP/1.1 keep-alive requests from hand-written bytes.

It shares two cores with pushd and the simulator, so it has to be cheap per request:
no HTTP client library, one trio task and one TCP connection per concurrent request,
requests pre-encoded once, responses parsed only as far as the status line and
``Content-Length``.  Every response is still checked: status 200, and for a send, the
JSON summary must say every device was ``delivered`` (one JSON parse per response costs
the driver microseconds; an unnoticed failure would make every number meaningless).  A
mixed send must also show the expected number of delivered devices for *each* app: a
summary of 100 delivered could otherwise hide an FCM app that was never reached.

What each mode posts and what counts as its success is in ``load_modes.py``, the
bodies themselves (as each chat server writes them) in ``load_bodies.py``.

The measured window starts after each connection's warm-up requests and ends when the
last worker finishes; CPU seconds of the processes given with ``--watch ROLE=PID``
(pushd, the simulator) and of the driver itself are read from /proc at both ends, so
each one's CPU is known for exactly the window that produced the latencies.

Closed loop (the default): each connection sends its next request the moment the answer
to the previous one arrives, so the run finds the capacity; its latencies are mostly the
queue the driver itself builds at saturation (Little's law: mean = concurrency / rate).
Open loop (``--rate N``): request *k* is due at ``start + k / N``, evenly spaced; the
first free connection takes the next due request and sends it at its time, so there are
never more requests in flight than connections.  Latency runs from the request's *due*
time, not from when it left: when every connection is busy the wait counts (no
coordinated omission), and the requests that left more than ``LATE_SECONDS`` after
their time are counted as late.  That is latency at an offered load, as production
gateways are judged.

Prints one JSON object on stdout.  Bounded: a fixed number of requests, cut short after
``--max-seconds``, and every request must finish within ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import inside
import trio
from common import DRIVER, CpuSnapshot, placement
from load_bodies import (
    EVENT_NUMBER_FORMAT,
    EVENT_TAG_LENGTH,
    ZULIP_USER_AGENT,
    basic_auth,
    encode_request,
    zulip_notify_body,
)
from load_modes import MODES, ZULIP_SUCCESS, Mode, ResponseError, build_requests, check
from load_stats import PERCENTILES, percentile, run_queue_waits, write_trace

#: What other benchmarks import from the driver (the runner its modes, zulip_fanout.py
#: the code that builds and checks a Zulip notify), wherever it is defined now.
__all__ = [
    "MODES",
    "ZULIP_SUCCESS",
    "ZULIP_USER_AGENT",
    "Connection",
    "basic_auth",
    "check",
    "encode_request",
    "zulip_notify_body",
]

#: A send that takes longer has gone wrong (pushd's own first-attempt deadline is 10 s).
REQUEST_TIMEOUT = 30.0
#: Extra time over --max-seconds for requests in flight and connection set-up.
GRACE_SECONDS = 30.0
RECEIVE_BYTES = 65536
#: An open-loop request that leaves this long after its due time counts as late: every
#: connection was busy, or the driver itself was slow to wake (both count in latency).
LATE_SECONDS = 0.001
HEADER_END = b"\r\n\r\n"
CONTENT_LENGTH = b"\r\ncontent-length:"
CONNECTION_CLOSE = b"\r\nconnection: close"
CHUNKED = b"\r\ntransfer-encoding: chunked"


class ConnectionLost(Exception):
    """pushd closed the connection: this worker cannot go on."""


class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time, reopened when told to.

    A server may end a connection with ``connection: close`` (pushd does on shutdown);
    a real client opens a new one, and so does this.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buffer = bytearray()
        self.reopened = 0

    async def _fill(self, stream: trio.SocketStream) -> None:
        chunk = await stream.receive_some(RECEIVE_BYTES)
        if not chunk:
            raise ConnectionLost("pushd closed the connection")
        self.buffer += chunk

    async def _take(self, stream: trio.SocketStream, length: int) -> bytes:
        while len(self.buffer) < length:
            await self._fill(stream)
        taken = bytes(self.buffer[:length])
        del self.buffer[:length]
        return taken

    async def _chunked(self, stream: trio.SocketStream) -> bytes:
        """A ``transfer-encoding: chunked`` body (Sygnal's Twisted answers so; pushd
        never does), without trailers."""
        body = bytearray()
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                await self._fill(stream)
            size = int(bytes(self.buffer[:end]).split(b";", 1)[0], 16)
            del self.buffer[: end + 2]
            body += await self._take(stream, size + 2)
            del body[-2:]
            if size == 0:
                return bytes(body)

    async def close(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            await trio.aclose_forcefully(stream)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; return the response's status and body."""
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self.buffer.clear()
        stream = self.stream
        await stream.send_all(request)
        while (end := self.buffer.find(HEADER_END)) < 0:
            await self._fill(stream)
        head = bytes(self.buffer[:end]).lower()
        del self.buffer[: end + len(HEADER_END)]
        status = int(head[9:12])
        at = head.find(CONTENT_LENGTH)
        if at >= 0:
            value_start = at + len(CONTENT_LENGTH)
            value_end = head.find(b"\r\n", value_start)
            length = int(head[value_start : value_end if value_end >= 0 else len(head)])
            body = await self._take(stream, length)
        elif CHUNKED in head:
            body = await self._chunked(stream)
        else:
            raise ConnectionLost(f"status {status} without content-length: {head[:200]!r}")
        if CONNECTION_CLOSE in head:
            await self.close()
            self.reopened += 1
        return status, body


@attrs.define
class Run:
    """Shared state of one run's workers."""

    mode: Mode
    #: Pre-encoded requests, as :func:`build_requests` returns them.
    requests: list[tuple[bytes, ...]]
    remaining: int
    #: ``$`` and this run's random characters, the start of every event id it sends
    #: (Matrix only: unique across runs against the same pushd, whose dedupe remembers).
    event_tag: bytes | None = None
    deadline: float = 0.0
    tickets: itertools.count[int] = attrs.field(factory=itertools.count)
    latencies: list[float] = attrs.Factory(list)
    failures: int = 0
    first_failure: str | None = None
    warmed: int = 0
    #: Warm-up requests answered in full success (not in the window, but sent upstream).
    warmup_done: int = 0
    #: Connections reopened after pushd's ``connection: close`` in the measured window.
    reopened: int = 0
    all_warm: trio.Event = attrs.Factory(trio.Event)
    go: trio.Event = attrs.Factory(trio.Event)
    #: Open loop: seconds between due times (None: closed loop), the first one's time
    #: (trio's clock), the next request's number, and the late ones' count and worst.
    interval: float | None = None
    start: float = 0.0
    due_count: int = 0
    late: int = 0
    worst_late: float = 0.0
    #: Open loop: trio's clock when the last answer came (the achieved rate's window).
    last_answer: float = 0.0
    #: With ``--trace``: (due time on trio's clock, latency, lateness) of every request.
    trace: list[tuple[float, float, float]] | None = None

    def next_request(self) -> bytes:
        """The next request to send; a Matrix one with an event id no other has."""
        ticket = next(self.tickets)
        parts = self.requests[ticket % len(self.requests)]
        if self.event_tag is None:
            return parts[0]
        return (self.event_tag + EVENT_NUMBER_FORMAT % ticket).join(parts)

    def fail(self, error: BaseException) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = f"{type(error).__name__}: {error}"


#: Errors after which a connection is out of step or gone: the worker stops.
FATAL_ERRORS = (ConnectionLost, OSError, trio.BrokenResourceError, trio.TooSlowError)
#: Errors in a complete response: the connection is fine, the request counts as failed.
RESPONSE_ERRORS = (ResponseError, ValueError, KeyError)


async def worker(run: Run, port: int, warmup: int, workers: int) -> None:
    """Warm up, wait for the start, then send until the requests or the time run out."""
    connection = Connection(port)
    alive = True
    try:
        for _ in range(warmup):
            request = run.next_request()
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    check(run.mode, *await connection.exchange(request))
                run.warmup_done += 1
            except (*RESPONSE_ERRORS, *FATAL_ERRORS) as error:
                run.fail(error)  # a bad start: leave this worker out of the measured window
                alive = False
                break
        run.warmed += 1
        if run.warmed == workers:
            run.all_warm.set()
        await run.go.wait()
        connection.reopened = 0
        while alive and run.remaining > 0 and time.monotonic() < run.deadline:
            run.remaining -= 1
            if run.interval is None:
                started = time.perf_counter()
                alive = await send_one(run, connection, started, time.perf_counter)
            else:
                alive = await send_due(run, connection)
        run.reopened += connection.reopened
    finally:
        await connection.close()


async def send_one(
    run: Run, connection: Connection, started: float, clock: Callable[[], float]
) -> bool:
    """Send the next request, its latency counted from ``started`` on ``clock``.

    Returns False when the connection is gone (the worker stops).
    """
    request = run.next_request()
    try:
        with trio.fail_after(REQUEST_TIMEOUT):
            status, body = await connection.exchange(request)
        run.latencies.append(clock() - started)
        check(run.mode, status, body)
    except RESPONSE_ERRORS as error:
        run.fail(error)
    except FATAL_ERRORS as error:
        run.fail(error)
        return False
    return True


async def send_due(run: Run, connection: Connection) -> bool:
    """Open loop: take the next due request, wait for its time, send it.

    Its latency counts from the due time, so a request that could not leave on time
    (every connection busy, or the driver slow to wake) carries that wait.
    """
    assert run.interval is not None
    due = run.start + run.due_count * run.interval
    run.due_count += 1
    await trio.sleep_until(due)
    lateness = trio.current_time() - due
    if lateness > LATE_SECONDS:
        run.late += 1
    run.worst_late = max(run.worst_late, lateness)
    alive = await send_one(run, connection, due, trio.current_time)
    answered = trio.current_time()
    run.last_answer = max(run.last_answer, answered)
    if run.trace is not None:
        run.trace.append((due, answered - due, lateness))
    return alive


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    mode = MODES[args.mode]
    event_tag = None
    if mode.matrix:
        event_tag = ("$" + secrets.token_urlsafe(EVENT_TAG_LENGTH)[:EVENT_TAG_LENGTH]).encode()
    run = Run(
        mode=mode,
        requests=build_requests(args, mode),
        remaining=args.requests,
        event_tag=event_tag,
    )
    watched = {role: int(pid) for role, _, pid in (w.partition("=") for w in args.watch)}
    watched[DRIVER] = os.getpid()
    with trio.fail_after(args.max_seconds + GRACE_SECONDS):
        async with trio.open_nursery() as nursery:
            for _ in range(args.concurrency):
                nursery.start_soon(worker, run, args.port, args.warmup, args.concurrency)
            await run.all_warm.wait()
            if args.reset_timings:
                # pushd's own timings start with the measured window, as ours do.
                await trio.to_thread.run_sync(inside.take, args.port)
            before = CpuSnapshot.take(watched)
            waits = run_queue_waits(watched)
            started = time.monotonic()
            run.deadline = started + args.max_seconds
            if args.rate:
                run.interval = 1 / args.rate
                run.start = run.last_answer = trio.current_time()
                wall_start = time.time()
                if args.trace:
                    run.trace = []
            run.go.set()
        elapsed = time.monotonic() - started
        cpu = CpuSnapshot.take(watched).since(before)
        waited = {role: s - waits[role] for role, s in run_queue_waits(watched).items()}
    latencies = sorted(run.latencies)
    done = len(latencies)
    open_loop: dict[str, Any] = {}
    if run.interval is not None:
        window = run.last_answer - run.start
        open_loop = {
            "rate": args.rate,
            "achieved_rate": done / window if window > 0 else 0.0,
            "late": run.late,
            "worst_late_ms": run.worst_late * 1000,
            "max_ms": (latencies[-1] if latencies else 0.0) * 1000,
            "p90_ms": percentile(latencies, PERCENTILES["p90_ms"]) * 1000,
            "p999_ms": percentile(latencies, PERCENTILES["p999_ms"]) * 1000,
        }
        if run.trace is not None:
            shift = wall_start - run.start
            write_trace(args.trace, ((due + shift, lat, late) for due, lat, late in run.trace))
    return open_loop | {
        "mode": args.mode,
        "concurrency": args.concurrency,
        "requests": done,
        "notifications": done * mode.devices,
        "fcm_notifications": done * mode.fcm_devices,
        # Every APNs notification of this run, warm-ups included: the runner checks the
        # sum of all runs against what the APNs simulator counted.
        "apns_sent": (done + run.warmup_done) * mode.apns_devices,
        "failures": run.failures,
        "reconnects": run.reopened,
        "first_failure": run.first_failure,
        "elapsed": elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_seconds": cpu,
        # Seconds each watched process's threads were runnable but waited for a CPU.
        "run_queue_seconds": waited,
        "driver": placement(os.getpid()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="pushd's port on 127.0.0.1")
    parser.add_argument("--key", required=True, help="the chat server's API key")
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument(
        "--users",
        type=int,
        required=True,
        help="users stored (Mattermost, Matrix: devices) for this mode",
    )
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True, help="measured requests")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests per connection")
    parser.add_argument(
        "--reset-timings",
        action="store_true",
        help="after the warm-up, start a new window of the benchmark pushd's own timings",
    )
    parser.add_argument("--max-seconds", type=float, default=30.0, help="cut the run short")
    parser.add_argument(
        "--rate",
        type=float,
        help="open loop: requests per second, evenly spaced (default: closed loop)",
    )
    parser.add_argument(
        "--trace", type=Path, help="open loop: write each request's due time and latency here"
    )
    parser.add_argument(
        "--watch", action="append", default=[], metavar="ROLE=PID", help="report this CPU too"
    )
    result = trio.run(measure, parser.parse_args())
    json.dump(result, sys.stdout)
    print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
