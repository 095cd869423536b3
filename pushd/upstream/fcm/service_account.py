"""Reading a Google service-account JSON file into a :class:`ServiceAccount`.

The config checker calls :func:`load_service_account` so that a wrong file is reported
at ``pushd check-config`` time, field by field, instead of as a failed token request an
hour after start.  Messages name the field and what is wrong with it, never its value:
the file holds a private key, and a config checker's output ends up in bug reports.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.upstream.fcm.settings import ServiceAccount

#: The only ``type`` Google's JWT-bearer grant accepts for a key file.
SERVICE_ACCOUNT_TYPE = "service_account"
#: Google issues 2048-bit keys; anything smaller is not one of theirs and is weak.
MIN_RSA_BITS = 2048
#: Private keys remembered as checked.  Checking one costs ~12 ms of CPU that holds the
#: GIL, and every reload re-checks the config: an unchanged file is not checked again,
#: so a reload does not hold up the event loop (benchmarks/reload.py).
CHECKED_KEYS = 16


class ServiceAccountError(ValueError):
    """The service-account file is unusable; the message names the field, never a value."""


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """Parse the ``private_key`` field: an unencrypted PEM RSA key of at least 2048 bits.

    Raises :class:`ServiceAccountError` naming ``private_key``; the exception chain is
    cut (``from None``) because cryptography's messages may quote parts of the input.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ServiceAccountError(
            f"private_key: not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ServiceAccountError(
            f"private_key: not an RSA private key ({type(key).__name__.lstrip('_')})"
        )
    if key.key_size < MIN_RSA_BITS:
        raise ServiceAccountError(
            f"private_key: RSA key of {key.key_size} bits, at least {MIN_RSA_BITS} needed"
        )
    return key


@functools.lru_cache(maxsize=CHECKED_KEYS)
def _check_private_key(pem: bytes) -> None:
    """:func:`load_private_key` for its verdict only, remembered for a good key (an
    exception is not cached: a bad key is reported every time)."""
    load_private_key(pem)


def _string(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if value is None:
        raise ServiceAccountError(f"{field}: missing")
    if not isinstance(value, str):
        raise ServiceAccountError(f"{field}: must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ServiceAccountError(f"{field}: empty")
    return value


def load_service_account(data: bytes) -> ServiceAccount:
    """Parse and check a service-account JSON file's contents.

    Checks what pushd relies on: ``type`` is ``"service_account"``; ``project_id``,
    ``client_email``, ``private_key_id`` are non-empty strings; ``private_key`` is an RSA
    key (see :func:`load_private_key`); ``token_uri`` is an ``https`` URL (it is where the
    signed assertion goes, so plain HTTP would hand it to anyone on the path).  Other
    fields (``client_id``, cert URLs, ``universe_domain``) are ignored.
    """
    try:
        parsed = json.loads(data)
    except UnicodeDecodeError:
        raise ServiceAccountError("file is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # exc.msg is a fixed phrase ("Expecting value"); exc.doc would be the whole file.
        raise ServiceAccountError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(parsed, dict):
        raise ServiceAccountError(f"must be a JSON object, not {type(parsed).__name__}")

    kind = parsed.get("type")
    if kind != SERVICE_ACCOUNT_TYPE:
        raise ServiceAccountError(
            f'type: must be "{SERVICE_ACCOUNT_TYPE}"' + (" (missing)" if kind is None else "")
        )
    project_id = _string(parsed, "project_id")
    client_email = _string(parsed, "client_email")
    private_key_id = _string(parsed, "private_key_id")
    pem = _string(parsed, "private_key").encode("utf-8", "replace")
    _check_private_key(pem)
    token_uri = _string(parsed, "token_uri")
    url = urlsplit(token_uri)
    if url.scheme != "https" or not url.hostname:
        raise ServiceAccountError("token_uri: must be an https:// URL")
    return ServiceAccount(
        project_id=project_id,
        client_email=client_email,
        private_key_id=private_key_id,
        private_key_pem=pem,
        token_uri=token_uri,
    )
