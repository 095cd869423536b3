"""The pushd command line, run as a real subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from pushd.store import Store
from tests.conftest import KEY_ID, TEAM_ID, Pushd, token
from tests.storefixtures import with_store
from tests.zulip_client import ZulipServer

README = Path(__file__).resolve().parents[1] / "README.md"


def pushd_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_init_writes_config_store_and_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "pushd.toml"
    done = pushd_cli("init", "--config", str(target))
    assert done.returncode == 0, done.stderr
    key = (tmp_path / "etc" / "default.key").read_text().strip()
    assert key.startswith("pushd_")
    assert (tmp_path / "etc" / "default.key").stat().st_mode & 0o077 == 0

    async def authenticate(store: Store) -> str | None:
        server = await store.authenticate(key)
        return None if server is None else server.name

    assert with_store(str(tmp_path / "etc" / "pushd.sqlite3"), authenticate) == "default"
    # The starter config is valid as written, and says how to connect Zulip.
    assert pushd_cli("check-config", str(target)).returncode == 0
    text = target.read_text()
    assert "# [zulip]" in text and "PUSH_NOTIFICATION_BOUNCER_URL" in text
    assert "pushd zulip keys add" in text
    # Its [zulip] table and registration line, uncommented, are valid too.
    lines = [line.removeprefix("# ") for line in text.splitlines()]
    start = lines.index("[zulip]")
    target.write_text(text + "\n".join(lines[start : start + 2]) + "\n")
    assert pushd_cli("check-config", str(target)).returncode == 0, target.read_text()
    target.write_text(text)
    before = target.read_text()
    again = pushd_cli("init", "--config", str(target))
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert target.read_text() == before


def test_check_config_lists_every_problem_with_its_key_path(tmp_path: Path) -> None:
    config = tmp_path / "pushd.toml"
    config.write_text(
        f"""
[server]
port = "8080"
colour = "blue"

[store]
path = "{tmp_path}/db.sqlite3"

[[apps]]
name = "ios"
provider = "apns"
topic = "org.example"
key_file = "/etc/pushd/AuthKey_ABC.p8"
key_id = "ABC"
team_id = "{TEAM_ID}"
"""
    )
    done = pushd_cli("check-config", str(config))
    assert done.returncode == 1
    assert "server.port: expected an integer, got a string" in done.stderr
    assert "server.colour: unknown key" in done.stderr
    # Structure errors come first; fix them and the file checks speak.
    config.write_text(config.read_text().replace('port = "8080"\ncolour = "blue"', "port = 8080"))
    done = pushd_cli("check-config", str(config))
    assert done.returncode == 1
    assert "apps[0].key_file: no such file /etc/pushd/AuthKey_ABC.p8" in done.stderr
    assert "apps[0].key_id: must be the 10-character id from Apple" in done.stderr


def test_check_config_summarises_a_good_file(tmp_path: Path, key_file: Path) -> None:
    config = tmp_path / "pushd.toml"
    config.write_text(
        f"""
[store]
path = "db.sqlite3"

[[apps]]
name = "ios"
provider = "apns"
environment = "sandbox"
topic = "org.example"
key_file = "{key_file.name}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
"""
    )
    done = pushd_cli("check-config", str(config))
    assert done.returncode == 0, done.stderr
    assert (
        f"ios: APNs, topic org.example, token auth (key {KEY_ID}, team {TEAM_ID}), sandbox"
        in done.stdout
    )


def test_check_config_rejects_a_key_that_is_not_p8(tmp_path: Path) -> None:
    bad_key = tmp_path / "AuthKey.p8"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    config = tmp_path / "pushd.toml"
    config.write_text(
        f"""
[store]
path = "db.sqlite3"
[[apps]]
name = "ios"
provider = "apns"
topic = "org.example"
key_file = "AuthKey.p8"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
"""
    )
    done = pushd_cli("check-config", str(config))
    assert done.returncode == 1
    assert "apps[0].key_file:" in done.stderr


async def test_server_key_lifecycle_against_a_running_pushd(pushd: Pushd) -> None:
    store = pushd.config.store.path
    added = await trio.to_thread.run_sync(pushd_cli, "server", "add", "zulip-1", "--store", store)
    assert added.returncode == 0, added.stderr
    key = added.stdout.split("API key (shown once, store it on the chat server): ")[1].strip()
    body = {"user": "u", "token": token(1), "app": "chat"}
    assert (await pushd.post("/v1/devices", body, key=key)).status_code == 201

    listed = await trio.to_thread.run_sync(pushd_cli, "server", "list", "--store", store)
    assert "zulip-1" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout

    rotated = await trio.to_thread.run_sync(
        pushd_cli, "server", "rotate-key", "zulip-1", "--store", store
    )
    new_key = rotated.stdout.rsplit(": ", 1)[1].strip()
    assert (await pushd.post("/v1/devices", body, key=key)).status_code == 401
    assert (await pushd.post("/v1/devices", body, key=new_key)).status_code == 200

    off = await trio.to_thread.run_sync(
        pushd_cli, "server", "deactivate", "zulip-1", "--store", store
    )
    assert off.returncode == 0
    refused = await pushd.post("/v1/devices", body, key=new_key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    # Other servers are untouched.
    assert (await pushd.post("/v1/users/devices", {"user": "u"})).status_code == 200

    missing = await trio.to_thread.run_sync(
        pushd_cli, "server", "deactivate", "nobody", "--store", store
    )
    assert missing.returncode == 1 and "no server named 'nobody'" in missing.stderr


async def test_zulip_hostname_pins_against_a_running_pushd(pushd: Pushd) -> None:
    """allow, list, disallow and release through the real CLI; pushd reads each at once."""
    store = pushd.config.store.path
    host = "chat.example.org"
    real = ZulipServer(client=pushd.client, services_url=pushd.url, hostname=host)
    squatter = ZulipServer(client=pushd.client, services_url=pushd.url, hostname=host)

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = await trio.to_thread.run_sync(
            lambda: pushd_cli("zulip", "servers", *args, "--store", store)
        )
        return done

    # Allowlist mode (the default) with nothing pinned: nobody registers.
    assert (await real.register_server()).json()["code"] == "INVALID_ZULIP_SERVER"
    allowed = await cli("allow", "CHAT.example.org.", "--org-id", real.org_id)
    assert allowed.returncode == 0, allowed.stderr
    assert f"pinned {host} to zulip_org_id {real.org_id}" in allowed.stdout
    again = await cli("allow", host, "--org-id", real.org_id.upper())
    assert again.returncode == 0 and "already" in again.stdout
    other = await cli("allow", host, "--org-id", squatter.org_id)
    assert other.returncode == 1
    assert f"{host} is pinned to {real.org_id}; add --replace" in other.stderr
    listed = await cli("list")
    assert f"{host:<30} {real.org_id}  (store; not registered yet)" in listed.stdout

    assert (await squatter.register_server()).json()["code"] == "INVALID_ZULIP_SERVER"
    assert (await real.register_server()).json() == {
        "result": "success",
        "msg": "",
        "created": True,
    }
    listed = await cli("list")
    assert "(store; registered, active)" in listed.stdout

    # Unpinning stops new registrations, not the server already registered.
    assert (await cli("disallow", host)).returncode == 0
    assert "was not pinned" in (await cli("disallow", host)).stdout
    assert (await real.register_server()).json()["created"] is False

    # The server is reinstalled under a new zulip_org_id: its old registration keeps
    # the hostname, even deactivated, until the operator releases it.
    reinstalled = ZulipServer(client=pushd.client, services_url=pushd.url, hostname=host)
    assert (await cli("allow", host, "--org-id", reinstalled.org_id)).returncode == 0
    busy = await cli("release", host)
    assert busy.returncode == 1 and "deactivate it first" in busy.stderr
    assert (await cli("deactivate", real.org_id)).returncode == 0
    taken = await reinstalled.register_server()
    assert taken.json()["code"] == "HOSTNAME_ALREADY_IN_USE_BOUNCER_ERROR"
    released = await cli("release", host)
    assert released.returncode == 0 and real.org_id in released.stdout
    assert (await reinstalled.register_server()).json()["created"] is True
    listed = await cli("list")
    assert f"{real.org_id}  {host:<30} released" in listed.stdout
    assert f"{reinstalled.org_id}  {host:<30} active" in listed.stdout


def test_zulip_pins_in_the_config(tmp_path: Path) -> None:
    org_id = "00000000-0000-4000-8000-0000000000c0"
    config = tmp_path / "pushd.toml"
    config.write_text(
        """
[store]
path = "db.sqlite3"
[zulip]
allowlist = ["chat.example.com"]
"""
    )
    done = pushd_cli("check-config", str(config))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert (
        lines[1]
        .strip()
        .startswith(
            "zulip.allowlist[0]: a bare hostname admits whoever registers it first; "
            'pin its zulip_org_id: {hostname = "chat.example.com", org_id = '
        )
    )
    assert len(lines) == 2
    config.write_text(
        config.read_text().replace(
            '["chat.example.com"]', f'[{{hostname = "Chat.example.com", org_id = "{org_id}"}}]'
        )
    )
    assert pushd_cli("check-config", str(config)).returncode == 0
    listed = pushd_cli("zulip", "servers", "list", "--config", str(config))
    assert f"chat.example.com               {org_id}  (config; not registered yet)" in (
        listed.stdout
    )
    # The config's pin wins over the store's, so the CLI will not contradict it.
    other = "00000000-0000-4000-8000-0000000000c1"
    refused = pushd_cli(
        "zulip", "servers", "allow", "chat.example.com:443", "--org-id", other, "-c", str(config)
    )
    assert refused.returncode == 1 and "change it there" in refused.stderr
    kept = pushd_cli("zulip", "servers", "disallow", "chat.example.com", "-c", str(config))
    assert kept.returncode == 1 and "remove it there" in kept.stderr


def test_bash_builtin_note_and_python_m_entry_point() -> None:
    done = pushd_cli("--version")
    assert done.returncode == 0
    assert done.stdout.startswith("pushd ")


def _simulator_config(tmp_path: Path, port: int, key_file: Path, ca_file: Path) -> Path:
    path = tmp_path / "pushd.toml"
    path.write_text(
        f"""
[server]
port = 0
[metrics]
port = 0
[store]
path = "serve.sqlite3"
[[apps]]
name = "chat"
provider = "apns"
environment = "sandbox"
topic = "org.example.chat"
key_file = "{key_file}"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
upstream_url = "https://127.0.0.1:{port}"
upstream_ca_file = "{ca_file}"
"""
    )
    return path


async def test_send_test_prints_the_upstream_answer(
    simulator, tmp_path: Path, key_file: Path, ca_file: Path
) -> None:
    from pushd.simulators.apns import SimReply

    config = _simulator_config(tmp_path, simulator.port, key_file, ca_file)
    done = await trio.to_thread.run_sync(
        pushd_cli, "send-test", "--config", str(config), "--app", "chat", "--token", token(5)
    )
    assert done.returncode == 0, done.stderr
    assert "chat: Delivered" in done.stdout
    assert [r.token for r in simulator.received] == [token(5)]
    simulator.script(token(6), SimReply(status=400, reason="BadDeviceToken"))
    done = await trio.to_thread.run_sync(
        pushd_cli, "send-test", "--config", str(config), "--app", "chat", "--token", token(6)
    )
    assert "TokenDead" in done.stdout and "BadDeviceToken" in done.stdout


async def test_serve_runs_and_stops_cleanly_on_sigterm(
    simulator, tmp_path: Path, key_file: Path, ca_file: Path
) -> None:
    config = _simulator_config(tmp_path, simulator.port, key_file, ca_file)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pushd", "serve", "--config", str(config)],
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(20):
        while b"listening on http://" not in seen:
            chunk = await process.stderr.receive_some()
            assert chunk, seen.decode()
            seen += chunk
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        await process.wait()
    assert process.returncode == 0


def test_check_config_names_what_is_wrong_in_a_service_account(tmp_path: Path) -> None:
    account = tmp_path / "firebase.json"
    account.write_text('{"type": "service_account", "project_id": "p"}')
    config = tmp_path / "pushd.toml"
    config.write_text(
        """
[store]
path = "db.sqlite3"
[[apps]]
name = "android"
provider = "fcm"
service_account_file = "firebase.json"
topic = "org.example"
"""
    )
    done = pushd_cli("check-config", str(config))
    assert done.returncode == 1
    assert 'apps[0].topic: only for provider "apns"' in done.stderr
    assert "apps[0].service_account_file: " in done.stderr
    account.write_text("not json")
    done = pushd_cli("check-config", str(config))
    assert "apps[0].service_account_file: " in done.stderr


async def test_send_test_through_an_fcm_app(
    fcm_simulator, fcm_key, ca_file: Path, tmp_path: Path
) -> None:
    from tests.conftest import fcm_entry

    entry = fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path)
    config = tmp_path / "pushd.toml"
    config.write_text(
        f"""
[store]
path = "db.sqlite3"
[[apps]]
name = "android"
provider = "fcm"
service_account_file = "{entry["service_account_file"]}"
upstream_url = "{entry["upstream_url"]}"
upstream_ca_file = "{entry["upstream_ca_file"]}"
"""
    )
    device = "fcm-device-0001:APA91b" + "x" * 40
    done = await trio.to_thread.run_sync(
        pushd_cli, "send-test", "--config", str(config), "--app", "android", "--token", device
    )
    assert done.returncode == 0, done.stderr
    assert "android: Delivered" in done.stdout
    assert [r.token for r in fcm_simulator.received] == [device]


async def test_demo_mode_delivers_the_readme_curl_end_to_end(tmp_path: Path) -> None:
    import httpx

    from pushd.demo import DEMO_KEY, DEMO_USER, matrix_demo_body

    with trio.socket.socket() as sock:  # a free port for the demo's HTTP API
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pushd", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,  # no pushd.toml here: the embedded defaults
    )
    assert process.stdout is not None
    seen = b""
    try:
        with trio.fail_after(30):
            while b"listening on http://" not in seen:
                chunk = await process.stdout.receive_some()
                assert chunk, seen.decode()
                seen += chunk
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://127.0.0.1:{port}/v1/notifications",
                headers={"authorization": f"Bearer {DEMO_KEY}"},
                content=b'{"user":"%s","alert":"Hello"}' % DEMO_USER.encode(),
            )
        assert response.json()["summary"]["delivered"] == 1
        with trio.fail_after(10):
            while b"simulated APNs received:" not in seen:
                seen += await process.stdout.receive_some()
        line = seen.split(b"simulated APNs received:", 1)[1]
        assert b"200" in line and b"Hello" not in line  # size and status, not content
        # The printed Matrix curl reaches the same device.
        assert matrix_demo_body().encode() in seen
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://127.0.0.1:{port}/_matrix/push/v1/notify", content=matrix_demo_body()
            )
        assert response.json() == {"rejected": []}
        with trio.fail_after(10):
            while seen.count(b"simulated APNs received:") < 2:
                seen += await process.stdout.receive_some()
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await process.wait()
    assert process.returncode == 0
    readme = README.read_text()
    assert f"Bearer {DEMO_KEY}" in readme and f'"user":"{DEMO_USER}"' in readme
