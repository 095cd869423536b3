"""When an APNs client certificate expires.

Apple's push certificates last a year, and an expired one pauses its app at the first
push after midnight: the status page shows the date well before, so an admin can renew
in time.  Token auth (a ``.p8`` key) does not expire, so only certificate apps have a
date.  Pure over bytes, so both certificate formats are tested without files.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

#: What starts a PEM file; anything else is read as PKCS#12 (as the APNs client does).
PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def not_after(data: bytes, password: bytes | None = None) -> float | None:
    """The first certificate's notAfter in ``data`` (PEM or PKCS#12) as UNIX seconds, or
    None if there is none or the file cannot be read with ``password``."""
    try:
        if PEM_MARKER in data:
            certificate = x509.load_pem_x509_certificates(data)[0]
        else:
            _, loaded, _ = pkcs12.load_key_and_certificates(data, password)
            if loaded is None:
                return None
            certificate = loaded
    except (ValueError, TypeError):
        return None
    return certificate.not_valid_after_utc.timestamp()
