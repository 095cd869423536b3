"""One ``/metrics`` for N workers: the supervisor scrapes each worker and merges.

Why not ``prometheus_client``'s multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): it
only knows the client's own metric objects, each sample a write to a memory-mapped
file, while pushd counts in plain dicts (:mod:`.tally`) read by a collector at scrape
time (:mod:`.collect`), which that mode cannot see; its process metrics are not merged
either.  So each worker keeps its own registry, listens on a loopback port of its own,
and the supervisor, at scrape time, fetches every worker's exposition and serves them
as one: every sample gets a ``worker="<index>"`` label, and each family's samples are
grouped under one ``# HELP``/``# TYPE`` header as the text format requires.  The
delivery path pays nothing; a scrape costs one loopback HTTP request per worker and a
pass over the text (``benchmarks/workers.py`` measures it).

Queries sum over the label (``sum without (worker) (rate(...))``).  Counters of a
restarted worker start again from zero under the same label, which ``rate()`` reads
as a reset, as after any restart.  Gauges counted from the store (spool depth,
registrations) are the same in every worker: take ``max without (worker)``.

The supervisor adds its own: ``pushd_workers`` (configured), ``pushd_worker_up`` (per
worker: it answered this scrape) and ``pushd_worker_restarts_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import attrs
import trio

from pushd.config import Config, read_admin_token
from pushd.frontends.http import Reply, Request, Route
from pushd.http11 import HttpServer, HttpSettings
from pushd.metrics import CONTENT_TYPE, MAX_BODY_BYTES, METRICS_PATH, unauthorized
from pushd.routing import Router

log = logging.getLogger(__name__)

#: A worker that does not answer a scrape within this long is left out of it (and its
#: ``pushd_worker_up`` is 0): one wedged worker must not fail the whole scrape.
WORKER_SCRAPE_TIMEOUT: Final = 5.0
#: A worker's exposition is read up to this size.
MAX_EXPOSITION_BYTES: Final = 16 * 1024 * 1024


@attrs.frozen
class WorkerView:
    """What the supervisor knows of one worker at scrape time."""

    index: int
    metrics_url: str | None
    restarts: int


def add_label(line: str, name: str, value: str) -> str:
    """A sample line with ``name="value"`` as its first label.  Metric names hold no
    brace or space, so the first of either ends the name."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = line[brace + 1 :]
        sep = "" if rest.startswith("}") else ","
        return f'{line[: brace + 1]}{name}="{value}"{sep}{rest}'
    if space == -1:
        return line
    return f'{line[:space]}{{{name}="{value}"}}{line[space:]}'


def merge(expositions: Sequence[tuple[str, str]], label: str = "worker") -> str:
    """Expositions ``(label value, text)`` as one: families in first-seen order, each
    header once, every sample labelled with its source."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for value, text in expositions:
        family = ""
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    header = headers.setdefault(family, [])
                    samples.setdefault(family, [])
                    if line not in header:
                        header.append(line)
                continue
            samples.setdefault(family, []).append(add_label(line, label, value))
    out: list[str] = []
    for family, lines in samples.items():
        out += headers.get(family, [])
        out += lines
    return "\n".join(out) + "\n"


async def fetch(url: str, token: str | None) -> str | None:
    """GET ``url`` (a worker's loopback metrics); its body, or None if it did not answer
    200 in time.  HTTP/1.0-style (``Connection: close``, read to the end): the worker
    is pushd's own server, and this is one request per scrape."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}\r\n"
    with trio.move_on_after(WORKER_SCRAPE_TIMEOUT):
        try:
            stream = await trio.open_tcp_stream(host, port)
            async with stream:
                await stream.send_all(request.encode())
                data = bytearray()
                while len(data) < MAX_EXPOSITION_BYTES:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, trio.BrokenResourceError):  # a worker gone mid-scrape (a reset)
            return None
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            return None
        return body.decode("utf-8", errors="replace")
    return None


def supervisor_series(views: Sequence[WorkerView], up: Sequence[bool]) -> str:
    lines = [
        "# HELP pushd_workers Worker processes configured ([server] workers).",
        "# TYPE pushd_workers gauge",
        f"pushd_workers {len(views)}",
        "# HELP pushd_worker_up Whether the worker answered this scrape.",
        "# TYPE pushd_worker_up gauge",
        *(
            f'pushd_worker_up{{worker="{v.index}"}} {int(ok)}'
            for v, ok in zip(views, up, strict=True)
        ),
        "# HELP pushd_worker_restarts_total Times the supervisor restarted the worker.",
        "# TYPE pushd_worker_restarts_total counter",
        *(f'pushd_worker_restarts_total{{worker="{v.index}"}} {v.restarts}' for v in views),
    ]
    return "\n".join(lines) + "\n"


class MergedMetrics:
    """The supervisor's ``/metrics`` listener on ``[metrics] listen``/``port``."""

    def __init__(self, config: Config, workers: Callable[[], Sequence[WorkerView]]) -> None:
        self.config = config
        self.workers = workers
        self.token = read_admin_token(config.metrics.bearer_token_file)
        self.urls: list[str] = []

    async def exposition(self) -> str:
        views = list(self.workers())
        texts: list[str | None] = [None] * len(views)

        async def one(position: int, view: WorkerView) -> None:
            if view.metrics_url is not None:
                texts[position] = await fetch(view.metrics_url, self.token)

        async with trio.open_nursery() as nursery:
            for position, view in enumerate(views):
                nursery.start_soon(one, position, view)
        merged = merge(
            [(str(v.index), t) for v, t in zip(views, texts, strict=True) if t is not None]
        )
        return merged + supervisor_series(views, [t is not None for t in texts])

    async def scrape(self, request: Request) -> Reply:
        refused = unauthorized(request, self.token)
        if refused is not None:
            return refused
        return Reply(200, (await self.exposition()).encode(), content_type=CONTENT_TYPE)

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; ``task_status`` gets the URLs (ListenError if busy)."""
        router = Router([Route("GET", METRICS_PATH, self.scrape, "metrics")], MAX_BODY_BYTES)
        server = HttpServer(router, HttpSettings(read_timeout=10.0, drain_seconds=1.0))
        settings = self.config.metrics
        async with trio.open_nursery() as nursery:
            bound: list[str] = await nursery.start(
                server.serve, settings.listen, settings.port, trio.sleep_forever
            )
            self.urls = [url + METRICS_PATH for url in bound]
            task_status.started(self.urls)
