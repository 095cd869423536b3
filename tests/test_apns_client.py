"""The APNs client against the APNs simulator, over real TLS sockets on loopback."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from pushd.model import ApnsPush, Delivered, Failed, Outcome, RetryLater, TokenDead
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.upstream import h2conn as connection
from pushd.upstream import h2connect, h2pool
from pushd.upstream.apns.client import ApnsClient
from pushd.upstream.apns.jwt import p8_pem
from pushd.upstream.apns.settings import ApnsSettings, CertAuth, TokenAuth

TOPIC = "com.example.app"
KEY_ID = "KEYID12345"
TEAM_ID = "TEAM123456"
PUSH = ApnsPush(b'{"aps":{"alert":"hi"}}')
#: Each test must finish well within this (seconds).
TEST_DEADLINE = 10.0  # a hang guard, generous for a loaded CI machine; not a speed check


def token(n: int) -> str:
    return f"{n:064x}"


@attrs.define
class Env:
    """A running simulator and what a client needs to reach it."""

    sim: ApnsSimulator
    key: ec.EllipticCurvePrivateKey
    ca_file: str
    port: int
    nursery: trio.Nursery
    tmp: Path
    ca: trustme.CA

    def settings(self, **changes: object) -> ApnsSettings:
        key_pem = p8_pem(self.key)
        settings = ApnsSettings(
            name="testapp",
            base_url=f"https://127.0.0.1:{self.port}",
            topic=TOPIC,
            auth=TokenAuth(key_pem, KEY_ID, TEAM_ID),
            ca_file=self.ca_file,
            request_timeout=1.0,
        )
        return attrs.evolve(settings, **changes)  # type: ignore[arg-type]

    async def client(self, clock: Callable[[], float] = time.time, **changes: object) -> ApnsClient:
        client = ApnsClient(self.settings(**changes), clock=clock)
        await self.nursery.start(client.run)
        return client


def server_context(ca: trustme.CA, *, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    ctx.set_alpn_protocols(["h2"])
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def start_env(tmp_path: Path, nursery: trio.Nursery, **sim_options: object) -> Env:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sim = ApnsSimulator(**sim_options)  # type: ignore[arg-type]
    sim.add_key(KEY_ID, TEAM_ID, key.public_key())
    port = await nursery.start(sim.serve, server_context(ca))
    return Env(sim, key, str(ca_file), port, nursery, tmp_path, ca)


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Env]:
    with trio.fail_after(TEST_DEADLINE):
        yield await start_env(tmp_path, nursery)


async def send_many(client: ApnsClient, tokens: list[str]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}

    async def one(t: str) -> None:
        outcomes[t] = await client.send(t, PUSH)

    async with trio.open_nursery() as nursery:
        for t in tokens:
            nursery.start_soon(one, t)
    return outcomes


async def test_single_delivery(env: Env) -> None:
    client = await env.client()
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, Delivered)
    (received,) = env.sim.received
    assert outcome.upstream_id == received.apns_id
    assert received.token == token(1)
    assert received.topic == TOPIC
    assert received.push_type == "alert"
    assert received.payload == PUSH.payload
    assert env.sim.connections_opened == 1


async def test_concurrent_sends_grow_past_one_stream(env: Env) -> None:
    client = await env.client()
    env.sim.set_default(SimReply(delay=0.05))  # hold each stream open a moment
    tokens = [token(n) for n in range(200)]
    outcomes = await send_many(client, tokens)
    assert all(isinstance(o, Delivered) for o in outcomes.values()), set(outcomes.values())
    assert sorted(r.token for r in env.sim.received) == sorted(tokens)  # exactly once each
    assert env.sim.connections_opened == 1
    # The first request ran alone (1 stream until authenticated), then the rest together.
    assert max(env.sim.max_in_flight.values()) > 100
    assert env.sim.streams_refused == 0


async def test_several_connections_share_the_load(env: Env) -> None:
    client = await env.client(connections=3)
    env.sim.set_default(SimReply(delay=0.02))
    # A burst while nothing is connected opens all three (connections are lazy) ...
    outcomes = await send_many(client, [token(n) for n in range(100)])
    assert all(isinstance(o, Delivered) for o in outcomes.values())
    assert env.sim.connections_opened == 3
    # ... and once all are warm, concurrent requests spread over them.
    first = len(env.sim.received)
    outcomes = await send_many(client, [token(n) for n in range(100, 400)])
    assert all(isinstance(o, Delivered) for o in outcomes.values())
    assert env.sim.connections_opened == 3
    per_connection: dict[int, int] = {}
    for r in env.sim.received[first:]:
        per_connection[r.connection_id] = per_connection.get(r.connection_id, 0) + 1
    assert len(per_connection) == 3
    assert min(per_connection.values()) >= 80, per_connection


async def test_shrink_to_one_stream_with_requests_in_flight(env: Env) -> None:
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)  # warm up: 1000 streams
    # A rejection answered late, while many others are in flight: APNs drops to 1 stream.
    env.sim.script(token(1), SimReply(400, "BadDeviceToken", delay=0.05))
    for n in range(2, 12):
        env.sim.script(token(n), SimReply(delay=0.1))
    tokens = [token(n) for n in range(1, 150)]
    outcomes = await send_many(client, tokens)
    assert outcomes.pop(token(1)) == TokenDead("BadDeviceToken", mismatch=True)
    assert max(env.sim.max_in_flight.values()) > 10  # the shrink came with many in flight
    assert all(isinstance(o, Delivered) for o in outcomes.values()), set(outcomes.values())
    assert sorted(r.token for r in env.sim.received if r.status == 200) == sorted(
        [token(0), *outcomes]
    )
    assert env.sim.connections_opened == 1  # the shrink never cost the connection


async def test_goaway_mid_load_resends_unprocessed_streams(env: Env) -> None:
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    # Token 1 holds its stream, then the server says GOAWAY with a last_stream_id below
    # every unanswered stream: all in flight must be resent on a new connection.
    env.sim.script(token(1), SimReply(action="goaway", reason="Shutdown", delay=0.05))
    tokens = [token(n) for n in range(1, 100)]
    outcomes = await send_many(client, tokens)
    assert all(isinstance(o, Delivered) for o in outcomes.values()), set(outcomes.values())
    delivered = [r.token for r in env.sim.received if r.status == 200]
    assert sorted(delivered) == sorted([token(0), *tokens])  # each exactly once
    assert env.sim.goaways_sent == 1
    assert env.sim.connections_opened == 2


async def test_goaway_all_between_sends(env: Env) -> None:
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    env.sim.goaway_all("IdleTimeout")
    # Sent at once, racing the GOAWAY: its stream is above last_stream_id, so resent.
    assert isinstance(await client.send(token(1), PUSH), Delivered)
    assert env.sim.connections_opened == 2


async def test_idle_connection_is_pinged_not_closed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "PING_INTERVAL", 0.05)
    monkeypatch.setattr(connection, "PING_TIMEOUT", 0.2)
    client = await env.client()
    assert isinstance(await client.send(token(1), PUSH), Delivered)
    await trio.sleep(0.4)  # several PING rounds, answered by the simulator
    assert env.sim.open_connections == 1
    assert isinstance(await client.send(token(2), PUSH), Delivered)
    assert env.sim.connections_opened == 1


async def test_dropped_connection(env: Env) -> None:
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    env.sim.script(token(1), SimReply(action="drop", delay=0.05))
    for n in range(2, 10):
        env.sim.script(token(n), SimReply(delay=0.5))  # still in flight at the drop
    outcomes = await send_many(client, [token(n) for n in range(1, 10)])
    # They may have been delivered: reported, not silently resent.
    assert all(isinstance(o, RetryLater) for o in outcomes.values()), outcomes
    assert all("connection" in o.reason for o in outcomes.values() if isinstance(o, RetryLater))
    assert isinstance(await client.send(token(20), PUSH), Delivered)
    assert env.sim.connections_opened == 2


async def test_expired_provider_token_regenerates_once(env: Env) -> None:
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return time.time() - (2 * 3600 if calls == 1 else 0)  # first JWT is 2 h old

    client = await env.client(clock=clock)
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, Delivered)
    statuses = [(r.status, r.reason) for r in env.sim.received]
    assert statuses == [(403, "ExpiredProviderToken"), (200, None)]


async def test_expired_provider_token_twice_is_a_credential_failure(env: Env) -> None:
    client = await env.client(clock=lambda: time.time() - 2 * 3600)
    outcome = await client.send(token(1), PUSH)
    assert outcome == Failed("ExpiredProviderToken", credential=True)
    assert len(env.sim.received) == 2  # one resend, no more


async def test_unregistered_with_timestamp(env: Env) -> None:
    client = await env.client()
    env.sim.script(token(1), SimReply(410, "Unregistered", timestamp_ms=1_700_000_000_500))
    outcome = await client.send(token(1), PUSH)
    assert outcome == TokenDead("Unregistered", since=1_700_000_000.5)


async def test_server_error_is_retry_later(env: Env) -> None:
    client = await env.client()
    env.sim.script(token(1), SimReply(500))
    env.sim.script(token(2), SimReply(503, "ServiceUnavailable", retry_after=7))
    assert await client.send(token(1), PUSH) == RetryLater("InternalServerError")
    assert await client.send(token(2), PUSH) == RetryLater("ServiceUnavailable", 7.0)
    assert isinstance(await client.send(token(3), PUSH), Delivered)


async def test_invalid_push_fails_without_sending(env: Env) -> None:
    client = await env.client()
    outcome = await client.send(token(1), ApnsPush(b"x" * 5000))
    assert isinstance(outcome, Failed)
    assert outcome.reason.startswith("PayloadTooLarge")
    assert await client.send("not-hex", PUSH) == TokenDead("BadDeviceToken")
    assert env.sim.received == []
    assert env.sim.connections_opened == 0  # lazily connected: nothing to send yet


async def test_request_timeout(env: Env) -> None:
    client = await env.client(request_timeout=0.2)
    # The connection first: its set-up on a loaded machine is not the request's 0.2 s.
    assert isinstance(await client.send(token(3), PUSH), Delivered)
    env.sim.script(token(1), SimReply(delay=5))
    assert await client.send(token(1), PUSH) == RetryLater("timeout", kind="unknown")
    # The stream was reset; the connection still works.
    assert isinstance(await client.send(token(2), PUSH), Delivered)
    assert env.sim.connections_opened == 1


async def test_unreachable_server_fails_fast_then_recovers(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2connect, "RECONNECT_BACKOFF_BASE", 0.05)
    monkeypatch.setattr(h2connect, "RECONNECT_BACKOFF_MAX", 0.1)
    with trio.socket.socket() as sock:  # a port nobody listens on (yet)
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await env.client(base_url=f"https://127.0.0.1:{port}", request_timeout=5.0)
    started = trio.current_time()
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, RetryLater) and outcome.reason.startswith("APNs unreachable")
    # Later sends do not wait for the 5 s request timeout either.
    assert isinstance(await client.send(token(2), PUSH), RetryLater)
    assert trio.current_time() - started < 1.0
    # APNs comes back on that port: the pool reconnects by itself, sends succeed.
    await env.nursery.start(env.sim.serve, server_context(env.ca), "127.0.0.1", port)
    with trio.fail_after(1.5):
        for _ in range(30):  # a sender retrying, as the dispatcher would
            outcome = await client.send(token(3), PUSH)
            if isinstance(outcome, Delivered):
                break
            await trio.sleep(0.05)
    assert isinstance(outcome, Delivered)


async def test_a_certificate_that_does_not_verify_is_named_in_the_answer_and_the_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS verification failure read ``connect ... failed (BrokenResourceError: )``:
    trio's wrapper, whose text is empty; the answer and the log name the real error."""
    other = env.tmp / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    caplog.set_level(logging.WARNING)
    client = await env.client(ca_file=str(other))
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, RetryLater)
    assert outcome.reason == "APNs unreachable: SSLCertVerificationError", outcome.reason
    assert "certificate verify failed" in caplog.text, caplog.text


def write_pkcs12(cert: trustme.LeafCert, path: Path, password: bytes) -> None:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    certificate = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"pushd", key, certificate, None, serialization.BestAvailableEncryption(password)
        )
    )


@pytest.mark.parametrize("kind", ["pem", "pkcs12"])
async def test_certificate_auth(tmp_path: Path, nursery: trio.Nursery, kind: str) -> None:
    with trio.fail_after(TEST_DEADLINE):
        client_ca = trustme.CA()
        ca = trustme.CA()
        ca_file = tmp_path / "ca.pem"
        ca_file.write_bytes(ca.cert_pem.bytes())
        sim = ApnsSimulator(require_token_auth=False)
        port = await nursery.start(sim.serve, server_context(ca, client_ca=client_ca))
        cert = client_ca.issue_cert("pushd-client@example.com")
        if kind == "pem":
            cert_file = tmp_path / "client.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
            auth = CertAuth(str(cert_file))
        else:
            cert_file = tmp_path / "client.p12"
            write_pkcs12(cert, cert_file, b"s3cret")
            auth = CertAuth(str(cert_file), password=b"s3cret")
        settings = ApnsSettings(
            name="certapp",
            base_url=f"https://127.0.0.1:{port}",
            topic=TOPIC,
            auth=auth,
            ca_file=str(ca_file),
            request_timeout=1.0,
        )
        client = ApnsClient(settings)
        await nursery.start(client.run)
        sim.set_default(SimReply(delay=0.05))
        outcomes = await send_many(client, [token(n) for n in range(50)])
        assert all(isinstance(o, Delivered) for o in outcomes.values())
        assert max(sim.max_in_flight.values()) > 1  # no 1-stream warm-up with certificates


# --- send_many ---------------------------------------------------------------------------


class Reports:
    """A ``report`` callback that checks each index is reported exactly once."""

    def __init__(self) -> None:
        self.outcomes: dict[int, Outcome] = {}

    def __call__(self, index: int, outcome: Outcome) -> None:
        assert index not in self.outcomes, f"index {index} reported twice"
        self.outcomes[index] = outcome


async def batch(client: ApnsClient, tokens: list[str], push: ApnsPush = PUSH) -> dict[int, Outcome]:
    reports = Reports()
    await client.send_many(tokens, push, reports)
    assert sorted(reports.outcomes) == list(range(len(tokens)))
    return reports.outcomes


def delivered_tokens(env: Env) -> list[str]:
    return sorted(r.token for r in env.sim.received if r.status == 200)


async def test_batch_of_100_all_delivered(env: Env) -> None:
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)  # warm: 1000 streams
    env.sim.set_default(SimReply(delay=0.02))  # hold each stream open a moment
    tokens = [token(n) for n in range(1, 101)]
    outcomes = await batch(client, tokens)
    assert all(isinstance(o, Delivered) for o in outcomes.values()), outcomes
    # Each outcome belongs to its own token: the upstream ids match what APNs saw.
    ids = {r.token: r.apns_id for r in env.sim.received}
    for index, outcome in outcomes.items():
        assert isinstance(outcome, Delivered)
        assert outcome.upstream_id == ids[tokens[index]]
    assert delivered_tokens(env) == sorted([token(0), *tokens])
    assert max(env.sim.max_in_flight.values()) > 50  # went out together
    assert env.sim.connections_opened == 1


async def test_cold_batch_waits_for_the_first_connection(env: Env) -> None:
    client = await env.client()
    outcomes = await batch(client, [token(n) for n in range(50)])
    assert all(isinstance(o, Delivered) for o in outcomes.values()), outcomes
    assert len(delivered_tokens(env)) == 50


async def test_batch_mixed_outcomes(env: Env) -> None:
    client = await env.client()
    env.sim.script(token(1), SimReply(410, "Unregistered", timestamp_ms=1_700_000_000_500))
    env.sim.script(token(2), SimReply(400, "BadDeviceToken"))
    env.sim.script(token(3), SimReply(500))
    tokens = [token(0), token(1), token(2), token(3), "not-hex", token(5), ""]
    outcomes = await batch(client, tokens)
    assert isinstance(outcomes.pop(0), Delivered)
    assert isinstance(outcomes.pop(5), Delivered)
    assert outcomes == {
        1: TokenDead("Unregistered", since=1_700_000_000.5),
        2: TokenDead("BadDeviceToken", mismatch=True),  # APNs' answer: also a wrong environment
        3: RetryLater("InternalServerError"),
        4: TokenDead("BadDeviceToken"),  # not hex: never sent
        6: Failed("MissingDeviceToken"),
    }
    assert sorted(r.token for r in env.sim.received) == sorted([*tokens[:4], token(5)])


async def test_batch_with_an_invalid_push_sends_nothing(env: Env) -> None:
    client = await env.client()
    outcomes = await batch(client, [token(1), "nothex"], ApnsPush(b"x" * 5000))
    assert isinstance(outcomes[0], Failed) and outcomes[0].reason.startswith("PayloadTooLarge")
    assert isinstance(outcomes[1], Failed)  # payload checks come before the token's
    late = ApnsPush(b"{}", priority=7)  # checked after the token, as APNs does
    outcomes = await batch(client, [token(1), "nothex"], late)
    assert outcomes == {0: Failed("BadPriority: 7"), 1: TokenDead("BadDeviceToken")}
    assert env.sim.received == []
    assert env.sim.connections_opened == 0


async def test_batch_larger_than_the_stream_limit(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(TEST_DEADLINE):
        env = await start_env(tmp_path, nursery, max_streams=10)
        client = await env.client(connections=2)
        env.sim.set_default(SimReply(delay=0.01))
        tokens = [token(n) for n in range(120)]
        outcomes = await batch(client, tokens)
        assert all(isinstance(o, Delivered) for o in outcomes.values()), outcomes
        assert delivered_tokens(env) == sorted(tokens)
        assert max(env.sim.max_in_flight.values()) <= 10
        assert env.sim.streams_refused == 0


async def test_goaway_mid_batch_resends_unprocessed(env: Env) -> None:
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    env.sim.script(token(1), SimReply(action="goaway", reason="Shutdown", delay=0.05))
    for n in range(2, 30):
        env.sim.script(token(n), SimReply(delay=0.1))  # unanswered at the GOAWAY
    tokens = [token(n) for n in range(1, 100)]
    outcomes = await batch(client, tokens)
    assert all(isinstance(o, Delivered) for o in outcomes.values()), outcomes
    assert delivered_tokens(env) == sorted([token(0), *tokens])  # each exactly once
    assert env.sim.goaways_sent == 1
    assert env.sim.connections_opened == 2


async def test_expired_provider_token_in_a_batch_regenerates_once(env: Env) -> None:
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return time.time() - (2 * 3600 if calls == 1 else 0)  # first JWT is 2 h old

    client = await env.client(clock=clock)
    tokens = [token(n) for n in range(20)]
    outcomes = await batch(client, tokens)
    assert all(isinstance(o, Delivered) for o in outcomes.values()), outcomes
    rejected = [r.token for r in env.sim.received if r.reason == "ExpiredProviderToken"]
    assert rejected  # the stale JWT went out and was refused ...
    assert delivered_tokens(env) == sorted(tokens)  # ... and each was resent once
    assert calls == 2  # one JWT for the batch, one regeneration


async def test_expired_provider_token_twice_in_a_batch(env: Env) -> None:
    client = await env.client(clock=lambda: time.time() - 2 * 3600)
    outcomes = await batch(client, [token(n) for n in range(5)])
    assert set(outcomes.values()) == {Failed("ExpiredProviderToken", credential=True)}
    assert len(env.sim.received) == 10  # one resend each, no more


async def test_batch_against_unreachable_port_fails_fast(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2connect, "RECONNECT_BACKOFF_BASE", 0.05)
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await env.client(base_url=f"https://127.0.0.1:{port}", request_timeout=5.0)
    started = trio.current_time()
    outcomes = await batch(client, [token(n) for n in range(50)])
    assert all(
        isinstance(o, RetryLater) and o.reason.startswith("APNs unreachable")
        for o in outcomes.values()
    ), outcomes
    outcomes = await batch(client, [token(n) for n in range(50)])  # still failing fast
    assert all(isinstance(o, RetryLater) for o in outcomes.values())
    assert trio.current_time() - started < 1.0


async def test_batch_timeout(env: Env) -> None:
    client = await env.client(request_timeout=0.3)
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    env.sim.script(token(1), SimReply(delay=5))
    outcomes = await batch(client, [token(1), token(2)])
    assert outcomes[0] == RetryLater("timeout", kind="unknown")
    assert isinstance(outcomes[1], Delivered)
    assert isinstance(await client.send(token(3), PUSH), Delivered)
    assert env.sim.connections_opened == 1


async def test_cancelled_batch_leaves_the_pool_usable(env: Env) -> None:
    # 5 s, not 1: on a loaded machine the simulator may take over a second to process
    # the cancelled streams' resets, and three timed-out sends would recycle the
    # connection (RECYCLE_AFTER_TIMEOUTS) where this test counts one.
    client = await env.client(request_timeout=5.0)
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    env.sim.set_default(SimReply(delay=5))
    reports = Reports()
    with trio.move_on_after(0.2):
        await client.send_many([token(n) for n in range(1, 2001)], PUSH, reports)
    assert reports.outcomes == {}  # cancelled: nothing reported, nothing raised
    env.sim.clear()
    # Every slot was given back (the 1000-stream limit was full) and nothing is queued.
    outcome = await client.send(token(5000), PUSH)
    assert isinstance(outcome, Delivered), outcome
    outcomes = await batch(client, [token(n) for n in range(6000, 6100)])
    assert all(isinstance(o, Delivered) for o in outcomes.values())
    assert env.sim.connections_opened == 1


async def test_report_errors_are_raised_after_the_batch(env: Env) -> None:
    client = await env.client()
    seen: list[int] = []

    def report(index: int, outcome: Outcome) -> None:
        seen.append(index)
        if index == 1:
            raise RuntimeError("caller bug")

    with pytest.raises(RuntimeError, match="caller bug"):
        await client.send_many([token(n) for n in range(5)], PUSH, report)
    assert sorted(seen) == list(range(5))
    assert isinstance(await client.send(token(9), PUSH), Delivered)


def test_spread_levels_free_slots() -> None:
    class Conn:
        def __init__(self, free: int) -> None:
            self.free_slots = free

    conns = [Conn(5), Conn(10), Conn(0), Conn(8)]
    got = {conns.index(c): n for c, n in h2pool.spread(conns, 9)}  # type: ignore[arg-type]
    assert sum(got.values()) == 9 and 2 not in got
    # What is left is level: as if each slot had gone to the one with most free.
    assert sorted(c.free_slots - got.get(n, 0) for n, c in enumerate(conns)) == [0, 4, 5, 5]
    got = {conns.index(c): n for c, n in h2pool.spread(conns, 100)}  # type: ignore[arg-type]
    assert got == {0: 5, 1: 10, 3: 8}
    assert h2pool.spread([], 3) == []


async def test_send_mixed_sends_each_push_to_its_own_tokens_in_one_batch(env: Env) -> None:
    # The dispatcher's outbox hands concurrent requests' pushes over together.
    client = await env.client()
    assert isinstance(await client.send(token(0), PUSH), Delivered)  # warm: 1000 streams
    env.sim.set_default(SimReply(delay=0.02))
    other = ApnsPush(b'{"aps":{"alert":"other"}}', priority=5)
    bad = ApnsPush(b"", push_type="alert")  # PayloadEmpty: refused without sending
    groups = [([token(1), token(2)], PUSH), ([token(3)], bad), ([token(4), "zz"], other)]
    reports = Reports()
    await client.send_mixed(groups, reports)
    outcomes = reports.outcomes
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    assert [type(outcomes[i]) for i in (0, 1, 3)] == [Delivered] * 3
    assert isinstance(outcomes[2], Failed) and "PayloadEmpty" in outcomes[2].reason
    assert outcomes[4] == TokenDead("BadDeviceToken")
    sent = {r.token: r for r in env.sim.received}
    assert set(sent) == {token(0), token(1), token(2), token(4)}
    assert sent[token(1)].payload == sent[token(2)].payload == PUSH.payload
    assert (sent[token(4)].payload, sent[token(4)].priority) == (other.payload, 5)
    assert max(env.sim.max_in_flight.values()) >= 3  # went out together
