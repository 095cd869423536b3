"""The serving layer: frontend routes as a bare ASGI application, served by hypercorn.

Why not Quart-trio, which the design card names: measured here, importing Quart adds
16.6 MB to pushd's resident memory (55 MB in all; the goal is under 80 MB with 100,000
registrations and a full fan-out in flight), and its request and response objects cost
CPU on every request, while pushd needs from a framework only what this module does:
route by method and path, read a bounded body, answer JSON.  Frontends never see this
module (they take a :class:`~pushd.frontends.http.Request` and return a
:class:`~pushd.frontends.http.Reply`), so the serving layer can change again after
measuring without touching protocol code.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from pushd.frontends.http import Reply, Request, Route, json_reply

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: A body over its route's limit by at most this much is read and dropped before the
#: 413: answering while the client still sends makes its kernel see a reset, and the
#: client an error without our answer.  Bigger ones are refused unread.
DRAIN_BYTES = 1024 * 1024


def error_reply(status: int, code: str, message: str) -> Reply:
    """The JSON error shape the native API uses, for errors no frontend handled."""
    return json_reply(status, {"error": {"code": code, "message": message}})


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class AsgiApp:
    """Dispatches requests to :class:`Route` handlers; every error is JSON, never HTML.

    Routes are static paths, or paths with ``{name}`` segments that match one path
    segment each (their values reach the handler in ``Request.params``).
    """

    def __init__(self, routes: Iterable[Route], max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._static: dict[str, dict[str, Route]] = {}
        self._templates: list[tuple[list[str], dict[str, Route]]] = []
        for route in routes:
            if "{" in route.path:
                parts = route.path.split("/")
                for known, methods in self._templates:
                    if known == parts:
                        methods[route.method] = route
                        break
                else:
                    self._templates.append((parts, {route.method: route}))
            else:
                self._static.setdefault(route.path, {})[route.method] = route
        self._ids = itertools.count(1)

    def _match(self, path: str) -> tuple[dict[str, Route] | None, dict[str, str]]:
        methods = self._static.get(path)
        if methods is not None:
            return methods, {}
        segments = path.split("/")
        for parts, methods in self._templates:
            if len(parts) != len(segments):
                continue
            params: dict[str, str] = {}
            for part, segment in zip(parts, segments, strict=True):
                if part.startswith("{") and part.endswith("}"):
                    if not segment:
                        break
                    params[part[1:-1]] = segment
                elif part != segment:
                    break
            else:
                return methods, params
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # Anything else (websocket) is not served: returning closes it.

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # pushd's lifetime is managed by server.serve(); just acknowledge the events.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, headers: dict[str, str], receive: Receive, limit: int) -> bytes:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + DRAIN_BYTES:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                # Read the rest (up to DRAIN_BYTES) and drop it, so the client gets to
                # read our 413 instead of a connection reset.
                if more and size <= limit + DRAIN_BYTES:
                    chunks.clear()
                    continue
                raise _TooLarge
            chunks.append(chunk)
            if not more:
                return b"".join(chunks)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        methods, params = self._match(path)
        if methods is None:
            reply = error_reply(404, "not_found", f"no such endpoint: {method} {path}")
        elif method not in methods:
            allowed = ", ".join(sorted(methods))
            errors = next(iter(methods.values())).error_reply or error_reply
            reply = errors(405, "method_not_allowed", f"{path} takes {allowed}")
            reply = Reply(reply.status, reply.body, reply.content_type, (("allow", allowed),))
        else:
            route = methods[method]
            limit = route.max_body_bytes or self.max_body_bytes
            headers = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
            }
            try:
                body = await self._read_body(headers, receive, limit)
            except _Disconnected:
                return
            except _TooLarge:
                errors = route.error_reply or error_reply
                reply = errors(413, "body_too_large", f"the body exceeds {limit} bytes")
            else:
                client = scope.get("client")
                request = Request(
                    method=method,
                    path=path,
                    headers=headers,
                    body=body,
                    params=params,
                    client=client[0] if client else None,
                    request_id=f"r{next(self._ids)}",
                )
                try:
                    reply = await route.handler(request)
                except Exception:
                    # The traceback goes to the log (it holds no request data); the
                    # caller gets JSON.
                    log.exception("unexpected error while handling %s %s", method, path)
                    reply = error_reply(
                        500, "internal_error", "pushd failed to handle this request"
                    )
        await send_reply(send, reply)


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [
        (b"content-type", reply.content_type.encode("latin-1")),
        (b"content-length", str(len(reply.body)).encode("latin-1")),
    ]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in reply.headers]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
