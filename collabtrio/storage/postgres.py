"""PostgreSQL storage: psycopg 3's sync API and a ``psycopg_pool`` on worker threads.

Theory of operation
-------------------
psycopg's ``AsyncConnection`` needs an asyncio loop, so the store uses the sync API:
every call runs in ``trio.to_thread.run_sync`` under a ``CapacityLimiter`` as large as
the pool (``max_size`` 4), takes a connection from the pool for the duration of the
call and gives it back. Invariants:

- Connections are in autocommit mode; every multi-statement call runs inside one
  transaction, begun and committed by hand (``commit`` and ``set_grant`` in a
  pipeline, BEGIN and COMMIT included: one round trip after the pool's check of the
  connection, the seq check included). An error rolls the transaction back before
  the connection goes back.
- A broken connection is never handed out twice: the pool checks each connection
  when it is taken (``ConnectionPool.check_connection``) and drops a connection that
  broke during a call; it reconnects in the background, so the store recovers by
  itself once the server is back.
- Start-up (connect, create the ``schema=`` schema if missing, migrate under an
  advisory lock, open the pool) raises :class:`StorageError` with the server named
  and what to do, within ``connect_timeout`` + ``open_timeout`` seconds.
- At run time every driver or pool error (server down, connection lost, pool
  timeout, a constraint violated by the data) raises :class:`StorageUnavailable`,
  except a failed seq check: a commit planned on a seq the room is no longer at
  (another process wrote to it) raises :class:`SeqConflict`. The check is an UPDATE
  of the room's row, so a concurrent writer of the same room waits for the row lock
  and then sees the committed seq (READ COMMITTED re-checks the updated row): two
  writers cannot both pass it.

URLs: ``postgresql://user@host:port/db?...`` (``postgres://`` too) with any libpq
parameter, plus ``schema=NAME``: tables live in that schema (``search_path``), created
at open when missing. ``options=-csearch_path%3DNAME`` works as well (the schema must
then exist).

JSON columns are JSONB: object key order is not kept (JSONB sorts keys), numbers come
back as they print in PostgreSQL (a float written as ``1e+16`` returns as the int
``10000000000000000``), and strings cannot hold ``\\u0000`` (commit raises
:class:`StorageUnavailable`); TEXT columns cannot hold NUL characters either.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import psycopg_pool
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from .base import StorageError, StorageUnavailable
from .migrations import LATEST_VERSION, POSTGRES_MIGRATIONS, too_new_message
from .sqlstore import Dialect, SQLStore

T = TypeVar("T")

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 4
RECONNECT_TIMEOUT_S = 8.0
PROBE_TIMEOUT_S = 1.0  # while the server is known to be down, one call at a time waits this
CONNECT_TIMEOUT_S = 5  # libpq connect_timeout, unless the URL sets one
OPEN_TIMEOUT_S = 10.0  # for the pool's first connection at start-up
CALL_TIMEOUT_S = 5.0  # waiting for a pooled connection at run time
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def parse_url(url: str) -> tuple[str, str | None, str]:
    """``(conninfo for libpq, schema or None, a description without password)``.

    :class:`StorageError` for a URL libpq would not take or a bad ``schema=`` name.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StorageError(f"bad PostgreSQL URL {url!r}: use postgresql://user@host/db")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise StorageError(
            f"bad schema name {schema!r} in the PostgreSQL URL: use letters, digits and _"
        )
    rest = [(k, v) for k, v in query if k != "schema"]
    plain = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    try:
        params: dict[str, Any] = conninfo_to_dict(plain)
    except psycopg.Error as exc:
        raise StorageError(f"bad PostgreSQL URL: {exc}") from exc
    if schema is not None:
        params["options"] = f"{params.get('options', '')} -csearch_path={schema}".strip()
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    params.setdefault("application_name", "collabtrio")
    where = (
        f"postgresql://{params.get('user') or ''}@{params.get('host') or 'localhost'}"
        f":{params.get('port') or 5432}/{params.get('dbname') or ''}"
    )
    if schema is not None:
        where += f" (schema {schema})"
    return make_conninfo("", **params), schema, where


class _Unavailable(StorageUnavailable):
    """StorageUnavailable that says whether the connection (not the data) failed."""

    def __init__(self, message: str, connection_lost: bool) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


class PostgresStore(SQLStore[psycopg.Connection[Any]]):
    """An open PostgreSQL database (see the module docstring).

    Resource handling: :meth:`open` returns a store owning a connection pool (and its
    background threads); :meth:`close` closes it (idempotent).
    """

    def __init__(
        self,
        url: str,
        pool: psycopg_pool.ConnectionPool,
        where: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.where = where
        self._pool: psycopg_pool.ConnectionPool | None = pool
        self._limiter = trio.CapacityLimiter(POOL_MAX_SIZE)
        self._down = False
        self._probing = False
        super().__init__(_DIALECT, wall_clock)
        self._call_timeout = call_timeout

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        wall_clock: Callable[[], float] = time.time,
        open_timeout: float = OPEN_TIMEOUT_S,
        call_timeout: float = CALL_TIMEOUT_S,
    ) -> PostgresStore:
        """Connect, migrate and open the pool; :class:`StorageError` if impossible."""
        conninfo, schema, where = parse_url(url)
        pool = await trio.to_thread.run_sync(
            _start, conninfo, schema, where, open_timeout, call_timeout
        )
        return cls(url, pool, where, wall_clock=wall_clock, call_timeout=call_timeout)

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` with a pooled connection on a worker thread.

        Once a call has found the server unreachable, the store is marked down: until a
        call succeeds again, one call at a time probes the server (waiting up to the
        call timeout) and every other call fails at once with
        :class:`StorageUnavailable`, so an outage does not queue every request behind
        the pool's timeout.
        """
        async with self._limiter:
            # checked once a worker slot is ours: calls that queued for a slot while the
            # server went away must not each wait out the pool's timeout
            if self._down:
                if self._probing:
                    raise StorageUnavailable(
                        f"PostgreSQL {self.where} is unreachable (reconnecting); try again"
                    )
                self._probing = True
                try:
                    result = await self._call(fn, min(PROBE_TIMEOUT_S, self._call_timeout))
                finally:
                    self._probing = False
                self._down = False
                return result
            return await self._call(fn, self._call_timeout)

    async def _call(self, fn: Callable[[psycopg.Connection[Any]], T], timeout: float) -> T:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("the PostgreSQL store is closed")

        def call() -> T:
            try:
                with pool.connection(timeout=timeout) as conn:
                    return fn(conn)
            except psycopg.Error as exc:  # PoolTimeout and PoolClosed included
                lost = isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError
                                  | psycopg_pool.PoolTimeout)
                raise _Unavailable(f"PostgreSQL {self.where}: {exc}", lost) from exc

        try:
            return await trio.to_thread.run_sync(call)
        except _Unavailable as exc:
            if exc.connection_lost:
                self._down = True
            raise

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        """The highest version in ``schema_migrations``."""
        row = await self._run(
            lambda c: c.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            .fetchone()
        )
        return int(row[0]) if row else 0

    async def close(self) -> None:
        """Close the pool and its connections (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await trio.to_thread.run_sync(pool.close)


# -- run in worker threads --------------------------------------------------------------


@contextmanager
def _transaction(
    conn: psycopg.Connection[Any], begin: str, *, pipelined: bool
) -> Iterator[psycopg.Cursor[Any]]:
    # BEGIN and COMMIT by hand (the connection is in autocommit mode): in a pipeline
    # they then travel with the statements, where conn.transaction() would sync the
    # pipeline when it starts and when it ends (4 round trips instead of 1)
    try:
        with conn.pipeline() if pipelined else nullcontext(), conn.cursor() as cur:
            cur.execute(begin)
            yield cur
            cur.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _write(conn: psycopg.Connection[Any]) -> AbstractContextManager[psycopg.Cursor[Any]]:
    # in a pipeline the statements go out without waiting for each other's results:
    # a commit is one round trip, and the first error (the others are skipped) is
    # raised when the pipeline ends. READ COMMITTED whatever the server's default:
    # the seq check relies on an UPDATE re-reading a row another writer committed
    return _transaction(conn, "BEGIN ISOLATION LEVEL READ COMMITTED", pipelined=True)


def _read(conn: psycopg.Connection[Any]) -> AbstractContextManager[psycopg.Cursor[Any]]:
    return _transaction(
        conn, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", pipelined=False
    )


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        pass  # the connection broke: the pool drops it


def _is_seq_conflict(exc: Exception) -> bool:
    return (
        isinstance(exc, psycopg.errors.NotNullViolation)
        and exc.diag.table_name == "rooms"
        and exc.diag.column_name == "seq"
    )


def _json(text: str) -> Jsonb:
    """A JSONB parameter from JSON text already made by :func:`dumps`."""
    return Jsonb(text, dumps=_identity)


def _identity(text: Any) -> Any:
    return text


_DIALECT: Dialect[psycopg.Connection[Any]] = Dialect(
    param="%s", write=_write, read=_read, json_param=_json, json_value=_identity,
    is_seq_conflict=_is_seq_conflict,
)


# -- start-up ---------------------------------------------------------------------------


def _start(
    conninfo: str, schema: str | None, where: str, open_timeout: float, call_timeout: float
) -> psycopg_pool.ConnectionPool:
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            if schema is not None:
                _ensure_schema(conn, schema)
            _migrate(conn, where)
    except psycopg.OperationalError as exc:
        raise StorageError(
            f"cannot connect to PostgreSQL {where}: {str(exc).strip()}; is the server "
            f"running and reachable, and do the user, password and database exist?"
        ) from exc
    except psycopg.Error as exc:
        raise StorageError(
            f"cannot prepare PostgreSQL {where}: {str(exc).strip()}; does the user have "
            f"the rights to create tables there?"
        ) from exc
    pool = psycopg_pool.ConnectionPool(
        conninfo,
        min_size=POOL_MIN_SIZE,
        max_size=POOL_MAX_SIZE,
        kwargs={"autocommit": True},
        check=psycopg_pool.ConnectionPool.check_connection,
        timeout=call_timeout,
        name="collabtrio",
        # the pool retries a lost connection with a doubling delay until this runs
        # out, then gives up and starts afresh (1 s delay) on the next demand: a short
        # value keeps recovery after an outage within seconds rather than as long
        # again as the outage
        reconnect_timeout=RECONNECT_TIMEOUT_S,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=open_timeout)
    except BaseException as exc:
        pool.close()
        if isinstance(exc, psycopg.Error):
            raise StorageError(f"cannot open a connection pool to PostgreSQL {where}: {exc}") \
                from exc
        raise
    return pool


def _ensure_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if exists is None:
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        except psycopg.errors.UniqueViolation:
            pass  # created by a concurrent opener between the check and the CREATE


def _migrate(conn: psycopg.Connection[Any], where: str) -> None:
    while True:
        with conn.transaction():
            # one migrator per schema at a time; the lock goes with the transaction
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('collabtrio.migrate.' || "
                "coalesce(current_schema(), '')))"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")\
                .fetchone()
            version = int(row[0]) if row else 0
            if version > LATEST_VERSION:
                raise StorageError(too_new_message(f"PostgreSQL {where}", version,
                                                   LATEST_VERSION))
            if version == LATEST_VERSION:
                return
            conn.execute(cast(Any, POSTGRES_MIGRATIONS[version]))
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                (version + 1, time.time()),
            )

