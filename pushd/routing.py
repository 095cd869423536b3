"""Routing: which frontend route serves a method and path, and how its errors read.

Kept apart from the HTTP server (:mod:`pushd.http11`) so that the server only moves
bytes and the rules (404 and 405 in the route's own protocol, one body limit per
route, a handler's exception as a JSON 500 without its details) are one piece.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs

from pushd.frontends.http import ErrorReply, Reply, Request, Route, json_reply
from pushd.store.errors import StoreUnavailable, ValueRefused

log = logging.getLogger(__name__)

#: What a caller is told to wait before trying again while the store is failing.
STORE_RETRY_AFTER_SECONDS = 10


def error_reply(status: int, code: str, message: str) -> Reply:
    """The JSON error shape the native API uses, for errors no frontend handled."""
    return json_reply(status, {"error": {"code": code, "message": message}})


@attrs.frozen
class Found:
    """The route for a request, its ``{name}`` values, and its body limit."""

    route: Route
    params: dict[str, str]
    max_body_bytes: int

    @property
    def errors(self) -> ErrorReply:
        return self.route.error_reply or error_reply


@attrs.frozen
class _Template:
    """A path with ``{name}`` segments: its segments, each a literal or a name (None
    marks the literals in ``names``), and the routes by method."""

    parts: tuple[str, ...]
    names: tuple[str | None, ...]
    methods: dict[str, Route]

    @classmethod
    def parse(cls, path: str, methods: dict[str, Route]) -> _Template:
        parts = tuple(path.split("/"))
        names = tuple(
            part[1:-1] if part.startswith("{") and part.endswith("}") else None for part in parts
        )
        return cls(parts, names, methods)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The ``{name}`` values if ``segments`` (of the same length) match, else None;
        a name never matches an empty segment."""
        params: dict[str, str] = {}
        for part, name, segment in zip(self.parts, self.names, segments, strict=True):
            if name is None:
                if part != segment:
                    return None
            elif not segment:
                return None
            else:
                params[name] = segment
        return params


class Router:
    """Static paths, and paths with ``{name}`` segments matching one segment each."""

    def __init__(self, routes: Iterable[Route], max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self._static: dict[str, dict[str, Route]] = {}
        # Templates by their number of segments, so a path is compared only with those
        # of its own length (most routes are static; a few dozen are templates).
        self._templates: dict[int, list[_Template]] = {}
        by_path: dict[str, dict[str, Route]] = {}
        for route in routes:
            if "{" in route.path:
                by_path.setdefault(route.path, {})[route.method] = route
            else:
                self._static.setdefault(route.path, {})[route.method] = route
        for path, methods in by_path.items():
            template = _Template.parse(path, methods)
            self._templates.setdefault(len(template.parts), []).append(template)

    def _match(self, path: str) -> tuple[dict[str, Route] | None, dict[str, str]]:
        methods = self._static.get(path)
        if methods is not None:
            return methods, {}
        segments = path.split("/")
        for template in self._templates.get(len(segments), ()):
            params = template.match(segments)
            if params is not None:
                return template.methods, params
        return None, {}

    def find(self, method: str, path: str) -> Found | Reply:
        """The route for ``method`` and ``path``, or the 404 or 405 to answer."""
        methods, params = self._match(path)
        if methods is None:
            return error_reply(404, "not_found", f"no such endpoint: {method} {path}")
        route = methods.get(method)
        if route is None:
            allowed = ", ".join(sorted(methods))
            errors = next(iter(methods.values())).error_reply or error_reply
            reply = errors(405, "method_not_allowed", f"{path} takes {allowed}")
            return attrs.evolve(reply, headers=(*reply.headers, ("allow", allowed)))
        return Found(route, params, route.max_body_bytes or self.max_body_bytes)

    @staticmethod
    def too_large(found: Found) -> Reply:
        return found.errors(413, "body_too_large", f"the body exceeds {found.max_body_bytes} bytes")

    @staticmethod
    async def call(found: Found, request: Request) -> Reply:
        """Run the handler; a bug in it is logged with its traceback and answered 500.

        A failing store (:class:`StoreUnavailable`, logged by the store itself) is an
        outage: 503 ``store_unavailable`` in the route's protocol, with Retry-After.

        A value the database cannot hold (:class:`ValueRefused`: a NUL in text on
        PostgreSQL, an integer beyond 64 bits) is the request's fault: 400 in the
        route's protocol, where frontends did not refuse it first.

        The traceback holds no request data (handlers never put content in exception
        messages), and the caller gets JSON, never a page with internals.
        """
        try:
            return await found.route.handler(request)
        except StoreUnavailable as error:
            reply = found.errors(
                503,
                "store_unavailable",
                f"pushd cannot use its store right now ({error.kind}); try again later",
            )
            retry_after = ("retry-after", str(STORE_RETRY_AFTER_SECONDS))
            return attrs.evolve(reply, headers=(*reply.headers, retry_after))
        except ValueRefused as error:  # a value of the request's, refused by the database
            return found.errors(
                400, "invalid_value", f"a value in the request cannot be stored ({error.kind})"
            )
        except Exception:
            # The route's name, not the path: Mattermost's and Rocket.Chat's paths hold
            # their secrets.
            log.exception("unexpected error while handling %s", found.route.name)
            return found.errors(500, "internal_error", "pushd failed to handle this request")
