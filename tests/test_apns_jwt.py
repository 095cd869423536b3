"""Provider tokens: the JWT itself, verified with cryptography, and when it is replaced."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pushd.upstream.apns.jwt import (
    MIN_REFRESH_INTERVAL,
    REFRESH_AFTER,
    InvalidProviderKey,
    ProviderToken,
    load_p8,
)
from pushd.upstream.apns.settings import TokenAuth

T0 = 1_700_000_000.0


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def p8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def token(key: ec.EllipticCurvePrivateKey) -> ProviderToken:
    return ProviderToken.from_auth(TokenAuth(p8(key), key_id="ABC123DEFG", team_id="TEAM123456"))


def test_refresh_constants_follow_apple() -> None:
    assert 40 * 60 <= REFRESH_AFTER <= 50 * 60
    assert MIN_REFRESH_INTERVAL == 20 * 60


def test_jwt_is_valid_es256(key: ec.EllipticCurvePrivateKey, token: ProviderToken) -> None:
    jwt = token.current(T0 + 0.7)
    header_b64, claims_b64, signature_b64 = jwt.split(".")
    assert "=" not in jwt
    assert json.loads(b64decode(header_b64)) == {"alg": "ES256", "kid": "ABC123DEFG"}
    assert json.loads(b64decode(claims_b64)) == {"iss": "TEAM123456", "iat": int(T0)}
    signature = b64decode(signature_b64)
    assert len(signature) == 64  # raw r || s, not DER
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    key.public_key().verify(
        encode_dss_signature(r, s),
        f"{header_b64}.{claims_b64}".encode(),
        ec.ECDSA(hashes.SHA256()),
    )  # raises InvalidSignature if wrong


def test_current_is_cached_until_refresh_after(token: ProviderToken) -> None:
    first = token.current(T0)
    assert token.current(T0 + 1) == first
    assert token.current(T0 + REFRESH_AFTER - 1) == first
    second = token.current(T0 + REFRESH_AFTER)
    assert second != first
    assert token.issued_at == T0 + REFRESH_AFTER
    assert token.current(T0 + REFRESH_AFTER + 60) == second


def test_clock_going_backwards_regenerates(token: ProviderToken) -> None:
    first = token.current(T0)
    assert token.current(T0 - 3600) != first


def test_expired_old_token_regenerates_once(token: ProviderToken) -> None:
    first = token.current(T0)
    now = T0 + MIN_REFRESH_INTERVAL + 5
    second = token.expired(first, now)
    assert second != first
    assert token.issued_at == now
    # Other requests in flight with the same rejected token: no further regeneration.
    assert token.expired(first, now + 1) == second
    assert token.expired(first, now + 2) == second
    assert token.current(now + 3) == second


def test_expired_young_token_regenerates_but_once_per_token(token: ProviderToken) -> None:
    first = token.current(T0)
    assert token.is_young(T0 + 60)
    second = token.expired(first, T0 + 60)  # APNs disagrees with our clock: replace anyway
    assert second != first
    assert token.expired(first, T0 + 61) == second  # not again for the same rejected token
    assert token.expired(first, T0 + 62) == second
    third = token.expired(second, T0 + 63)  # a new rejection of the new token: once more
    assert third != second
    assert token.expired(second, T0 + 64) == third


def test_is_young(token: ProviderToken) -> None:
    token.current(T0)
    assert token.is_young(T0 + MIN_REFRESH_INTERVAL - 1)
    assert not token.is_young(T0 + MIN_REFRESH_INTERVAL)


def test_load_p8_accepts_p256(key: ec.EllipticCurvePrivateKey) -> None:
    loaded = load_p8(p8(key))
    assert loaded.private_numbers() == key.private_numbers()


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        (b"", "not an unencrypted PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", "PEM"),
        (p8(ec.generate_private_key(ec.SECP384R1())), "curve P-256"),
    ],
)
def test_load_p8_rejects(pem: bytes, message: str) -> None:
    with pytest.raises(InvalidProviderKey, match=message):
        load_p8(pem)


def test_load_p8_rejects_rsa() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidProviderKey, match="EC P-256"):
        load_p8(pem)


def test_load_p8_rejects_encrypted(key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InvalidProviderKey):
        load_p8(pem)


def test_error_does_not_leak_key_material(key: ec.EllipticCurvePrivateKey) -> None:
    pem = p8(key)
    with pytest.raises(InvalidProviderKey) as info:
        load_p8(pem[:-40])
    assert pem.decode()[40:80] not in str(info.value)
