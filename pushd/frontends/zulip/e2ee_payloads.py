"""The pure half of the Zulip bouncer's end-to-end encrypted pushes: the bouncer's
key pairs and token ids, sealed registrations opened and checked, and push requests
turned into what pushd sends.  No I/O: table-testable (see :mod:`.e2ee` for the flow)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import nacl.exceptions
import nacl.public

from pushd import jsonutil
from pushd.frontends.zulip.wire import (
    IOS_APP_ID_RE,
    KIND_APNS,
    KIND_FCM,
    ZulipError,
    bad_request,
    check_token,
    is_int64,
)
from pushd.model import APNS_PRIORITIES, APNS_PUSH_TYPES, ApnsPush, Push
from pushd.upstream.fcm import message as fcm_message

#: ``token_id`` is this many leading bytes of SHA-256(token).
TOKEN_ID_BYTES: Final = 8
#: What ``PushRegistration.token_kind`` says, and the legacy kind it maps to.
TOKEN_KINDS: Final = {"apns": KIND_APNS, "fcm": KIND_FCM}
FCM_PRIORITIES: Final = frozenset({"high", "normal"})


@attrs.frozen
class Generation:
    """The names one Zulip generation uses on the wire for the same things."""

    #: Key of a push request naming the device: "token_id" or "device_id".
    device_field: str
    #: Key of the payload naming the push key, forwarded to FCM as a string.
    key_field: str
    #: Key of the response listing devices to forget.
    delete_field: str


ZULIP_12: Final = Generation("token_id", "push_key_id", "delete_token_ids")
ZULIP_11: Final = Generation("device_id", "push_account_id", "delete_device_ids")


@attrs.frozen
class PushRegistration:
    """The app's sealed registration, checked; lives in memory only."""

    token: str
    token_kind: str
    ios_app_id: str | None
    timestamp: int


@attrs.frozen
class PushRequest:
    """One checked entry of ``push_requests``: the device named and what to send it."""

    #: The device as the server named it: a ``token_id`` string or a ``device_id`` int.
    name: str | int
    apns: bool
    push: Push


# --- keys and ids (pure) ------------------------------------------------------------------


def new_key_pair() -> tuple[str, str]:
    """A fresh X25519 bouncer key pair, (public, private), each base64 of 32 bytes.

    Standard base64 of the raw public key is the form a white-label app bakes in
    (zulip-flutter's ``bouncerPublicKey``) and sends back as ``bouncer_public_key``.
    """
    private = nacl.public.PrivateKey.generate()
    return (
        base64.b64encode(bytes(private.public_key)).decode(),
        base64.b64encode(bytes(private)).decode(),
    )


def token_id_of(token: str) -> str:
    """The app's ``computeTokenId``: base64 of the first 8 bytes of SHA-256(token)."""
    digest = hashlib.sha256(token.encode()).digest()[:TOKEN_ID_BYTES]
    return base64.b64encode(digest).decode()


def token_id_int(token_id: str) -> int | None:
    """A ``token_id`` as the signed big-endian int64 Zulip stores, None if malformed."""
    try:
        raw = base64.b64decode(token_id, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != TOKEN_ID_BYTES or base64.b64encode(raw).decode() != token_id:
        return None
    return int.from_bytes(raw, "big", signed=True)


def invalid_registration() -> ZulipError:
    return bad_request("Invalid encrypted_push_registration")


def open_registration(private_key: str, sealed: str) -> PushRegistration:
    """Open and check a sealed ``PushRegistration`` (notes §4.2); any flaw is a 400.

    Zulip answers every failure here, cryptographic or not, with the same message, so
    the server cannot tell a bad box from a bad token; so do we.
    """
    try:
        box = nacl.public.SealedBox(nacl.public.PrivateKey(base64.b64decode(private_key)))
        plaintext = box.decrypt(base64.b64decode(sealed, validate=True))
        value = jsonutil.loads(plaintext)
    except (
        binascii.Error,
        ValueError,
        TypeError,
        RecursionError,
        nacl.exceptions.CryptoError,
    ):
        raise invalid_registration() from None
    if not isinstance(value, dict):
        raise invalid_registration()
    try:  # a lone surrogate's escape ("\\ud800") decodes, but no store or upstream encodes it
        jsonutil.dumpb(value)
    except ValueError:
        raise invalid_registration() from None
    token, kind, app_id, timestamp = (
        value.get(name) for name in ("token", "token_kind", "ios_app_id", "timestamp")
    )
    # Types first: a list or an object is unhashable, a TypeError in the ``in`` below.
    if not isinstance(token, str) or not isinstance(kind, str) or kind not in TOKEN_KINDS:
        raise invalid_registration()
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise invalid_registration()
    try:
        token = check_token(token, TOKEN_KINDS[kind])
    except ZulipError:
        raise invalid_registration() from None
    if kind == "apns":
        if not isinstance(app_id, str) or IOS_APP_ID_RE.fullmatch(app_id) is None:
            raise invalid_registration()
    elif app_id is not None:
        raise invalid_registration()
    return PushRegistration(token, kind, app_id, timestamp)


# --- push requests (pure) -----------------------------------------------------------------


def _field(entry: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    """``entry[name]`` of type ``kind``; an integer only in 64 bits (a ``device_id`` is
    looked up in the store, whose integers are 64-bit)."""
    value = entry.get(name)
    if not (is_int64(value) if kind is int else isinstance(value, kind)):
        raise bad_request(f"Invalid {where}[{name!r}]")
    return value


def parse_push_request(entry: Any, index: int, generation: Generation) -> PushRequest:
    """Check one push request and build what pushd sends (notes §2.7, §4.4).

    APNs (the request has ``http_headers``): the payload goes out as the body, every
    member kept in the server's order; Zulip's bouncer also re-serialises the parsed
    payload (aioapns), so the ciphertext string arrives byte for byte.  No expiration:
    Zulip sets none on this path.  FCM: a data-only message of the key id (as a string,
    FCM data values are strings) and the ciphertext, at the given priority.
    """
    where = f"push_requests[{index}]"
    if not isinstance(entry, dict):
        raise bad_request(f"Invalid {where}")
    name_type: type = str if generation is ZULIP_12 else int
    name = _field(entry, generation.device_field, name_type, where)
    payload = _field(entry, "payload", dict, where)
    key_id = _field(payload, generation.key_field, int, f"{where}['payload']")
    encrypted = _field(payload, "encrypted_data", str, f"{where}['payload']")
    if "http_headers" in entry:
        headers = _field(entry, "http_headers", dict, where)
        priority = headers.get("apns_priority")
        push_type = headers.get("apns_push_type")
        # Types first: a list or an object is unhashable, a TypeError in ``in``.
        if not is_int64(priority) or priority not in APNS_PRIORITIES:
            raise bad_request(f"Invalid {where}['http_headers']['apns_priority']")
        if not isinstance(push_type, str) or push_type not in APNS_PUSH_TYPES:
            raise bad_request(f"Invalid {where}['http_headers']['apns_push_type']")
        _field(payload, "aps", dict, f"{where}['payload']")
        try:
            body = jsonutil.dumpb(payload)
        except ValueError:  # NaN or a lone surrogate: only from a caller that skipped the parser
            raise bad_request(f"Invalid {where}['payload']") from None
        return PushRequest(name, True, ApnsPush(body, push_type=push_type, priority=priority))
    priority = entry.get("fcm_priority")
    if not isinstance(priority, str) or priority not in FCM_PRIORITIES:
        raise bad_request(f"Invalid {where}['fcm_priority']")
    data = {generation.key_field: str(key_id), "encrypted_data": encrypted}
    try:
        fcm_push = fcm_message.build_push(
            data=data,
            android=fcm_message.AndroidOptions(priority="high" if priority == "high" else "normal"),
        )
    except fcm_message.InvalidMessage as error:
        raise bad_request(f"Invalid {where}['payload']: {error}") from None
    return PushRequest(name, False, fcm_push)


def generation_of(requests: Sequence[Any]) -> Generation:
    """Zulip 11 names devices by ``device_id``, Zulip 12 by ``token_id``."""
    for entry in requests:
        if isinstance(entry, dict) and "device_id" in entry and "token_id" not in entry:
            return ZULIP_11
    return ZULIP_12
