"""``pushd check-config`` on the shipped example configs, run as an admin runs it.

The examples name files under /etc/pushd and /var/lib/pushd; each test copies one into
a temporary directory with those paths moved there and real key files made for it,
then asserts on what the command prints: a line per app in its provider's terms, the
setting each chat server needs, and warnings for what will surprise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushd.simulators.fcm import make_service_account
from pushd.spool.seal import read_keys
from pushd.upstream.apns.jwt import write_p8
from tests.process import ROOT
from tests.test_apns_client import write_pkcs12

MM_SECRET = "mmSecretPath0123456789abcdef"
RC_SECRET = "rcSecretPath0123456789abcdef"


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushd", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
    )


def example(name: str, tmp_path: Path, fcm_key: rsa.RSAPrivateKey, extra: str = "") -> Path:
    """The example ``name`` with its paths moved into ``tmp_path`` and its files made."""
    text = (Path(ROOT) / name).read_text()
    text = text.replace("/etc/pushd/", f"{tmp_path}/").replace("/var/lib/pushd/", f"{tmp_path}/")
    write_p8(tmp_path / "AuthKey_ABC1234567.p8", ec.generate_private_key(ec.SECP256R1()))
    make_service_account(
        tmp_path / "firebase-service-account.json",
        "example-project",
        "https://oauth2.googleapis.com/token",
        "pushd@example-project.iam.gserviceaccount.com",
        key=fcm_key,
    )
    path = tmp_path / "pushd.toml"
    path.write_text(extra + "\n" + text if extra.startswith("[server]") else text + extra)
    return path


def test_the_example_config_per_provider_and_per_chat_server(
    tmp_path: Path, fcm_key: rsa.RSAPrivateKey
) -> None:
    path = example("pushd.toml.example", tmp_path, fcm_key)
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert (
        "chat-ios: APNs, topic com.example.chat, token auth (key ABC1234567, team "
        "DEF8901234), production (https://api.push.apple.com), 1 connection(s)" in out
    )
    fcm = next(line for line in out.splitlines() if "chat-android: FCM" in line)
    assert fcm.strip() == (
        "chat-android: FCM, project example-project, service account "
        "pushd@example-project.iam.gserviceaccount.com"
    )
    assert "topic" not in fcm and "auth" not in fcm and "production" not in fcm
    # No public_url: URLs from listen and port, and a warning saying to set it.
    assert 'PUSH_NOTIFICATION_BOUNCER_URL = "http://127.0.0.1:8080"' in out
    assert 'ZULIP_SERVICES_URL = "http://127.0.0.1:8080"' in out
    assert "server.public_url is not set" in out
    assert "iOS apps by ios_app_id: com.example.chat (chat-ios); Android: chat-android" in out
    assert "Mattermost: not served" in out and "Matrix: not served" in out
    assert "  metrics: http://127.0.0.1:9464/metrics\n" in out


def test_every_chat_server_gets_its_url_from_public_url(
    tmp_path: Path, fcm_key: rsa.RSAPrivateKey
) -> None:
    extra = f"""
[[mattermost.servers]]
name = "mm"
path_secret = "{MM_SECRET}"

[[rocketchat.servers]]
name = "rc-token"
tokens = ["Bearer abc"]

[[rocketchat.servers]]
name = "rc-path"
path_secret = "{RC_SECRET}"
"""
    path = example("config/matrix-element.toml", tmp_path, fcm_key, extra)
    text = path.read_text().replace(
        "port = 8080\n", 'port = 8080\npublic_url = "https://push.example.com/"\n', 1
    )
    path.write_text(text)
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert 'PUSH_NOTIFICATION_BOUNCER_URL = "https://push.example.com"' in out
    assert "mm: https://push.example.com/mmSe… (the secret is masked" in out
    assert "…cdef" not in out  # only its start: 12 of 16 characters stay hidden
    assert MM_SECRET not in out and RC_SECRET not in out
    assert "rc-token: https://push.example.com (it authenticates with one of its tokens)" in out
    assert "rc-path: https://push.example.com/rcSe… " in out
    assert "https://push.example.com/_matrix/push/v1/notify" in out
    assert "app_id com.example.element.ios, com.example.element.ios.* -> element-ios" in out
    assert "element-android: FCM, project example-project" in out
    assert "public_url is not set" not in out
    assert "matrix.allowed_networks is empty" not in out  # the example lists 10.0.0.0/8


def test_warnings_for_settings_that_will_surprise(
    tmp_path: Path, fcm_key: rsa.RSAPrivateKey
) -> None:
    path = example(
        "config/matrix-element.toml", tmp_path, fcm_key, '\n[zulip]\nregistration = "closed"\n'
    )
    text = path.read_text().replace('allowed_networks = ["10.0.0.0/8"]', "allowed_networks = []")
    server = 'port = 8080\npublic_url = "http://push.example.com"\ndrain_seconds = 25.0\n'
    path.write_text(text.replace("port = 8080\n", server, 1))
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    warnings = done.stdout.split("warnings:\n", 1)[1]
    assert "matrix.allowed_networks is empty: anyone who can reach pushd" in warnings
    assert 'zulip.registration is "closed" and zulip.allowlist is empty' in warnings
    assert "server.public_url is plain http" in warnings
    assert "zulip.fcm_app is not set" in warnings
    assert "server.admin_token_file is not set" in warnings
    assert "server.drain_seconds is 25: a stop takes up to 7 s more" in warnings
    assert "readable by every user" not in warnings  # the keys were made 0600


def test_a_key_file_other_users_can_read_is_named_by_check_config(
    tmp_path: Path, fcm_key: rsa.RSAPrivateKey
) -> None:
    """A .p8 key left 0644 (an editor, a copy) gives its APNs key to every local user:
    said by check-config (and at the start of serve: tests/test_log_lines.py), with the
    command that mends it."""
    path = example("pushd.toml.example", tmp_path, fcm_key)
    p8 = tmp_path / "AuthKey_ABC1234567.p8"
    p8.chmod(0o644)
    done = check_config(path)
    assert done.returncode == 0, done.stderr
    expected = f"{p8} is readable by every user on this machine (mode 0644): `chmod o-rwx {p8}`"
    assert expected in done.stdout.split("warnings:\n", 1)[1]
    p8.chmod(0o640)
    assert "every user" not in check_config(path).stdout


def test_a_bad_public_url_is_a_problem_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "pushd.toml"
    path.write_text(f'[server]\npublic_url = "push.example.com"\n[store]\npath = "{tmp_path}/db"\n')
    done = check_config(path)
    assert done.returncode == 1
    assert "server.public_url: an http(s) URL like https://push.example.com" in done.stderr


def test_numbers_that_cannot_work_are_problems_with_their_keys(tmp_path: Path) -> None:
    """TOML's nan and inf, negative delays, a lease shorter than an app's requests, a
    metrics port that is the API's: each refused by check-config (and so by serve and
    a reload), named by its key."""
    (tmp_path / "AuthKey.p8").write_bytes(b"")
    path = tmp_path / "pushd.toml"
    path.write_text(
        f'[server]\nport = 8080\ndrain_seconds = -1.0\n[store]\npath = "{tmp_path}/db"\n'
        "[metrics]\nport = 8080\n"
        "[retry]\nbase_delay = nan\nmax_delay = -1.0\ncredential_pause = 0.0\n"
        "[spool]\nlease_seconds = 30.0\n"
        '[[apps]]\nname = "chat"\nprovider = "apns"\ntopic = "t"\nkey_file = "AuthKey.p8"\n'
        'key_id = "ABC1234567"\nteam_id = "TEAM123456"\nrequest_timeout = 29.5\n'
        "connections = 100000\n"
    )
    done = check_config(path)
    assert done.returncode == 1
    assert "retry.base_delay: expected a finite number, got nan" in done.stderr, done.stderr
    path.write_text(path.read_text().replace("base_delay = nan", "base_delay = 1.0"))
    done = check_config(path)
    assert done.returncode == 1
    for problem in (
        "server.drain_seconds: must not be negative",
        "metrics.port: 8080 is server.port too",
        "retry.max_delay: must be at least retry.base_delay",
        "retry.credential_pause: must be positive",
        "apps[0].request_timeout: 29.5 s leaves spool.lease_seconds (30 s) under 1 s of margin",
        "apps[0].connections: must be between 1 and 100",
    ):
        assert problem in done.stderr, (problem, done.stderr)


def test_a_postgresql_deployment_creates_its_key_file_as_check_config_says(
    tmp_path: Path,
) -> None:
    """No key file yet: check-config says to create it with ``pushd spool new-key``, which
    does (it had refused, on the same missing file); check-config then passes it."""
    path = tmp_path / "pushd.toml"
    key_file = tmp_path / "spool.key"
    path.write_text(
        f'[store]\nurl = "postgresql://pushd@db.example/pushd"\n[spool]\nkey_file = "{key_file}"\n'
    )
    done = check_config(path)
    assert done.returncode == 1 and "pushd spool new-key" in done.stderr, done.stderr
    created = subprocess.run(
        [sys.executable, "-m", "pushd", "spool", "new-key", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
    )
    assert created.returncode == 0, created.stderr
    assert f"created {key_file}" in created.stdout
    assert len(read_keys(key_file)) == 1
    # As the config is kept (README): its group reads it, other users do not.
    assert key_file.stat().st_mode & 0o077 == 0o040
    assert key_file.stat().st_gid == path.stat().st_gid
    done = check_config(path)
    assert "spool.key_file" not in done.stderr, done.stderr


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """``pushd check-config | head -1``: the pipe closes under the report; pushd stops
    quietly (a BrokenPipeError traceback had followed, twice).  Here the reader is gone
    before the first line, as ``head`` is once it has its lines."""
    path = tmp_path / "pushd.toml"
    path.write_text(f'[store]\npath = "{tmp_path}/db"\n')
    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pushd", "check-config", str(path)],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        )
    finally:
        os.close(write)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr


def test_tls_files_openssl_cannot_use_are_problems_with_their_keys(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """A CA bundle that is not PEM and a PKCS#12 certificate with the wrong password can
    be read, so they passed every check: check-config said OK and the app was paused at
    the next start.  Now OpenSSL loads them here, and each is named."""
    write_p8(tmp_path / "key.p8", ec.generate_private_key(ec.SECP256R1()))
    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    write_pkcs12(ca.issue_cert("pushd-client"), tmp_path / "cert.p12", b"right")
    (tmp_path / "password").write_text("wrong\n")
    for name in ("key.p8", "cert.p12", "password"):
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "pushd.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path}/db"\n[spool]\nkey_file = "{tmp_path}/spool.key"\n'
        f'[[apps]]\nname = "a"\nprovider = "apns"\ntopic = "com.example.a"\n'
        f'key_file = "{tmp_path}/key.p8"\nkey_id = "ABC1234567"\nteam_id = "TEAM123456"\n'
        f'upstream_ca_file = "{tmp_path}/ca.pem"\n'
        f'[[apps]]\nname = "b"\nprovider = "apns"\ntopic = "com.example.b"\n'
        f'cert_file = "{tmp_path}/cert.p12"\ncert_password_file = "{tmp_path}/password"\n'
    )
    done = check_config(path)
    assert done.returncode == 1
    assert "apps[0].upstream_ca_file: OpenSSL cannot use it (not PEM)" in done.stderr
    assert "apps[1].cert_file: Invalid password or PKCS12 data" in done.stderr, done.stderr


def test_file_names_the_system_cannot_look_up_are_problems_not_tracebacks(
    tmp_path: Path,
) -> None:
    """A NUL character (TOML's ``\\u0000``) and a name longer than the system takes:
    check-config and serve printed a traceback (ValueError, OSError ENAMETOOLONG).  Now
    each is a problem line with its key, and serve refuses to start with it."""
    long = tmp_path / ("k" * 300)
    path = tmp_path / "pushd.toml"
    path.write_text(
        f'[store]\npath = "{tmp_path}/db"\n[spool]\nkey_file = "{long}"\n'
        f'[server]\nadmin_token_file = "{tmp_path}/token\\u0000.txt"\n'
    )
    done = check_config(path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "server.admin_token_file: contains a NUL character" in done.stderr, done.stderr
    path.write_text(f'[store]\npath = "{tmp_path}/db"\n[spool]\nkey_file = "{long}"\n')
    for args in (["check-config", str(path)], ["serve", "--config", str(path)]):
        done = subprocess.run(
            [sys.executable, "-m", "pushd", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
        )
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert f"spool.key_file: cannot look up {long}: File name too long" in done.stderr
