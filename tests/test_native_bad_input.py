"""Bad input to the native API: a 4xx JSON error naming the field, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from pushd.simulators.apns import ApnsSimulator
from tests.conftest import Pushd, token


def error_of(response: Any) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    return body["error"]  # type: ignore[no-any-return]


async def devices(pushd: Pushd, user: str) -> list[Any]:
    response = await pushd.post("/v1/users/devices", {"user": user})
    return response.json()["devices"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"user": "u", "token": "xyz" * 30, "app": "chat"}, "token", "invalid_token"),
        ({"user": "u", "token": "ab" * 20, "app": "chat"}, "token", "invalid_token"),
        ({"user": "u", "token": "a" * 65, "app": "chat"}, "token", "invalid_token"),
        ({"user": "u", "token": token(1), "app": "nope"}, "app", "unknown_app"),
        ({"user": 5, "token": token(1), "app": "chat"}, "user", "invalid_request"),
        ({"user": "", "token": token(1), "app": "chat"}, "user", "invalid_request"),
        ({"user": "x" * 300, "token": token(1), "app": "chat"}, "user", "invalid_request"),
        ({"user": "a\u0000b", "token": token(1), "app": "chat"}, "user", "invalid_request"),
        ({"user": "a\nb", "token": token(1), "app": "chat"}, "user", "invalid_request"),
        ({"token": token(1), "app": "chat"}, "user", "invalid_request"),
        ({"user": "u", "token": token(1), "app": "chat", "extra": 1}, "extra", "invalid_request"),
        ({"user": "u", "token": [token(1)], "app": "chat"}, "token", "invalid_request"),
    ],
)
async def test_bad_registration(pushd: Pushd, body: dict[str, Any], field: str, code: str) -> None:
    error = error_of(await pushd.post("/v1/devices", body))
    assert error["field"] == field
    assert error["code"] == code
    assert await devices(pushd, "u") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user": "u", "badge": "3"}, "badge"),
        ({"user": "u", "badge": -1}, "badge"),
        ({"user": "u", "push_type": "shout"}, "push_type"),
        ({"user": "u", "priority": 7}, "priority"),
        ({"user": "u", "push_type": "background", "priority": 10}, "priority"),
        ({"user": "u", "ttl": -5}, "ttl"),
        ({"user": "u", "ttl": 28 * 24 * 3600 + 1}, "ttl"),
        ({"user": "u", "ttl": 10**400}, "ttl"),
        ({"user": "u", "collapse_id": "c" * 65}, "collapse_id"),
        ({"user": "u", "data": {"aps": {}}}, "data.aps"),
        ({"user": "u", "data": [1]}, "data"),
        ({"user": "u", "alert": 5}, "alert"),
        ({"user": "u", "alert": {"title": 1}}, "alert.title"),
        ({"user": "u", "alert": {"colour": "red"}}, "alert.colour"),
        ({"user": "u", "app": "nope"}, "app"),
        ({"alert": "no target"}, "user"),
        ({"user": "u", "tokens": [token(1)]}, "user"),
        ({"tokens": []}, "tokens"),
        ({"tokens": ["not a token"]}, "tokens[0]"),
        ({"user": "u", "content_available": "yes"}, "content_available"),
    ],
)
async def test_bad_send(
    pushd: Pushd, simulator: ApnsSimulator, body: dict[str, Any], field: str
) -> None:
    await pushd.register("u", token(1))
    error = error_of(await pushd.post("/v1/notifications", body))
    assert error["field"] == field
    assert simulator.received == []


async def test_payload_over_the_apns_limit(pushd: Pushd, simulator: ApnsSimulator) -> None:
    await pushd.register("u", token(1))
    response = await pushd.post("/v1/notifications", {"user": "u", "alert": "x" * 4100})
    assert response.status_code == 413
    assert error_of(response)["field"] == "payload"
    # VoIP pushes may be larger (5120 bytes).
    ok = await pushd.post(
        "/v1/notifications", {"user": "u", "push_type": "voip", "data": {"x": "y" * 4500}}
    )
    assert ok.status_code == 200, ok.text
    assert simulator.received[0].push_type == "voip"
    assert simulator.received[0].topic == "org.example.chat.voip"


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b"\xff\xfe",
        b"[1,2]",
        b"null",
        b'"string"',
        b"",
        b"[" * 50_000,
        b'{"user": "u", "token": "\\ud800", "app": "chat"}',
    ],
)
async def test_malformed_json(pushd: Pushd, raw: bytes) -> None:
    response = await pushd.client.post(pushd.url + "/v1/devices", content=raw, headers=pushd.auth())
    error = error_of(response)
    assert error["code"] in ("malformed_json", "invalid_request")


async def test_oversized_body(pushd: Pushd) -> None:
    body = b'{"user":"u","token":"' + b"a" * 100_000 + b'","app":"chat"}'
    response = await pushd.client.post(
        pushd.url + "/v1/devices", content=body, headers=pushd.auth()
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"
    assert await devices(pushd, "u") == []


async def test_unknown_route_and_method(pushd: Pushd) -> None:
    assert error_of(await pushd.client.get(pushd.url + "/v1/nothing"))["code"] == "not_found"
    response = await pushd.client.get(pushd.url + "/v1/notifications", headers=pushd.auth())
    assert response.status_code == 405
    error_of(response)


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer wrong-key", "Basic dXNlcjpwYXNz", "Token abc"]
)
async def test_missing_or_wrong_key_is_401(pushd: Pushd, header: str | None) -> None:
    headers = {} if header is None else {"authorization": header}
    response = await pushd.client.post(
        pushd.url + "/v1/devices",
        json={"user": "u", "token": token(1), "app": "chat"},
        headers=headers,
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "unauthorized"
    assert await devices(pushd, "u") == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"user": "u", "badge": ' + b"9" * 5000 + b"}",
        b'{"user": "u", "badge": 1e400}',
        b'{"user": "u", "alert": "\\ud800"}',
        b'{"user": "u", "data": {"k": "\\udfff"}}',
        b'{"user": "\\ud800"}',
    ],
)
async def test_hostile_send_bodies(pushd: Pushd, simulator: ApnsSimulator, raw: bytes) -> None:
    await pushd.register("u", token(1))
    response = await pushd.client.post(
        pushd.url + "/v1/notifications", content=raw, headers=pushd.auth()
    )
    error_of(response)
    assert simulator.received == []
