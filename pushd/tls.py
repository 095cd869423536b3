"""The TLS context of pushd's own API, from the admin's ``[server] tls_cert``/``tls_key``.

One function for ``check-config`` and for start-up alike, so that a file pushd cannot use
is named by ``pushd check-config`` before a restart, not found by a failing ``serve``.
"""

from __future__ import annotations

import ssl


class _Encrypted(Exception):
    """The key asked for a passphrase."""


def _no_passphrase() -> bytes:
    raise _Encrypted


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the PEM certificate chain ``cert_file`` and ``key_file``.

    Raises ValueError naming the key at fault (``tls_cert: ...``, ``tls_key: ...``) in
    words: OpenSSL says "PEM lib" whichever file is wrong, and for an encrypted key it
    would ask for the passphrase on a terminal, which a service does not have.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _Encrypted:
        raise ValueError(
            "tls_key: encrypted; pushd reads only an unencrypted key (keep it mode 0600)"
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ValueError("tls_key: not the private key of tls_cert") from None
        try:
            ssl.create_default_context().load_verify_locations(cafile=cert_file)
        except ssl.SSLError:
            raise ValueError(f"tls_cert: no PEM certificate in {cert_file}") from None
        raise ValueError(f"tls_key: no PEM private key in {key_file}") from None
    except OSError as error:
        raise ValueError(f"tls_cert, tls_key: {error.strerror or error}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context
