"""The HTTP/1.1 server's rules that llhttp leaves to pushd, over real sockets.

h11 enforced these by itself; with llhttp (``pushd.http1parse``) pushd does: a Host
header on HTTP/1.1 requests, HTTP/1.0's close, HEAD without a body, an Upgrade request
answered and closed, a body over the limit however it is framed, ``Expect:
100-continue`` on a route that will not take the body, and a request pipelined after
``Connection: close`` left unanswered.  Plus the answer's own shape (status line with
its reason phrase, one write).  The rest is in test_http11.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import attrs
import pytest
import trio

from pushd.frontends.http import Reply, Request, Route, json_reply
from pushd.http1parse import MAX_HEAD_BYTES, RequestReader
from pushd.http11 import HttpServer, HttpSettings
from pushd.routing import Router
from tests.test_http11 import closed_by_server, exchange, post


async def echo(request: Request) -> Reply:
    return json_reply(
        200, {"size": len(request.body), "host": request.headers.get("host"), "x": request.headers}
    )


ROUTES = [
    Route("POST", "/v1/echo", echo, "echo"),
    Route("GET", "/v1/echo", echo, "echo_get"),
    Route("HEAD", "/v1/echo", echo, "echo_head"),
]


@attrs.define
class Holder:
    router: Router


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[HttpServer]:
    server = HttpServer(Router(ROUTES, max_body_bytes=64), HttpSettings(read_timeout=2))
    stop = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await server.serve("127.0.0.1", 0, stop.wait, task_status=task_status)

    (url,) = await nursery.start(serve)
    server.port = int(url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    yield server
    stop.set()


async def test_a_kept_alive_connection_sees_the_routes_a_reload_put_in(
    server: HttpServer,
) -> None:
    stream = await connect(server.port)  # type: ignore[attr-defined]
    (before,) = await exchange(stream, post("/v2/new", b""))
    server.router = Router([*ROUTES, Route("POST", "/v2/new", echo, "new")], max_body_bytes=64)
    (after,) = await exchange(stream, post("/v2/new", b""))
    assert (before["status"], after["status"]) == (404, 200)


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    server = HttpServer(Router(ROUTES, max_body_bytes=64), HttpSettings(read_timeout=2))
    stop = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await server.serve("127.0.0.1", 0, stop.wait, task_status=task_status)

    (url,) = await nursery.start(serve)
    yield int(url.rsplit(":", 1)[1])
    stop.set()


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def test_an_answer_is_a_status_line_with_its_reason_and_a_content_length(port: int) -> None:
    stream = await connect(port)
    await stream.send_all(post("/v1/echo", b"abc"))
    with trio.fail_after(5):
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
    head = data.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"HTTP/1.1 200 OK"
    assert b"content-type: application/json" in head
    assert any(line.startswith(b"content-length: ") for line in head)
    assert not any(line.startswith(b"connection:") for line in head)  # kept alive


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/echo HTTP/1.1\r\nhost: a\r\nhost: b\r\ncontent-length: 0\r\n\r\n",
        b"GET /v1/echo HTTP/1.1\r\nbad name: x\r\nhost: a\r\n\r\n",
        b"GET /v1/echo HTTP/1.1\r\nhost: a\r\nx: a\x00b\r\n\r\n",
        b"POST /v1/echo HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        b"POST /v1/echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["two-hosts", "bad-name", "nul-in-value", "two-lengths", "bad-chunk"],
)
async def test_requests_h11_refused_are_still_refused(port: int, raw: bytes) -> None:
    stream = await connect(port)
    (answer,) = await exchange(stream, raw)
    assert answer["status"] == 400
    assert json.loads(answer["body"])["error"]["code"] == "bad_request"
    assert await closed_by_server(stream)


async def test_header_values_are_trimmed_and_names_lower_case(port: int) -> None:
    stream = await connect(port)
    raw = b"GET /v1/echo HTTP/1.1\r\nHost:  a.example  \r\nX-Thing:\tv \r\n\r\n"
    (answer,) = await exchange(stream, raw)
    body = json.loads(answer["body"])
    assert body["host"] == "a.example"
    assert body["x"]["x-thing"] == "v"


@pytest.mark.parametrize("extra", [b"", b"connection: keep-alive\r\n"])
async def test_http_1_0_needs_no_host_and_is_closed_after_its_answer(
    port: int, extra: bytes
) -> None:
    stream = await connect(port)
    (answer,) = await exchange(stream, b"GET /v1/echo HTTP/1.0\r\n" + extra + b"\r\n")
    assert answer["status"] == 200
    assert answer["headers"][b"connection"] == b"close"
    assert await closed_by_server(stream)


async def test_head_gets_the_length_but_no_body(port: int) -> None:
    stream = await connect(port)
    await stream.send_all(b"HEAD /v1/echo HTTP/1.1\r\nhost: a\r\n\r\n" + post("/v1/echo", b"z"))
    with trio.fail_after(5):
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2 or not data.endswith(b"}"):
            data += await stream.receive_some(65536)
    first, _, rest = data.partition(b"\r\n\r\n")
    assert (
        int(dict(line.split(b": ", 1) for line in first.split(b"\r\n")[1:])[b"content-length"]) > 0
    )
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body between the two answers


async def test_an_upgrade_request_is_answered_then_closed(port: int) -> None:
    stream = await connect(port)
    raw = b"GET /v1/echo HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
    (answer,) = await exchange(stream, raw + post("/v1/echo", b""), 2)  # the second is not read
    assert answer["status"] == 200
    assert answer["headers"][b"connection"] == b"close"
    assert await closed_by_server(stream)


async def test_a_chunked_body_over_the_limit_gets_a_413_and_the_connection_goes_on(
    port: int,
) -> None:
    stream = await connect(port)
    chunked = (
        b"POST /v1/echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"40\r\n"
        + b"x" * 64
        + b"\r\n"
        + b"1\r\ny\r\n0\r\n\r\n"
    )
    answers = await exchange(stream, chunked + post("/v1/echo", b"ok"), 2)
    assert [a["status"] for a in answers] == [413, 200]
    assert json.loads(answers[1]["body"])["size"] == 2


async def test_expect_continue_on_a_route_that_will_not_take_the_body(port: int) -> None:
    for path, length, status in [("/nope", 3, 404), ("/v1/echo", 65, 413)]:
        stream = await connect(port)
        raw = (
            f"POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: {length}\r\n"
            "expect: 100-continue\r\n\r\n"
        ).encode()
        (answer,) = await exchange(stream, raw)  # no 100 first: the answer itself
        assert answer["status"] == status
        assert answer["headers"][b"connection"] == b"close"
        assert await closed_by_server(stream)


async def test_nothing_is_answered_after_a_request_with_connection_close(port: int) -> None:
    stream = await connect(port)
    first = post("/v1/echo", b"a", b"connection: close\r\n")
    answers = await exchange(stream, first + post("/v1/echo", b"b"), 2)
    assert [a["status"] for a in answers] == [200]
    assert answers[0]["headers"][b"connection"] == b"close"


def test_a_head_spanning_reads_is_bounded_by_what_was_read() -> None:
    # One header that never ends: llhttp keeps it whole, so the reader counts the reads.
    reader = RequestReader(Holder(Router(ROUTES, max_body_bytes=64)))
    reader.feed(b"GET /v1/echo HTTP/1.1\r\nhost: a\r\nbig: ")
    for _ in range(MAX_HEAD_BYTES // 1000 + 1):
        assert reader.error is None
        reader.feed(b"y" * 1000)
    assert (reader.error, reader.stopped) == (431, True)


def test_pipelined_requests_split_across_reads_are_not_taken_for_a_long_head() -> None:
    # Each read ends inside a request's head and holds hundreds of whole requests before
    # it; only the bytes of one head count against its limit, not the whole read (every
    # such read after the first was a 431, closing a pipelining client's connection).
    reader = RequestReader(Holder(Router(ROUTES, max_body_bytes=64)))
    stream = b"GET /v1/echo HTTP/1.1\r\nhost: a\r\n\r\n" * 2000
    read = 20_000  # over MAX_HEAD_BYTES, and not a multiple of one request
    for start in range(0, len(stream), read):
        reader.feed(stream[start : start + read])
        assert reader.error is None
    assert len(reader.ready) == 2000
