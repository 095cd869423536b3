"""When an APNs client certificate expires.

Apple's push certificates last a year, and an expired one pauses its app at the first
push after midnight: the status page shows the date well before, so an admin can renew
in time.  Token auth (a ``.p8`` key) does not expire, so only certificate apps have a
date.  :func:`not_after` is pure over bytes, so both certificate formats are tested
without files.  Loading a certificate into a TLS context lives here too: the APNs client
and the config checks load it the same way.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pushd.upstream.apns.settings import CertAuth

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


def load_client_certificate(ctx: ssl.SSLContext, auth: CertAuth) -> None:
    """Load a PEM (certificate + key) or PKCS#12 client certificate into ``ctx``.

    :mod:`ssl` only loads PEM files, so a PKCS#12 bundle is converted with
    ``cryptography`` into a private temporary file (mode 0600, key encrypted with a
    one-off passphrase) that is deleted as soon as it is loaded.
    """
    with open(auth.cert_file, "rb") as f:
        data = f.read()
    if b"-----BEGIN" in data:
        ctx.load_cert_chain(auth.cert_file, password=auth.password)
        return
    key, cert, extra = pkcs12.load_key_and_certificates(data, auth.password)
    if key is None or cert is None:
        raise ValueError(f"{auth.cert_file}: PKCS#12 file lacks a certificate or a key")
    passphrase = os.urandom(24).hex().encode()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    pem += cert.public_bytes(serialization.Encoding.PEM)
    for extra_cert in extra or ():
        pem += extra_cert.public_bytes(serialization.Encoding.PEM)
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path, password=passphrase)
    finally:
        os.unlink(path)
