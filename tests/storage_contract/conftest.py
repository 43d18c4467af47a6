"""Fixtures for the storage contract: one ``store`` per backend.

``store`` is parametrized over ``sqlite`` (a file in ``tmp_path``), ``postgres`` (a
fresh schema per test in the ``test`` database, created here and dropped afterwards)
and ``memory`` (a named in-process store), so every contract test runs unchanged
against each backend.

PostgreSQL: ``COLLABTRIO_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). When the server cannot be reached the
postgres tests skip with the reason, unless ``COLLABTRIO_REQUIRE_SERVICES=1`` (CI),
which makes them fail instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest

from collabtrio.storage import Store, open_store

BACKENDS = ["sqlite", "postgres", "memory"]


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A store URL on a fresh schema of its own, dropped (with everything in it) after
    the test; the connections carry a unique ``application_name``."""
    import psycopg
    from psycopg import sql

    schema = f"ct_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_query(postgres_server, schema=schema, application_name=schema)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema)))


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/contract.db"  # tmp_path is absolute: sqlite:////...
    elif request.param == "postgres":
        yield request.getfixturevalue("postgres_url")
    else:
        from collabtrio.storage.memory import forget

        url = f"memory://contract-{uuid.uuid4().hex}"
        yield url
        forget(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, empty store of each backend; closed after the test."""
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()
