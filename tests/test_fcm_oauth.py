"""OAuth access tokens: the RS256 assertion, and single-flight refreshes against the simulator.

The assertion is checked with ``cryptography`` directly; everything else talks HTTPS to
the FCM simulator's token endpoint, which counts the requests it gets.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pushd.simulators.fcm import FcmReply, FcmSimulator, make_service_account
from pushd.upstream.fcm.oauth import (
    ASSERTION_LIFETIME,
    REFRESH_MARGIN,
    AccessTokens,
    TokenUnavailable,
    failure_backoff,
    make_assertion,
    parse_token_response,
)
from pushd.upstream.fcm.service_account import load_service_account
from pushd.upstream.fcm.settings import OAUTH_SCOPE, ServiceAccount

PROJECT = "chat-app-1234"


@pytest.fixture
def account(fcm_sim: FcmSimulator, fcm_key: rsa.RSAPrivateKey, tmp_path: Path) -> ServiceAccount:
    path = tmp_path / "service-account.json"
    make_service_account(path, PROJECT, fcm_sim.token_url, key=fcm_key)
    loaded = load_service_account(path.read_bytes())
    fcm_sim.add_account(loaded.client_email, fcm_key.public_key(), PROJECT)
    return loaded


@pytest.fixture
async def http(ca: trustme.CA) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with httpx.AsyncClient(verify=context) as client:
        yield client


class Clock:
    """Wall-clock time plus an offset a test moves (the simulator checks ``iat`` against
    real time, so tests start in the past and move towards now)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- the assertion ---------------------------------------------------------------------


def test_assertion_is_rs256_and_verifies(fcm_key: rsa.RSAPrivateKey) -> None:
    account = ServiceAccount(
        project_id=PROJECT,
        client_email="pushd@example.iam.gserviceaccount.com",
        private_key_id="kid-123",
        private_key_pem=b"unused",
        token_uri="https://oauth2.googleapis.com/token",
    )
    jwt = make_assertion(fcm_key, account, 1_700_000_000)
    header_b64, claims_b64, signature_b64 = jwt.split(".")
    assert "=" not in jwt
    assert json.loads(b64decode(header_b64)) == {"alg": "RS256", "typ": "JWT", "kid": "kid-123"}
    assert json.loads(b64decode(claims_b64)) == {
        "iss": "pushd@example.iam.gserviceaccount.com",
        "scope": OAUTH_SCOPE,
        "aud": "https://oauth2.googleapis.com/token",
        "iat": 1_700_000_000,
        "exp": 1_700_000_000 + ASSERTION_LIFETIME,
    }
    fcm_key.public_key().verify(
        b64decode(signature_b64),
        f"{header_b64}.{claims_b64}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


# --- the token endpoint's answer -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"access_token": "ya29.x", "expires_in": 3599, "token_type": "Bearer"},
         ("ya29.x", 3599.0)),
        (200, {"access_token": "ya29.x"}, ("ya29.x", 3600.0)),
        (200, {"access_token": "ya29.x", "expires_in": "120"}, ("ya29.x", 120.0)),
    ],
)  # fmt: skip
def test_token_answer(status: int, body: dict[str, Any], expected: tuple[str, float]) -> None:
    assert parse_token_response(status, json.dumps(body).encode()) == expected


@pytest.mark.parametrize(
    ("status", "body", "reason", "credential"),
    [
        (200, b"", "no usable access_token", False),
        (200, b"<html>", "no usable access_token", False),
        (200, b'{"access_token": ""}', "no usable access_token", False),
        (200, b'{"access_token": "a b"}', "no usable access_token", False),
        (200, b'{"access_token": "a\\r\\nx: y"}', "no usable access_token", False),
        (200, b'{"access_token": 5}', "no usable access_token", False),
        (200, b'{"access_token": "t", "expires_in": 0}', "expires_in", False),
        (200, b'{"access_token": "t", "expires_in": true}', "expires_in", False),
        (200, b'{"access_token": "t", "expires_in": "soon"}', "expires_in", False),
        (400, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}',
         "token endpoint: HTTP 400 invalid_grant", True),
        (401, b'{"error": "invalid_client"}', "HTTP 401 invalid_client", True),
        (400, b'{"error": "invalid_request"}', "HTTP 400 invalid_request", False),
        (503, b'{"error": "temporarily_unavailable"}', "HTTP 503 temporarily_unavailable",
         False),
        (500, b'{"error": "invalid_grant"}', "HTTP 500 invalid_grant", False),
        (502, b"<html>Bad Gateway</html>", "token endpoint: HTTP 502", False),
    ],
)  # fmt: skip
def test_token_answer_refused(status: int, body: bytes, reason: str, credential: bool) -> None:
    with pytest.raises(TokenUnavailable) as info:
        parse_token_response(status, body)
    assert reason in info.value.reason
    assert info.value.credential is credential
    assert "Signature" not in info.value.reason  # descriptions are not echoed


def test_failure_backoff_grows_and_is_capped() -> None:
    assert [failure_backoff(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert failure_backoff(100) == 30.0


# --- against the simulator -------------------------------------------------------------


async def test_single_flight(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    tokens = AccessTokens(account, http)
    results: list[str] = []

    async def get() -> None:
        results.append(await tokens.get())

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(get)
    assert len(results) == 50
    assert len(set(results)) == 1
    assert results[0].startswith("ya29.")
    assert fcm_sim.token_requests == 1
    assert tokens.requests == 1
    # And it is reused afterwards.
    assert await tokens.get() == results[0]
    assert fcm_sim.token_requests == 1


async def test_refreshed_before_expiry_once(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    clock = Clock(offset=-3400)  # the first token, made "3400 s ago", expires in 199 s
    tokens = AccessTokens(account, http, clock=clock)
    first = await tokens.get()
    clock.offset = -3599 + REFRESH_MARGIN + 300  # not yet inside the margin
    assert await tokens.get() == first
    assert fcm_sim.token_requests == 1

    clock.offset = 0.0  # inside the margin, still usable: one refresh for everyone
    results: list[str] = []

    async def get() -> None:
        results.append(await tokens.get())

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(get)
    assert fcm_sim.token_requests == 2
    second = await tokens.get()
    assert second != first
    # Callers arriving while the refresh ran kept the still-valid old token.
    assert set(results) <= {first, second}
    assert results.count(second) >= 1


async def test_invalidate_only_the_current_token(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    tokens = AccessTokens(account, http)
    first = await tokens.get()
    tokens.invalidate("ya29.some-older-token")
    assert await tokens.get() == first
    tokens.invalidate(first)
    second = await tokens.get()
    assert second != first
    tokens.invalidate(first)  # a late 401 for the old token changes nothing
    assert await tokens.get() == second
    assert fcm_sim.token_requests == 2


async def test_endpoint_down_fails_fast_then_recovers(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    tokens = AccessTokens(account, http)
    fcm_sim.token_endpoint_down = True
    with pytest.raises(TokenUnavailable) as info:
        await tokens.get()
    assert info.value.reason == "token endpoint: HTTP 503 temporarily_unavailable"
    assert not info.value.credential
    assert info.value.retry_after == pytest.approx(1.0, abs=0.1)
    # Within the backoff, callers fail without asking again: a dead endpoint is not hammered.
    for _ in range(20):
        with pytest.raises(TokenUnavailable):
            await tokens.get()
    assert fcm_sim.token_requests == 1

    fcm_sim.token_endpoint_down = False
    await trio.sleep(failure_backoff(1))
    assert (await tokens.get()).startswith("ya29.")
    assert fcm_sim.token_requests == 2


async def test_refused_account_is_a_credential_failure(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    fcm_sim.script_token_endpoint(FcmReply(status=400, message="Invalid JWT Signature."))
    with pytest.raises(TokenUnavailable) as info:
        await tokens_for(account, http).get()
    assert info.value.credential
    assert info.value.reason == "token endpoint: HTTP 400 invalid_grant"


async def test_unknown_account_is_refused_by_the_simulator(
    fcm_sim: FcmSimulator, fcm_key: rsa.RSAPrivateKey, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    path = tmp_path / "stranger.json"
    make_service_account(path, PROJECT, fcm_sim.token_url, "stranger@x.test", key=fcm_key)
    with pytest.raises(TokenUnavailable) as info:
        await tokens_for(load_service_account(path.read_bytes()), http).get()
    assert info.value.credential


async def test_slow_endpoint_times_out(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    fcm_sim.script_token_endpoint(FcmReply(status=503, delay=2.0))
    tokens = AccessTokens(account, http, timeout=0.2)
    with trio.fail_after(1.5):
        with pytest.raises(TokenUnavailable, match="timeout"):
            await tokens.get()


async def test_failed_refresh_keeps_a_usable_token(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    clock = Clock(offset=-3400)
    tokens = AccessTokens(account, http, clock=clock)
    first = await tokens.get()
    clock.offset = 0.0  # 199 s left: refresh due, but the token still works
    fcm_sim.token_endpoint_down = True
    assert await tokens.get() == first
    assert await tokens.get() == first  # within the backoff: no second request
    assert fcm_sim.token_requests == 2


async def test_cancelled_refresh_hands_over(
    fcm_sim: FcmSimulator, account: ServiceAccount, http: httpx.AsyncClient
) -> None:
    fcm_sim.script_token_endpoint(FcmReply(status=503, delay=5.0))
    tokens = AccessTokens(account, http)
    got: list[str] = []

    async def waiter() -> None:
        got.append(await tokens.get())

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(0.3):  # the first caller gives up mid-request ...
            nursery.start_soon(waiter)
            await tokens.get()
    # ... and the waiter made its own (successful) request instead of hanging.
    assert len(got) == 1
    assert fcm_sim.token_requests == 2


def tokens_for(account: ServiceAccount, http: httpx.AsyncClient) -> AccessTokens:
    return AccessTokens(account, http)
