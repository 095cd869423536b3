"""Zulip bouncer private keys rest sealed with the spool keys, never in the clear.

A bouncer private key opens every sealed registration (and with it every device token)
Zulip servers send, so a dump of the store alone must not reveal it.  These tests read
the store as an attacker with a backup would (the SQLite file's bytes, the PostgreSQL
row) and drive pushd as an operator does: ``pushd zulip keys add``, ``serve``, and
``pushd spool rotate-key --prune`` beside it, with registrations over HTTP between.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pushd.model import FcmPush
from pushd.spool.seal import SealError, SpoolKeys


@pytest.fixture
def keys(tmp_path: Path) -> SpoolKeys:
    return SpoolKeys.load(tmp_path / "spool.key", create=True)


# --- sealing a secret ---------------------------------------------------------------------


def test_a_secret_opens_only_for_its_purpose(keys: SpoolKeys) -> None:
    """A sealed secret is bound to what it is for: another purpose, or the spool's own
    opening (as if it were a spooled row), refuses it; a spooled push is no secret."""
    key, sealed = keys.seal_secret("bouncer key A", b"\x00secret\n\xff")
    assert key == keys.current
    assert b"secret" not in sealed
    assert keys.open_secret(key, sealed, "bouncer key A") == b"\x00secret\n\xff"
    with pytest.raises(SealError, match="not the one asked for"):
        keys.open_secret(key, sealed, "bouncer key B")
    with pytest.raises(SealError):
        keys.open(key, sealed, "bouncer key A", "token")
    row_key, row = keys.seal("chat", "token", FcmPush(fields=b"{}", expiration=None))
    with pytest.raises(SealError, match="not the one asked for"):
        keys.open_secret(row_key, row, "chat")
    with pytest.raises(SealError, match="does not open"):
        keys.open_secret(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), "bouncer key A")
    with pytest.raises(SealError, match="no spool key with id"):
        keys.open_secret("0" * 12, sealed, "bouncer key A")
