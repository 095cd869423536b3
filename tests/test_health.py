"""``/healthz`` over real sockets: status for anyone, detail only with a credential (an
active chat server's key or the admin token), a wrong credential a 401; ``/health``
stays Sygnal's empty 200."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pushd import config
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.store import open_store
from tests.conftest import Pushd, PushdFactory, token

ADMIN_TOKEN = "admin-token-0123456789abcdef"
DETAIL_KEYS = {"status", "version", "store", "apps", "spooled"}


@pytest.fixture
async def guarded(start_pushd: PushdFactory, tmp_path: Path) -> Pushd:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    pushd: Pushd = await start_pushd(server={"admin_token_file": str(token_file)})
    return pushd


async def healthz(pushd: Pushd, authorization: str | None = None) -> Any:
    headers = {} if authorization is None else {"authorization": authorization}
    return await pushd.client.get(pushd.url + "/healthz", headers=headers)


async def test_without_credentials_only_the_status(guarded: Pushd) -> None:
    response = await healthz(guarded)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ok"}


async def test_head_answers_the_status_without_a_body(guarded: Pushd) -> None:
    """Uptime checks and load balancers often ask with HEAD: it was a 405."""
    response = await guarded.client.head(guarded.url + "/healthz")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == len(b'{"status":"ok"}')


async def test_a_degraded_status_names_no_app(pushd: Pushd, simulator: ApnsSimulator) -> None:
    await pushd.register("ivy", token(1), app="chat")
    simulator.script(token(1), SimReply(status=403, reason="InvalidProviderToken"))
    await pushd.send({"user": "ivy", "alert": "x"})  # pauses the app "chat"
    assert (await healthz(pushd)).json() == {"status": "degraded"}
    detail = (await healthz(pushd, f"Bearer {pushd.key}")).json()
    assert detail["status"] == "degraded" and detail["apps"]["chat"]["state"] == "paused"


async def test_a_chat_server_key_or_the_admin_token_reads_the_detail(guarded: Pushd) -> None:
    for credential in (guarded.key, ADMIN_TOKEN, f"  {ADMIN_TOKEN}"):
        response = await healthz(guarded, f"Bearer {credential}")
        assert response.status_code == 200
        detail = response.json()
        assert set(detail) >= DETAIL_KEYS
        assert set(detail["apps"]) == {"chat", "other"}
    assert (await healthz(guarded, f"bearer {ADMIN_TOKEN}")).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {ADMIN_TOKEN}x", "Bearer nope", f"Basic {ADMIN_TOKEN}", "Bearer", ADMIN_TOKEN],
)
async def test_a_wrong_credential_is_a_401(guarded: Pushd, authorization: str) -> None:
    response = await healthz(guarded, authorization)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="pushd"'
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and isinstance(error["message"], str)
    assert "apps" not in response.text


async def test_a_deactivated_servers_key_reads_nothing(guarded: Pushd) -> None:
    database = await open_store(guarded.config.store)  # as the CLI would, beside it
    try:
        await database.set_active("test-server", False)
    finally:
        await database.close()
    response = await healthz(guarded, f"Bearer {guarded.key}")
    assert response.status_code == 401
    assert "deactivated" in response.json()["error"]["message"]


async def test_without_an_admin_token_file_the_admin_token_is_unknown(pushd: Pushd) -> None:
    assert (await healthz(pushd, f"Bearer {ADMIN_TOKEN}")).status_code == 401
    assert (await healthz(pushd, f"Bearer {pushd.key}")).status_code == 200


async def test_health_stays_an_empty_200(guarded: Pushd) -> None:
    response = await guarded.client.get(guarded.url + "/health")
    assert (response.status_code, response.content) == (200, b"")


def test_check_config_checks_the_admin_token_file(tmp_path: Path) -> None:
    def problems(token_file: Path) -> list[str]:
        data = {
            "store": {"path": str(tmp_path / "db.sqlite3")},
            "server": {"admin_token_file": token_file.name},
        }
        return config.check(config.parse(data, base=tmp_path))

    missing = tmp_path / "missing.token"
    assert problems(missing) == [f"server.admin_token_file: no such file {missing}"]
    short = tmp_path / "short.token"
    short.write_text("too-short\n")
    (problem,) = problems(short)
    assert problem.startswith("server.admin_token_file: must hold one token of at least 16")
    spaced = tmp_path / "spaced.token"
    spaced.write_text("two words of a long enough token\n")
    assert len(problems(spaced)) == 1
    good = tmp_path / "good.token"
    good.write_text(ADMIN_TOKEN + "\n")
    assert problems(good) == []
