"""Throw-away TLS material for the simulators, made with ``cryptography``.

``pushd simulate`` and the demo mode need a TLS server that speaks HTTP/2 (APNs has no
clear-text mode), but trustme is a test-only dependency.  This module makes a private CA
and a server certificate signed by it, hands out a ready :class:`ssl.SSLContext` with ALPN
``h2``, and writes the CA certificate where a client (pushd's ``ca_file``) can trust it.

Nothing here is meant to protect anything: keys live in memory and in a temporary
directory for the instant :meth:`ssl.SSLContext.load_cert_chain` needs a file.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the certificate is valid for unless told otherwise: the simulator's default host.
DEFAULT_NAMES = ("127.0.0.1", "localhost")
#: Long enough for a benchmark run or a demo left open over a weekend.
DEFAULT_VALID_DAYS = 30
#: Backdating tolerates a client clock a little behind ours.
_BACKDATE = datetime.timedelta(hours=1)


def configure_h2(context: ssl.SSLContext) -> ssl.SSLContext:
    """Make ``context`` fit for an HTTP/2 server as RFC 9113 §9.2 asks, and return it.

    APNs is HTTP/2 only, negotiated with ALPN; clients such as httpx fall back to
    HTTP/1.1 when the server does not offer ``h2``, which the simulator cannot speak.
    """
    context.set_alpn_protocols(["h2"])
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context_from_files(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """Return an HTTP/2 server context for a certificate (chain) and key stored in files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return configure_h2(context)


@attrs.frozen
class SelfSignedTLS:
    """A private CA and one server certificate it signed, all as PEM bytes."""

    ca_cert_pem: bytes
    #: Server certificate followed by nothing else: the CA is the trust anchor.
    server_cert_pem: bytes
    server_key_pem: bytes = attrs.field(repr=False)

    def server_context(self) -> ssl.SSLContext:
        """Return a new server-side context serving the certificate, with ALPN ``h2``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        # load_cert_chain only reads files; a private directory keeps the key unreadable
        # by others for the instant it exists on disk.
        with tempfile.TemporaryDirectory(prefix="pushd-sim-tls-") as tmp:
            cert_path = os.path.join(tmp, "server.pem")
            key_path = os.path.join(tmp, "server.key")
            with open(cert_path, "wb") as f:
                f.write(self.server_cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.server_key_pem)
            context.load_cert_chain(cert_path, key_path)
        return configure_h2(context)

    def client_context(self) -> ssl.SSLContext:
        """Return a client context that trusts only this CA, offering ALPN ``h2``."""
        context = ssl.create_default_context(cadata=self.ca_cert_pem.decode("ascii"))
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context

    def write_ca(self, path: str | os.PathLike[str]) -> None:
        """Write the CA certificate (PEM) to ``path`` for a client to trust."""
        with open(path, "wb") as f:
            f.write(self.ca_cert_pem)


def _subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def make_self_signed(
    names: Iterable[str] = DEFAULT_NAMES, *, valid_days: int = DEFAULT_VALID_DAYS
) -> SelfSignedTLS:
    """Make a fresh CA and a server certificate for ``names`` (host names or IP addresses).

    EC P-256 keys keep generation instant, so every ``pushd simulate`` run can have its
    own CA instead of sharing a key checked into the repository.
    """
    names = list(names)
    if not names:
        raise ValueError("at least one host name or IP address is needed")
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - _BACKDATE
    not_after = now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushd simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, "pushd simulator CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushd simulator"),
                    x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(names)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    return SelfSignedTLS(
        ca_cert_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        server_cert_pem=server_cert.public_bytes(serialization.Encoding.PEM),
        server_key_pem=server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
