"""ES256 provider tokens (JWT) for APNs token authentication, built with ``cryptography``.

APNs wants one JWT per (key, team), refreshed no more often than every 20 minutes and no
less often than every 60 (protocol notes §1.3).  Swapping tokens too often on a connection
earns ``429 TooManyProviderTokenUpdates``; a token older than an hour earns
``403 ExpiredProviderToken``.  :class:`ProviderToken` therefore keeps exactly one current
JWT that every connection of a client shares, and only the rules below replace it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pushd.upstream.apns.settings import TokenAuth

#: Regenerate the shared JWT once it is this old (seconds).  Apple allows 20 to 60 minutes;
#: 45 keeps well clear of both ends, even with some clock skew.
REFRESH_AFTER = 45 * 60
#: Apple's floor between two token changes (seconds).  A forced refresh after
#: ``ExpiredProviderToken`` honours it unless APNs insists the younger token is expired.
MIN_REFRESH_INTERVAL = 20 * 60

#: ES256 signatures are two 32-byte big-endian integers, r then s.
_COORDINATE_BYTES = 32


class InvalidProviderKey(ValueError):
    """The ``.p8`` key is not a PEM EC P-256 private key."""


def load_p8(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an APNs ``.p8`` key and check it can sign ES256.

    Raises :class:`InvalidProviderKey` with a sentence a config checker can show as is;
    the key material never appears in the message.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidProviderKey(
            "APNs key is not an unencrypted PEM private key (expected the .p8 file "
            f"downloaded from Apple): {type(exc).__name__}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidProviderKey(
            f"APNs key must be an EC P-256 private key, not {type(key).__name__}"
        )
    if not isinstance(key.curve, ec.SECP256R1):
        raise InvalidProviderKey(f"APNs key must use curve P-256, not {key.curve.name}")
    return key


def p8_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` in Apple's ``.p8`` format (unencrypted PKCS#8 PEM).

    For keys pushd makes itself: the demo's, the simulator's, tests' and benchmarks'.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_p8(
    path: Path, key: ec.EllipticCurvePrivateKey | None = None
) -> ec.EllipticCurvePublicKey:
    """Write ``key`` (default: a fresh P-256 key) to ``path`` as a 0600 ``.p8`` file."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    path.touch(mode=0o600)
    path.write_bytes(p8_pem(key))
    return key.public_key()


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def make_jwt(key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str, issued_at: int) -> str:
    """Sign one APNs provider token: ``{"alg":"ES256","kid":...}.{"iss":...,"iat":...}``."""
    header = json.dumps({"alg": "ES256", "kid": key_id}, separators=(",", ":")).encode()
    claims = json.dumps({"iss": team_id, "iat": issued_at}, separators=(",", ":")).encode()
    signing_input = _b64url(header) + b"." + _b64url(claims)
    der = key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
    return (signing_input + b"." + _b64url(raw)).decode("ascii")


class ProviderToken:
    """The one JWT a client presents on all its connections, and when to replace it.

    * :meth:`current` regenerates once the token is :data:`REFRESH_AFTER` old, so tokens
      change roughly every 45 minutes and never approach the one-hour expiry.
    * :meth:`expired` handles ``ExpiredProviderToken``.  Many requests in flight see the
      same rejection at once; only a report about the *current* token counts, so a burst
      regenerates once.  If the current token is old enough (:data:`MIN_REFRESH_INTERVAL`)
      it is simply replaced.  If it is younger, APNs disagrees with our clock (skew, or a
      suspended VM) and waiting would only fail more requests, so it is replaced anyway:
      still at most once per rejected token, because a replaced token is no longer current.
    """

    def __init__(self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str) -> None:
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._jwt: str | None = None
        self._issued_at = 0.0

    @classmethod
    def from_auth(cls, auth: TokenAuth) -> ProviderToken:
        """Build from the settings' :class:`TokenAuth` (validates the key)."""
        return cls(load_p8(auth.key_pem), auth.key_id, auth.team_id)

    @property
    def issued_at(self) -> float:
        """When the current JWT was made (clock seconds); 0 before the first one."""
        return self._issued_at

    def _regenerate(self, now: float) -> str:
        self._issued_at = now
        self._jwt = make_jwt(self._key, self._key_id, self._team_id, int(now))
        return self._jwt

    def current(self, now: float) -> str:
        """The JWT to send now, regenerated first if it is :data:`REFRESH_AFTER` old.

        A clock that went backwards also regenerates: ``iat`` in the future is as
        suspicious to APNs as one in the distant past.
        """
        jwt = self._jwt
        if jwt is None or not 0 <= now - self._issued_at < REFRESH_AFTER:
            return self._regenerate(now)
        return jwt

    def expired(self, seen_jwt: str, now: float) -> str:
        """APNs answered ``ExpiredProviderToken`` to ``seen_jwt``: return the JWT to resend with.

        Regenerates only when ``seen_jwt`` is still the current token; a request that saw
        an older token just gets the newer one, so a burst of rejections regenerates once.
        Old or young (see :meth:`is_young`), a rejected current token is replaced: at most
        once, because once replaced it is no longer current.
        """
        if seen_jwt != self._jwt:
            return self.current(now)
        return self._regenerate(now)

    def is_young(self, now: float) -> bool:
        """Whether the current token is younger than :data:`MIN_REFRESH_INTERVAL`.

        The client uses this to log a clock-skew warning when APNs rejects a young token.
        """
        return now - self._issued_at < MIN_REFRESH_INTERVAL
