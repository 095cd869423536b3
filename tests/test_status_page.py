"""The status page over real sockets: ``/status.json``'s access and contents after real
deliveries through the APNs simulator, ``/status``'s headers and its policy, the
chat servers' last requests as each frontend records them; and the pure parts
(rolling windows, certificate dates).  The page in a real browser:
``test_status_browser.py``."""

from __future__ import annotations

import base64
import datetime
import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pushd.activity import MATRIX_HOMESERVERS
from pushd.frontends.status import JSON_PATH, PAGE_PATH, Page
from pushd.recent import Counts, Recent
from pushd.simulators.apns import ApnsSimulator, SimReply
from pushd.store import open_store
from pushd.upstream.apns.certificate import not_after
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token

ADMIN_TOKEN = "status-admin-token-0123456789"
MM_SECRET = "mattermost-path-secret-0123456789"
RC_TOKEN = "Bearer rocketchat-cloud-token-0123456789"
ZULIP_KEY = "zulip-server-key-0123456789abcdef"


async def start_guarded(start_pushd: PushdFactory, tmp_path: Path, **sections: Any) -> Pushd:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    server = {"admin_token_file": str(token_file), **sections.pop("server", {})}
    pushd: Pushd = await start_pushd(server=server, **sections)
    return pushd


@pytest.fixture
async def guarded(start_pushd: PushdFactory, tmp_path: Path) -> Pushd:
    return await start_guarded(start_pushd, tmp_path)


async def status(pushd: Pushd, credential: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {} if credential is None else {"authorization": f"Bearer {credential}"}
    return await pushd.client.get(pushd.url + JSON_PATH, headers=headers)


async def status_json(pushd: Pushd, credential: str = ADMIN_TOKEN) -> dict[str, Any]:
    response = await status(pushd, credential)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def app_row(data: dict[str, Any], name: str) -> dict[str, Any]:
    (row,) = [app for app in data["apps"] if app["name"] == name]
    return row


def server_row(data: dict[str, Any], protocol: str, name: str) -> dict[str, Any]:
    (row,) = [s for s in data["servers"] if (s["protocol"], s["name"]) == (protocol, name)]
    return row


# --- access -----------------------------------------------------------------------------


@pytest.mark.parametrize("credential", [None, "wrong-token", f"{ADMIN_TOKEN}x"])
async def test_status_json_without_the_credential_is_a_json_401(
    guarded: Pushd, credential: str | None
) -> None:
    response = await status(guarded, credential)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == 'Bearer realm="pushd"'
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"]["code"] == "unauthorized"
    assert "chat" not in response.text  # no app name leaks


async def test_the_admin_sees_every_app_and_server(guarded: Pushd) -> None:
    response = await status(guarded)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["status"] == "ok" and data["viewer"] == "admin"
    assert [app["name"] for app in data["apps"]] == ["chat", "other"]
    chat = app_row(data, "chat")
    assert chat["state"] == "ok" and chat["circuit"] == "closed"
    assert chat["spool"] == {"depth": 0, "oldest_due_age": 0.0}
    assert chat["credential"] == {"kind": "token key", "expires_at": None}
    assert server_row(data, "native", "test-server")["last_request_at"] is None


async def test_a_chat_server_key_sees_the_apps_and_only_itself(
    guarded: Pushd, tmp_path: Path
) -> None:
    database = await open_store(guarded.config.store)
    try:
        await database.add_server("neighbour")
    finally:
        await database.close()
    admin = await status_json(guarded)
    assert {s["name"] for s in admin["servers"]} == {"test-server", "neighbour"}
    own = await status_json(guarded, guarded.key)
    assert own["viewer"] == "server"
    assert [s["name"] for s in own["servers"]] == ["test-server"]
    assert [app["name"] for app in own["apps"]] == ["chat", "other"]


# --- the page -----------------------------------------------------------------------------


def inline_blocks(html: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_the_page_is_static_with_a_strict_policy(guarded: Pushd) -> None:
    response = await guarded.client.get(guarded.url + PAGE_PATH)  # no credential needed
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    policy = {
        name: value
        for name, _, value in (
            part.partition(" ") for part in response.headers["content-security-policy"].split("; ")
        )
    }
    html = response.text
    (script,) = inline_blocks(html, "script")
    (style,) = inline_blocks(html, "style")
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == sha256(script)  # that block and nothing else
    assert policy["style-src"] == sha256(style)
    assert policy["connect-src"] == "'self'"
    assert policy["form-action"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"
    assert "unsafe" not in response.headers["content-security-policy"]
    # Nothing from elsewhere: no URL with a scheme or a protocol-relative one.
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", html)
    assert "<script src" not in html and "<link" not in html
    assert "innerHTML" not in script and "sessionStorage" in script
    assert "test-server" not in html and "chat" not in html.replace("chat server", "")


def test_the_page_assembles_from_its_package_data() -> None:
    page = Page.load()
    html = page.html.decode()
    assert "/*SCRIPT*/" not in html and "/*STYLE*/" not in html
    assert sha256(inline_blocks(html, "script")[0]) in page.policy


# --- what the page shows ------------------------------------------------------------------


async def test_recent_counts_follow_real_deliveries(
    guarded: Pushd, simulator: ApnsSimulator
) -> None:
    before = app_row(await status_json(guarded), "chat")["recent"]
    assert (before["delivered"], before["failed"], before["error_rate"]) == (0, 0, None)
    for n in range(4):
        await guarded.register("ann", token(n))
    simulator.script(token(2), SimReply(status=400, reason="BadCollapseId"))
    simulator.script(token(3), SimReply(status=410, reason="Unregistered"))
    result = await guarded.send({"user": "ann", "alert": "hi"})
    statuses = sorted(r["status"] for r in result["results"])
    assert statuses == ["delivered", "delivered", "failed", "removed"]
    recent = app_row(await status_json(guarded), "chat")["recent"]
    assert (recent["delivered"], recent["removed"], recent["failed"]) == (2, 1, 1)
    assert recent["error_rate"] == 0.25
    assert recent["per_minute"] > 0
    assert recent["buckets"][-1][:3] == [2, 1, 1]  # the live bucket shows it at once
    assert app_row(await status_json(guarded), "other")["recent"]["delivered"] == 0


async def test_a_paused_app_shows_its_reason(guarded: Pushd, simulator: ApnsSimulator) -> None:
    await guarded.register("bob", token(7), app="other")
    simulator.script(token(7), SimReply(status=403, reason="InvalidProviderToken"))
    await guarded.send({"user": "bob", "alert": "x"})  # refused: the app pauses
    (second,) = (await guarded.send({"user": "bob", "alert": "y"}))["results"]
    assert second["status"] == "retrying"  # spooled until the pause is over
    data = await status_json(guarded)
    assert data["status"] == "degraded"
    other = app_row(data, "other")
    assert other["state"] == "paused" and "InvalidProviderToken" in other["reason"]
    assert other["spool"]["depth"] == 1
    assert (other["recent"]["failed"], other["recent"]["retrying"]) == (1, 1)
    assert app_row(data, "chat")["state"] == "ok"
    assert token(7) not in str(data) and "alert" not in str(data)


async def test_each_frontend_records_its_servers_last_request(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    chat = {
        **app_entry("chat", TOPIC, upstream, key_file, ca_file),
        "mattermost_type": "apple_rn",
        "matrix": {"app_ids": ["org.example.chat"]},
    }
    pushd = await start_guarded(
        start_pushd,
        tmp_path,
        apps=[chat],
        mattermost={"servers": [{"name": "mm", "path_secret": MM_SECRET}]},
        rocketchat={"servers": [{"name": "rc", "tokens": [RC_TOKEN]}]},
    )
    zulip_uuid = str(uuid.uuid4())
    database = await open_store(pushd.config.store)
    try:
        await database.zulip_add_server(zulip_uuid, ZULIP_KEY, "zulip.example.com")
    finally:
        await database.close()
    get, post = pushd.client.get, pushd.client.post
    # Failed guesses record nothing.
    await get(pushd.url + "/not-the-secret/version")
    await post(pushd.url + "/push/apn/send", headers={"authorization": "Bearer guess"})
    await get(pushd.url + "/v1/openapi.json")
    data = await status_json(pushd)
    assert all(s["last_request_at"] is None for s in data["servers"]), data["servers"]
    # An authenticated request records its server, whatever its body.
    await post(pushd.url + "/v1/users/devices", json={"user": "x"}, headers=pushd.auth())
    await get(f"{pushd.url}/{MM_SECRET}/version")
    await post(pushd.url + "/push/apn/send", content=b"{}", headers={"authorization": RC_TOKEN})
    basic = base64.b64encode(f"{zulip_uuid}:{ZULIP_KEY}".encode()).decode()
    await get(
        pushd.url + "/api/v1/remotes/server/analytics/status",
        headers={"authorization": f"Basic {basic}"},
    )
    await post(pushd.url + "/_matrix/push/v1/notify", content=b"{}")
    data = await status_json(pushd)
    for protocol, name in [
        ("native", "test-server"),
        ("mattermost", "mm"),
        ("rocketchat", "rc"),
        ("zulip", "zulip.example.com"),
        ("matrix", MATRIX_HOMESERVERS),
    ]:
        row = server_row(data, protocol, name)
        assert row["state"] == "active"
        assert row["last_request_at"] is not None, row
        assert 0 <= row["last_request_age"] < 30
    assert zulip_uuid not in str(data) and MM_SECRET not in str(data)


# --- the pure parts -----------------------------------------------------------------------


def test_recent_windows_roll_and_survive_a_counter_reset() -> None:
    recent = Recent(buckets=3, bucket_seconds=10)
    recent.sample(0, {"a": Counts(delivered=5)})
    recent.sample(10, {"a": Counts(delivered=7, failed=1)})
    window = recent.window(15, {"a": Counts(delivered=8, failed=1), "new": Counts(removed=2)})
    assert window["a"].buckets == (Counts(delivered=2, failed=1), Counts(delivered=1))
    assert window["a"].total == Counts(delivered=3, failed=1) and window["a"].seconds == 15
    assert window["new"].total == Counts(removed=2)  # added since: counted from zero
    recent.sample(20, {"a": Counts(delivered=9)})
    recent.sample(30, {"a": Counts(delivered=1)})  # a reload replaced the lane's counters
    window = recent.window(31, {"a": Counts(delivered=1)})
    assert window["a"].buckets == (Counts(delivered=2), Counts(delivered=1), Counts())
    assert window["a"].seconds == 21  # the oldest snapshot left the ring


def test_a_window_before_any_sample_is_all_live() -> None:
    window = Recent().window(100, {"a": Counts(retrying=4)})
    assert window["a"].total == Counts(retrying=4) and window["a"].seconds == 0


def test_certificate_expiry_from_pem_and_pkcs12(ca: trustme.CA) -> None:
    expires = datetime.datetime(2031, 5, 17, 12, tzinfo=datetime.UTC)
    leaf = ca.issue_cert("push.example.com", not_after=expires)
    pem = leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes()
    assert not_after(pem) == expires.timestamp()
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    bundle = pkcs12.serialize_key_and_certificates(
        b"apns",
        key,  # type: ignore[arg-type]
        certificate,
        None,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert not_after(bundle, b"secret") == expires.timestamp()
    assert not_after(bundle, b"wrong") is None
    assert not_after(b"not a certificate") is None


async def test_a_certificate_apps_expiry_is_shown(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    ca: trustme.CA,
    ca_file: Path,
    key_file: Path,
    tmp_path: Path,
) -> None:
    expires = datetime.datetime(2030, 1, 2, tzinfo=datetime.UTC)
    leaf = ca.issue_cert("push.example.com", not_after=expires)
    cert_file = tmp_path / "apns.pem"
    cert_file.write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    upstream = f"https://127.0.0.1:{simulator.port}"
    token_app = app_entry("chat", TOPIC, upstream, key_file, ca_file)
    cert_app = {
        key: value
        for key, value in {**token_app, "name": "legacy", "cert_file": str(cert_file)}.items()
        if key not in ("key_file", "key_id", "team_id")
    }
    pushd = await start_guarded(start_pushd, tmp_path, apps=[token_app, cert_app])
    data = await status_json(pushd)
    assert app_row(data, "legacy")["credential"] == {
        "kind": "certificate",
        "expires_at": expires.timestamp(),
    }
    assert app_row(data, "chat")["credential"]["expires_at"] is None
