"""Service accounts and the JWT-bearer assertions they sign, checked as Google's
token endpoint does."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pushd.simulators.fcm.constants import (
    ASSERTION_CLOCK_SKEW,
    ASSERTION_MAX_LIFETIME,
    SERVICE_ACCOUNT_KEY_BITS,
    TIMEFRAME_MESSAGE,
)
from pushd.upstream.fcm.settings import OAUTH_SCOPE


def make_service_account(
    path: str | os.PathLike[str],
    project_id: str,
    token_uri: str,
    client_email: str | None = None,
    *,
    key: rsa.RSAPrivateKey | None = None,
) -> rsa.RSAPrivateKey:
    """Write a service-account JSON file in Google's format; return its private key.

    ``client_email`` defaults to ``pushd-sim@<project_id>.iam.gserviceaccount.com``.
    Generating a 2048-bit RSA key takes tens of milliseconds to seconds, so tests pass a
    ``key`` made once per session.  The file is created 0600, as a secret should be.
    """
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=SERVICE_ACCOUNT_KEY_BITS)
    email = client_email or f"pushd-sim@{project_id}.iam.gserviceaccount.com"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)).rjust(21, "1"),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        + email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    return key


@attrs.frozen
class Account:
    public_key: rsa.RSAPublicKey
    projects: frozenset[str]


@attrs.frozen
class Grant:
    """An issued access token: whose it is, where it may send, until when."""

    client_email: str
    #: Projects the token may send to; ``None`` = any (an assertion accepted unverified).
    projects: frozenset[str] | None
    expires_at: float
    epoch: int


@attrs.frozen
class _AssertionVerdict:
    """The outcome of checking an assertion: an OAuth error, or who signed it."""

    error: str | None
    description: str = ""
    client_email: str = ""


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_assertion(
    assertion: str,
    accounts: Mapping[str, Account],
    audience: str,
    now: float,
    *,
    verify_signature: bool = True,
) -> _AssertionVerdict:
    """Check a JWT-bearer assertion the way Google's token endpoint does.

    Order: shape and ``alg``, issuer known, signature, scope, audience, timeframe.  With
    ``verify_signature`` false an unknown issuer is let through too (``pushd simulate
    --fcm-accept-any-assertion``), but every claim is still checked.
    """

    def grant_error(description: str) -> _AssertionVerdict:
        return _AssertionVerdict("invalid_grant", description)

    parts = assertion.split(".")
    if len(parts) != 3:
        return grant_error("Invalid JWT: not a compact JWS (header.claims.signature).")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        return grant_error("Invalid JWT: a part is not base64url-encoded JSON.")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return grant_error("Invalid JWT: header and claims must be JSON objects.")
    if header.get("alg") != "RS256":
        return grant_error("Invalid JWT: the signing algorithm must be RS256.")
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        return _AssertionVerdict("invalid_request", "Invalid JWT: no iss claim.")
    account = accounts.get(iss)
    if account is None and verify_signature:
        return grant_error("Invalid grant: account not found")
    if verify_signature:
        assert account is not None
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
        try:
            account.public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return grant_error("Invalid JWT Signature.")
    scope = claims.get("scope")
    if not isinstance(scope, str) or not scope.strip():
        return _AssertionVerdict("invalid_scope", "Empty or missing scope not allowed.")
    if OAUTH_SCOPE not in scope.split():
        return _AssertionVerdict(
            "invalid_scope", "Invalid OAuth scope or ID token audience provided."
        )
    if claims.get("aud") != audience:
        return grant_error(
            f"Invalid JWT: Failed audience check. The expected audience is {audience}."
        )
    iat, exp = claims.get("iat"), claims.get("exp")
    if not _is_number(iat) or not _is_number(exp):
        return grant_error(TIMEFRAME_MESSAGE)
    iat_f, exp_f = float(cast(float, iat)), float(cast(float, exp))
    if (
        iat_f > now + ASSERTION_CLOCK_SKEW
        or exp_f <= now
        or exp_f <= iat_f
        or exp_f - iat_f > ASSERTION_MAX_LIFETIME
    ):
        return grant_error(TIMEFRAME_MESSAGE)
    return _AssertionVerdict(None, client_email=iss)
