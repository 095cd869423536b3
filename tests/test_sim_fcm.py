"""The FCM simulator, exercised over real TLS sockets with httpx (HTTP/2 unless noted).

Assertions are signed here with ``cryptography`` (RS256 = PKCS#1 v1.5 over SHA-256), so
the simulator's verification is checked against an independent signer.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from subprocess import PIPE
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel
import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pushd.simulators import cli
from pushd.simulators.fcm import (
    FCM_ERROR_TYPE,
    JWT_BEARER_GRANT,
    MAX_PAYLOAD,
    FcmReply,
    FcmSimulator,
    configure_alpn,
    make_service_account,
    payload_size,
)
from pushd.upstream.fcm.settings import OAUTH_SCOPE

#: How long a test may wait for a ``pushd simulate`` child process.
SUBPROCESS_DEADLINE = 30

PROJECT = "chat-app-1234"
OTHER_PROJECT = "someone-else"
EMAIL = f"pushd@{PROJECT}.iam.gserviceaccount.com"
TOKEN = "cXyZ123:APA91bH" + "a" * 40
TOKEN2 = "dAbC456:APA91bH" + "b" * 40
TIMEOUT = 1.5
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
NAME_RE = re.compile(rf"projects/{PROJECT}/messages/0:\d+%[0-9a-f]{{16}}")

Poster = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """One key for the whole session: 2048-bit generation is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_assertion(
    key: rsa.RSAPrivateKey,
    aud: str,
    *,
    iss: str = EMAIL,
    scope: str = OAUTH_SCOPE,
    iat: float | None = None,
    lifetime: float = 3600,
    alg: str = "RS256",
) -> str:
    """A JWT-bearer assertion as google-auth builds one."""
    now = int(time.time() if iat is None else iat)
    header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "0123abcd"}).encode())
    claims = {"iss": iss, "scope": scope, "aud": aud, "iat": now, "exp": int(now + lifetime)}
    body = _b64(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{body}.{_b64(signature)}"


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return configure_alpn(ctx)


@pytest.fixture
async def sim(
    nursery: trio.Nursery, server_ctx: ssl.SSLContext, rsa_key: rsa.RSAPrivateKey
) -> FcmSimulator:
    simulator = FcmSimulator()
    simulator.add_account(EMAIL, rsa_key.public_key(), PROJECT)
    await nursery.start(simulator.serve, server_ctx)
    return simulator


@pytest.fixture
async def client(client_ctx: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(http2=True, verify=client_ctx, timeout=TIMEOUT) as c:
        yield c


async def request_token(
    client: httpx.AsyncClient, sim: FcmSimulator, assertion: str | None = None, **form: str
) -> httpx.Response:
    data = {"grant_type": JWT_BEARER_GRANT, **form}
    if assertion is not None:
        data["assertion"] = assertion
    return await client.post(sim.token_url, data=data)


@pytest.fixture
async def access_token(
    sim: FcmSimulator, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> str:
    r = await request_token(client, sim, make_assertion(rsa_key, sim.token_url))
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


@pytest.fixture
def post(sim: FcmSimulator, client: httpx.AsyncClient, access_token: str) -> Poster:
    """POST a send body (a ``message`` dict, or ``raw`` bytes) with a valid token."""

    async def send(
        message: dict[str, Any] | None = None,
        *,
        project: str = PROJECT,
        token: str | None = access_token,
        raw: bytes | None = None,
        **top: Any,
    ) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        content = raw if raw is not None else json.dumps({"message": message, **top}).encode()
        url = f"{sim.base_url}/v1/projects/{project}/messages:send"
        with trio.fail_after(TIMEOUT):
            return await client.post(url, content=content, headers=headers)

    return send


def msg(token: str = TOKEN, **fields: Any) -> dict[str, Any]:
    return {"token": token, "data": {"room": "!abc", "unread": "2"}, **fields}


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["code"] == r.status_code
    assert isinstance(error["message"], str) and error["message"]
    return error


def fcm_code(r: httpx.Response) -> str | None:
    for detail in error_of(r).get("details", []):
        if detail["@type"] == FCM_ERROR_TYPE:
            code: str = detail["errorCode"]
            return code
    return None


def field_violations(r: httpx.Response) -> list[str]:
    fields = []
    for detail in error_of(r).get("details", []):
        if detail["@type"] == BAD_REQUEST_TYPE:
            fields += [v.get("field", "") for v in detail["fieldViolations"]]
    return fields


# --- token endpoint --------------------------------------------------------------------


async def test_token_grant(
    sim: FcmSimulator, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    with trio.fail_after(TIMEOUT):
        r = await request_token(client, sim, make_assertion(rsa_key, sim.token_url))
    assert r.status_code == 200
    assert r.http_version == "HTTP/2"
    body = r.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["expires_in"] == 3599 and body["token_type"] == "Bearer"
    assert sim.tokens_issued == 1 and sim.token_requests == 1
    assert sim.token_url == f"https://127.0.0.1:{sim.port}/token"


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("bad signature", "invalid_grant"),
        ("wrong scope", "invalid_scope"),
        ("wrong aud", "invalid_grant"),
        ("too long-lived", "invalid_grant"),
        ("expired", "invalid_grant"),
        ("iat in the future", "invalid_grant"),
        ("unknown iss", "invalid_grant"),
        ("alg HS256", "invalid_grant"),
        ("not a JWT", "invalid_grant"),
    ],
)
async def test_token_rejections(
    sim: FcmSimulator,
    client: httpx.AsyncClient,
    rsa_key: rsa.RSAPrivateKey,
    case: str,
    error: str,
) -> None:
    aud = sim.token_url
    assertion = {
        "bad signature": make_assertion(rsa_key, aud)[:-6] + "AAAAAA",
        "wrong scope": make_assertion(
            rsa_key, aud, scope="https://www.googleapis.com/auth/cloud-platform"
        ),
        "wrong aud": make_assertion(rsa_key, "https://oauth2.googleapis.com/token"),
        "too long-lived": make_assertion(rsa_key, aud, lifetime=3601),
        "expired": make_assertion(rsa_key, aud, iat=time.time() - 4000),
        "iat in the future": make_assertion(rsa_key, aud, iat=time.time() + 600),
        "unknown iss": make_assertion(rsa_key, aud, iss="other@x.iam.gserviceaccount.com"),
        "alg HS256": make_assertion(rsa_key, aud, alg="HS256"),
        "not a JWT": "abc.def",
    }[case]
    with trio.fail_after(TIMEOUT):
        r = await request_token(client, sim, assertion)
    assert r.status_code == 400
    body = r.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert sim.tokens_issued == 0


async def test_token_form_errors(
    sim: FcmSimulator, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    with trio.fail_after(TIMEOUT):
        r = await client.post(sim.token_url, data={"assertion": "x.y.z"})
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
        r = await request_token(client, sim, "x.y.z", grant_type="client_credentials")
        assert (r.status_code, r.json()["error"]) == (400, "unsupported_grant_type")
        r = await request_token(client, sim)
        assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


async def test_accept_any_assertion_checks_claims_not_signature(
    nursery: trio.Nursery,
    server_ctx: ssl.SSLContext,
    client: httpx.AsyncClient,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    sim = FcmSimulator(accept_any_assertion=True)
    await nursery.start(sim.serve, server_ctx)
    with trio.fail_after(TIMEOUT):
        forged = make_assertion(rsa_key, sim.token_url, iss="anyone@x.iam.gserviceaccount.com")
        r = await request_token(client, sim, forged[:-6] + "AAAAAA")
        assert r.status_code == 200
        r = await request_token(client, sim, make_assertion(rsa_key, sim.token_url, lifetime=7200))
        assert r.status_code == 400


async def test_token_endpoint_down_and_scripted(
    sim: FcmSimulator, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    assertion = make_assertion(rsa_key, sim.token_url)
    with trio.fail_after(TIMEOUT):
        sim.token_endpoint_down = True
        r = await request_token(client, sim, assertion)
        assert (r.status_code, r.json()["error"]) == (503, "temporarily_unavailable")
        sim.token_endpoint_down = False
        sim.script_token_endpoint(FcmReply(status=503, retry_after=7), FcmReply(status=500))
        r = await request_token(client, sim, assertion)
        assert (r.status_code, r.headers["retry-after"]) == (503, "7")
        r = await request_token(client, sim, assertion)
        assert r.status_code == 500
        r = await request_token(client, sim, assertion)
        assert r.status_code == 200
    assert sim.tokens_issued == 1


async def test_token_lifetime_is_reported(
    nursery: trio.Nursery,
    server_ctx: ssl.SSLContext,
    client: httpx.AsyncClient,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    sim = FcmSimulator(token_lifetime=120)
    sim.add_account(EMAIL, rsa_key.public_key(), PROJECT)
    await nursery.start(sim.serve, server_ctx)
    with trio.fail_after(TIMEOUT):
        r = await request_token(client, sim, make_assertion(rsa_key, sim.token_url))
    assert r.json()["expires_in"] == 120


# --- send: success ---------------------------------------------------------------------


async def test_send_success_over_http2(sim: FcmSimulator, post: Poster) -> None:
    message = msg(
        notification={"title": "Hi", "body": "there"},
        android={"priority": "high", "ttl": "3600s", "collapse_key": "room"},
        apns={"headers": {"apns-priority": "10"}, "payload": {"aps": {"mutable-content": 1}}},
    )
    r = await post(message)
    assert r.status_code == 200, r.text
    assert r.http_version == "HTTP/2"
    assert set(r.json()) == {"name"} and NAME_RE.fullmatch(r.json()["name"])
    (received,) = sim.received
    assert (received.project_id, received.token, received.status) == (PROJECT, TOKEN, 200)
    assert received.error_code is None and received.message == message
    assert received.size == payload_size(message) == len("room!abcunread2titleHibodythere")
    assert sim.http_versions["2"] >= 2


async def test_send_over_http11(
    sim: FcmSimulator, client_ctx: ssl.SSLContext, rsa_key: rsa.RSAPrivateKey
) -> None:
    async with httpx.AsyncClient(http2=False, verify=client_ctx, timeout=TIMEOUT) as c:
        with trio.fail_after(TIMEOUT):
            r = await request_token(c, sim, make_assertion(rsa_key, sim.token_url))
            bearer = r.json()["access_token"]
            r = await c.post(
                f"{sim.base_url}/v1/projects/{PROJECT}/messages:send",
                json={"message": msg()},
                headers={"authorization": f"Bearer {bearer}"},
            )
    assert (r.status_code, r.http_version) == (200, "HTTP/1.1")


async def test_names_are_unique_and_many_streams_share_a_connection(
    sim: FcmSimulator, post: Poster
) -> None:
    names: list[str] = []

    async def one(i: int) -> None:
        r = await post(msg(token=f"{TOKEN}{i}"))
        assert r.status_code == 200
        names.append(r.json()["name"])

    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(one, i)
    assert len(set(names)) == 50
    assert sim.connections_opened == 1


async def test_validate_only(sim: FcmSimulator, post: Poster) -> None:
    r = await post(msg(), validate_only=True)
    assert r.json() == {"name": f"projects/{PROJECT}/messages/fake_message_id"}
    assert sim.received[0].validate_only


@pytest.mark.parametrize("priority", ["high", "HIGH", "normal", "NORMAL"])
async def test_priority_any_case(post: Poster, priority: str) -> None:
    r = await post(msg(android={"priority": priority, "ttl": "2419200s"}))
    assert r.status_code == 200, r.text


async def test_topic_message(sim: FcmSimulator, post: Poster) -> None:
    r = await post({"topic": "news", "data": {"a": "b"}})
    assert r.status_code == 200
    assert sim.received[0].token is None


# --- send: validation ------------------------------------------------------------------

BIG = "x" * (MAX_PAYLOAD - 3)  # key "big" + this = one byte over with nothing else


@pytest.mark.parametrize(
    ("message", "code", "field"),
    [
        ({"data": {"a": "b"}}, "INVALID_ARGUMENT", "message"),
        ({"token": TOKEN, "topic": "news"}, None, "message"),
        (msg(data={"count": 2}), None, "message.data[0].value"),
        (msg(data={"ok": "1", "flag": True}), None, "message.data[1].value"),
        (msg(data={"from": "x"}), "INVALID_ARGUMENT", "message.data"),
        (msg(data={"gcm": "x"}), "INVALID_ARGUMENT", "message.data"),
        (msg(data={"google.c.a.e": "x"}), "INVALID_ARGUMENT", "message.data"),
        (msg(data={"googleish": "x"}), "INVALID_ARGUMENT", "message.data"),
        (msg(data={"message_type": "x"}), "INVALID_ARGUMENT", "message.data"),
        (msg(android={"ttl": "3600"}), None, "message.android.ttl"),
        (msg(android={"ttl": 3600}), None, "message.android.ttl"),
        (msg(android={"ttl": "1.0000000001s"}), None, "message.android.ttl"),
        (msg(android={"ttl": "2419201s"}), "INVALID_ARGUMENT", "message.android.ttl"),
        (msg(android={"ttl": "2419200.5s"}), "INVALID_ARGUMENT", "message.android.ttl"),
        (msg(android={"priority": "urgent"}), None, "message.android.priority"),
        (msg(data={"big": BIG + "x"}), "INVALID_ARGUMENT", "message"),
        (msg(token="short"), "INVALID_ARGUMENT", "message.token"),
        (msg(token="has spaces in it, not a token"), "INVALID_ARGUMENT", "message.token"),
        (msg(tokens=[TOKEN]), None, ""),
        (msg(notification={"title": 5}), None, "message.notification.title"),
    ],
)
async def test_validation_errors(
    sim: FcmSimulator, post: Poster, message: dict[str, Any], code: str | None, field: str
) -> None:
    r = await post(message)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert set(error) == {"code", "message", "status", "details"}
    assert error["status"] == "INVALID_ARGUMENT"
    assert fcm_code(r) == code
    assert field in field_violations(r)
    assert sim.received[0].status == 400
    assert sim.received[0].error_code == "INVALID_ARGUMENT"


async def test_payload_at_the_limit_passes(post: Poster) -> None:
    r = await post({"token": TOKEN, "data": {"big": BIG}})
    assert r.status_code == 200, r.text


async def test_invalid_token_body_exactly(post: Poster) -> None:
    r = await post(msg(token="not-a-token"))
    assert r.json() == {
        "error": {
            "code": 400,
            "message": "The registration token is not a valid FCM registration token",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
                {
                    "@type": BAD_REQUEST_TYPE,
                    "fieldViolations": [
                        {"field": "message.token", "description": "Invalid registration token"}
                    ],
                },
            ],
        }
    }


async def test_non_string_data_body_exactly(post: Poster) -> None:
    r = await post(msg(data={"n": 1}))
    text = "Invalid value at 'message.data[0].value' (TYPE_STRING), 1"
    assert r.json()["error"] == {
        "code": 400,
        "message": text,
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": "message.data[0].value", "description": text}],
            }
        ],
    }


async def test_malformed_bodies(post: Poster) -> None:
    for raw in (b"{not json", b"[]", b'{"message": {}, "extra": 1}', b'{"message": "x"}'):
        r = await post(raw=raw)
        assert r.status_code == 400, raw
        assert error_of(r)["status"] == "INVALID_ARGUMENT"


async def test_nan_and_infinity_are_not_json(post: Poster) -> None:
    """FCM's parser refuses them, as every JSON parser but Python's does."""
    for number in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        payload = b'{"aps": {}, "x": ' + number + b"}"
        raw = b'{"message": {"token": "' + TOKEN.encode() + b'", "apns": {"payload": '
        r = await post(raw=raw + payload + b"}}}")
        assert r.status_code == 400, number
        assert error_of(r)["status"] == "INVALID_ARGUMENT"
    assert (await post(raw=raw + b'{"aps": {}, "x": 1e300}}}}')).status_code == 200


# --- send: authentication --------------------------------------------------------------


async def test_missing_and_unknown_bearer(sim: FcmSimulator, post: Poster) -> None:
    for token in (None, "ya29.not-issued"):
        r = await post(msg(), token=token)
        assert r.status_code == 401
        error = error_of(r)
        assert error["status"] == "UNAUTHENTICATED"
        assert fcm_code(r) is None
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert [x.error_code for x in sim.received] == ["UNAUTHENTICATED"] * 2


async def test_expired_token_gets_401_until_refreshed(
    sim: FcmSimulator, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey, post: Poster
) -> None:
    assert (await post(msg())).status_code == 200
    sim.expire_tokens()
    r = await post(msg())
    assert r.status_code == 401
    assert error_of(r)["status"] == "UNAUTHENTICATED" and fcm_code(r) is None
    assert error_of(r)["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    with trio.fail_after(TIMEOUT):
        fresh = await request_token(client, sim, make_assertion(rsa_key, sim.token_url))
    assert (await post(msg(), token=fresh.json()["access_token"])).status_code == 200


async def test_other_project_is_permission_denied(post: Poster) -> None:
    r = await post(msg(), project=OTHER_PROJECT)
    assert r.status_code == 403
    assert error_of(r)["status"] == "PERMISSION_DENIED" and fcm_code(r) is None


# --- send: scripted replies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "google", "code"),
    [
        (FcmReply(error_code="UNREGISTERED"), 404, "NOT_FOUND", "UNREGISTERED"),
        (FcmReply(error_code="SENDER_ID_MISMATCH"), 403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
        (FcmReply(error_code="UNAVAILABLE"), 503, "UNAVAILABLE", "UNAVAILABLE"),
        (FcmReply(error_code="INTERNAL"), 500, "INTERNAL", "INTERNAL"),
        (FcmReply(status=503), 503, "UNAVAILABLE", "UNAVAILABLE"),
        (FcmReply(status=404), 404, "NOT_FOUND", "UNREGISTERED"),
        (FcmReply(status=401), 401, "UNAUTHENTICATED", None),
        (
            FcmReply(error_code="THIRD_PARTY_AUTH_ERROR"),
            401,
            "UNAUTHENTICATED",
            "THIRD_PARTY_AUTH_ERROR",
        ),
        (
            FcmReply(error_code="QUOTA_EXCEEDED"),
            429,
            "RESOURCE_EXHAUSTED",
            "QUOTA_EXCEEDED",
        ),
    ],
)
async def test_scripted_errors(
    sim: FcmSimulator,
    post: Poster,
    reply: FcmReply,
    status: int,
    google: str,
    code: str | None,
) -> None:
    sim.script(TOKEN, reply)
    r = await post(msg())
    assert r.status_code == status
    error = error_of(r)
    assert error["status"] == google
    assert fcm_code(r) == code
    assert "retry-after" not in r.headers
    # One reply per send, then back to success; other tokens unaffected.
    assert (await post(msg())).status_code == 200
    assert (await post(msg(token=TOKEN2))).status_code == 200
    assert [x.status for x in sim.received] == [status, 200, 200]


async def test_scripted_retry_after(sim: FcmSimulator, post: Poster) -> None:
    sim.script(
        TOKEN,
        FcmReply(error_code="QUOTA_EXCEEDED", retry_after=30),
        FcmReply(error_code="UNAVAILABLE", retry_after=5),
    )
    r = await post(msg())
    assert (r.status_code, r.headers["retry-after"], fcm_code(r)) == (429, "30", "QUOTA_EXCEEDED")
    r = await post(msg())
    assert (r.status_code, r.headers["retry-after"], fcm_code(r)) == (503, "5", "UNAVAILABLE")


async def test_script_does_not_skip_validation(sim: FcmSimulator, post: Poster) -> None:
    sim.script(TOKEN, FcmReply(error_code="UNREGISTERED"))
    assert (await post(msg(data={"n": 1}))).status_code == 400
    assert (await post(msg())).status_code == 404  # the reply was not used up


async def test_default_and_clear(sim: FcmSimulator, post: Poster) -> None:
    sim.set_default(FcmReply(error_code="INTERNAL", message="boom"))
    r = await post(msg())
    assert (r.status_code, error_of(r)["message"]) == (500, "boom")
    sim.clear()
    assert (await post(msg())).status_code == 200


async def test_delay_does_not_hold_other_streams(sim: FcmSimulator, post: Poster) -> None:
    sim.script(TOKEN, FcmReply(delay=0.3))
    order: list[str] = []

    async def send(token: str) -> None:
        assert (await post(msg(token=token))).status_code == 200
        order.append(token)

    async with trio.open_nursery() as n:
        n.start_soon(send, TOKEN)
        await trio.sleep(0.05)
        n.start_soon(send, TOKEN2)
    assert order == [TOKEN2, TOKEN]


async def test_drop_resets_the_connection(sim: FcmSimulator, post: Poster) -> None:
    sim.script(TOKEN, FcmReply(action="drop"))
    with pytest.raises(httpx.TransportError):
        await post(msg())
    assert sim.connections_dropped == 1 and sim.received == []
    assert (await post(msg())).status_code == 200


def test_reply_validation() -> None:
    with pytest.raises(ValueError, match="error_code"):
        FcmReply(error_code="NOPE")
    with pytest.raises(ValueError, match="action"):
        FcmReply(action="explode")  # type: ignore[arg-type]
    assert FcmReply(status=502, error_code="UNAVAILABLE").resolved()[:3] == (
        502,
        "UNAVAILABLE",
        "UNAVAILABLE",
    )


# --- quota -----------------------------------------------------------------------------


async def test_quota_bucket(sim: FcmSimulator, post: Poster) -> None:
    sim.set_quota(PROJECT, 3)  # refills one request per 20 s
    sim.script(TOKEN2, FcmReply(status=503))
    assert (await post(msg(token=TOKEN2))).status_code == 503  # 5xx does not count
    assert (await post(msg())).status_code == 200
    assert (await post(msg(data={"n": 1}))).status_code == 400  # client errors count
    assert (await post(msg())).status_code == 200
    r = await post(msg())
    assert r.status_code == 429
    assert error_of(r)["status"] == "RESOURCE_EXHAUSTED" and fcm_code(r) == "QUOTA_EXCEEDED"
    assert 19 <= int(r.headers["retry-after"]) <= 20
    assert (await post(msg())).status_code == 429  # a 429 uses nothing, nor refills
    assert sim.quota_rejections == 2
    assert (await post(msg(), project=OTHER_PROJECT)).status_code == 403  # not this bucket
    sim.set_quota(PROJECT, None)
    assert (await post(msg())).status_code == 200


# --- recording -------------------------------------------------------------------------


async def test_wait_for(sim: FcmSimulator, post: Poster) -> None:
    got: list[int] = []

    async def waiter() -> None:
        got.append(len(await sim.wait_for(3)))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            for token in (TOKEN, TOKEN2, TOKEN):
                await trio.lowlevel.checkpoint()
                assert got == []
                await post(msg(token=token))
    assert got == [3]
    assert [x.token for x in sim.received] == [TOKEN, TOKEN2, TOKEN]


async def test_record_off(
    nursery: trio.Nursery,
    server_ctx: ssl.SSLContext,
    client: httpx.AsyncClient,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    seen: list[int] = []
    sim = FcmSimulator(record=False, on_received=lambda r: seen.append(r.status))
    sim.add_account(EMAIL, rsa_key.public_key(), PROJECT)
    await nursery.start(sim.serve, server_ctx)
    with trio.fail_after(TIMEOUT):
        r = await request_token(client, sim, make_assertion(rsa_key, sim.token_url))
        headers = {"authorization": f"Bearer {r.json()['access_token']}"}
        url = f"{sim.base_url}/v1/projects/{PROJECT}/messages:send"
        await client.post(url, json={"message": msg()}, headers=headers)
    assert (sim.received, seen, sim.answered) == ([], [200], 1)


# --- service accounts and CLI ----------------------------------------------------------


async def test_service_account_file_round_trip(
    sim: FcmSimulator, client: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "sa.json"
    key = make_service_account(path, "proj-2", sim.token_url, key=rsa_key)
    assert key is rsa_key
    assert path.stat().st_mode & 0o777 == 0o600
    document = json.loads(path.read_text())
    assert document["type"] == "service_account"
    assert document["token_uri"] == sim.token_url
    assert document["universe_domain"] == "googleapis.com"
    loaded = serialization.load_pem_private_key(document["private_key"].encode(), None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.public_key().public_numbers() == rsa_key.public_key().public_numbers()
    email, public, project = cli.load_fcm_account(str(path))
    assert (email, project) == (document["client_email"], "proj-2")
    sim.add_account(email, public, project)
    assertion = make_assertion(rsa_key, document["token_uri"], iss=email)
    with trio.fail_after(TIMEOUT):
        r = await request_token(client, sim, assertion)
    assert r.status_code == 200


async def test_cli_serves_fcm(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """``pushd simulate --fcm-port 0``: token, send, one masked line, clean stop."""
    account = tmp_path / "sa.json"
    make_service_account(account, PROJECT, "https://unused/token", EMAIL, key=rsa_key)
    ca_file = tmp_path / "ca.pem"
    cmd = [
        sys.executable, "-m", "pushd.simulators.cli", "--port", "0", "--ca-out", str(ca_file),
        "--fcm-port", "0", "--fcm-account", str(account),
    ]  # fmt: skip
    # A child Python must start and import pushd first: generous on a loaded machine.
    with trio.fail_after(SUBPROCESS_DEADLINE):
        async with trio.open_nursery() as n:
            run = functools.partial(trio.run_process, cmd, stdout=PIPE, stderr=PIPE, check=False)
            proc = await n.start(run)
            err = b""
            while b"(Ctrl-C" not in err:
                err += await proc.stderr.receive_some(4096)
            token_url = re.search(rb"token endpoint (\S+)\)", err)
            assert token_url is not None
            url = token_url.group(1).decode()
            ctx = ssl.create_default_context(cafile=str(ca_file))
            async with httpx.AsyncClient(http2=True, verify=ctx) as c:
                data = {"grant_type": JWT_BEARER_GRANT, "assertion": make_assertion(rsa_key, url)}
                r = await c.post(url, data=data)
                assert r.status_code == 200, r.text
                r = await c.post(
                    url.removesuffix("/token") + f"/v1/projects/{PROJECT}/messages:send",
                    json={"message": msg()},
                    headers={"authorization": f"Bearer {r.json()['access_token']}"},
                )
                assert (r.status_code, r.http_version) == (200, "HTTP/2")
            out = b""
            while b"  200" not in out:  # the line may arrive in pieces
                out += await proc.stdout.receive_some(4096)
            assert b"cXyZ12" in out and TOKEN.encode() not in out
            assert f"fcm  cXyZ12\u2026aaaa  {PROJECT}  15B  200".encode() in out
            assert b"!abc" not in out  # no payload without --show-payload
            proc.send_signal(signal.SIGINT)
    assert proc.returncode == 0


def test_cli_fcm_options_need_port(tmp_path: Path) -> None:
    assert cli.main(["--fcm-account", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(cli.UsageError):
        cli.load_fcm_account(str(tmp_path / "x.json"))
