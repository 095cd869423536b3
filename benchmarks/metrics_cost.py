"""What the Prometheus metrics cost: per delivery, per HTTP request, per scrape.

    .venv/bin/python benchmarks/metrics_cost.py           # about 30 s
    .venv/bin/python benchmarks/metrics_cost.py --runs 5

Each figure is the median of ``--runs`` runs (at least 3) with the range (min-max);
each run times many iterations and reports microseconds per iteration.  Times are
this process's CPU time (``time.process_time``), so other processes sharing the
machine disturb them less than a wall clock; on and off runs alternate.

- **delivery**: the dispatcher's real path for one notification (``attempt`` through
  the app's lane and budget, the upstream's answer, ``decide``), with the metrics'
  tally on and off.  The upstream is a sender that answers ``Delivered`` at once, so
  only pushd's own work is timed, and the difference is what metrics add.
- **HTTP request**: pushd's HTTP server (:mod:`pushd.http11`) on loopback, one kept-
  alive connection sending ``GET /empty`` requests one after another, with the
  observer on and off; and the observer's own work timed alone (two clock reads and
  the tally), which is the real difference: the end-to-end figures differ by less
  than their noise.
- **prometheus_client's own** ``Counter.labels().inc()`` plus
  ``Histogram.labels().observe()`` for the same labels, for comparison: why pushd
  counts in plain dicts.
- **scrape**: ``Metrics.exposition()`` with 10 and 50 apps, each with outcomes of all
  five protocols, upstream histograms and errors, and 40 HTTP routes.

Say what else ran on the machine when you quote the numbers: these are CPU-bound.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, Counter
from prometheus_client import Histogram as PromHistogram

from pushd import config as pushd_config
from pushd.dispatch import Dispatcher
from pushd.frontends.http import Reply, Request, Route
from pushd.http11 import HttpServer
from pushd.lanes import Budget, Lane
from pushd.metrics import Metrics
from pushd.metrics.tally import DeliveryTally, HttpTally
from pushd.model import ApnsPush, Delivered, Outcome
from pushd.routing import Router
from pushd.spool.seal import SpoolKeys
from pushd.store import open_store

DELIVERIES = 20_000
REQUESTS = 3_000
OBSERVATIONS = 200_000
SCRAPES = 50
PROTOCOLS = ("native", "zulip", "mattermost", "rocketchat", "matrix")


class InstantSender:
    """An upstream that answers every notification ``Delivered`` at once."""

    answer: Outcome = Delivered()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def send(self, token: str, push: Any) -> Outcome:
        return self.answer

    async def send_many(
        self, tokens: Sequence[str], push: Any, report: Callable[[int, Outcome], None]
    ) -> None:
        for index in range(len(tokens)):
            report(index, self.answer)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f}  ({min(values):.3f}-{max(values):.3f})"


async def make_dispatcher(directory: Path, apps: int) -> Dispatcher:
    cfg = pushd_config.parse({"store": {"path": str(directory / "bench.sqlite3")}}, base=directory)
    store = await open_store(cfg.store)
    lanes = [Lane(name=f"app{n}", sender=InstantSender(), budget=Budget(1000)) for n in range(apps)]
    return Dispatcher(
        lanes,
        store,
        cfg.retry,
        keys=SpoolKeys.load(directory / "spool.key", create=True),
        first_attempt_deadline=10.0,
    )


async def delivery_run(dispatcher: Dispatcher, tally: DeliveryTally | None) -> float:
    """Microseconds per delivery through ``attempt`` and ``decide``."""
    from pushd.model import Delivery

    dispatcher.tally = tally
    push = ApnsPush(payload=b'{"aps":{"alert":"x"}}')
    delivery = Delivery(app="app0", token="a" * 64, push=push, protocol="native")
    tokens = [delivery.token]

    def record(_: int, outcome: Outcome) -> None:
        dispatcher.decide(delivery, outcome, 1, 0.0)

    started = time.process_time()
    for _ in range(DELIVERIES):
        await dispatcher.attempt("app0", tokens, push, record)
    return (time.process_time() - started) / DELIVERIES * 1e6


async def empty(_: Request) -> Reply:
    return Reply(200, b"", content_type="text/plain")


async def http_run(tally: HttpTally | None) -> float:
    """Microseconds per request on one kept-alive loopback connection."""
    router = Router([Route("GET", "/empty", empty, "empty")], 1024)
    server = HttpServer(router, observe=tally.observe if tally else None)
    stop = trio.Event()
    request = b"GET /empty HTTP/1.1\r\nhost: bench\r\n\r\n"
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(server.serve, "127.0.0.1", 0, stop.wait)
        port = int(url.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.process_time()
        for _ in range(REQUESTS):
            await stream.send_all(request)
            answer = b""
            while not answer.endswith(b"\r\n\r\n"):  # no body: the head ends the answer
                answer += await stream.receive_some(4096)
        elapsed = time.process_time() - started
        await stream.aclose()
        stop.set()
    return elapsed / REQUESTS * 1e6


def observer_run() -> float:
    """Microseconds of the HTTP observer's own work per request."""
    tally = HttpTally()
    perf_counter = time.perf_counter

    def one() -> None:
        started = perf_counter()
        tally.observe("/v1/notifications", "POST", 200, perf_counter() - started)

    return cpu_timeit(one)


def cpu_timeit(one: Callable[[], None]) -> float:
    """Microseconds of CPU per call of ``one``."""
    timer = timeit.Timer(one, timer=time.process_time)
    return timer.timeit(number=OBSERVATIONS) / OBSERVATIONS * 1e6


def prometheus_client_run() -> float:
    """Microseconds for the same counting with prometheus_client's own metrics."""
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["app", "protocol", "outcome", "reason"], registry=registry)
    histogram = PromHistogram("h", "h", ["app"], registry=registry)

    def one() -> None:
        counter.labels("app0", "native", "delivered", "").inc()
        histogram.labels("app0").observe(0.02)

    return cpu_timeit(one)


def tally_run() -> float:
    """Microseconds for pushd's tally doing the same counting."""
    tally = DeliveryTally()
    answer = Delivered()

    def one() -> None:
        tally.outcome("app0", "native", "delivered")
        tally.answered("app0", answer, 0.02)

    return cpu_timeit(one)


async def scrape_run(directory: Path, apps: int) -> tuple[float, int]:
    """Milliseconds per scrape with ``apps`` busy apps, and the scrape's size."""
    dispatcher = await make_dispatcher(directory, apps)
    cfg = pushd_config.parse(
        {
            "store": {"path": str(directory / "bench.sqlite3")},
            "metrics": {"port": 0},
        },
        base=directory,
    )
    metrics = Metrics(cfg, dispatcher, dispatcher.store)
    for n in range(apps):
        app = f"app{n}"
        for protocol in PROTOCOLS:
            for outcome, reason in (
                ("delivered", ""),
                ("removed", ""),
                ("retrying", "server_error"),
                ("failed", "rejected"),
            ):
                metrics.delivery.outcome(app, protocol, outcome, reason)
        metrics.delivery.answered(app, Delivered(), 0.03)
        metrics.registrations[(app, "native")] = 1000
    for route in range(40):
        for status in (200, 400, 401):
            metrics.http.observe(f"/route/{route}", "POST", status, 0.002)
    size = len(metrics.exposition())
    started = time.process_time()
    for _ in range(SCRAPES):
        metrics.exposition()
    elapsed = (time.process_time() - started) / SCRAPES * 1e3
    await dispatcher.store.close()
    return elapsed, size


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        dispatcher = await make_dispatcher(directory, 1)
        on: list[float] = []
        off: list[float] = []
        await delivery_run(dispatcher, DeliveryTally())  # warm-up, not counted
        for _ in range(runs):
            off.append(await delivery_run(dispatcher, None))
            on.append(await delivery_run(dispatcher, DeliveryTally()))
        await dispatcher.store.close()
        print(f"delivery (µs each, {DELIVERIES} per run, median (range) of {runs} runs)")
        print(f"  metrics off  {summary(off)}")
        print(f"  metrics on   {summary(on)}")
        print(f"  difference of the medians  {statistics.median(on) - statistics.median(off):.3f}")
        print("counting alone (µs per delivery: one outcome, one upstream answer)")
        print(f"  pushd tally        {summary([tally_run() for _ in range(runs)])}")
        print(f"  prometheus_client  {summary([prometheus_client_run() for _ in range(runs)])}")

        http_off: list[float] = []
        http_on: list[float] = []
        await http_run(HttpTally())  # warm-up, not counted
        for _ in range(runs):
            http_off.append(await http_run(None))
            http_on.append(await http_run(HttpTally()))
        print(f"HTTP request (µs each on loopback, {REQUESTS} per run)")
        print(f"  metrics off  {summary(http_off)}")
        print(f"  metrics on   {summary(http_on)}")
        difference = statistics.median(http_on) - statistics.median(http_off)
        print(f"  difference of the medians  {difference:.3f}")
        print(f"  observer alone {summary([observer_run() for _ in range(runs)])}")

        for apps in (10, 50):
            times: list[float] = []
            size = 0
            for run in range(runs):
                sub = directory / f"scrape-{apps}-{run}"
                sub.mkdir()
                elapsed, size = await scrape_run(sub, apps)
                times.append(elapsed)
            print(f"scrape with {apps} apps (ms each, {size // 1024} KiB)  {summary(times)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    trio.run(main, max(3, arguments.runs))
