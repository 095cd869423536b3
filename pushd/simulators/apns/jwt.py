"""Provider tokens: the ES256 JWT a client sends, parsed and verified as APNs does."""

from __future__ import annotations

import base64
import binascii
import json

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


@attrs.frozen
class TokenInfo:
    """What a provider token says, and whether it can be trusted at all.

    Time-dependent checks (expiry) are not cached: they run on every request.
    """

    error: str | None
    team: str = ""
    iat: float = 0.0


def _b64url(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def inspect_jwt(
    jwt: bytes, keys: dict[str, tuple[str, ec.EllipticCurvePublicKey]], verify: bool
) -> TokenInfo:
    """Parse and (unless ``verify`` is false) check the ES256 signature of ``jwt``."""
    bad = TokenInfo("InvalidProviderToken")
    parts = jwt.split(b".")
    if len(parts) != 3:
        return bad
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error):
        return bad
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return bad
    kid, team, iat = header.get("kid"), claims.get("iss"), claims.get("iat")
    if header.get("alg") != "ES256" or not isinstance(kid, str) or not kid:
        return bad
    if not isinstance(team, str) or not team:
        return bad
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return bad
    if verify:
        known = keys.get(kid)
        if known is None or known[0] != team or len(signature) != 64:
            return bad
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            known[1].verify(der, parts[0] + b"." + parts[1], ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return bad
    return TokenInfo(None, team, float(iat))
