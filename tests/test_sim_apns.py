"""The APNs simulator, exercised over real TLS + HTTP/2 sockets.

httpx covers request/answer behaviour; a raw h2 client on a trio SSLStream covers what
httpx hides: SETTINGS changes, GOAWAY frames, refused streams and resets.
"""

from __future__ import annotations

import base64
import functools
import json
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from subprocess import PIPE
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio
import trio.testing
import trustme
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from pushd.simulators import certs, cli
from pushd.simulators.apns import ApnsSimulator, SimReply

#: How long a test may wait for a ``pushd simulate`` child process.
SUBPROCESS_DEADLINE = 30

TOPIC = "com.example.chat"
KID = "ABC123DEFG"
TEAM = "TEAM123456"
OTHER_KID = "ZZZ999YYYX"
OTHER_TEAM = "TEAM999999"
TOKEN = "a1" * 32
TOKEN2 = "b2" * 32
TIMEOUT = 1.5

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(
    key: ec.EllipticCurvePrivateKey = KEY,
    kid: str = KID,
    team: str = TEAM,
    iat: float | None = None,
    alg: str = "ES256",
) -> str:
    header = _b64(json.dumps({"alg": alg, "kid": kid}).encode())
    claims = _b64(
        json.dumps({"iss": team, "iat": int(time.time() if iat is None else iat)}).encode()
    )
    signing_input = f"{header}.{claims}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    return f"{header}.{claims}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


JWT = make_jwt()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return certs.configure_h2(ctx)


@pytest.fixture(scope="module")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    return ctx


Start = Callable[..., Any]


@pytest.fixture
def start(nursery: trio.Nursery, server_ctx: ssl.SSLContext) -> Start:
    """Start a simulator with the given options, the test key registered."""

    async def _start(**options: Any) -> ApnsSimulator:
        options.setdefault("topics", frozenset({TOPIC}))
        sim = ApnsSimulator(**options)
        sim.add_key(KID, TEAM, KEY.public_key())
        await nursery.start(sim.serve, server_ctx)
        return sim

    return _start


@pytest.fixture
async def client(client_ctx: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(http2=True, verify=client_ctx, timeout=TIMEOUT) as c:
        yield c


def headers(**overrides: str | None) -> dict[str, str]:
    base: dict[str, str | None] = {
        "authorization": f"bearer {JWT}",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
    }
    base.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return {k: v for k, v in base.items() if v is not None}


BODY = b'{"aps":{"alert":"hi"}}'


async def post(
    client: httpx.AsyncClient,
    sim: ApnsSimulator,
    token: str = TOKEN,
    body: bytes = BODY,
    method: str = "POST",
    path: str | None = None,
    **hdrs: str | None,
) -> httpx.Response:
    url = f"https://127.0.0.1:{sim.port}" + (path if path is not None else f"/3/device/{token}")
    with trio.fail_after(TIMEOUT):
        return await client.request(method, url, content=body, headers=headers(**hdrs))


# --- raw h2 client -----------------------------------------------------------------------


class RawClient:
    """A bare h2 client, to see frames httpx keeps to itself."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.eof = False

    @classmethod
    async def connect(cls, sim: ApnsSimulator, ctx: ssl.SSLContext) -> RawClient:
        assert sim.port is not None
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", sim.port, ssl_context=ctx, https_compatible=True
        )
        return cls(stream)

    def request(
        self,
        stream_id: int,
        token: str = TOKEN,
        body: bytes = BODY,
        end: bool = True,
        jwt: str = JWT,
        **hdrs: str,
    ) -> None:
        hs = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "127.0.0.1"),
            (":path", f"/3/device/{token}"),
            *headers(authorization=f"bearer {jwt}", **hdrs).items(),
        ]
        self.h2.send_headers(stream_id, hs, end_stream=not body and end)
        if body:
            self.h2.send_data(stream_id, body, end_stream=end)

    async def flush(self) -> None:
        await self.stream.send_all(self.h2.data_to_send())

    async def until(self, done: Callable[[list[h2.events.Event]], bool]) -> list[h2.events.Event]:
        """Read until ``done(all events so far)`` or EOF; return all events."""
        with trio.fail_after(TIMEOUT):
            while not done(self.events):
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    self.eof = True
                    break
                self.events.extend(self.h2.receive_data(data))
                await self.flush()  # ACK settings, PING
        return self.events

    def status(self, stream_id: int) -> int | None:
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream_id:
                return int(dict(e.headers or [])[b":status"])
        return None

    def ended(self, stream_id: int) -> bool:
        return any(
            isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
            and e.stream_id == stream_id
            for e in self.events
        )

    def stream_limits(self) -> list[int]:
        return [
            e.changed_settings[SettingCodes.MAX_CONCURRENT_STREAMS].new_value
            for e in self.events
            if isinstance(e, h2.events.RemoteSettingsChanged)
            and SettingCodes.MAX_CONCURRENT_STREAMS in e.changed_settings
        ]

    def terminated(self) -> h2.events.ConnectionTerminated | None:
        for e in self.events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e
        return None

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def has_terminated(events: list[h2.events.Event]) -> bool:
    return any(isinstance(e, h2.events.ConnectionTerminated) for e in events)


# --- success ---------------------------------------------------------------------------


async def test_success_with_valid_jwt(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    apns_id = "123e4567-e89b-12d3-a456-4266554400a0"
    r = await post(client, sim, apns_id=apns_id, apns_priority="10", apns_collapse_id="c1")
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["apns-id"] == apns_id
    (rec,) = sim.received
    assert (rec.token, rec.topic, rec.push_type, rec.priority) == (TOKEN, TOPIC, "alert", 10)
    assert (rec.collapse_id, rec.apns_id, rec.payload, rec.status) == ("c1", apns_id, BODY, 200)
    assert rec.reason is None


async def test_fresh_apns_id_when_absent(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    r = await post(client, sim)
    assert r.status_code == 200
    assert len(r.headers["apns-id"]) == 36
    assert sim.received[0].apns_id == r.headers["apns-id"]


@pytest.mark.parametrize(
    ("push_type", "topic", "size"),
    [
        ("voip", TOPIC + ".voip", 5120),
        ("liveactivity", TOPIC + ".push-type.liveactivity", 10),
        ("pushtotalk", TOPIC + ".voip-ptt", 10),
        ("fileprovider", TOPIC + ".pushkit.fileprovider", 10),
        ("location", TOPIC + ".location-query", 10),
        ("complication", TOPIC + ".complication", 10),
        ("alert", TOPIC, 4096),
    ],
)
async def test_push_types_with_their_topics(
    start: Start, client: httpx.AsyncClient, push_type: str, topic: str, size: int
) -> None:
    sim = await start()
    r = await post(client, sim, body=b"x" * size, apns_push_type=push_type, apns_topic=topic)
    assert r.status_code == 200, r.content


# --- validation errors -------------------------------------------------------------------

BAD_SIGNATURE = JWT[: JWT.rindex(".") + 1] + _b64(bytes(64))

INVALID = "InvalidProviderToken"


def bearer(**jwt_args: Any) -> str:
    return f"bearer {make_jwt(**jwt_args)}"


VOIP = {"apns_push_type": "voip", "apns_topic": TOPIC + ".voip"}

VALIDATION_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("bad apns-id", {"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
    ("GET", {"method": "GET"}, 405, "MethodNotAllowed"),
    ("bad path", {"path": f"/3/devices/{TOKEN}"}, 404, "BadPath"),
    ("no token", {"path": "/3/device/"}, 400, "MissingDeviceToken"),
    ("no topic", {"apns_topic": None}, 400, "MissingTopic"),
    ("foreign topic", {"apns_topic": "org.other.app"}, 400, "TopicDisallowed"),
    ("unknown suffix", {"apns_topic": TOPIC + ".bogus"}, 400, "BadTopic"),
    ("collapse id", {"apns_collapse_id": "c" * 65}, 400, "BadCollapseId"),
    ("priority 7", {"apns_priority": "7"}, 400, "BadPriority"),
    ("background 10", {"apns_push_type": "background", "apns_priority": "10"}, 400, "BadPriority"),
    ("unknown type", {"apns_push_type": "bogus"}, 400, "InvalidPushType"),
    ("voip, plain topic", {"apns_push_type": "voip"}, 400, "InvalidPushType"),
    ("alert, voip topic", {"apns_topic": TOPIC + ".voip"}, 400, "InvalidPushType"),
    ("short token", {"token": "abcd"}, 400, "BadDeviceToken"),
    ("non-hex token", {"token": "zz" * 32}, 400, "BadDeviceToken"),
    ("no JWT", {"authorization": None}, 403, "MissingProviderToken"),
    ("unknown kid", {"authorization": bearer(kid="NOPE")}, 403, INVALID),
    ("wrong key", {"authorization": bearer(key=OTHER_KEY)}, 403, INVALID),
    ("bad signature", {"authorization": f"bearer {BAD_SIGNATURE}"}, 403, INVALID),
    ("wrong team", {"authorization": bearer(team=OTHER_TEAM)}, 403, INVALID),
    ("alg", {"authorization": bearer(alg="HS256")}, 403, INVALID),
    ("garbage JWT", {"authorization": "bearer abc.def"}, 403, INVALID),
    ("future iat", {"authorization": bearer(iat=time.time() + 600)}, 403, INVALID),
    ("old iat", {"authorization": bearer(iat=time.time() - 3700)}, 403, "ExpiredProviderToken"),
    ("expiration", {"apns_expiration": "soon"}, 400, "BadExpirationDate"),
    ("empty body", {"body": b""}, 400, "PayloadEmpty"),
    ("too large", {"body": b"x" * 4097}, 413, "PayloadTooLarge"),
    ("voip too large", {"body": b"x" * 5121, **VOIP}, 413, "PayloadTooLarge"),
]


@pytest.mark.parametrize(
    ("overrides", "status", "reason"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
async def test_validation_errors(
    start: Start, client: httpx.AsyncClient, overrides: dict[str, Any], status: int, reason: str
) -> None:
    sim = await start()
    r = await post(client, sim, **overrides)
    assert (r.status_code, r.json()) == (status, {"reason": reason})
    assert r.headers["apns-id"]
    assert sim.received[-1].reason == reason


async def test_duplicate_headers(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    hs = [*headers().items(), ("apns-priority", "10"), ("apns-priority", "5")]
    r = await client.post(
        f"https://127.0.0.1:{sim.port}/3/device/{TOKEN}", content=BODY, headers=hs
    )
    assert (r.status_code, r.json()) == (400, {"reason": "DuplicateHeaders"})


async def test_topic_checks_off_without_topic_list(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start(topics=None)
    r = await post(client, sim, apns_topic="org.anything.at.all")
    assert r.status_code == 200


async def test_second_team_on_one_connection(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    sim.add_key(OTHER_KID, OTHER_TEAM, OTHER_KEY.public_key())
    other = make_jwt(OTHER_KEY, OTHER_KID, OTHER_TEAM, iat=time.time() - 1500)
    assert (await post(client, sim, authorization=f"bearer {other}")).status_code == 200
    r = await post(client, sim)
    assert (r.status_code, r.json()["reason"]) == (403, "InvalidProviderToken")
    assert sim.connections_opened == 1


async def test_too_many_provider_token_updates(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    assert (await post(client, sim)).status_code == 200
    newer = make_jwt(iat=time.time() - 1)
    r = await post(client, sim, authorization=f"bearer {newer}")
    assert (r.status_code, r.json()) == (429, {"reason": "TooManyProviderTokenUpdates"})
    # The connection keeps its token.
    assert (await post(client, sim)).status_code == 200


async def test_token_refresh_after_20_minutes(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    old = make_jwt(iat=time.time() - 25 * 60)
    assert (await post(client, sim, authorization=f"bearer {old}")).status_code == 200
    assert (await post(client, sim)).status_code == 200
    assert sim.connections_opened == 1


async def test_accept_any_key_still_checks_iat(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start(accept_any_key=True)
    unknown = make_jwt(OTHER_KEY, kid="WHOEVER", team=TEAM)
    assert (await post(client, sim, authorization=f"bearer {unknown}")).status_code == 200
    expired = make_jwt(OTHER_KEY, kid="WHOEVER", iat=time.time() - 4000)
    r = await post(client, sim, authorization=f"bearer {expired}")
    assert r.json() == {"reason": "ExpiredProviderToken"}


# --- scripting -------------------------------------------------------------------------


async def test_scripted_410_with_timestamp(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    sim.script(TOKEN, SimReply(410, "Unregistered", timestamp_ms=1_700_000_000_123))
    sim.script(TOKEN2, SimReply(410, "ExpiredToken"))
    r = await post(client, sim)
    assert (r.status_code, r.json()) == (
        410,
        {"reason": "Unregistered", "timestamp": 1_700_000_000_123},
    )
    before = int(time.time() * 1000)
    r2 = await post(client, sim, token=TOKEN2)
    assert r2.json()["reason"] == "ExpiredToken"
    assert before <= r2.json()["timestamp"] <= int(time.time() * 1000)
    # Replies are used up in order, then plain success.
    assert (await post(client, sim)).status_code == 200


async def test_default_reply_and_clear(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    sim.set_default(SimReply(503, retry_after=7))
    r = await post(client, sim)
    assert (r.status_code, r.json(), r.headers["retry-after"]) == (
        503,
        {"reason": "ServiceUnavailable"},
        "7",
    )
    sim.script(TOKEN, SimReply(500))
    sim.clear()
    assert (await post(client, sim)).status_code == 200


async def test_scripted_success_still_validated(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    sim.script(TOKEN, SimReply(200, delay=0.01))
    r = await post(client, sim, body=b"")
    assert r.json() == {"reason": "PayloadEmpty"}


async def test_delay_does_not_block_other_streams(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    assert (await post(client, sim)).status_code == 200  # authenticate: more streams
    sim.script(TOKEN, SimReply(delay=0.3))
    order: list[str] = []

    async def send(token: str) -> None:
        assert (await post(client, sim, token=token)).status_code == 200
        order.append(token)

    async with trio.open_nursery() as n:
        n.start_soon(send, TOKEN)
        await trio.sleep(0.05)
        n.start_soon(send, TOKEN2)
    assert order == [TOKEN2, TOKEN]
    assert sim.connections_opened == 1
    assert sim.max_in_flight[1] == 2


async def test_wait_for(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()

    async def later() -> None:
        await trio.sleep(0.05)
        for _ in range(3):
            await post(client, sim)

    async with trio.open_nursery() as n:
        n.start_soon(later)
        with trio.fail_after(TIMEOUT):
            got = await sim.wait_for(3)
    assert len(got) == 3


async def test_drop_then_new_connection(start: Start, client: httpx.AsyncClient) -> None:
    sim = await start()
    sim.script(TOKEN, SimReply(action="drop"))
    with pytest.raises(httpx.TransportError):
        await post(client, sim)
    assert sim.received == []
    assert (await post(client, sim)).status_code == 200
    assert sim.connections_opened == 2


async def test_goaway_action(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start()
    raw = await RawClient.connect(sim, client_ctx)
    raw.request(1)
    await raw.flush()
    await raw.until(lambda _: raw.ended(1))
    sim.script(TOKEN, SimReply(action="goaway", reason="Shutdown", delay=0.05))
    sim.script(TOKEN2, SimReply(delay=0.5))
    raw.request(3)
    raw.request(5, token=TOKEN2)  # still waiting at the GOAWAY: unanswered, retryable
    await raw.flush()
    await raw.until(has_terminated)
    term = raw.terminated()
    assert term is not None
    assert term.error_code == ErrorCodes.NO_ERROR
    assert term.last_stream_id == 1
    assert json.loads(term.additional_data or b"") == {"reason": "Shutdown"}
    assert raw.status(3) is None and raw.status(5) is None
    assert [r.stream_id for r in sim.received] == [1]
    assert sim.goaways_sent == 1


async def test_goaway_all(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start()
    raws = [await RawClient.connect(sim, client_ctx) for _ in range(2)]
    for raw in raws:
        raw.request(1)
        await raw.flush()
        await raw.until(lambda _, raw=raw: raw.ended(1))  # type: ignore[misc]
    assert sim.open_connections == 2
    sim.goaway_all("Shutdown")
    for raw in raws:
        await raw.until(has_terminated)
        term = raw.terminated()
        assert term is not None and term.last_stream_id == 1
        assert json.loads(term.additional_data or b"") == {"reason": "Shutdown"}
        await raw.aclose()
    await trio.testing.wait_all_tasks_blocked(0.05)  # let the server notice the EOFs
    assert sim.open_connections == 0


async def test_idle_timeout(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start(idle_timeout=0.2)
    raw = await RawClient.connect(sim, client_ctx)
    raw.request(1)
    await raw.flush()
    t0 = trio.current_time()
    await raw.until(has_terminated)
    assert raw.status(1) == 200
    assert trio.current_time() - t0 >= 0.2
    term = raw.terminated()
    assert term is not None
    assert json.loads(term.additional_data or b"") == {"reason": "IdleTimeout"}


# --- stream limits ----------------------------------------------------------------------


async def test_one_stream_until_authenticated_then_raised(
    start: Start, client_ctx: ssl.SSLContext
) -> None:
    sim = await start(max_streams=50)
    raw = await RawClient.connect(sim, client_ctx)
    # Sent before the server's SETTINGS arrive, so the client h2 lets us open two streams:
    # stream 1 stays open (no END_STREAM), stream 3 exceeds the advertised limit of 1.
    raw.request(1, end=False)
    raw.request(3)
    await raw.flush()
    await raw.until(lambda _: raw.ended(3))
    assert raw.stream_limits() == [1]
    (reset,) = [e for e in raw.events if isinstance(e, h2.events.StreamReset)]
    assert (reset.stream_id, reset.error_code) == (3, ErrorCodes.REFUSED_STREAM)
    assert sim.streams_refused == 1

    raw.h2.end_stream(1)
    await raw.flush()
    await raw.until(lambda _: raw.ended(1) and len(raw.stream_limits()) == 2)
    assert raw.status(1) == 200
    assert raw.stream_limits() == [1, 50]

    # Now several streams may be open at once; delays keep them open together.
    tokens = [f"{i:02x}" * 32 for i in range(5)]
    for i, token in enumerate(tokens):
        sim.script(token, SimReply(delay=0.1))
        raw.request(5 + 2 * i, token=token)
    await raw.flush()
    await raw.until(lambda _: all(raw.ended(5 + 2 * i) for i in range(5)))
    assert [raw.status(5 + 2 * i) for i in range(5)] == [200] * 5
    assert sim.max_in_flight[1] == 5
    assert sim.streams_refused == 1


async def test_full_limit_at_once_without_token_auth(
    start: Start, client_ctx: ssl.SSLContext
) -> None:
    sim = await start(require_token_auth=False, max_streams=20)
    raw = await RawClient.connect(sim, client_ctx)
    raw.request(1, jwt="")
    await raw.flush()
    await raw.until(lambda _: raw.ended(1))
    assert raw.status(1) == 200
    assert raw.stream_limits() == [20]


async def test_shrink_after_rejection_and_restore(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start(max_streams=100)
    raw = await RawClient.connect(sim, client_ctx)
    raw.request(1)
    await raw.flush()
    await raw.until(lambda _: raw.ended(1) and len(raw.stream_limits()) == 2)
    assert raw.stream_limits() == [1, 100]

    sim.script(TOKEN, SimReply(410))
    raw.request(3)
    await raw.flush()
    await raw.until(lambda _: raw.ended(3) and len(raw.stream_limits()) == 3)
    assert raw.status(3) == 410
    assert raw.stream_limits() == [1, 100, 1]

    raw.request(5, apns_priority="3")  # another rejection: no new SETTINGS
    raw_ok = 7
    await raw.flush()
    await raw.until(lambda _: raw.ended(5))
    raw.request(raw_ok)
    await raw.flush()
    await raw.until(lambda _: raw.ended(raw_ok) and len(raw.stream_limits()) == 4)
    assert (raw.status(5), raw.status(raw_ok)) == (400, 200)
    assert raw.stream_limits() == [1, 100, 1, 100]


async def test_no_shrink_when_disabled(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start(max_streams=100, shrink_after_rejection=False)
    raw = await RawClient.connect(sim, client_ctx)
    raw.request(1)
    raw.request(3, apns_priority="3")
    await raw.flush()
    await raw.until(lambda _: raw.ended(1) and raw.ended(3))
    await trio.sleep(0.05)
    await raw.until(lambda _: True)
    assert raw.stream_limits() == [1, 100]


# --- connection hygiene -------------------------------------------------------------------


async def test_ping_and_client_reset(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start()
    raw = await RawClient.connect(sim, client_ctx)
    raw.request(1)
    await raw.flush()
    await raw.until(lambda _: raw.ended(1))
    sim.script(TOKEN2, SimReply(delay=0.2))
    raw.request(3, token=TOKEN2)
    raw.h2.ping(b"12345678")
    await raw.flush()
    await raw.until(lambda ev: any(isinstance(e, h2.events.PingAckReceived) for e in ev))
    raw.h2.reset_stream(3, ErrorCodes.CANCEL)
    raw.request(5)
    await raw.flush()
    await raw.until(lambda _: raw.ended(5))
    await trio.sleep(0.3)  # past the cancelled delay: nothing is sent for stream 3
    await raw.until(lambda _: True)
    assert raw.status(5) == 200 and raw.status(3) is None
    assert [r.stream_id for r in sim.received] == [1, 5]


async def test_large_body_flow_control(start: Start, client_ctx: ssl.SSLContext) -> None:
    """A body far beyond the default 64 KiB windows arrives without stalling."""
    sim = await start()
    raw = await RawClient.connect(sim, client_ctx)
    await raw.until(lambda _: bool(raw.stream_limits()))  # learn the server's windows
    body = b"x" * 300_000
    raw.request(1, body=b"", end=False)
    sent = 0
    while sent < len(body):
        chunk = min(
            raw.h2.local_flow_control_window(1), raw.h2.max_outbound_frame_size, len(body) - sent
        )
        if chunk == 0:
            await raw.until(lambda ev: isinstance(ev[-1], h2.events.WindowUpdated))
            continue
        raw.h2.send_data(1, body[sent : sent + chunk], end_stream=sent + chunk == len(body))
        sent += chunk
        await raw.flush()
    await raw.until(lambda _: raw.ended(1))
    assert raw.status(1) == 413
    assert len(sim.received[0].payload) == 64 * 1024  # kept, cut at MAX_KEPT_BODY


async def test_many_concurrent_connections(start: Start, client_ctx: ssl.SSLContext) -> None:
    sim = await start()
    clients = [httpx.AsyncClient(http2=True, verify=client_ctx, timeout=TIMEOUT) for _ in range(5)]
    async with trio.open_nursery() as n:
        for c in clients:
            for _ in range(4):
                n.start_soon(post, c, sim)
    for c in clients:
        await c.aclose()
    assert len(sim.received) == 20
    assert all(r.status == 200 for r in sim.received)
    assert sim.connections_opened == 5


async def test_self_signed_certs(tmp_path: Any) -> None:
    tls = certs.make_self_signed()
    tls.write_ca(tmp_path / "ca.pem")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    sim = ApnsSimulator(accept_any_key=True)
    async with trio.open_nursery() as n:
        port = await n.start(sim.serve, tls.server_context())
        async with httpx.AsyncClient(http2=True, verify=client_ctx) as c:
            for host in ("127.0.0.1", "localhost"):
                r = await c.post(
                    f"https://{host}:{port}/3/device/{TOKEN}", content=BODY, headers=headers()
                )
                assert (r.status_code, r.http_version) == (200, "HTTP/2")
        n.cancel_scope.cancel()


async def test_cli_runs_and_prints_lines(tmp_path: Any) -> None:
    """``pushd simulate`` serves, prints one line per notification, stops on SIGINT.

    Started with SIGINT ignored, as a shell without job control starts a background
    command (``pushd simulate &`` in a script): SIGINT still stops it."""
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_file = tmp_path / "ca.pem"
    cmd = [
        sys.executable, "-m", "pushd.simulators.cli", "--port", "0",
        "--ca-out", str(ca_file), "--trust-key", f"{KID}:{TEAM}:{key_file}",
    ]  # fmt: skip
    # A child Python must start and import pushd first: generous on a loaded machine.
    with trio.fail_after(SUBPROCESS_DEADLINE):
        async with trio.open_nursery() as n:
            run = functools.partial(
                trio.run_process, cmd, stdout=PIPE, stderr=PIPE, check=False,
                preexec_fn=_ignore_sigint,
            )  # fmt: skip
            proc = await n.start(run)
            err = b""
            while b"(Ctrl-C" not in err:
                err += await proc.stderr.receive_some(4096)
            port = int(err.split(b"https://127.0.0.1:")[1].split(b" ")[0])
            ctx = ssl.create_default_context(cafile=str(ca_file))
            async with httpx.AsyncClient(http2=True, verify=ctx) as c:
                r = await c.post(
                    f"https://127.0.0.1:{port}/3/device/{TOKEN}", content=BODY, headers=headers()
                )
            assert r.status_code == 200
            out = b""
            while b"  200" not in out:  # the line may arrive in pieces
                out += await proc.stdout.receive_some(4096)
            assert b"a1a1a1" in out and TOKEN.encode() not in out
            assert b"alert  22B  200" in out
            proc.send_signal(signal.SIGINT)
    assert proc.returncode == 0
    assert b"stopped after 1 notifications" in await proc.stderr.receive_some(4096) + err


def _ignore_sigint() -> None:
    """In the child before exec: SIGINT ignored, as ``&`` in a non-interactive shell."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def test_cleartext_h2_prior_knowledge(nursery: trio.Nursery) -> None:
    sim = ApnsSimulator(accept_any_key=True)
    port = await nursery.start(sim.serve, None)
    async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as c:
        r = await c.post(
            f"http://127.0.0.1:{port}/3/device/{TOKEN}", content=BODY, headers=headers()
        )
    assert (r.status_code, r.http_version) == (200, "HTTP/2")


def test_cli_trust_key_accepts_public_pem(tmp_path: Any) -> None:
    path = tmp_path / "key.pub"
    path.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    kid, team, public = cli.parse_trust_key(f"{KID}:{TEAM}:{path}")
    assert (kid, team, public.public_numbers()) == (KID, TEAM, KEY.public_key().public_numbers())
    with pytest.raises(cli.UsageError):
        cli.parse_trust_key("only-a-kid")


async def test_record_off_keeps_memory_flat(start: Start, client: httpx.AsyncClient) -> None:
    seen: list[int] = []
    sim = await start(record=False, on_received=lambda r: seen.append(r.status))
    await post(client, sim)
    await post(client, sim, body=b"")
    assert (sim.received, sim.answered, seen) == ([], 2, [200, 400])
