"""The serving layer's own rules, driven with ASGI messages as hypercorn sends them."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from pushd.asgi import AsgiApp
from pushd.frontends.http import Reply, Request, Route, json_reply


async def call(
    app: AsgiApp, method: str, path: str, body: bytes = b"", chunks: int = 1
) -> tuple[int, dict[str, str], Any]:
    pieces = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    start, body_message = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body_message["body"])


async def echo(request: Request) -> Reply:
    return json_reply(
        200, {"params": dict(request.params), "size": len(request.body), "client": request.client}
    )


async def boom(request: Request) -> Reply:
    raise RuntimeError("handler bug")


APP = AsgiApp(
    [
        Route("POST", "/v1/echo", echo, "echo"),
        Route("POST", "/hooks/{secret}/send", echo, "templated"),
        Route("GET", "/boom", boom, "boom"),
    ],
    max_body_bytes=1024,
)


async def test_static_and_templated_routes() -> None:
    status, _, body = await call(APP, "POST", "/v1/echo", b"x" * 10, chunks=3)
    assert (status, body["size"], body["client"]) == (200, 10, "127.0.0.1")
    status, _, body = await call(APP, "POST", "/hooks/s3cret/send")
    assert (status, body["params"]) == (200, {"secret": "s3cret"})
    status, _, _ = await call(APP, "POST", "/hooks//send")
    assert status == 404


async def test_unknown_path_and_wrong_method_are_json() -> None:
    status, _, body = await call(APP, "GET", "/nope")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, headers, body = await call(APP, "GET", "/v1/echo")
    assert (status, body["error"]["code"], headers["allow"]) == (405, "method_not_allowed", "POST")


async def test_body_limit() -> None:
    status, _, body = await call(APP, "POST", "/v1/echo", b"x" * 1025)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    status, _, _ = await call(APP, "POST", "/v1/echo", b"x" * 1024)
    assert status == 200


async def test_handler_exception_is_a_json_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    status, _, body = await call(APP, "GET", "/boom")
    assert (status, body["error"]["code"]) == (500, "internal_error")
    assert "handler bug" in caplog.text  # the traceback is logged for the admin
