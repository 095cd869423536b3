"""A real PostgreSQL database per test, or a plain skip where there is none.

Tests that need PostgreSQL take the ``pg_url`` fixture.  It reads the server from
``PUSHD_TEST_POSTGRES_URL`` (``.ci/run`` sets it when a server answers on
127.0.0.1:5432), creates a database of the test's own and drops it afterwards, so
tests never see each other's rows and leave nothing behind.  Without the variable the
test is skipped with a message saying how to run it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

#: Where the test PostgreSQL server is; unset means "skip PostgreSQL tests".
POSTGRES_URL_ENV = "PUSHD_TEST_POSTGRES_URL"

SKIP_MESSAGE = (
    f"PostgreSQL tests skipped: set {POSTGRES_URL_ENV}=postgresql://user@host/db "
    "to a server where that user may create databases"
)


def server_url() -> str | None:
    """The configured test server's URL, or None when PostgreSQL tests should skip."""
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    return url or None


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def create_database() -> tuple[str, str]:
    """Create a fresh database; return its URL and name."""
    import psycopg

    url = server_url()
    if url is None:
        pytest.skip(SKIP_MESSAGE)
    name = "pushd_test_" + secrets.token_hex(6)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(url, name), name


def drop_database(name: str) -> None:
    """Drop a database made by :func:`create_database`, closing whatever still uses it."""
    import psycopg

    url = server_url()
    assert url is not None
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of an empty PostgreSQL database that lives as long as the test."""
    url, name = create_database()
    try:
        yield url
    finally:
        drop_database(name)
