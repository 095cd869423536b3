"""``pushd serve`` that cannot start says why in one line and exits 1, no traceback:
each case runs the real command as a subprocess against what an admin can get wrong
(a busy port, a privileged port, broken TLS files).  An app's unreadable or broken
credential no longer stops the start: that app starts paused with an ALARM (here, and
in test_unusable_credential.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from pushd.store import Store
from tests.conftest import KEY_ID, TEAM_ID
from tests.storefixtures import with_store

#: Run as root, the command first drops the capabilities that let root read any file
#: and bind any port (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_NET_BIND_SERVICE), so
#: it meets the errors an ordinary service user meets.  Exit 77: cannot drop them.
AS_ORDINARY_USER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2, 10):
    if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def serve(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``pushd serve`` with ``args``, as an ordinary user."""
    command = [sys.executable, "-m", "pushd", "serve", *args]
    if os.geteuid() == 0:
        command[1:1] = ["-c", AS_ORDINARY_USER]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        check=False,
    )
    if done.returncode == 77:
        pytest.skip("cannot drop root's capabilities here")
    return done


def serve_config(path: Path) -> subprocess.CompletedProcess[str]:
    return serve("--config", str(path))


def assert_one_line(done: subprocess.CompletedProcess[str], line: str) -> None:
    assert (done.returncode, done.stderr) == (1, f"pushd: {line}\n")


def write_config(tmp_path: Path, server: str = "", apps: str = "") -> Path:
    """A config on a store made beforehand, as ``pushd init`` makes it: a ``serve``
    that creates its store warns on stderr, which these tests expect to hold one line."""
    store = tmp_path / "pushd.sqlite3"
    with_store(str(store), made)
    path = tmp_path / "pushd.toml"
    path.write_text(f"[server]\n{server}\n[metrics]\nport = 0\n[store]\npath = '{store}'\n{apps}")
    return path


async def made(_: Store) -> None:
    return None


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_busy_port(tmp_path: Path, held_port: int) -> None:
    done = serve_config(write_config(tmp_path, f"port = {held_port}"))
    assert_one_line(done, f"cannot listen on 127.0.0.1:{held_port}: address already in use")


def test_a_busy_port_in_demo_mode(tmp_path: Path, held_port: int) -> None:
    done = serve("--port", str(held_port), cwd=tmp_path)  # no config: the demo
    assert_one_line(done, f"cannot listen on 127.0.0.1:{held_port}: address already in use")


def test_an_address_not_on_this_machine(tmp_path: Path) -> None:
    done = serve_config(write_config(tmp_path, 'listen = "192.0.2.1"\nport = 8080'))
    assert_one_line(done, "cannot listen on 192.0.2.1:8080: cannot assign requested address")


def test_a_privileged_port(tmp_path: Path) -> None:
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 1:
        pytest.skip("every port is unprivileged here")
    done = serve_config(write_config(tmp_path, "port = 1"))
    assert_one_line(done, "cannot listen on 127.0.0.1:1: permission denied")


def apns_app(**fields: str) -> str:
    lines = [f'{name} = "{value}"' for name, value in fields.items()]
    return "\n".join(
        ["[[apps]]", 'name = "chat"', 'provider = "apns"', 'topic = "org.example.chat"', *lines]
    )


def serve_until_alarm(path: Path) -> str:
    """``pushd serve --config path`` as an ordinary user, until it logs an ALARM line
    (returned) or ends (the test fails); then SIGTERM."""
    command = [sys.executable, "-m", "pushd", "serve", "--config", str(path)]
    if os.geteuid() == 0:
        command[1:1] = ["-c", AS_ORDINARY_USER]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stderr is not None
            for line in process.stderr:
                if "ALARM" in line:
                    return line
        finally:
            process.terminate()
            process.wait(30)
    if process.returncode == 77:
        pytest.skip("cannot drop root's capabilities here")
    raise AssertionError(f"pushd serve ended ({process.returncode}) without an ALARM")


@pytest.mark.parametrize("kind", ["key_file", "cert_file", "service_account_file"])
def test_an_unreadable_credential_file_starts_its_app_paused(tmp_path: Path, kind: str) -> None:
    """Not a refused start any more (:mod:`pushd.unusable`): the app starts paused and
    the ALARM names the file and why."""
    secret = tmp_path / "credential"
    secret.write_text("unreadable: what it holds does not matter")
    secret.chmod(0)
    if kind == "service_account_file":
        app = f'[[apps]]\nname = "chat"\nprovider = "fcm"\nservice_account_file = "{secret}"'
    elif kind == "key_file":
        app = apns_app(key_file=str(secret), key_id=KEY_ID, team_id=TEAM_ID)
    else:
        app = apns_app(cert_file=str(secret))
    line = serve_until_alarm(write_config(tmp_path, "port = 0", apps=app))
    assert f"app chat started paused: apps[0].{kind}: cannot read {secret}: Permission" in line


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A certificate, its key, another key, an encrypted key and a file of garbage."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert, other = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.2")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    other.private_key_pem.write_to_path(str(directory / "other-key.pem"))
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    (directory / "encrypted-key.pem").write_bytes(encrypted)
    (directory / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    return directory


@pytest.mark.parametrize(
    ("cert", "key", "problem"),
    [
        ("garbage.pem", "key.pem", "server.tls_cert: no PEM certificate in {d}/garbage.pem"),
        ("key.pem", "key.pem", "server.tls_cert: no PEM certificate in {d}/key.pem"),
        ("cert.pem", "garbage.pem", "server.tls_key: no PEM private key in {d}/garbage.pem"),
        ("cert.pem", "other-key.pem", "server.tls_key: not the private key of tls_cert"),
        (
            "cert.pem",
            "encrypted-key.pem",
            "server.tls_key: encrypted; pushd reads only an unencrypted key (keep it mode 0600)",
        ),
    ],
    ids=["garbage-cert", "key-as-cert", "garbage-key", "other-key", "encrypted-key"],
)
def test_bad_tls_files(tmp_path: Path, tls_files: Path, cert: str, key: str, problem: str) -> None:
    server = f'tls_cert = "{tls_files / cert}"\ntls_key = "{tls_files / key}"\nport = 0'
    done = serve_config(write_config(tmp_path, server))
    assert_one_line(done, f"{tmp_path}/pushd.toml: " + problem.format(d=tls_files))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not PKCS#12", "Could not deserialize PKCS12 data"),
        (b"-----BEGIN CERTIFICATE-----\nnot base64\n", "OpenSSL cannot use it (not PEM)"),
    ],
    ids=["pkcs12", "pem"],
)
def test_an_apns_certificate_that_does_not_load(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    (tmp_path / "apns-cert").write_bytes(content)
    (tmp_path / "apns-cert").chmod(0o600)  # as a credential is kept: no warning line
    line = serve_until_alarm(write_config(tmp_path, "port = 0", apns_app(cert_file="apns-cert")))
    assert f"app chat started paused: apps[0].cert_file: {reason};" in line
