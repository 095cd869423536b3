"""Sealing spooled pushes: PyNaCl's SecretBox (XSalsa20-Poly1305) under keys from a file.

Everything that can carry content (the payload, and with it every header of the push)
is sealed before it reaches the store, so no message is readable in the database, its
WAL, a backup or a PostgreSQL dump.  What stays in the clear is what routing needs:
app, token, protocol, times.

The key file holds one key per line, base64 of 32 random bytes (``#`` comments allowed);
the first seals new rows, the others still open older ones.  A row names its key by a
short hash of it (``key_id``), so keys can be added and retired without renumbering.
``pushd spool rotate-key`` puts a new key first and re-seals every row under it; a
running pushd re-reads the file when it changed, before sealing and every few seconds
(so it seals with the new key at once), and when it meets a key id it does not know.
A file that cannot be read any more, or no longer parses, is logged and ignored: the
keys read before stay in use, because a daemon that stopped on a typo in the key file
would take every delivery down with it.

The sealed text names the app and token it belongs to, and opening checks them: a row
whose sealed push was swapped for another row's does not open.  The same keys seal a
few small secrets pushd keeps in the store (:meth:`SpoolKeys.seal_secret`, each bound
to its purpose: :mod:`pushd.spool.secret`), so a rotation re-seals those too.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import stat
from pathlib import Path
from typing import Any, Final

import nacl.exceptions
import nacl.secret
import nacl.utils

from pushd import jsonutil
from pushd.files import PRIVATE_FILE, OwnerError, write_durably
from pushd.model import ApnsPush, FcmPush, Push
from pushd.spool.secret import SecretMismatch, decode_secret, encode_secret

KEY_BYTES: Final = nacl.secret.SecretBox.KEY_SIZE
#: Bytes of the key's hash that name it in a row (12 hex characters).
KEY_ID_BYTES: Final = 6
#: Format of the sealed plaintext: a JSON header line, then the payload bytes.
FORMAT_VERSION: Final = 1
#: The first line of every key file pushd writes.
KEY_FILE_HEADER: Final = "# pushd spool keys: the first seals new rows. Keep a copy; never share.\n"

log = logging.getLogger(__name__)


class SealError(Exception):
    """A key file that cannot be used, or a sealed push that does not open."""


def key_id(key: bytes) -> str:
    return hashlib.blake2b(key, digest_size=KEY_ID_BYTES, person=b"pushd-spool").hexdigest()


def new_key_line() -> str:
    return base64.b64encode(nacl.utils.random(KEY_BYTES)).decode()


def read_keys(path: Path) -> list[bytes]:
    """The keys in ``path``, first (current) first; SealError naming what is wrong."""
    try:
        text = path.read_text()
    except OSError as error:
        raise SealError(f"cannot read spool key file {path}: {error.strerror}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise SealError(f"{path} line {number}: not base64") from None
        if len(key) != KEY_BYTES:
            raise SealError(f"{path} line {number}: a key is {KEY_BYTES} bytes")
        keys.append(key)
    if not keys:
        raise SealError(f"{path} holds no key")
    return keys


def key_file_missing(path: Path) -> bool:
    """No key file at ``path``, or an empty one: a start on a full disk, before key
    files were written whole, left one of 0 bytes behind, and it holds nothing to lose.
    A file holding anything else (a comment, a broken line) is never taken for none."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return True
    return stat.S_ISREG(found.st_mode) and found.st_size == 0


def create_key_file(path: Path, *, mode: int = PRIVATE_FILE, group: int | None = None) -> None:
    """Write a new key file with one key (``mode``, and ``group`` if given), whole and on
    disk before this returns; FileExistsError if there is one holding anything.

    An empty file there (:func:`key_file_missing`) is replaced, keeping its owner, group
    and mode.  SealError if the file cannot be written: ``path`` is then as it was, never
    left empty or half written (which every later start would refuse).
    """
    text = _key_text([nacl.utils.random(KEY_BYTES)])
    owner = None if group is None else (-1, group)
    try:
        write_durably(path, text, mode=mode, owner=owner, replace=False)
        return
    except FileExistsError:
        if not key_file_missing(path):
            raise
    except OSError as error:
        raise SealError(f"cannot write spool key file {path}: {error.strerror}") from None
    _rewrite(path, text)


def write_keys(path: Path, keys: list[bytes]) -> None:
    """Replace the key file with ``keys``, first is current: whole, on disk before this
    returns, and with the owner, group and mode the file had.

    The file is replaced, not rewritten in place, so a running pushd never reads half a
    file; the new one keeps the old one's owner and group because pushd reads it as its
    own user while an operator rotates as root.  SealError (and the file as it was) if
    that cannot be done.
    """
    _rewrite(path, _key_text(keys))


def _key_text(keys: list[bytes]) -> bytes:
    lines = [KEY_FILE_HEADER, *(base64.b64encode(key).decode() + "\n" for key in keys)]
    return "".join(lines).encode()


def _rewrite(path: Path, text: bytes) -> None:
    """Replace the file at ``path`` with ``text``, keeping its owner, group and mode."""
    try:
        was = path.stat()
    except OSError as error:
        raise SealError(f"cannot read spool key file {path}: {error.strerror}") from None
    owner = (was.st_uid, was.st_gid)
    try:
        write_durably(path, text, mode=stat.S_IMODE(was.st_mode), owner=owner, replace=True)
    except OwnerError as error:
        raise SealError(
            f"{path} left as it was: a new file could not keep its owner and group"
            f" {was.st_uid}:{was.st_gid} ({error.strerror}), and pushd may no longer read"
            " one that does not; run this as root or as that owner"
        ) from None
    except OSError as error:
        raise SealError(
            f"cannot write spool key file {path}: {error.strerror}; it was left as it was"
        ) from None


def prepend_key(path: Path) -> str:
    """Put a new key first in ``path``; its id."""
    key = nacl.utils.random(KEY_BYTES)
    write_keys(path, [key, *read_keys(path)])
    return key_id(key)


def _header(app: str, token: str, push: Push) -> dict[str, Any]:
    if isinstance(push, ApnsPush):
        return {
            "v": FORMAT_VERSION,
            "app": app,
            "token": token,
            "kind": "apns",
            "push_type": push.push_type,
            "priority": push.priority,
            "expiration": push.expiration,
            "collapse_id": push.collapse_id,
            "apns_id": push.apns_id,
        }
    return {
        "v": FORMAT_VERSION,
        "app": app,
        "token": token,
        "kind": "fcm",
        "expiration": push.expiration,
    }


def encode(app: str, token: str, push: Push) -> bytes:
    body = push.payload if isinstance(push, ApnsPush) else push.fields
    return jsonutil.dumpb(_header(app, token, push)) + b"\n" + body


def decode(plain: bytes, app: str, token: str) -> Push:
    head, _, body = plain.partition(b"\n")
    header = jsonutil.loads(head)
    if header.get("app") != app or header.get("token") != token:
        raise SealError("a sealed push names another delivery")
    if header.get("kind") == "apns":
        return ApnsPush(
            payload=body,
            push_type=header["push_type"],
            priority=header["priority"],
            expiration=header["expiration"],
            collapse_id=header["collapse_id"],
            apns_id=header["apns_id"],
        )
    return FcmPush(fields=body, expiration=header["expiration"])


def _identity(path: Path) -> tuple[int, int, int]:
    """What tells a rewritten key file from the one read before: its inode (every
    rewrite renames a new file into place), modification time and size.  The time
    alone missed a rotation written within the clock tick of the file's creation."""
    stat = path.stat()
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class SpoolKeys:
    """The keys of one key file; seals with the first, opens with any."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._boxes: dict[str, nacl.secret.SecretBox] = {}
        self.current = ""
        #: The file as last read: (inode, mtime, size); a rewrite is a new inode.
        self._seen: tuple[int, int, int] = (0, 0, 0)
        self.reload()

    @classmethod
    def load(cls, path: str | Path, *, create: bool = False) -> SpoolKeys:
        """The keys in ``path``; with ``create``, a new file first if there is none (or
        an empty one: :func:`key_file_missing`)."""
        file = Path(path)
        if create and key_file_missing(file):
            with contextlib.suppress(FileExistsError):  # another process made it just now
                create_key_file(file)
        return cls(file)

    def refresh(self) -> None:
        """Re-read the file if it changed (a rotation): new rows then use its new key.

        Never raises: a file that cannot be used is logged once per change and the keys
        read before stay (module docstring)."""
        try:
            seen = _identity(self.path)
        except OSError as error:
            seen = (-1, -1, -1)
            problem = f"cannot read spool key file {self.path}: {error.strerror}"
        else:
            if seen == self._seen:
                return
            try:
                self.reload()
                return
            except (SealError, OSError) as error:
                problem = str(error)
        if seen != self._seen:
            self._seen = seen
            log.error(
                "spool: %s; still sealing with key %s and opening with the %d keys read before",
                problem,
                self.current,
                len(self._boxes),
            )

    def reload(self) -> None:
        """Read the file now; SealError or OSError (and nothing changed) if it is unusable."""
        seen = _identity(self.path)
        keys = read_keys(self.path)
        self._boxes = {key_id(key): nacl.secret.SecretBox(key) for key in keys}
        self.current = key_id(keys[0])
        self._seen = seen

    @property
    def ids(self) -> list[str]:
        return list(self._boxes)

    def seal(self, app: str, token: str, push: Push) -> tuple[str, bytes]:
        """``(key_id, sealed)`` for a row: a random nonce, then the ciphertext.

        The file is looked at first (one ``stat``; rows are sealed only for retries), so
        once ``pushd spool new-key`` or ``rotate-key`` has put a new key first, no row is
        sealed under the old one: a rotation's ``--prune`` may then drop it."""
        self.refresh()
        sealed = self._boxes[self.current].encrypt(encode(app, token, push))
        return self.current, bytes(sealed)

    def open(self, key: str, sealed: bytes, app: str, token: str) -> Push:
        """The push of a row; SealError if its key is unknown or it does not open."""
        plain = self._decrypt(key, sealed, "push")
        try:
            return decode(plain, app, token)
        except (ValueError, KeyError, TypeError):
            raise SealError("a sealed push is not in pushd's format") from None

    def seal_secret(self, purpose: str, data: bytes) -> tuple[str, bytes]:
        """``(key_id, sealed)`` for a small secret kept in the store, bound to
        ``purpose`` (:mod:`pushd.spool.secret`): with the current key, as :meth:`seal`."""
        self.refresh()
        sealed = self._boxes[self.current].encrypt(encode_secret(purpose, data))
        return self.current, bytes(sealed)

    def open_secret(self, key: str, sealed: bytes, purpose: str) -> bytes:
        """The secret :meth:`seal_secret` sealed for ``purpose``; SealError if its key is
        unknown, it does not open, or it was sealed for something else."""
        try:
            return decode_secret(self._decrypt(key, sealed, "secret"), purpose)
        except SecretMismatch:
            raise SealError("a sealed secret is not the one asked for") from None

    def _decrypt(self, key: str, sealed: bytes, what: str) -> bytes:
        box = self._boxes.get(key)
        if box is None:
            self.refresh()  # rotated by ``pushd spool rotate-key`` since we loaded
            box = self._boxes.get(key)
        if box is None:
            raise SealError(f"no spool key with id {key} in {self.path}")
        try:
            return box.decrypt(sealed)
        except nacl.exceptions.CryptoError:
            raise SealError(f"a sealed {what} does not open with its key") from None
