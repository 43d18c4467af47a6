"""SQLite storage: the standard ``sqlite3`` module on one worker thread.

``aiosqlite`` is asyncio-only (under trio it fails with "trio.run received
unrecognized yield message"), so calls go through ``trio.to_thread.run_sync`` with a
``CapacityLimiter(1)``: one statement at a time, never on the trio thread. The file is
opened in WAL mode with foreign keys on and a busy timeout; versioned migrations run at
open time inside a transaction each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from .base import StorageError, StorageUnavailable

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000

MIGRATIONS: list[str] = [
    # 1: the schema the document layer fills
    """
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE entities (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (room, collection, id)
    );
    CREATE TABLE history (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (room, seq)
    );
    CREATE TABLE operations (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        operation_id TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (room, operation_id)
    );
    CREATE TABLE chat_messages (
        room TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        text TEXT NOT NULL,
        client_id TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (room, seq)
    );
    CREATE TABLE grants (
        pattern TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
        PRIMARY KEY (pattern, user_id)
    );
    """,
]


def path_from_url(url: str) -> str:
    """``sqlite:///rel/or/abs/path.db`` -> the path (``sqlite:///:memory:`` allowed)."""
    rest = url[len("sqlite://"):]
    if not rest.startswith("/") or len(rest) < 2:
        raise StorageError(f"bad SQLite URL {url!r}: use sqlite:///path/to/file.db")
    path = rest[1:]
    return path


class SQLiteStore:
    """An open SQLite database (see the module docstring)."""

    def __init__(self, url: str, conn: sqlite3.Connection) -> None:
        self.url = url
        self._conn: sqlite3.Connection | None = conn
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, url: str) -> SQLiteStore:
        """Open (creating if needed) and migrate; :class:`StorageError` if impossible."""
        path = path_from_url(url)
        conn = await trio.to_thread.run_sync(_connect_and_migrate, path)
        return cls(url, conn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageUnavailable("store is closed")

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                raise StorageUnavailable(f"SQLite: {exc}") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def schema_version(self) -> int:
        """``PRAGMA user_version``."""
        row = await self._run(lambda c: c.execute("PRAGMA user_version").fetchone())
        return int(row[0])

    async def close(self) -> None:
        """Close the database file."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter)


def _connect_and_migrate(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            raise StorageError(f"cannot open SQLite database {path!r}: {parent} does not exist")
    try:
        conn = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
    except sqlite3.Error as exc:
        raise StorageError(
            f"cannot open SQLite database {path!r}: {exc} (is the path writable, "
            f"and no other process holding the file locked?)"
        ) from exc
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StorageError(
            f"the database is at schema version {version}, newer than this collabtrio "
            f"knows ({len(MIGRATIONS)}); upgrade collabtrio or use a backup"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
