"""Claims (:mod:`pushd.claims`) in this process: long names, refusal, release."""

from __future__ import annotations

import socket

from pushd import claims


def test_a_long_name_is_claimed_once_and_released_with_its_socket() -> None:
    """A store path longer than a socket name holds (107 bytes) was refused as if
    another pushd held it: pushd could not start on such a path."""
    name = "store /" + "d" * 300 + "/pushd.sqlite3"
    held = claims.claim(name)
    assert isinstance(held, socket.socket)
    try:
        assert claims.claim(name) == f"another pushd has {name} already"
        assert claims.held_by_own_user(claims.claim_address(name, 0))
    finally:
        held.close()
    again = claims.claim(name)
    assert isinstance(again, socket.socket)
    again.close()


def test_a_claim_above_a_free_slot_still_refuses() -> None:
    """A pushd that went to slot 1 while another user squatted slot 0 still holds the
    name after the squatter left: a newcomer finding slot 0 free checks above it."""
    name = "port 127.0.0.1:1"
    upper = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    upper.bind(b"\0" + claims.claim_address(name, 1).encode())
    try:
        assert claims.claim(name) == f"another pushd has {name} already"
    finally:
        upper.close()
