"""One app's upstream authentication misbehaving, the others unaffected (over HTTP,
against the simulators and small upstreams that misbehave on real TLS sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.simulators.fcm import FcmSimulator, make_service_account
from tests.conftest import FCM_PROJECT, PushdFactory, fcm_entry
from tests.misbehaving import LocalServer, TlsServer, send_alert, server_context

#: The broken app's request_timeout: its token requests give up this soon too.
REQUEST_TIMEOUT = 1.0
#: Pushes sent to the broken app after its first failure.
SENDS = 6
#: Bytes per write of the endless answer.
CHUNK = 1 << 16
#: Generous bound on the broken app's answer: far below its 10 s deadline.
ANSWER_WITHIN = 8.0


def fcm_token(n: int) -> str:
    return f"fcm-device-{n:04d}:APA91b" + "x" * 40


class Silent(LocalServer):
    """A token endpoint that accepts TCP connections and never says a word."""

    async def connection(self, tcp: trio.SocketStream) -> None:
        async with tcp:
            await trio.sleep_forever()


async def send(pushd: Any, app: str, device: str) -> tuple[dict[str, Any], float]:
    """:func:`send_alert`, and how long its answer took."""
    started = trio.current_time()
    result = await send_alert(pushd, app, device)
    return result, trio.current_time() - started


async def test_a_token_endpoint_that_never_answers_fails_fast_after_its_first_timeout(
    nursery: trio.Nursery,
    start_pushd: PushdFactory,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    """The broken app's token endpoint accepts the connection and never answers.  Each
    refresh ran in the task of the send that wanted it, so the send's deadline cancelled
    it before the token timeout could record a failure: no backoff ever started, every
    push held its caller for the whole deadline (10 s by default) and was spooled as a
    bare "timeout", and every batch opened another connection to the endpoint.  Now the
    first timeout is remembered: later pushes hear "token endpoint: timeout" at once
    (spooled), the endpoint is asked at the backoff's pace, and the healthy FCM app
    delivers throughout."""
    silent = Silent()
    await nursery.start(silent.serve)
    broken = fcm_entry("broken", fcm_simulator, fcm_key, ca_file, tmp_path)
    account = tmp_path / "broken-account.json"
    make_service_account(
        account, FCM_PROJECT, f"https://127.0.0.1:{silent.port}/token", key=fcm_key
    )
    broken.update(service_account_file=str(account), request_timeout=REQUEST_TIMEOUT)
    healthy = fcm_entry("healthy", fcm_simulator, fcm_key, ca_file, tmp_path)
    pushd = await start_pushd(apps=[broken, healthy])
    await pushd.register("b", fcm_token(1), app="broken")
    await pushd.register("h", fcm_token(2), app="healthy")

    first, _ = await send(pushd, "broken", fcm_token(1))
    assert first["status"] == "retrying"
    answers = []
    for _ in range(SENDS):
        answers.append(await send(pushd, "broken", fcm_token(1)))
        result, _ = await send(pushd, "healthy", fcm_token(2))
        assert result["status"] == "delivered"
    assert [result["status"] for result, _ in answers] == ["retrying"] * SENDS
    assert all("token endpoint" in result["reason"] for result, _ in answers), answers
    # Answered without waiting out the deadline each (generous: a loaded machine).
    assert sum(elapsed for _, elapsed in answers) < SENDS * REQUEST_TIMEOUT * 0.75
    assert silent.accepted < SENDS


class Endless(TlsServer):
    """A TLS token endpoint that answers 200 and then streams its body without end."""

    async def over_tls(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        await stream.receive_some()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        )
        chunk = b" " * CHUNK
        while True:
            await stream.send_all(chunk)


async def test_a_token_answer_without_end_is_cut_short(
    nursery: trio.Nursery,
    start_pushd: PushdFactory,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    """A token endpoint that answers 200 and streams its body without end was read
    whole until the token timeout: pushd's memory grew by about 30 MiB a second (in a
    probe; more on a faster link), shared by every app, and again at each try.  Now the
    answer is read up to MAX_ANSWER_BYTES: the refresh fails at once, naming the size,
    and the healthy app delivers."""
    endless = Endless(server_context(ca, alpn_h2=False))
    await nursery.start(endless.serve)
    broken = fcm_entry("broken", fcm_simulator, fcm_key, ca_file, tmp_path)
    account = tmp_path / "broken-account.json"
    make_service_account(
        account, FCM_PROJECT, f"https://127.0.0.1:{endless.port}/token", key=fcm_key
    )
    broken.update(service_account_file=str(account))
    healthy = fcm_entry("healthy", fcm_simulator, fcm_key, ca_file, tmp_path)
    pushd = await start_pushd(apps=[broken, healthy])
    await pushd.register("b", fcm_token(1), app="broken")
    await pushd.register("h", fcm_token(2), app="healthy")
    with trio.fail_after(ANSWER_WITHIN):
        result, _ = await send(pushd, "broken", fcm_token(1))
    assert result["status"] == "retrying"
    assert "bytes" in result["reason"], result
    result, _ = await send(pushd, "healthy", fcm_token(2))
    assert result["status"] == "delivered"
