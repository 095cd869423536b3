"""The settings of each of pushd's PostgreSQL sessions, from its URL and pushd's defaults.

Apart from :mod:`pushd.store.postgres` (the engine) because they are a policy of their
own: how long a connect, a vanished server, a transaction left open and a lock another
session holds may each keep pushd waiting, where libpq's and the server's defaults
would wait minutes or for ever.  A setting the URL gives is left to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from pushd.store.errors import StoreError

#: libpq's connect timeout (seconds) unless the URL sets one: without it a host that
#: drops packets holds a connection attempt for TCP's minutes.
CONNECT_TIMEOUT: Final = 5
#: libpq's TCP settings unless the URL sets them: a database that vanished without a
#: FIN or RST (a partition, a host gone) is noticed within about 30 s, not TCP's
#: minutes to hours: keepalives on an idle connection, and a bound on unacknowledged
#: data when one is waiting for an answer.
TCP_SETTINGS: Final = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}
#: The server ends a session left inside a transaction this long (milliseconds): pushd
#: never waits inside one, so only a client that vanished mid-transaction is hit, and
#: the spool rows its claim locked (``FOR UPDATE``) are free for the other instances
#: again instead of locked for as long as the dead connection lingers.
IDLE_IN_TRANSACTION_MS: Final = 30_000
#: The server gives up a statement of pushd's that has waited this long (milliseconds)
#: for a lock another session holds (an operator's ``LOCK TABLE``, ``ALTER TABLE`` or
#: ``VACUUM FULL``, a stuck client's transaction): the request hears 503 ``lock_wait``
#: within seconds instead of waiting as long as the lock is held, and its worker thread
#: (one of ``pool_size``) is free for requests that need other tables.  Migrations wait
#: on (:func:`pushd.store.schema.migrate_tx`): an instance starting beside another's
#: migration waits its turn.
LOCK_TIMEOUT_MS: Final = 5_000
#: The same for the CLI (an operator's ``spool status`` or ``purge``, no caller waiting):
#: it waits out a maintenance lock rather than fail after 5 s, yet not for ever.
OPERATOR_LOCK_TIMEOUT_MS: Final = 120_000


def session_settings(url: str, lock_timeout_ms: int, password_file: str | None) -> dict[str, Any]:
    """libpq's connection keywords for ``url``: pushd's defaults where it sets none, the
    lock timeout given (the daemon's or an operator's), the password from its file."""
    kwargs: dict[str, Any] = {"autocommit": True}  # writes say BEGIN themselves
    if "connect_timeout" not in url:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    kwargs |= {name: value for name, value in TCP_SETTINGS.items() if name not in url}
    if "options" not in url:
        kwargs["options"] = (
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
            f" -c lock_timeout={lock_timeout_ms}"
        )
    if password_file is not None:
        try:
            kwargs["password"] = Path(password_file).read_text().strip()
        except OSError as error:
            raise StoreError(f"cannot read {password_file}: {error.strerror}") from None
    return kwargs
