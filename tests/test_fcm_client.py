"""The FCM client against the FCM simulator: real TLS, real HTTP/2, real OAuth; no mocks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.model import Delivered, Failed, FcmPush, Outcome, RetryLater, TokenDead
from pushd.simulators.fcm import FcmReply, FcmSimulator, make_service_account
from pushd.upstream.fcm.alarms import ALARM_MIN_SENDS
from pushd.upstream.fcm.classify import THIRD_PARTY_OUTCOMES
from pushd.upstream.fcm.client import RECYCLE_AFTER_TIMEOUTS, FcmClient
from pushd.upstream.fcm.message import AndroidOptions, Notification, build_push
from pushd.upstream.fcm.oauth import failure_backoff
from pushd.upstream.fcm.service_account import load_service_account
from pushd.upstream.fcm.settings import FcmSettings

PROJECT = "chat-app-1234"
PUSH_DATA = {"room": "!abc:example.org", "secret": "message text"}
PUSH = build_push(
    data=PUSH_DATA,
    notification=Notification(title="New message"),
    android=AndroidOptions(priority="high", ttl=3600),
)


def token(n: int) -> str:
    """A distinct registration token of FCM's shape."""
    return f"d{n:05d}xYz:APA91b" + "Qx-_" * 30


@pytest.fixture
def settings(
    fcm_sim: FcmSimulator, fcm_key: rsa.RSAPrivateKey, tmp_path: Path, ca_file: Path
) -> FcmSettings:
    path = tmp_path / "service-account.json"
    make_service_account(path, PROJECT, fcm_sim.token_url, key=fcm_key)
    account = load_service_account(path.read_bytes())
    fcm_sim.add_account(account.client_email, fcm_key.public_key(), PROJECT)
    return FcmSettings(
        name="chat",
        account=account,
        project_id=PROJECT,
        base_url=fcm_sim.base_url,
        ca_file=str(ca_file),
        connections=2,
        request_timeout=5.0,
    )


StartClient = Callable[..., Awaitable[FcmClient]]


@pytest.fixture
def start_client(nursery: trio.Nursery, settings: FcmSettings) -> StartClient:
    async def start(**changes: object) -> FcmClient:
        client = FcmClient(attrs.evolve(settings, **changes))
        await nursery.start(client.run)
        return client

    return start


@pytest.fixture
async def client(start_client: StartClient) -> FcmClient:
    return await start_client()


async def test_delivery(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, Delivered)
    assert outcome.upstream_id is not None
    assert outcome.upstream_id.startswith(f"projects/{PROJECT}/messages/0:")
    (received,) = fcm_sim.received
    assert received.token == token(1)
    assert received.status == 200
    assert received.message["data"] == {"room": "!abc:example.org", "secret": "message text"}
    assert received.message["android"] == {"priority": "HIGH", "ttl": "3600s"}
    # The send went over HTTP/2, the token request over HTTP/1.1.
    assert fcm_sim.http_versions == {"2": 1, "1.1": 1}
    assert fcm_sim.token_requests == 1


async def test_more_than_100_in_flight(start_client: StartClient, fcm_sim: FcmSimulator) -> None:
    """httpx caps a connection at 100 streams; two clients carry 150 sends at once."""
    client = await start_client(connections=2)
    assert isinstance(await client.send(token(0), PUSH), Delivered)  # token and warm-up
    delay = 2.0
    fcm_sim.set_default(FcmReply(delay=delay))
    outcomes: list[Outcome] = []

    async def send(n: int) -> None:
        outcomes.append(await client.send(token(n), PUSH))

    async with trio.open_nursery() as nursery:
        for n in range(1, 151):
            nursery.start_soon(send, n)
    assert len(outcomes) == 150
    assert all(isinstance(o, Delivered) for o in outcomes), outcomes
    # Every answer waited `delay` at the simulator.  Had a cap held 50 requests back until
    # the first 100 were answered, the answers would spread over at least `delay`.
    answered = [r.at for r in fcm_sim.received[1:]]
    spread = max(answered) - min(answered)
    assert spread < delay / 2, spread
    assert fcm_sim.connections_opened == 1 + 2  # the token endpoint's, and two for sends
    assert fcm_sim.token_requests == 1


async def test_unregistered_is_dead(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    fcm_sim.script(token(1), FcmReply(error_code="UNREGISTERED"))
    assert await client.send(token(1), PUSH) == TokenDead("UNREGISTERED")


async def test_quota_retries_after_a_minute_or_more(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    fcm_sim.script(token(1), FcmReply(error_code="QUOTA_EXCEEDED", retry_after=5))
    assert await client.send(token(1), PUSH) == RetryLater("QUOTA_EXCEEDED", 60.0, kind="throttled")
    fcm_sim.set_quota(PROJECT, 2)
    outcomes = [await client.send(token(n), PUSH) for n in range(2, 5)]
    assert [type(o) for o in outcomes[:2]] == [Delivered, Delivered]
    last = outcomes[2]
    assert isinstance(last, RetryLater)
    assert last.reason == "QUOTA_EXCEEDED"
    assert last.after is not None and last.after >= 60


async def test_expired_access_token_is_refreshed_once(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    assert isinstance(await client.send(token(1), PUSH), Delivered)
    fcm_sim.expire_tokens()
    outcomes: list[Outcome] = []

    async def send(n: int) -> None:
        outcomes.append(await client.send(token(n), PUSH))

    async with trio.open_nursery() as nursery:  # a burst of 401s: still one refresh
        for n in range(2, 12):
            nursery.start_soon(send, n)
    assert all(isinstance(o, Delivered) for o in outcomes), outcomes
    assert fcm_sim.token_requests == 2
    statuses = [r.status for r in fcm_sim.received if r.token == token(2)]
    assert statuses[-1] == 200


async def test_token_refused_twice_pauses_the_app(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    fcm_sim.script(token(1), FcmReply(status=401), FcmReply(status=401))
    assert await client.send(token(1), PUSH) == Failed("UNAUTHENTICATED", credential=True)


async def test_token_endpoint_down_then_recovery(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    fcm_sim.token_endpoint_down = True
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, RetryLater)
    assert "token endpoint" in outcome.reason
    assert outcome.after is not None and outcome.after > 0
    assert isinstance(await client.send(token(2), PUSH), RetryLater)
    assert fcm_sim.token_requests == 1  # remembered, not hammered
    fcm_sim.token_endpoint_down = False
    await trio.sleep(failure_backoff(1))
    assert isinstance(await client.send(token(3), PUSH), Delivered)


async def test_refused_service_account_is_a_credential_failure(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    fcm_sim.script_token_endpoint(FcmReply(status=400))
    outcome = await client.send(token(1), PUSH)
    assert outcome == Failed("oauth: token endpoint: HTTP 400 invalid_grant", credential=True)


async def test_sender_id_mismatch_alarm_logged_once(
    client: FcmClient, fcm_sim: FcmSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(10):  # a healthy start
        assert isinstance(await client.send(token(n), PUSH), Delivered)
    fcm_sim.set_default(FcmReply(error_code="SENDER_ID_MISMATCH"))
    caplog.set_level(logging.DEBUG, "pushd")
    outcomes = [await client.send(token(n), PUSH) for n in range(100, 160)]
    alarms = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(alarms) == 1
    assert "does not match the app's tokens" in alarms[0].getMessage()
    assert client.mismatch_alarm
    # Single mismatches delete their token; once most fail that way, the app is paused
    # instead, so a wrong project id cannot delete every token.
    dead = outcomes.index(Failed("SENDER_ID_MISMATCH", credential=True))
    assert dead >= ALARM_MIN_SENDS // 2
    assert outcomes[:dead] == [TokenDead("SENDER_ID_MISMATCH", mismatch=True)] * dead
    assert set(outcomes[dead:]) == {Failed("SENDER_ID_MISMATCH", credential=True)}


async def test_payload_invalid_argument_fails_the_message(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    # A message we did not build with build_push: FCM refuses the non-string value.
    raw = FcmPush(fields=b'"data":{"n":1}')
    outcome = await client.send(token(1), raw)
    assert isinstance(outcome, Failed)
    assert outcome.reason.startswith("INVALID_ARGUMENT")
    assert not outcome.credential
    fcm_sim.script(token(2), FcmReply(error_code="INVALID_ARGUMENT"))
    assert await client.send(token(2), PUSH) == Failed("INVALID_ARGUMENT")


async def test_malformed_tokens_are_dead(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    # FCM says "not a valid FCM registration token" (the simulator wants >= 20 chars).
    assert await client.send("short:token", PUSH) == TokenDead("INVALID_ARGUMENT")
    # A token that cannot be spliced safely is never sent.
    assert await client.send('x"}, "topic": "all', PUSH) == TokenDead("INVALID_ARGUMENT")
    assert await client.send("", PUSH) == Failed("token: missing")
    assert len(fcm_sim.received) == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (FcmReply(error_code="UNAVAILABLE", retry_after=7), RetryLater("UNAVAILABLE", 7.0)),
        (FcmReply(error_code="INTERNAL"), RetryLater("INTERNAL")),
        (FcmReply(error_code="THIRD_PARTY_AUTH_ERROR"),
         THIRD_PARTY_OUTCOMES["THIRD_PARTY_AUTH_ERROR"]),
        (FcmReply(status=403), Failed("PERMISSION_DENIED", credential=True)),
    ],
)  # fmt: skip
async def test_other_answers(
    client: FcmClient, fcm_sim: FcmSimulator, reply: FcmReply, expected: Outcome
) -> None:
    fcm_sim.script(token(1), reply)
    assert await client.send(token(1), PUSH) == expected


async def test_dropped_connection_is_retry_later(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    fcm_sim.script(token(1), FcmReply(action="drop"))
    outcome = await client.send(token(1), PUSH)
    assert isinstance(outcome, RetryLater)
    assert outcome.reason.startswith("connection lost: ")
    assert isinstance(await client.send(token(2), PUSH), Delivered)


async def test_timeouts_and_recycling(start_client: StartClient, fcm_sim: FcmSimulator) -> None:
    client = await start_client(connections=1, request_timeout=0.5)
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    fcm_sim.set_default(FcmReply(delay=3.0))
    for n in range(RECYCLE_AFTER_TIMEOUTS):
        assert await client.send(token(n + 1), PUSH) == RetryLater("timeout", kind="unknown")
    assert client.recycled == 1
    fcm_sim.clear()
    assert isinstance(await client.send(token(9), PUSH), Delivered)
    assert fcm_sim.connections_opened == 1 + 2  # the token endpoint's, the first, its successor


async def test_not_running(settings: FcmSettings) -> None:
    assert await FcmClient(settings).send(token(1), PUSH) == RetryLater(
        "FCM client not running", kind="unreachable"
    )


async def test_logs_carry_no_tokens_or_payloads(
    start_client: StartClient,
    fcm_sim: FcmSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "pushd")
    client = await start_client(request_timeout=0.3)
    fcm_sim.script(token(1), FcmReply(delay=1.0))
    fcm_sim.script(token(2), FcmReply(error_code="UNREGISTERED"))
    await client.send(token(1), PUSH)
    await client.send(token(2), PUSH)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert token(1) not in text and token(2) not in text
    assert "message text" not in text
    assert not [
        r for r in caplog.records if r.name.startswith("pushd") and r.levelno == logging.INFO
    ]


async def test_send_many_mixed_outcomes_each_index_once(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    """One batch of 100: answers of every kind, and tokens reported without sending."""
    tokens = [token(n) for n in range(100)]
    expected: dict[int, Outcome | type[Delivered]] = dict.fromkeys(range(100), Delivered)
    for n in range(0, 100, 10):
        fcm_sim.script(token(n), FcmReply(error_code="UNREGISTERED"))
        expected[n] = TokenDead("UNREGISTERED")
    for n in range(5, 100, 20):
        fcm_sim.script(token(n), FcmReply(error_code="UNAVAILABLE", retry_after=7))
        expected[n] = RetryLater("UNAVAILABLE", 7.0)
    tokens[7] = 'x"}, "topic": "all'
    expected[7] = TokenDead("INVALID_ARGUMENT")
    tokens[8] = ""
    expected[8] = Failed("token: missing")
    reports: list[tuple[int, Outcome]] = []
    await client.send_many(tokens, PUSH, lambda i, o: reports.append((i, o)))
    assert sorted(i for i, _ in reports) == list(range(100))
    for index, outcome in reports:
        want = expected[index]
        if want is Delivered:
            assert isinstance(outcome, Delivered), (index, outcome)
            assert outcome.upstream_id is not None
        else:
            assert outcome == want, (index, outcome)
    assert len(fcm_sim.received) == 98  # the two malformed tokens were never sent
    assert fcm_sim.http_versions["2"] == 98


async def test_send_mixed_sends_each_push_to_its_own_tokens_in_one_batch(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    # The dispatcher's outbox hands concurrent requests' pushes over together.
    assert isinstance(await client.send(token(0), PUSH), Delivered)  # token and warm-up
    delay = 0.5
    fcm_sim.set_default(FcmReply(delay=delay))
    other = build_push(data={"room": "!other:example.org"})
    groups = [([token(1), token(2)], PUSH), (["", token(3)], other), ([token(4)], PUSH)]
    reports: dict[int, Outcome] = {}

    def report(index: int, outcome: Outcome) -> None:
        assert index not in reports
        reports[index] = outcome

    started = trio.current_time()
    await client.send_mixed(groups, report)
    elapsed = trio.current_time() - started
    assert sorted(reports) == [0, 1, 2, 3, 4]
    assert reports[2] == Failed("token: missing")
    assert all(isinstance(reports[i], Delivered) for i in (0, 1, 3, 4)), reports
    sent = {r.token: r.message["data"] for r in fcm_sim.received[1:]}
    assert sent == {
        token(1): PUSH_DATA,
        token(2): PUSH_DATA,
        token(3): {"room": "!other:example.org"},
        token(4): PUSH_DATA,
    }
    # Sent together: one batch waits one delay, not one per push.
    assert elapsed < 2 * delay, elapsed


async def test_send_many_401_mid_batch_refreshes_once(
    client: FcmClient, fcm_sim: FcmSimulator
) -> None:
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    fcm_sim.expire_tokens()
    reports: dict[int, Outcome] = {}

    def report(index: int, outcome: Outcome) -> None:
        assert index not in reports
        reports[index] = outcome

    await client.send_many([token(n) for n in range(1, 101)], PUSH, report)
    assert len(reports) == 100
    assert all(isinstance(o, Delivered) for o in reports.values()), reports
    assert fcm_sim.token_requests == 2
    assert [r.status for r in fcm_sim.received if r.token == token(1)] == [401, 200]


async def test_send_many_token_endpoint_down(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    fcm_sim.token_endpoint_down = True
    reports: list[tuple[int, Outcome]] = []
    await client.send_many([token(1), "", token(2)], PUSH, lambda i, o: reports.append((i, o)))
    assert sorted(i for i, _ in reports) == [0, 1, 2]
    outcomes = dict(reports)
    assert outcomes[1] == Failed("token: missing")
    for index in (0, 2):
        outcome = outcomes[index]
        assert isinstance(outcome, RetryLater)
        assert "token endpoint" in outcome.reason
    assert not fcm_sim.received


async def test_send_many_dropped_connection(client: FcmClient, fcm_sim: FcmSimulator) -> None:
    """A connection reset mid-batch: what was on it is RetryLater, each index once."""
    assert isinstance(await client.send(token(0), PUSH), Delivered)
    fcm_sim.script(token(5), FcmReply(action="drop"))
    reports: dict[int, Outcome] = {}

    def report(index: int, outcome: Outcome) -> None:
        assert index not in reports
        reports[index] = outcome

    await client.send_many([token(n) for n in range(1, 21)], PUSH, report)
    assert len(reports) == 20
    lost = [o for o in reports.values() if not isinstance(o, Delivered)]
    assert lost
    assert all(isinstance(o, RetryLater) and o.reason.startswith("connection") for o in lost)
    assert isinstance(await client.send(token(30), PUSH), Delivered)
