"""The HTTP server's own rules, over real sockets: routing, limits, keep-alive,
malformed requests, timeouts, TLS and graceful shutdown.

Raw bytes go over the socket where a client library would hide what is tested
(pipelining, ``Expect: 100-continue``, chunked bodies, broken requests)."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import httpx
import pytest
import trio
import trustme

from pushd import heap
from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.http11 import DRAIN_BYTES, MAX_HEAD_BYTES, MAX_HEADERS, HttpServer, HttpSettings
from pushd.routing import Router
from pushd.store import ValueRefused


async def echo(request: Request) -> Reply:
    return json_reply(
        200,
        {
            "params": dict(request.params),
            "size": len(request.body),
            "client": request.client,
            "path": request.path,
        },
    )


#: An answer far larger than a socket's send buffer: written in part at once, the rest
#: as the client reads.
BIG_BYTES = 8 * 1024 * 1024


async def big(request: Request) -> Reply:
    return Reply(200, b"x" * BIG_BYTES, content_type="application/octet-stream")


async def boom(request: Request) -> Reply:
    raise RuntimeError("handler bug")


async def refused(request: Request) -> Reply:
    raise ValueRefused("NUL character in text")


#: Lets a test hold a request in its handler (graceful shutdown).
RELEASE: dict[str, trio.Event] = {}


async def slow(request: Request) -> Reply:
    await RELEASE["slow"].wait()
    return json_reply(200, {"slow": True})


#: The order in which :func:`order`'s requests were handled, by the path's ``who``.
ORDER: list[str] = []
#: Set by :func:`order` at its first request.
ORDERED: dict[str, trio.Event] = {}


async def order(request: Request) -> Reply:
    """Answers without ever waiting, as a cheap route does."""
    ORDER.append(request.params["who"])
    ORDERED["first"].set()
    return Reply(200, b"", content_type="text/plain")


def plain_error(status: int, code: str, message: str) -> Reply:
    return Reply(status, f"{code}: {message}".encode(), content_type="text/plain")


ROUTES = [
    Route("POST", "/v1/echo", echo, "echo"),
    Route("POST", "/hooks/{secret}/send", echo, "templated"),
    Route("POST", "/small", echo, "small", max_body_bytes=16, error_reply=plain_error),
    Route("GET", "/boom", boom, "boom"),
    Route("GET", "/hooks/{secret}/boom", boom, "secret_boom", error_reply=plain_error),
    Route("GET", "/hooks/{secret}/refused", refused, "refused", error_reply=plain_error),
    Route("GET", "/big", big, "big"),
    Route("GET", "/slow", slow, "slow"),
    Route("GET", "/order/{who}", order, "order"),
]


@attrs.define
class Running:
    host: str
    port: int
    url: str
    stop: trio.Event
    done: trio.Event

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(self.host, self.port)


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(nursery: trio.Nursery) -> AsyncIterator[Start]:
    stops: list[trio.Event] = []

    async def run(
        settings: HttpSettings | None = None, tls: ssl.SSLContext | None = None
    ) -> Running:
        server = HttpServer(Router(ROUTES, max_body_bytes=1024), settings or HttpSettings(), tls)
        stop, done = trio.Event(), trio.Event()
        stops.append(stop)

        async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await server.serve("127.0.0.1", 0, stop.wait, task_status=task_status)
            finally:
                done.set()

        (url,) = await nursery.start(serve)
        port = int(url.rsplit(":", 1)[1])
        return Running("127.0.0.1", port, url, stop, done)

    yield run
    for stop in stops:
        stop.set()


@pytest.fixture
async def running(start: Start) -> Running:
    return await start()


async def exchange(stream: trio.SocketStream, data: bytes, answers: int = 1) -> list[Any]:
    """Send raw bytes (if any); read ``answers`` responses (every answer has a
    Content-Length), or fewer if the server closes the connection."""
    if data:
        await stream.send_all(data)
    buffer = b""
    responses: list[Any] = []
    with trio.fail_after(5):
        while len(responses) < answers:
            head, found, rest = buffer.partition(b"\r\n\r\n")
            if found:
                status_line, *lines = head.decode("latin-1").split("\r\n")
                status = int(status_line.split()[1])
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower().encode()] = value.strip().encode()
                length = int(headers.get(b"content-length", b"0"))
                if status < 200 or len(rest) >= length:
                    if status >= 200:
                        responses.append(
                            {"status": status, "headers": headers, "body": rest[:length]}
                        )
                        rest = rest[length:]
                    buffer = rest
                    continue
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
    return responses


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.fail_after(5):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
    return True


# --- routing and errors ----------------------------------------------------------------


async def test_static_and_templated_routes_and_the_client_address(running: Running) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(running.url + "/v1/echo", content=b"x" * 10)
        assert response.json() == {
            "params": {},
            "size": 10,
            "client": "127.0.0.1",
            "path": "/v1/echo",
        }
        response = await client.post(running.url + "/hooks/s%33cret/send?x=1")
        assert response.json()["params"] == {"secret": "s3cret"}  # percent-decoded
        response = await client.post(running.url + "/hooks//send")
        assert response.status_code == 404


async def test_unknown_path_and_wrong_method_are_json(running: Running) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(running.url + "/nope")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
        response = await client.get(running.url + "/v1/echo")
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert response.headers["allow"] == "POST"
        # A route's own error format is used for its 405 and 413.
        response = await client.get(running.url + "/small")
        assert (response.status_code, response.text) == (
            405,
            "method_not_allowed: /small takes POST",
        )


async def test_handler_exception_is_a_json_500_and_logged(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with httpx.AsyncClient() as client:
        response = await client.get(running.url + "/boom")
        assert (response.status_code, response.json()["error"]["code"]) == (500, "internal_error")
        assert "handler bug" not in response.text
        assert "handler bug" in caplog.text  # the traceback is logged for the admin
        # The connection and the server carry on.
        assert (await client.post(running.url + "/v1/echo")).status_code == 200


async def test_a_handler_exception_answers_in_the_routes_format_and_logs_no_path(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """Mattermost's and Rocket.Chat's paths are their secrets: a 500's log line names
    the route, and the answer is in the route's own protocol."""
    caplog.set_level(logging.ERROR)
    async with httpx.AsyncClient() as client:
        response = await client.get(running.url + "/hooks/the-path-secret/boom")
    assert response.status_code == 500
    assert response.text == "internal_error: pushd failed to handle this request"
    assert "handler bug" in caplog.text and "secret_boom" in caplog.text
    assert "the-path-secret" not in caplog.text


async def test_a_value_the_store_refuses_is_a_400_in_the_routes_format(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with httpx.AsyncClient() as client:
        response = await client.get(running.url + "/hooks/s/refused")
    assert (response.status_code, response.text) == (
        400,
        "invalid_value: a value in the request cannot be stored (NUL character in text)",
    )
    assert "Traceback" not in caplog.text


# --- bodies --------------------------------------------------------------------------


async def test_body_limit_per_route(running: Running) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(running.url + "/v1/echo", content=b"x" * 1025)
        assert (response.status_code, response.json()["error"]["code"]) == (413, "body_too_large")
        assert (await client.post(running.url + "/v1/echo", content=b"x" * 1024)).status_code == 200
        response = await client.post(running.url + "/small", content=b"x" * 17)
        assert (response.status_code, response.text) == (
            413,
            "body_too_large: the body exceeds 16 bytes",
        )


async def test_an_oversized_body_is_read_so_the_client_gets_its_413(running: Running) -> None:
    # Near the drain limit: the client must be able to read the answer, not a reset.
    body = b"x" * (DRAIN_BYTES // 2)
    async with httpx.AsyncClient() as client:
        response = await client.post(running.url + "/v1/echo", content=body)
        assert response.status_code == 413
        # Drained: the same connection serves the next request.
        assert (await client.post(running.url + "/v1/echo", content=b"ok")).status_code == 200


async def test_a_far_too_large_body_is_refused_unread_and_the_connection_closed(
    running: Running,
) -> None:
    stream = await running.connect()
    head = f"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: {10 * DRAIN_BYTES}\r\n\r\n"
    (answer,) = await exchange(stream, head.encode())
    assert answer["status"] == 413
    assert await closed_by_server(stream)


async def test_chunked_bodies_and_pipelined_requests(running: Running) -> None:
    stream = await running.connect()
    chunked = (
        b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    answers = await exchange(
        stream, chunked + post("/hooks/a/send", b"12") + post("/nope", b"z"), 3
    )
    assert [a["status"] for a in answers] == [200, 200, 404]
    assert json.loads(answers[0]["body"])["size"] == 11
    assert json.loads(answers[1]["body"])["params"] == {"secret": "a"}
    await stream.aclose()


async def test_a_client_pipelining_a_flood_does_not_hold_the_others_up(
    running: Running,
) -> None:
    """Requests already read are served back to back without a wait, but a connection
    yields to the others every few of them: another client's one request is answered
    long before a flood of thousands sent ahead of it (it waited for all of them
    before, the whole of every 64 KiB read)."""
    flood = 4000
    ORDER.clear()
    ORDERED["first"] = trio.Event()
    a = await running.connect()
    answered: list[int] = []

    async def flood_a() -> None:
        await a.send_all(b"GET /order/a HTTP/1.1\r\nhost: x\r\n\r\n" * flood)

    async def read_a() -> None:
        answers = await exchange(a, b"", flood)
        answered.append(len(answers))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood_a)
        nursery.start_soon(read_a)
        await ORDERED["first"].wait()
        b = await running.connect()
        (answer,) = await exchange(b, b"GET /order/b HTTP/1.1\r\nhost: x\r\n\r\n")
        assert answer["status"] == 200
    assert answered == [flood]
    assert ORDER.count("a") == flood
    assert ORDER.index("b") < flood // 4, ORDER.index("b")
    await a.aclose()
    await b.aclose()


async def test_expect_100_continue(running: Running) -> None:
    stream = await running.connect()
    head = b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
    await stream.send_all(head)
    first = await stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 100 ")
    (answer,) = await exchange(stream, b"abc")
    assert answer["status"] == 200 and json.loads(answer["body"])["size"] == 3


# --- malformed input and timeouts ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"POST /v1/echo HTTP/1.1\r\ncontent-length: 2\r\n\r\nab", 400),  # no Host
        (b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: x\r\nbig: " + b"y" * 100_000 + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "no-host", "bad-length", "huge-head"],
)
async def test_malformed_http_gets_a_json_4xx_then_close(
    running: Running, raw: bytes, status: int
) -> None:
    stream = await running.connect()
    (answer,) = await exchange(stream, raw)
    assert answer["status"] == status
    assert json.loads(answer["body"])["error"]["code"] == "bad_request"
    assert await closed_by_server(stream)


def head(headers: bytes) -> bytes:
    """A request with an empty body and two header fields, plus ``headers``."""
    return b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n" + headers + b"\r\n"


@pytest.mark.parametrize(
    ("raw", "write"),
    [
        (head(b"big: " + b"y" * 60_000 + b"\r\n"), 0),  # one header of 60 KB
        (head(b"a:1\r\n" * 3000), 0),  # 3,000 headers in 15 KB: under the size limit
        (head(b"a:1\r\n" * 3000), 1000),  # the same, arriving in many reads
        (head(b"a:1\r\n" * 10_000), 1000),  # 50 KB in many reads (h11's own limit)
    ],
    ids=["64k-header-one-read", "3000-headers-one-read", "3000-headers-many-reads", "trickled"],
)
async def test_a_head_over_the_limits_gets_a_431_however_it_arrives(
    running: Running, raw: bytes, write: int
) -> None:
    stream = await running.connect()
    size = write or len(raw)  # bytes per send
    with contextlib.suppress(trio.BrokenResourceError):  # refused before the last one
        for start in range(0, len(raw), size):
            await stream.send_all(raw[start : start + size])
            await trio.sleep(0.001 if write else 0)
    (answer,) = await exchange(stream, b"")
    assert answer["status"] == 431
    error = json.loads(answer["body"])["error"]
    assert error == {
        "code": "bad_request",
        "message": f"the request head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} "
        "header fields",
    }
    assert await closed_by_server(stream)


async def test_heads_within_the_limits_are_served_even_when_reads_hold_more(
    running: Running,
) -> None:
    stream = await running.connect()
    within = head(b"a:1\r\n" * (MAX_HEADERS - 2))  # MAX_HEADERS fields
    # Two 10 KB heads in one write: the read holds 20 KB, each head is under 16 KiB.
    ten_k = head(b"big: " + b"y" * 10_000 + b"\r\n")
    answers = await exchange(stream, within + ten_k + ten_k, 3)
    assert [a["status"] for a in answers] == [200, 200, 200]


async def test_a_trickled_head_is_cut_off_after_read_timeout_not_keep_alive(
    start: Start,
) -> None:
    running = await start(HttpSettings(read_timeout=0.3, keep_alive_timeout=30))
    stream = await running.connect()

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"GET /v1/echo HTTP/1.1\r\nhost: x\r\n")
            while True:
                await trio.sleep(0.05)
                await stream.send_all(b"x-slow: 1\r\n")

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        assert await closed_by_server(stream)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - began < 2


async def test_an_idle_connection_waits_keep_alive_timeout_not_read_timeout(
    start: Start,
) -> None:
    running = await start(HttpSettings(read_timeout=0.1, keep_alive_timeout=5))
    stream = await running.connect()
    (first,) = await exchange(stream, post("/v1/echo", b""))
    await trio.sleep(0.4)  # idle between requests, longer than read_timeout
    (second,) = await exchange(stream, post("/v1/echo", b""))
    assert (first["status"], second["status"]) == (200, 200)


async def test_a_stalled_body_and_an_idle_connection_are_closed(start: Start) -> None:
    running = await start(HttpSettings(read_timeout=0.2, keep_alive_timeout=0.3))
    stalled = await running.connect()
    await stalled.send_all(b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc")
    assert await closed_by_server(stalled)
    idle = await running.connect()
    (answer,) = await exchange(idle, post("/v1/echo", b""))
    assert answer["status"] == 200
    assert await closed_by_server(idle)  # after keep_alive_timeout


async def test_an_answer_larger_than_the_socket_takes_arrives_whole_then_the_next(
    running: Running,
) -> None:
    stream = await running.connect()
    await stream.send_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n" + post("/v1/echo", b"{}"))
    received = b""
    with trio.fail_after(10):
        while True:
            received += await stream.receive_some(1 << 20)
            head, _, rest = received.partition(b"\r\n\r\n")
            second = rest[BIG_BYTES:]  # the echo's answer, once the big one is whole
            if b"\r\n\r\n" in second and second.endswith(b"}"):
                break
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"content-length: {BIG_BYTES}".encode() in head
    assert rest[:BIG_BYTES] == b"x" * BIG_BYTES
    assert second.startswith(b"HTTP/1.1 200 ")  # the pipelined request, answered after


async def test_a_client_that_stops_reading_a_large_answer_is_dropped(start: Start) -> None:
    running = await start(HttpSettings(read_timeout=0.3, keep_alive_timeout=30))
    stalled = await running.connect()
    await stalled.send_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
    await trio.sleep(1.0)  # never reads: the server must give up on it, not hang
    async with httpx.AsyncClient() as client:  # meanwhile others are served
        assert (await client.post(running.url + "/v1/echo")).status_code == 200
    received = 0
    with trio.fail_after(5):
        try:
            while chunk := await stalled.receive_some(1 << 20):
                received += len(chunk)
        except trio.BrokenResourceError:
            pass
    assert received < BIG_BYTES  # closed part-way: the rest was never sent


async def test_a_client_that_disconnects_mid_request_does_not_hurt_the_server(
    running: Running,
) -> None:
    for _ in range(3):
        stream = await running.connect()
        await stream.send_all(b"POST /v1/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
        await stream.aclose()
    async with httpx.AsyncClient() as client:
        assert (await client.post(running.url + "/v1/echo")).status_code == 200


# --- TLS and shutdown ----------------------------------------------------------------


async def test_tls(start: Start, tmp_path: Any) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    running = await start(tls=context)
    assert running.url.startswith("https://")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_file))) as client:
        response = await client.post(running.url + "/v1/echo", content=b"tls")
        assert response.json()["size"] == 3
    # A client that is not speaking TLS is dropped without harm.
    stream = await running.connect()
    await stream.send_all(post("/v1/echo", b""))
    assert await closed_by_server(stream)


async def test_graceful_shutdown_finishes_requests_in_flight(start: Start) -> None:
    running = await start(HttpSettings(drain_seconds=5))
    RELEASE["slow"] = trio.Event()
    idle = await running.connect()
    (warm,) = await exchange(idle, post("/v1/echo", b""))
    assert warm["status"] == 200
    busy = await running.connect()
    await busy.send_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
    await trio.sleep(0.1)
    running.stop.set()
    assert await closed_by_server(idle)  # idle: closed at once
    with pytest.raises(OSError):  # no new connections
        await running.connect()
    RELEASE["slow"].set()
    (answer,) = await exchange(busy, b"")
    assert answer["status"] == 200
    assert answer["headers"][b"connection"] == b"close"
    with trio.fail_after(5):
        await running.done.wait()


async def test_mangled_requests_never_get_a_500_or_stop_the_server(start: Start) -> None:
    # Short timeouts: a request cut short waits for bytes that never come.
    running = await start(HttpSettings(read_timeout=0.2, keep_alive_timeout=0.2))
    rng = random.Random(7)
    valid = post("/v1/echo", b'{"a": 1}', b"transfer-encoding: identity\r\n")
    statuses: set[int] = set()
    for _ in range(150):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(raw))
            choice = rng.random()
            if choice < 0.4:
                raw[position] = rng.randrange(256)
            elif choice < 0.7:
                del raw[position : position + rng.randint(1, 8)]
            else:
                raw[position:position] = rng.choice([b"\r\n", b":", b" ", b"\x00", b"9" * 30])
        stream = await running.connect()
        answers = await exchange(stream, bytes(raw))
        statuses.update(answer["status"] for answer in answers)
        await stream.aclose()
    assert statuses <= {200, 400, 404, 405, 413, 431, 501}, statuses  # 501: odd Transfer-Encoding
    assert 400 in statuses  # the mutations did break requests
    async with httpx.AsyncClient() as client:
        assert (await client.post(running.url + "/v1/echo", content=b"{}")).status_code == 200


async def test_serving_freezes_the_start_up_heap_and_raises_the_young_threshold(
    running: Running,
) -> None:
    # Full collections no longer walk start-up's objects (they paused the process for
    # 25-110 ms every few seconds under load), and young ones come less often.
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == heap.GEN0_THRESHOLD
    (answer,) = await exchange(await running.connect(), post("/v1/echo", b"{}"))
    assert answer["status"] == 200
