"""The FCM simulator's own HTTP/2 loop, seen frame by frame by a raw ``h2`` client over
real TLS sockets: answers leave coalesced, GOAWAY names the right last stream, a drop
resets, flow control works both ways, and HTTP/1.1 stays on hypercorn.

:mod:`tests.test_sim_fcm` covers what requests mean (over httpx); this module covers
what the connection does, which httpx hides.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import attrs
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.simulators.fcm import (
    JWT_BEARER_GRANT,
    MAX_CONCURRENT_STREAMS,
    MAX_REQUEST_BODY,
    FcmReply,
    FcmSimulator,
)
from pushd.simulators.fcm.h2server import H2Served
from pushd.simulators.fcm.transport import Connection
from tests.test_sim_fcm import EMAIL, PROJECT, TOKEN, TOKEN2, make_assertion

#: Seconds any one exchange may take before the test fails.
DEADLINE = 5.0
SEND_PATH = f"/v1/projects/{PROJECT}/messages:send"


@pytest.fixture
def sim(fcm_sim: FcmSimulator, fcm_key: rsa.RSAPrivateKey) -> FcmSimulator:
    """The shared FCM simulator (``tests/conftest.py``), trusting this module's account."""
    fcm_sim.add_account(EMAIL, fcm_key.public_key(), PROJECT)
    return fcm_sim


@attrs.define
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = attrs.Factory(dict)
    body: bytes = b""
    ended: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """An HTTP/2 client that shows what arrives in each read."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], window: int | None) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.resets: list[int] = []
        #: Per read: how many answers were complete after it.
        self.reads: list[int] = []

    @classmethod
    async def open(cls, port: int, ctx: ssl.SSLContext, window: int | None = None) -> RawClient:
        ctx.set_alpn_protocols(["h2"])
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        # https_compatible: the server closes without close_notify, as GFE may; that is
        # an EOF here, and only a TCP reset raises BrokenResourceError.
        stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1", https_compatible=True)
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "h2"
        client = cls(stream, window)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    def request(self, path: str, body: bytes, headers: dict[str, str], end: bool = True) -> int:
        """Queue one POST (sent by :meth:`flush`); the body must fit the window.  With
        ``end`` false the stream stays open for more of the body."""
        sid = self.h2.get_next_available_stream_id()
        fields = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode()),
            *((k.encode(), v.encode()) for k, v in headers.items()),
        ]
        self.h2.send_headers(sid, fields, end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        self.answers[sid] = Answer()
        return sid

    async def read(self) -> bool:
        """One read; false at EOF."""
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        for event in self.h2.receive_data(data):
            self.handle(event)
        await self.flush()
        self.reads.append(sum(a.ended for a in self.answers.values()))
        return True

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers or ())
            answer = self.answers[event.stream_id or 0]
            answer.status = int(headers.pop(b":status"))
            answer.headers = headers
        elif isinstance(event, h2.events.DataReceived):
            self.answers[event.stream_id or 0].body += event.data or b""
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.flow_controlled_length and not event.stream_ended:
                # Open the stream's window at once: a tiny window must not stall it.
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.increment_flow_control_window(
                        event.flow_controlled_length, event.stream_id
                    )
        elif isinstance(event, h2.events.StreamEnded):
            self.answers[event.stream_id or 0].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.resets.append(event.stream_id or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    async def until(self, *sids: int) -> None:
        with trio.fail_after(DEADLINE):
            while not all(self.answers[sid].ended for sid in sids):
                assert await self.read(), "the server hung up"

    async def until_closed(self) -> None:
        with trio.fail_after(DEADLINE):
            while await self.read():
                pass

    async def access_token(self, key: rsa.RSAPrivateKey, sim: FcmSimulator) -> str:
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": make_assertion(key, sim.token_url)}
        sid = self.request(
            "/token",
            urlencode(form).encode(),
            {"content-type": "application/x-www-form-urlencoded"},
        )
        await self.flush()
        await self.until(sid)
        assert self.answers[sid].status == 200
        token: str = self.answers[sid].json()["access_token"]
        return token

    def send(self, bearer: str, token: str = TOKEN, body: bytes | None = None) -> int:
        content = body if body is not None else send_body(token)
        headers = {"content-type": "application/json", "authorization": f"Bearer {bearer}"}
        return self.request(SEND_PATH, content, headers)


def send_body(token: str) -> bytes:
    return json.dumps({"message": {"token": token, "data": {"room": "!abc"}}}).encode()


@pytest.fixture
async def raw(sim: FcmSimulator, client_ctx: ssl.SSLContext) -> AsyncIterator[RawClient]:
    assert sim.port is not None
    client = await RawClient.open(sim.port, client_ctx)
    yield client
    await trio.aclose_forcefully(client.stream)


async def test_h2_is_served_by_the_own_loop_and_http11_by_hypercorn(
    sim: FcmSimulator, raw: RawClient, fcm_key: rsa.RSAPrivateKey, client_ctx: ssl.SSLContext
) -> None:
    await raw.access_token(fcm_key, sim)
    assert [type(c) for c in sim._connections.values()] == [H2Served]
    assert raw.h2.remote_settings.max_concurrent_streams == MAX_CONCURRENT_STREAMS
    async with httpx.AsyncClient(http2=False, verify=client_ctx, timeout=DEADLINE) as c:
        r = await c.post(f"{sim.base_url}/nowhere", content=b"{}")
        assert (r.status_code, r.http_version) == (404, "HTTP/1.1")
        assert sorted(type(c).__name__ for c in sim._connections.values()) == [
            Connection.__name__,
            H2Served.__name__,
        ]
    assert dict(sim.http_versions) == {"2": 1, "1.1": 1}
    assert sim.connections_opened == 2


async def test_concurrent_answers_leave_in_one_write(
    sim: FcmSimulator, raw: RawClient, fcm_key: rsa.RSAPrivateKey
) -> None:
    bearer = await raw.access_token(fcm_key, sim)
    reads_before = len(raw.reads)
    sids = [raw.send(bearer, f"{TOKEN}{i}") for i in range(20)]
    await raw.flush()  # one TLS record: the server reads all 20 requests at once
    await raw.until(*sids)
    names = {raw.answers[sid].json()["name"] for sid in sids}
    assert len(names) == 20
    assert all(raw.answers[sid].status == 200 for sid in sids)
    # Every answer, HEADERS and DATA, arrived in the first read after the requests.
    assert raw.reads[reads_before] == 21
    assert len(sim.received) == 20 and sim.http_versions["2"] == 21


async def test_goaway_after_names_the_last_answered_stream(
    sim: FcmSimulator, raw: RawClient, fcm_key: rsa.RSAPrivateKey
) -> None:
    sim.goaway_after = 3
    bearer = await raw.access_token(fcm_key, sim)  # stream 1, the first request taken
    sim.script(TOKEN2, FcmReply(delay=30))
    answered = raw.send(bearer)  # stream 3
    await raw.flush()
    await raw.until(answered)
    waiting = raw.send(bearer, TOKEN2)  # stream 5, answer pending
    refused = raw.send(bearer)  # stream 7, one request too many
    await raw.flush()
    await raw.until_closed()
    assert raw.goaway is not None
    assert raw.goaway.error_code == 0 and raw.goaway.additional_data == b"Shutdown"
    assert raw.goaway.last_stream_id == waiting - 2 == answered
    assert not raw.answers[waiting].ended and not raw.answers[refused].ended
    assert sim.goaways_sent == 1
    assert [r.token for r in sim.received] == [TOKEN]
    assert sim.open_connections == 0


async def test_scripted_goaway_leaves_pending_streams_above_it(
    sim: FcmSimulator, raw: RawClient, fcm_key: rsa.RSAPrivateKey
) -> None:
    bearer = await raw.access_token(fcm_key, sim)
    sim.script(TOKEN, FcmReply(delay=30))
    sim.script(TOKEN2, FcmReply(action="goaway", message="Draining"))
    pending = raw.send(bearer, TOKEN)
    raw.send(bearer, TOKEN2)
    await raw.flush()
    await raw.until_closed()
    assert raw.goaway is not None and raw.goaway.additional_data == b"Draining"
    assert raw.goaway.last_stream_id == pending - 2
    assert sim.goaways_sent == 1 and sim.received == []


async def test_drop_resets_the_connection_without_answers(
    sim: FcmSimulator, raw: RawClient, fcm_key: rsa.RSAPrivateKey
) -> None:
    bearer = await raw.access_token(fcm_key, sim)
    sim.script(TOKEN2, FcmReply(action="drop"))
    first = raw.send(bearer, TOKEN)
    sim.script(TOKEN, FcmReply(delay=30))
    raw.send(bearer, TOKEN2)
    await raw.flush()
    with pytest.raises(trio.BrokenResourceError):  # ECONNRESET, not a clean close
        await raw.until_closed()
    assert raw.goaway is None and not raw.answers[first].ended
    assert sim.connections_dropped == 1 and sim.received == []


async def test_a_body_larger_than_the_window_flows_and_is_capped(
    sim: FcmSimulator, raw: RawClient, fcm_key: rsa.RSAPrivateKey
) -> None:
    bearer = await raw.access_token(fcm_key, sim)
    headers = {"content-type": "application/json", "authorization": f"Bearer {bearer}"}
    sid = raw.request(SEND_PATH, b"", headers, end=False)  # the body follows as windows allow
    body = b" " * (MAX_REQUEST_BODY + 100_000)
    with trio.fail_after(DEADLINE):
        while body:
            room = min(raw.h2.local_flow_control_window(sid), raw.h2.max_outbound_frame_size)
            if room == 0:
                await raw.flush()
                assert await raw.read()
                continue
            chunk, body = body[:room], body[room:]
            raw.h2.send_data(sid, chunk, end_stream=not body)
    await raw.flush()
    await raw.until(sid)
    answer = raw.answers[sid]
    assert answer.status == 400
    assert str(MAX_REQUEST_BODY) in answer.json()["error"]["message"]


async def test_answers_wait_for_a_small_client_window(
    sim: FcmSimulator, client_ctx: ssl.SSLContext
) -> None:
    assert sim.port is not None
    client = await RawClient.open(sim.port, client_ctx, window=16)
    try:
        sids = [client.send("not-a-token") for _ in range(3)]
        await client.flush()
        await client.until(*sids)
        for sid in sids:
            answer = client.answers[sid]
            assert answer.status == 401
            assert int(answer.headers[b"content-length"]) == len(answer.body) > 16
            assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    finally:
        await trio.aclose_forcefully(client.stream)
