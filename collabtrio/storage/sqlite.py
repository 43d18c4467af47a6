"""SQLite storage: the standard ``sqlite3`` module on one worker thread.

Theory of operation
-------------------
``aiosqlite`` is asyncio-only (under trio it fails with "trio.run received
unrecognized yield message"), so every call goes through ``trio.to_thread.run_sync``
with a ``CapacityLimiter(1)``: one connection (``check_same_thread=False``,
``isolation_level=None`` so transactions are explicit), used by one thread at a time,
never by the trio thread. Invariants:

- Every write happens between ``BEGIN IMMEDIATE`` and ``COMMIT``; any error rolls back
  before the exception leaves the worker thread, so the connection is never left in a
  transaction.
- Calls are not abandoned on cancellation (trio's default): a cancelled caller waits
  for its statement to finish, so a transaction is never cut in half.
- Start-up problems (bad URL, missing or read-only directory, a file that is not a
  database, a file locked by another process, a newer schema) raise
  :class:`StorageError` naming the path and what to do; the CLI exits 2 with it.
- Run-time errors (disk full, I/O error, locked longer than the busy timeout, a
  constraint violated by the data) raise :class:`StorageUnavailable`: nothing of the
  call was written. A commit planned on a seq the room is no longer at (another
  process wrote to it) raises :class:`SeqConflict`, nothing written either; the
  write lock taken by ``BEGIN IMMEDIATE`` makes the seq check and the writes one
  step for every process on the file.

The file is opened in WAL mode with foreign keys on, ``busy_timeout`` 5000 ms and
``PRAGMA synchronous`` NORMAL (a power cut may lose the last commits, never corrupts)
or FULL (fsync per commit).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio

from .base import StorageError, StorageUnavailable
from .migrations import LATEST_VERSION, SQLITE_MIGRATIONS, loads, too_new_message
from .sqlstore import Dialect, SQLStore

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
SYNCHRONOUS_MODES = ("NORMAL", "FULL")

# kept for callers of the first version
MIGRATIONS = SQLITE_MIGRATIONS


def path_from_url(url: str) -> str:
    """``sqlite:///rel/path.db`` -> ``rel/path.db``; ``sqlite:////abs/path.db`` ->
    ``/abs/path.db``; ``sqlite:///:memory:`` -> ``:memory:``."""
    rest = url[len("sqlite://"):] if url.startswith("sqlite://") else ""
    if not rest.startswith("/") or len(rest) < 2 or "?" in rest:
        raise StorageError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/file.db or "
            f"sqlite:////absolute/file.db"
        )
    return rest[1:]


class SQLiteStore(SQLStore[sqlite3.Connection]):
    """An open SQLite database (see the module docstring).

    Resource handling: :meth:`open` returns a store owning one connection; :meth:`close`
    closes it (idempotent). Calls after close raise :class:`StorageUnavailable`.
    """

    def __init__(
        self, url: str, conn: sqlite3.Connection, *, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._conn: sqlite3.Connection | None = conn
        self._limiter = trio.CapacityLimiter(1)
        super().__init__(_DIALECT, wall_clock)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        wall_clock: Callable[[], float] = time.time,
    ) -> SQLiteStore:
        """Open (creating if needed) and migrate; :class:`StorageError` if impossible."""
        path = path_from_url(url)
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise StorageError(
                f"bad SQLite synchronous setting {synchronous!r}: use NORMAL or FULL"
            )
        conn = await trio.to_thread.run_sync(_connect_and_migrate, path, mode, busy_timeout_ms)
        return cls(url, conn, wall_clock=wall_clock)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageUnavailable("the SQLite store is closed")

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StorageUnavailable(f"SQLite {self.path}: {exc}") from exc
            except BaseException:
                _rollback(conn)
                raise

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        """``PRAGMA user_version``."""
        row = await self._run(lambda c: c.execute("PRAGMA user_version").fetchone())
        return int(row[0])

    async def close(self) -> None:
        """Close the database file (idempotent); waits for a running call to finish."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter)


# -- run in the worker thread --------------------------------------------------------


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Cursor]:
    conn.execute(begin)
    try:
        yield conn.cursor()
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _write(conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Cursor]:
    # IMMEDIATE takes the write lock at once: a busy database fails here, not half-way
    return _transaction(conn, "BEGIN IMMEDIATE")


def _read(conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Cursor]:
    return _transaction(conn, "BEGIN")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may have rolled back already (e.g. SQLITE_FULL)


def _is_seq_conflict(exc: Exception) -> bool:
    return (
        isinstance(exc, sqlite3.IntegrityError)
        and getattr(exc, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_NOTNULL"
        and "rooms.seq" in str(exc)
    )


def _identity(value: Any) -> Any:
    return value


_DIALECT: Dialect[sqlite3.Connection] = Dialect(
    param="?", write=_write, read=_read, json_param=_identity, json_value=loads,
    is_seq_conflict=_is_seq_conflict,
)


# -- start-up ---------------------------------------------------------------------------


def _check_path(path: str) -> None:
    """Fail early, with a message a person can act on, for problems with the path."""
    if path == ":memory:":
        return
    target = Path(path)
    parent = target.absolute().parent
    if not parent.exists():
        # the nearest ancestor may be a regular file: say so
        for ancestor in parent.parents:
            if ancestor.exists():
                if not ancestor.is_dir():
                    raise StorageError(
                        f"cannot open SQLite database {path!r}: {ancestor} is a file, "
                        f"not a directory; choose another path for --db"
                    )
                break
        raise StorageError(
            f"cannot open SQLite database {path!r}: directory {parent} does not exist; "
            f"create it first or choose another path for --db"
        )
    if not parent.is_dir():
        raise StorageError(
            f"cannot open SQLite database {path!r}: {parent} is a file, not a directory; "
            f"choose another path for --db"
        )
    if target.is_dir():
        raise StorageError(
            f"cannot open SQLite database {path!r}: it is a directory; name a file"
        )
    # os.access reports EROFS (read-only file system) and immutable files even for root
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(
            f"cannot open SQLite database {path!r}: directory {parent} is not writable "
            f"(read-only file system or permissions); SQLite needs to create the database "
            f"and its -wal/-shm files there: make it writable or choose another path"
        )
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        raise StorageError(
            f"cannot open SQLite database {path!r}: the file is not readable and writable "
            f"by this user; fix its permissions or choose another path"
        )


def _explain(path: str, exc: sqlite3.Error) -> StorageError:
    text = str(exc)
    code = getattr(exc, "sqlite_errorname", "")
    if "locked" in text or code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        hint = (
            "another process holds it locked (is another collabtrio, or a tool with an "
            "exclusive lock, using the same file?); stop it or choose another path"
        )
    elif "not a database" in text or code == "SQLITE_NOTADB":
        hint = (
            "the file is not a SQLite database (or is encrypted or damaged); point --db "
            "at a collabtrio database or a path where a new one can be created"
        )
    elif "readonly" in text or "read-only" in text or code.startswith("SQLITE_READONLY"):
        hint = "the file or its directory is read-only; make them writable"
    elif "unable to open" in text or code.startswith("SQLITE_CANTOPEN"):
        hint = "check that the directory exists and is writable"
    elif "disk" in text and "full" in text:
        hint = "the disk is full; free some space"
    else:
        hint = "is the path writable, on a local disk, and not used by another program?"
    return StorageError(f"cannot open SQLite database {path!r}: {text}; {hint}")


def _set_wal(conn: sqlite3.Connection, patience_s: float) -> str:
    # switching a new file to WAL can answer "database is locked" at once (without the
    # busy handler) when another process opens the same new file at the same moment
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _connect_and_migrate(path: str, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    _check_path(path)
    try:
        conn = sqlite3.connect(
            path,
            check_same_thread=False,
            isolation_level=None,
            timeout=busy_timeout_ms / 1000,
            cached_statements=256,
        )
    except sqlite3.Error as exc:
        raise _explain(path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = _set_wal(conn, busy_timeout_ms / 1000)
        if path != ":memory:" and str(mode).lower() != "wal":
            raise StorageError(
                f"cannot open SQLite database {path!r} in WAL mode (journal mode stays "
                f"{mode!r}); is another program holding it, or is the file system "
                f"read-only or a network share?"
            )
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, path)
        # prove that we can write (and take the write lock) now, not at the first commit
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        conn.close()
        raise _explain(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST_VERSION:
        raise StorageError(too_new_message(f"the SQLite database {path!r}", version,
                                           LATEST_VERSION))
    for number in range(version + 1, LATEST_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the write lock: another process may have migrated meanwhile
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current >= number:
                conn.execute("COMMIT")
                continue
            for statement in SQLITE_MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

