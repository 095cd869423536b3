"""Zulip bouncer private keys rest sealed with the spool keys, never in the clear.

A bouncer private key opens every sealed registration (and with it every device token)
Zulip servers send, so a dump of the store alone must not reveal it.  These tests read
the store as an attacker with a backup would (the SQLite file's bytes, the PostgreSQL
row) and drive pushd as an operator does: ``pushd zulip keys add``, ``serve``, and
``pushd spool rotate-key --prune`` beside it, with registrations over HTTP between.
"""

from __future__ import annotations

import base64
import logging
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import nacl.public
import pytest

from pushd import cli_spool
from pushd.config import StoreConfig
from pushd.frontends.zulip.bouncer_keys import (
    Resealed,
    open_private_key,
    reseal,
    seal_private_key,
)
from pushd.frontends.zulip.e2ee import new_key_pair
from pushd.model import FcmPush
from pushd.simulators.apns import ApnsSimulator
from pushd.spool.seal import (
    SealError,
    SpoolKeys,
    create_key_file,
    key_id,
    prepend_key,
    read_keys,
)
from pushd.store import Store, open_store
from tests.conftest import TOPIC, Pushd, token
from tests.process import write_config
from tests.storefixtures import run_cli
from tests.zulip_client import (
    PushKey,
    ZulipServer,
    apns_push_request,
    realm,
    seal_registration,
    token_id,
)

OK = {"result": "success", "msg": ""}
REALM = realm(1)["uuid"]
PG_DUMP = "/usr/bin/pg_dump"
#: ``rotate-key``'s wait for running instances to switch keys, shortened: the daemon
#: here opens what it meets with a key it has not read yet by re-reading the file.
ROTATION_PAUSE: Final = 0.05


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


# --- the store as a backup holds it ---------------------------------------------------------


def cli_config(bouncer: Pushd, tmp_path: Path) -> str:
    """A config file naming the daemon's store and spool key file, for the CLI."""
    store = bouncer.config.store
    where: dict[str, Any] = {"path": store.path} if store.url is None else {"url": store.url}
    sections = {"store": where, "spool": {"key_file": bouncer.config.spool.key_file}}
    return str(write_config(tmp_path / "cli.toml", sections))


async def add_key(bouncer: Pushd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``pushd zulip keys add`` with the config, as an operator runs it; the public key."""
    capsys.readouterr()
    assert await run_cli(["zulip", "keys", "add", "--config", cli_config(bouncer, tmp_path)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


async def private_of(bouncer: Pushd, public: str) -> str:
    """The base64 private key of ``public``, opened with the daemon's spool keys; it is
    checked to be that public key's."""
    key = await bouncer.services.store.zulip_bouncer_key(public)
    assert key is not None
    private = open_private_key(bouncer.services.dispatcher.keys, key)
    derived = nacl.public.PrivateKey(base64.b64decode(private)).public_key
    assert base64.b64encode(bytes(derived)).decode() == public
    return private


def store_dump(store: StoreConfig) -> bytes:
    """Everything a backup of the store holds: the SQLite file with its WAL, or what
    ``pg_dump`` writes."""
    if store.url is None:
        return b"".join(path.read_bytes() for path in Path(store.path).parent.glob("*.sqlite3*"))
    return subprocess.run(
        [PG_DUMP, "--data-only", store.url], capture_output=True, check=True, timeout=30
    ).stdout


def assert_not_in(secret: str, dump: bytes) -> None:
    raw = base64.b64decode(secret)
    assert secret.encode() not in dump
    assert raw not in dump
    assert raw.hex().encode() not in dump  # a bytea's text form


async def register(zulip: ZulipServer, public: str, n: int) -> None:
    sealed = seal_registration(public, token(n), "apns", TOPIC)
    response = await zulip.e2ee_register(REALM, token_id(token(n)), sealed, public)
    assert response.status_code == 200, response.text
    assert response.json() == OK


async def notify(zulip: ZulipServer, simulator: ApnsSimulator, n: int) -> None:
    """A notification to the device registered as ``n`` reaches its token: the token
    was opened with the private key, not guessed."""
    key = PushKey(id=n)
    request = apns_push_request(token_id(token(n)), key, {"type": "test", "n": n})
    response = await zulip.e2ee_notify(REALM, [request])
    assert response.status_code == 200, response.text
    assert response.json()["apple_successfully_sent_count"] == 1
    assert simulator.received[-1].token == token(n)


async def test_keys_add_stores_the_private_key_sealed_and_it_still_registers(
    bouncer: Pushd,
    zulip: ZulipServer,
    simulator: ApnsSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After ``keys add`` the private key (base64, raw or hex) is nowhere in the store's
    file or dump, its row names the current spool key, and a Zulip registration sealed
    to the public key works end to end."""
    public = await add_key(bouncer, tmp_path, capsys)
    key = await bouncer.services.store.zulip_bouncer_key(public)
    assert key is not None and key.key_id == bouncer.services.dispatcher.keys.current
    private = await private_of(bouncer, public)
    assert_not_in(private, store_dump(bouncer.config.store))
    await register(zulip, public, 1)
    await notify(zulip, simulator, 1)


async def test_keys_add_with_store_needs_the_key_file(tmp_path: Path) -> None:
    """With ``--store`` there is no config to name the spool key file: it is asked for,
    never guessed (a key sealed with a file the daemon lacks would not open)."""
    store = str(tmp_path / "pushd.sqlite3")
    assert await run_cli(["zulip", "keys", "add", "--store", store]) == 1
    key_file = tmp_path / "made.key"
    assert (
        await run_cli(["zulip", "keys", "add", "--store", store, "--key-file", str(key_file)]) == 0
    )
    opened = await open_store(StoreConfig(path=store))
    try:
        (key,) = await opened.zulip_bouncer_keys()
    finally:
        await opened.close()
    assert key.key_id == key_id(read_keys(key_file)[0])


# --- rows from before sealing ----------------------------------------------------------------


async def test_a_plain_row_is_sealed_at_the_next_start_and_still_works(
    start_bouncer: Callable[..., Awaitable[Pushd]],
    store_config: StoreConfig,
    store_sections: dict[str, Any],
    simulator: ApnsSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key pair an older pushd stored in the clear (written as it wrote it, without
    ``key_id``) is sealed when ``serve`` starts, once, and registrations keep working."""
    public, private = new_key_pair()
    opened = await open_store(store_config)
    try:
        await opened.engine.write(
            lambda tx: tx.execute(
                "INSERT INTO zulip_bouncer_keys (public_key, private_key, created_at)"
                " VALUES (?, ?, ?)",
                (public, private, time.time()),
            )
        )
    finally:
        await opened.close()
    with pytest.raises(AssertionError):  # what the other tests look for is found here
        assert_not_in(private, store_dump(store_config))
    caplog.set_level(logging.INFO)
    bouncer = await start_bouncer(store_sections)
    keys = bouncer.services.dispatcher.keys
    (key,) = await bouncer.services.store.zulip_bouncer_keys()
    assert key.key_id == keys.current and private not in key.private_key
    assert await private_of(bouncer, public) == private
    sealed = [r.message for r in caplog.records if "sealed 1 Zulip bouncer private" in r.message]
    assert len(sealed) == 1, sealed
    assert private not in caplog.text
    # A second pass (another instance's start) finds nothing to do.
    assert await reseal(bouncer.services.store, keys, plain_only=True) == Resealed(0, 0)
    zulip = ZulipServer(client=bouncer.client, services_url=bouncer.url)
    assert (await zulip.register_server()).status_code == 200
    assert (await zulip.upload_analytics([realm(1)])).status_code == 200
    await register(zulip, public, 2)
    await notify(zulip, simulator, 2)


async def test_resealing_a_row_that_changed_meanwhile_leaves_it(store: Store) -> None:
    """Two instances sealing one plain row at once: the second UPDATE finds the row
    changed and leaves the first one's sealing in place."""
    stale = await store.zulip_add_bouncer_key("pub", "plain", key_id=None)
    assert await store.zulip_reseal_bouncer_key(stale, "sealed-by-first", "k1")
    assert not await store.zulip_reseal_bouncer_key(stale, "sealed-by-second", "k2")
    row = await store.zulip_bouncer_key("pub")
    assert row is not None and (row.private_key, row.key_id) == ("sealed-by-first", "k1")
    assert await store.zulip_bouncer_key_ids() == {"k1"}


# --- rotating the spool key ------------------------------------------------------------------


async def test_rotate_key_with_prune_reseals_bouncer_keys_and_they_keep_working(
    bouncer: Pushd,
    zulip: ZulipServer,
    simulator: ApnsSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``spool rotate-key --prune`` beside the daemon: the bouncer key is re-sealed under
    the new spool key, the old one is dropped (no row uses it any more), and the
    daemon, which never saw the new key, opens it and registers."""
    monkeypatch.setattr(cli_spool, "KEY_SWITCH_SECONDS", ROTATION_PAUSE)
    public = await add_key(bouncer, tmp_path, capsys)
    await register(zulip, public, 1)
    old = bouncer.services.dispatcher.keys.current
    code = await run_cli(
        ["spool", "rotate-key", "--prune", "--config", cli_config(bouncer, tmp_path)]
    )
    output = capsys.readouterr().out
    assert code == 0, output
    assert "re-sealed 1 Zulip bouncer private key(s)" in output, output
    assert "now holds 1 key(s)" in output, output
    (new,) = [key_id(key) for key in read_keys(Path(bouncer.config.spool.key_file))]
    assert new != old
    key = await bouncer.services.store.zulip_bouncer_key(public)
    assert key is not None and key.key_id == new
    await register(zulip, public, 2)
    await notify(zulip, simulator, 2)


async def test_prune_keeps_a_spool_key_a_bouncer_key_still_uses(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bouncer key still sealed under an older spool key (say one added from a host
    whose key file was not updated yet): pruning keeps that key and drops the unused."""
    monkeypatch.setattr(cli_spool, "KEY_SWITCH_SECONDS", ROTATION_PAUSE)
    path = tmp_path / "spool.key"
    create_key_file(path)
    prepend_key(path)  # the one the bouncer key will use
    public, private = new_key_pair()
    in_use = SpoolKeys.load(path)
    spool_key, sealed = seal_private_key(in_use, public, private)
    await store.zulip_add_bouncer_key(public, sealed, key_id=spool_key)
    prepend_key(path)
    keys = SpoolKeys.load(path)
    unused = key_id(read_keys(path)[2])
    await cli_spool._prune(store, keys)
    held = [key_id(key) for key in read_keys(path)]
    assert held == [keys.current, spool_key], (held, unused)
    (key,) = await store.zulip_bouncer_keys()
    assert open_private_key(SpoolKeys.load(path), key) == private


# --- a key that does not open ------------------------------------------------------------------


async def test_a_bouncer_key_whose_spool_key_is_gone_answers_503(
    start_bouncer: Callable[..., Awaitable[Pushd]],
    store_config: StoreConfig,
    store_sections: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sealed with a spool key the daemon's file does not hold (a key file replaced):
    the start says so, naming that spool key; a registration gets a 503 in Zulip's
    shape (the server retries later), and one ERROR names the bouncer key by id, never
    the key, at most once a minute."""
    public, private = new_key_pair()
    elsewhere = SpoolKeys.load(tmp_path / "elsewhere.key", create=True)
    spool_key, stored = seal_private_key(elsewhere, public, private)
    opened = await open_store(store_config)
    try:
        key = await opened.zulip_add_bouncer_key(public, stored, key_id=spool_key)
    finally:
        await opened.close()
    caplog.set_level(logging.INFO)
    bouncer = await start_bouncer(store_sections)
    (at_start,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"sealed with spool key(s) {spool_key}, which" in at_start
    zulip = ZulipServer(client=bouncer.client, services_url=bouncer.url)
    assert (await zulip.register_server()).status_code == 200
    assert (await zulip.upload_analytics([realm(1)])).status_code == 200
    caplog.clear()
    sealed = seal_registration(public, token(1), "apns", TOPIC)
    response = await zulip.e2ee_register(REALM, token_id(token(1)), sealed, public)
    assert response.status_code == 503, response.text
    assert response.json() == {
        "result": "error",
        "msg": "This push notification service cannot use this bouncer key now; try again later",
        "code": "BOUNCER_KEY_UNAVAILABLE",
    }
    # Every device of the realm registers again, and Zulip retries: one ERROR a minute.
    for _ in range(4):
        again = await zulip.e2ee_register(REALM, token_id(token(1)), sealed, public)
        assert again.status_code == 503, again.text
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"bouncer key {key.id} cannot be opened" in errors[0]
    assert spool_key in errors[0]
    for secret in (private, stored[:40], sealed[:40], token(1)):
        assert secret not in caplog.text
