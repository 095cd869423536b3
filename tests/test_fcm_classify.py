"""Every FCM status and error code of the protocol notes' table §2.3, mapped to an outcome."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from pushd.model import Delivered, Failed, Outcome, RetryLater, TokenDead
from pushd.upstream.fcm.classify import (
    UNAUTHENTICATED,
    FcmErrorBody,
    Unauthenticated,
    classify,
    parse_error,
    parse_retry_after,
)

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
NOW = 1_700_000_000.0


def error(
    code: int,
    status: str | None,
    error_code: str | None = None,
    message: str = "An error",
    fields: tuple[str, ...] = (),
) -> bytes:
    details: list[dict[str, object]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR, "errorCode": error_code})
    if fields:
        details.append(
            {
                "@type": BAD_REQUEST,
                "fieldViolations": [{"field": f, "description": "bad"} for f in fields],
            }
        )
    body: dict[str, object] = {"code": code, "message": message, "details": details}
    if status is not None:
        body["status"] = status
    return json.dumps({"error": body}).encode()


BAD_TOKEN_MESSAGE = "The registration token is not a valid FCM registration token"

#: (status, body, Retry-After, expected outcome)
TABLE: list[tuple[int, bytes, str | None, Outcome | Unauthenticated]] = [
    # success
    (200, b'{"name":"projects/p/messages/0:1500415314455276%31bd"}', None,
     Delivered("projects/p/messages/0:1500415314455276%31bd")),
    (200, b"", None, Delivered(None)),
    (200, b"not json", None, Delivered(None)),
    # the token is gone
    (404, error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."), None,
     TokenDead("UNREGISTERED")),
    (403, error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"), None,
     TokenDead("SENDER_ID_MISMATCH", mismatch=True)),
    # INVALID_ARGUMENT: the token form deletes the token ...
    (400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", BAD_TOKEN_MESSAGE), None,
     TokenDead("INVALID_ARGUMENT")),
    (400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Invalid registration token"), None,
     TokenDead("INVALID_ARGUMENT")),
    (400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "bad", fields=("message.token",)),
     None, TokenDead("INVALID_ARGUMENT")),
    (400, error(400, "INVALID_ARGUMENT", None, BAD_TOKEN_MESSAGE), None,
     TokenDead("INVALID_ARGUMENT")),
    # ... the payload form fails the one message
    (400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big"), None,
     Failed("INVALID_ARGUMENT")),
    (400, error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                "Invalid value at 'message.data[0].value'", fields=("message.data[0].value",)),
     None, Failed("INVALID_ARGUMENT (message.data[0].value)")),
    (400, error(400, "INVALID_ARGUMENT", None, "Invalid JSON payload received."), None,
     Failed("INVALID_ARGUMENT")),
    # quota: at least a minute, longer if FCM says so
    (429, error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), None,
     RetryLater("QUOTA_EXCEEDED", 60.0, kind="throttled")),
    (429, error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "5",
     RetryLater("QUOTA_EXCEEDED", 60.0, kind="throttled")),
    (429, error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "120",
     RetryLater("QUOTA_EXCEEDED", 120.0, kind="throttled")),
    (429, error(429, "RESOURCE_EXHAUSTED"), "3",
     RetryLater("QUOTA_EXCEEDED", 60.0, kind="throttled")),
    (429, b"", None, RetryLater("QUOTA_EXCEEDED", 60.0, kind="throttled")),
    # transient on Google's side
    (503, error(503, "UNAVAILABLE", "UNAVAILABLE"), "10", RetryLater("UNAVAILABLE", 10.0)),
    (503, error(503, "UNAVAILABLE", "UNAVAILABLE"), None, RetryLater("UNAVAILABLE")),
    (500, error(500, "INTERNAL", "INTERNAL"), "2", RetryLater("INTERNAL", 2.0)),
    (500, error(500, "INTERNAL", "INTERNAL"), None, RetryLater("INTERNAL")),
    (503, error(503, "UNAVAILABLE"), "7", RetryLater("UNAVAILABLE", 7.0)),
    (502, b"<html>Bad Gateway</html>", None, RetryLater("HTTP 502")),
    (504, b"", "1", RetryLater("HTTP 504", 1.0)),
    (500, error(500, "INTERNAL", "UNSPECIFIED_ERROR"), None, RetryLater("UNSPECIFIED_ERROR")),
    # Firebase refused the app's APNs credentials: fail that message, keep its token,
    # never pause the app (its Android devices are served)
    (401, error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"), None,
     Failed("THIRD_PARTY_AUTH_ERROR: Firebase refused the app's APNs credentials; token kept")),
    (401, error(401, "UNAUTHENTICATED", "APNS_AUTH_ERROR"), None,
     Failed("APNS_AUTH_ERROR: Firebase refused the app's APNs credentials; token kept")),
    # credentials: pause the app, keep the tokens
    (403, error(403, "PERMISSION_DENIED", None, "Permission denied"), None,
     Failed("PERMISSION_DENIED", credential=True)),
    (403, b"Forbidden", None, Failed("HTTP 403", credential=True)),
    (401, error(401, "PERMISSION_DENIED"), None, Failed("PERMISSION_DENIED", credential=True)),
    # our access token: refresh once and resend
    (401, error(401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials."),
     None, UNAUTHENTICATED),
    (401, b"", None, UNAUTHENTICATED),
    (401, b"<html>", None, UNAUTHENTICATED),
    # unknown: least harm
    (404, error(404, "NOT_FOUND", None, "Requested entity was not found."), None,
     Failed("NOT_FOUND")),
    (400, b"<html>Bad Request</html>", None, Failed("HTTP 400")),
    (413, b"", None, Failed("HTTP 413")),
    (400, error(400, "FAILED_PRECONDITION", "SOMETHING_NEW"), None, Failed("SOMETHING_NEW")),
    (503, error(503, "UNAVAILABLE", "SOMETHING_NEW"), "4", RetryLater("SOMETHING_NEW", 4.0)),
    (302, b"", None, Failed("HTTP 302")),
    (204, b"", None, Delivered(None)),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "retry_after", "expected"), TABLE)
def test_table(
    status: int, body: bytes, retry_after: str | None, expected: Outcome | Unauthenticated
) -> None:
    assert classify(status, body, retry_after, now=NOW) == expected


def test_unauthenticated_is_a_marker_not_an_outcome() -> None:
    assert isinstance(UNAUTHENTICATED, Unauthenticated)
    assert classify(401, b"", None) is UNAUTHENTICATED


def test_quota_honours_an_http_date() -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    assert classify(429, b"", when, now=NOW) == RetryLater("QUOTA_EXCEEDED", 90.0, kind="throttled")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        ("30", 30.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-1", None),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (format_datetime(datetime.fromtimestamp(NOW + 45, UTC), usegmt=True), 45.0),
        ("Tue, 14 Nov 2023 22:14:05 GMT", 45.0),
        (format_datetime(datetime.fromtimestamp(NOW - 45, UTC), usegmt=True), 0.0),
        ("Tue, 14 Nov 2023 22:14:05 -0000", None),  # no zone: not an HTTP-date
        ("Tue, 99 Nov 2023 22:14:05 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"error"',
        b"{",
        b"\xff\xfe",
        b'{"error": "boom"}',
        b'{"error": {"details": "x", "status": 5, "message": []}}',
        b'{"error": {"details": [1, null, {"@type": 3}]}}',
        b'{"error": {"details": [{"@type": "' + BAD_REQUEST.encode() + b'", '
        b'"fieldViolations": [1, {"field": 2}, "x"]}]}}',
        b"[" * 100_000,
    ],
)
def test_malformed_bodies_never_raise(body: bytes) -> None:
    assert parse_error(body).error_code is None
    for status in (400, 401, 403, 404, 429, 500, 503):
        classify(status, body, None, now=NOW)


def test_parse_error_reads_all_parts() -> None:
    body = error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "m", fields=("a", "b"))
    assert parse_error(body) == FcmErrorBody(
        status="INVALID_ARGUMENT", message="m", error_code="INVALID_ARGUMENT", fields=("a", "b")
    )


def test_payload_failure_reason_does_not_quote_the_message() -> None:
    body = error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "value 'secret' is invalid")
    outcome = classify(400, body, None)
    assert isinstance(outcome, Failed)
    assert "secret" not in outcome.reason


@pytest.mark.parametrize(
    "body",
    [
        b'{"name":"projects/p/messages/0:15%31bd"}',  # the simulator's shape
        b'{\n  "name": "projects/p/messages/0:1500415314455276%31bd1c96"\n}\n',  # Google's
        b'{"name":"a\\u0041b"}',  # an escape: the JSON parser's path
        b'{"name":"x","extra":1}',
        b'{"name":""}',
    ],
)
def test_success_body_read_without_the_parser_says_what_json_says(body: bytes) -> None:
    assert classify(200, body) == Delivered(json.loads(body)["name"])
