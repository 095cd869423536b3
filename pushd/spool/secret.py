"""Small secrets sealed with the spool keys, each bound to what it is for.

The spool keys live outside the database (``[spool] key_file``), so anything sealed
with them stays unreadable in a dump or backup of the store alone.  Besides spooled
pushes (:mod:`pushd.spool.seal`), pushd keeps a few secrets of its own in the store, a
Zulip bouncer's private keys among them; they are sealed here.

The sealed text starts with a JSON header naming the secret's ``purpose`` (say, which
bouncer key it is) and opening checks it, as a spooled push names its app and token:
a secret copied over another row's, or a spooled push put where a secret belongs (or
the other way round), does not open.  The header's ``kind`` is one no spooled push
uses, and it names no app, so the spool's own check refuses a secret too.
"""

from __future__ import annotations

from typing import Final

from pushd import jsonutil

#: Format of a sealed secret's plaintext: a JSON header line, then the secret's bytes.
SECRET_VERSION: Final = 1
#: The header's ``kind``: never a spooled push's ("apns", "fcm").
SECRET_KIND: Final = "secret"


class SecretMismatch(ValueError):
    """A sealed text that is not a secret for this purpose."""


def encode_secret(purpose: str, data: bytes) -> bytes:
    """The plaintext to seal for ``data``, bound to ``purpose``."""
    header = {"v": SECRET_VERSION, "kind": SECRET_KIND, "purpose": purpose}
    return jsonutil.dumpb(header) + b"\n" + data


def decode_secret(plain: bytes, purpose: str) -> bytes:
    """The secret in ``plain``; SecretMismatch if it is for another purpose (or is no
    secret at all, a spooled push say)."""
    head, newline, data = plain.partition(b"\n")
    try:
        header = jsonutil.loads(head)
    except ValueError:
        raise SecretMismatch("a sealed secret's header is not JSON") from None
    if (
        not newline
        or not isinstance(header, dict)
        or header.get("v") != SECRET_VERSION
        or header.get("kind") != SECRET_KIND
        or header.get("purpose") != purpose
    ):
        raise SecretMismatch("a sealed text is not the secret asked for")
    return data
