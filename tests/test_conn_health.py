"""Connection health of the APNs client against the APNs simulator: connections that
stop answering, say ``Shutdown`` or allow no streams are replaced, not kept.

Each test is one of a tester's findings against a fake APNs (wedged connection, 503
``Shutdown``, SETTINGS_MAX_CONCURRENT_STREAMS 0), over real TLS sockets on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from pushd.model import Delivered, Outcome, RetryLater
from pushd.simulators.apns import SimReply
from pushd.upstream.apns.client import ApnsClient
from tests.test_apns_client import PUSH, TEST_DEADLINE, Env, start_env, token

#: The request timeout of these tests' clients (seconds): short, so that a few time out.
TIMEOUT = 0.3


async def send_all(client: ApnsClient, tokens: list[str]) -> dict[str, Outcome]:
    """Send one push to each of ``tokens`` at once (one batch)."""
    outcomes: dict[str, Outcome] = {}
    await client.send_many(
        tokens, PUSH, lambda index, outcome: outcomes.update({tokens[index]: outcome})
    )
    return outcomes


@pytest.fixture
async def env(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Env]:
    with trio.fail_after(TEST_DEADLINE):
        yield await start_env(tmp_path, nursery)


async def test_a_connection_that_only_times_out_is_replaced(env: Env) -> None:
    """A connection that stops answering but still ACKs PING was never replaced (over
    ~47 s one connection, every push retried, some given up): after three timeouts in a
    row it is, and the next push goes out on a new one."""
    client = await env.client(request_timeout=TIMEOUT)
    assert isinstance(await client.send(token(1), PUSH), Delivered)
    env.sim.set_default(SimReply(delay=60))  # answers nothing; h2 still ACKs PING
    for n in range(2, 5):
        assert await client.send(token(n), PUSH) == RetryLater("timeout", kind="unknown")
    env.sim.clear()
    assert isinstance(await client.send(token(5), PUSH), Delivered)
    assert env.sim.connections_opened == 2
    assert env.sim.received[-1].connection_id != env.sim.received[0].connection_id
    assert client.recycled == 1


async def test_shutdown_retires_the_connection_after_its_streams_end(env: Env) -> None:
    """503 ``Shutdown`` says the server is going down, move to a new connection; every
    retry went to the same connection and heard ``Shutdown`` again (tester: 4 requests
    per token, one connection, some given up).  Now the connection takes no new
    requests, what is in flight on it finishes there, and the next push goes out on a
    new connection; the push that heard ``Shutdown`` is retried as before."""
    client = await env.client()
    assert isinstance(await client.send(token(1), PUSH), Delivered)
    env.sim.script(token(2), SimReply(delay=0.2))  # in flight when Shutdown comes
    env.sim.script(token(3), SimReply(503, "Shutdown", delay=0.05))
    outcomes = await send_all(client, [token(2), token(3)])
    assert isinstance(outcomes[token(2)], Delivered)
    assert outcomes[token(3)] == RetryLater("Shutdown")
    assert isinstance(await client.send(token(4), PUSH), Delivered)
    connection = {r.token: r.connection_id for r in env.sim.received}
    assert connection[token(2)] == connection[token(3)] == connection[token(1)]
    assert connection[token(4)] != connection[token(1)]
    assert env.sim.connections_opened == 2


async def test_a_goaway_saying_the_jwt_expired_regenerates_it(env: Env) -> None:
    """``ExpiredProviderToken`` in a GOAWAY is answered as in a 403: a new JWT, the
    request resent once (on a new connection), not resent with the refused JWT."""
    client = await env.client()
    env.sim.script(token(1), SimReply(action="goaway", reason="ExpiredProviderToken"))
    first_jwt = client.provider.current(client.clock()) if client.provider else None
    assert isinstance(await client.send(token(1), PUSH), Delivered)
    assert client.provider is not None
    assert client.provider.current(client.clock()) != first_jwt
    assert env.sim.goaways_sent == 1
