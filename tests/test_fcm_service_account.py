"""Reading service-account files: every refusal names its field and never leaks the key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushd.upstream.fcm.service_account import (
    ServiceAccountError,
    load_private_key,
    load_service_account,
)


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="session")
def rsa_pem() -> str:
    return pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture
def document(rsa_pem: str) -> dict[str, Any]:
    return {
        "type": "service_account",
        "project_id": "chat-app-1234",
        "private_key_id": "0123456789abcdef",
        "private_key": rsa_pem,
        "client_email": "pushd@chat-app-1234.iam.gserviceaccount.com",
        "client_id": "123",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "universe_domain": "googleapis.com",
    }


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()


def test_loads_a_google_file(document: dict[str, Any], rsa_pem: str) -> None:
    account = load_service_account(encode(document))
    assert account.project_id == "chat-app-1234"
    assert account.client_email == "pushd@chat-app-1234.iam.gserviceaccount.com"
    assert account.private_key_id == "0123456789abcdef"
    assert account.private_key_pem == rsa_pem.encode()
    assert account.token_uri == "https://oauth2.googleapis.com/token"
    assert "PRIVATE KEY" not in repr(account)


def small_key() -> str:
    return pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))


CHANGES: list[tuple[dict[str, Any], str]] = [
    ({"type": "authorized_user"}, 'type: must be "service_account"'),
    ({"type": None}, 'type: must be "service_account" (missing)'),
    ({"project_id": None}, "project_id: missing"),
    ({"project_id": ""}, "project_id: empty"),
    ({"project_id": 42}, "project_id: must be a string, not int"),
    ({"client_email": None}, "client_email: missing"),
    ({"private_key_id": None}, "private_key_id: missing"),
    ({"private_key": None}, "private_key: missing"),
    ({"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
     "private_key: not an unencrypted PEM private key"),
    ({"private_key": "hello"}, "private_key: not an unencrypted PEM private key"),
    ({"token_uri": None}, "token_uri: missing"),
    ({"token_uri": "http://oauth2.googleapis.com/token"}, "token_uri: must be an https:// URL"),
    ({"token_uri": "oauth2.googleapis.com"}, "token_uri: must be an https:// URL"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "error"), CHANGES)
def test_refusals_name_the_field(
    document: dict[str, Any], rsa_pem: str, change: dict[str, Any], error: str
) -> None:
    for key, value in change.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    with pytest.raises(ServiceAccountError) as info:
        load_service_account(encode(document))
    assert str(info.value).startswith(error)
    assert rsa_pem[40:80] not in str(info.value)
    assert info.value.__cause__ is None


def test_ec_key_is_refused(document: dict[str, Any]) -> None:
    document["private_key"] = pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ServiceAccountError, match="private_key: not an RSA private key"):
        load_service_account(encode(document))


def test_small_rsa_key_is_refused(document: dict[str, Any]) -> None:
    document["private_key"] = small_key()
    with pytest.raises(ServiceAccountError, match="private_key: RSA key of 1024 bits"):
        load_service_account(encode(document))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "not valid JSON: Expecting value at line 1 column 1"),
        (b"{", "not valid JSON"),
        (b"\xff", "file is not UTF-8 text"),
        (b"[]", "must be a JSON object, not list"),
    ],
)
def test_not_json(data: bytes, error: str) -> None:
    with pytest.raises(ServiceAccountError, match=error):
        load_service_account(data)


def test_broken_json_does_not_echo_the_file(rsa_pem: str) -> None:
    data = b'{"private_key": "' + rsa_pem.replace("\n", "\\n").encode() + b'", oops}'
    with pytest.raises(ServiceAccountError) as info:
        load_service_account(data)
    assert "MII" not in str(info.value)


def test_load_private_key(rsa_pem: str) -> None:
    assert load_private_key(rsa_pem.encode()).key_size == 2048


def test_a_good_key_is_checked_once_a_bad_one_every_time(document: dict[str, Any]) -> None:
    """Reloads re-check the config: an unchanged key is not parsed again (its check
    holds the GIL for ~12 ms), while a bad key is refused on every read."""
    from pushd.upstream.fcm import service_account

    checked = service_account._check_private_key
    checked.cache_clear()
    data = json.dumps(document).encode()
    first = load_service_account(data)
    again = load_service_account(data)
    assert first == again
    assert (checked.cache_info().misses, checked.cache_info().hits) == (1, 1)
    bad = json.dumps({**document, "private_key": "-----BEGIN PRIVATE KEY-----\nAA==\n"})
    for _ in range(2):
        with pytest.raises(ServiceAccountError, match="private_key"):
            load_service_account(bad.encode())
    assert checked.cache_info().currsize == 1
