"""Answers decided but not yet sent, and Google's JSON error bodies."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs

from pushd.simulators.fcm.constants import ERROR_INFO_TYPE
from pushd.simulators.fcm.values import SUCCESS, FcmReceived, FcmReply


def dumps(document: object) -> bytes:
    """A response body."""
    return json.dumps(document, separators=(",", ":")).encode()


@attrs.frozen
class Answer:
    """A response decided, not yet sent; ``record`` fields describe it for the log."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    reply: FcmReply = SUCCESS
    error_code: str | None = None
    #: For a send: what to record once the answer goes out (``at`` is set then).
    received: FcmReceived | None = None


def google_error_body(
    code: int, status: str, message: str, details: Iterable[dict[str, Any]] = ()
) -> bytes:
    """Google's JSON error (``google.rpc.Status`` in an ``error`` member)."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    details = list(details)
    if details:
        error["details"] = details
    return dumps({"error": error})


def json_answer(
    status: int,
    body: bytes,
    *,
    retry_after: int | None = None,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    reply: FcmReply = SUCCESS,
    error_code: str | None = None,
) -> Answer:
    headers = [(b"content-type", b"application/json; charset=UTF-8"), *extra]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return Answer(status, body, tuple(headers), reply, error_code)


def error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": ERROR_INFO_TYPE,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {
            "service": "fcm.googleapis.com",
            "method": "google.firebase.fcm.v1.FcmService.SendMessage",
        },
    }


def oauth_error(status: int, error: str, description: str, reply: FcmReply = SUCCESS) -> Answer:
    body = dumps({"error": error, "error_description": description})
    return json_answer(status, body, retry_after=reply.retry_after, reply=reply, error_code=error)
