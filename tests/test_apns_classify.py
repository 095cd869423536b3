"""Every APNs status and reason of the protocol notes' table §1.4, mapped to an outcome."""

from __future__ import annotations

import json

import pytest

from pushd.model import Delivered, Failed, Outcome, RetryLater, TokenDead
from pushd.upstream.apns.classify import (
    PROVIDER_TOKEN_EXPIRED,
    ProviderTokenExpired,
    classify,
    connection_closing,
    goaway_outcome,
    parse_body,
    parse_retry_after,
)


def body(reason: str, **extra: object) -> bytes:
    return json.dumps({"reason": reason, **extra}).encode()


TABLE: list[tuple[int, str, Outcome]] = [
    (400, "BadDeviceToken", TokenDead("BadDeviceToken", mismatch=True)),
    (400, "DeviceTokenNotForTopic", TokenDead("DeviceTokenNotForTopic", mismatch=True)),
    (410, "ExpiredToken", TokenDead("ExpiredToken")),
    (410, "Unregistered", TokenDead("Unregistered")),  # no timestamp given
    # configuration / credentials: pause the app, keep the tokens
    (400, "TopicDisallowed", Failed("TopicDisallowed", credential=True)),
    (400, "BadTopic", Failed("BadTopic", credential=True)),
    (400, "MissingTopic", Failed("MissingTopic", credential=True)),
    (403, "InvalidProviderToken", Failed("InvalidProviderToken", credential=True)),
    (403, "MissingProviderToken", Failed("MissingProviderToken", credential=True)),
    (403, "BadCertificate", Failed("BadCertificate", credential=True)),
    (403, "BadCertificateEnvironment", Failed("BadCertificateEnvironment", credential=True)),
    (403, "Forbidden", Failed("Forbidden", credential=True)),
    (403, "BadEnvironmentKeyIdInToken", Failed("BadEnvironmentKeyIdInToken", credential=True)),
    (403, "BadEnvironmentKeyInToken", Failed("BadEnvironmentKeyInToken", credential=True)),
    (403, "UnrelatedKeyIdInToken", Failed("UnrelatedKeyIdInToken", credential=True)),
    (403, "SomethingNewFromApple", Failed("SomethingNewFromApple", credential=True)),
    # request built wrongly: fail this message only
    (400, "InvalidPushType", Failed("InvalidPushType")),
    (400, "BadPriority", Failed("BadPriority")),
    (400, "BadExpirationDate", Failed("BadExpirationDate")),
    (400, "BadMessageId", Failed("BadMessageId")),
    (400, "BadCollapseId", Failed("BadCollapseId")),
    (400, "DuplicateHeaders", Failed("DuplicateHeaders")),
    (400, "PayloadEmpty", Failed("PayloadEmpty")),
    (400, "MissingDeviceToken", Failed("MissingDeviceToken")),
    (404, "BadPath", Failed("BadPath")),
    (405, "MethodNotAllowed", Failed("MethodNotAllowed")),
    (413, "PayloadTooLarge", Failed("PayloadTooLarge")),
    (400, "SomethingNewFromApple", Failed("SomethingNewFromApple")),
    # transient
    (400, "IdleTimeout", RetryLater("IdleTimeout")),
    (429, "TooManyRequests", RetryLater("TooManyRequests", kind="device")),
    (
        429,
        "TooManyProviderTokenUpdates",
        RetryLater("TooManyProviderTokenUpdates", kind="throttled"),
    ),
    (429, "SomethingNew", RetryLater("SomethingNew", kind="device")),
    (500, "InternalServerError", RetryLater("InternalServerError")),
    (503, "ServiceUnavailable", RetryLater("ServiceUnavailable")),
    (503, "Shutdown", RetryLater("Shutdown")),
    (502, "BadGateway", RetryLater("BadGateway")),
]


@pytest.mark.parametrize(("status", "reason", "expected"), TABLE)
def test_table(status: int, reason: str, expected: Outcome) -> None:
    assert classify(status, body(reason), None) == expected


def test_success_carries_apns_id() -> None:
    assert classify(200, b"", None, "123e4567-e89b-12d3-a456-426614174000") == Delivered(
        "123e4567-e89b-12d3-a456-426614174000"
    )
    assert classify(200, b"", None) == Delivered(None)


def test_unregistered_with_timestamp() -> None:
    outcome = classify(410, body("Unregistered", timestamp=1_700_000_123_456), None)
    assert outcome == TokenDead("Unregistered", since=1_700_000_123.456)


def test_expired_provider_token_is_a_marker() -> None:
    outcome = classify(403, body("ExpiredProviderToken"), None)
    assert outcome is PROVIDER_TOKEN_EXPIRED
    assert isinstance(outcome, ProviderTokenExpired)


@pytest.mark.parametrize("retry_after", ["30", " 2.5 "])
def test_retry_after_is_honoured(retry_after: str) -> None:
    outcome = classify(429, body("TooManyRequests"), retry_after)
    assert outcome == RetryLater("TooManyRequests", float(retry_after), kind="device")
    outcome = classify(503, body("ServiceUnavailable"), retry_after)
    assert outcome == RetryLater("ServiceUnavailable", float(retry_after))


@pytest.mark.parametrize(
    "value", [None, "", "soon", "-1", "nan", "inf", "Wed, 21 Oct 2015 07:28:00 GMT"]
)
def test_unusable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, RetryLater("HTTP 500")),
        (503, RetryLater("HTTP 503")),
        (599, RetryLater("HTTP 599")),
        (429, RetryLater("HTTP 429", kind="device")),
        (403, Failed("HTTP 403", credential=True)),
        (400, Failed("HTTP 400")),
        (410, Failed("HTTP 410")),  # never delete a token without APNs naming a reason
        (302, Failed("HTTP 302")),
        (204, Delivered(None)),
    ],
)
@pytest.mark.parametrize(
    "raw",
    [b"", b"<html>Bad gateway</html>", b"\xff\xfe", b"[1, 2]", b'{"reason": 7}', b"{", b"null"],
)
def test_bodies_that_are_not_apns_json_never_raise(
    status: int, expected: Outcome, raw: bytes
) -> None:
    assert classify(status, raw, None) == expected


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (b'{"reason":"Unregistered","timestamp":1000}', ("Unregistered", 1.0)),
        (b'{"reason":"Unregistered","timestamp":"1000"}', ("Unregistered", None)),
        (b'{"reason":"Unregistered","timestamp":true}', ("Unregistered", None)),
        (b'{"timestamp":1000}', (None, 1.0)),
        (b"", (None, None)),
    ],
)
def test_parse_body(raw: bytes, parsed: tuple[str | None, float | None]) -> None:
    assert parse_body(raw) == parsed


@pytest.mark.parametrize(
    ("status", "raw", "closing"),
    [
        (503, body("Shutdown"), "Shutdown"),
        (503, body("ServiceUnavailable"), None),
        (500, body("InternalServerError"), None),
        (200, b"", None),
        (503, b"<html>Service Unavailable</html>", None),
    ],
)
def test_connection_closing(status: int, raw: bytes, closing: str | None) -> None:
    """Only ``Shutdown`` sends the client to a new connection (the notes' table)."""
    assert connection_closing(status, raw) == closing


@pytest.mark.parametrize(
    ("reason", "outcome"),
    [
        ("InvalidProviderToken", Failed("InvalidProviderToken", credential=True)),
        ("BadCertificate", Failed("BadCertificate", credential=True)),
        ("ExpiredProviderToken", PROVIDER_TOKEN_EXPIRED),
        ("Shutdown", None),
        ("IdleTimeout", None),
        ("b'garbage'", None),
    ],
)
def test_goaway_outcome(reason: str, outcome: Outcome | ProviderTokenExpired | None) -> None:
    """A GOAWAY's credential reason is what the answer would be; others are resent."""
    assert goaway_outcome(reason) == outcome
