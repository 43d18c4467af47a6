"""Migration 2: operation records keyed per sender. A database written by 0.1 (plain
operation ids, ``chat:<user>:<clientId>`` chat keys) is rewritten so that a retry by
the same user after the upgrade is still recognised, on both SQL backends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from collabtrio.storage import open_store
from collabtrio.storage.migrations import LATEST_VERSION, POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS

ROWS: dict[str, list[tuple[Any, ...]]] = {
    "rooms": [("doc", 3, 1.0, 1.0)],
    "history": [
        ("doc", 1, "op", json.dumps({"seq": 1, "userId": "alice", "operationId": "o1"}), 1.0),
        ("doc", 2, "field", json.dumps({"seq": 2, "userId": "b:b", "operationId": "f1"}), 1.0),
        ("doc", 3, "chat", json.dumps({"seq": 3, "userId": "carol", "clientId": "m1"}), 1.0),
    ],
    "operations": [
        ("doc", "o1", 1, json.dumps({"ok": True, "seq": 1})),
        ("doc", "f1", 2, json.dumps({"ok": True, "seq": 2})),
        ("doc", "chat:carol:m1", 3, json.dumps({"ok": True, "seq": 3})),
    ],
    "chat_messages": [("doc", 3, "carol", "Carol", "hi", "m1", 1.0)],
}
EXPECTED = {"u5:alice:o1": 1, "u3:b:b:f1": 2, "c5:carol:m1": 3}


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_version_1_operation_records_are_rekeyed_per_user(store_url: str) -> None:
    assert LATEST_VERSION >= 2
    if store_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(store_url[len("sqlite:///"):])
        db.executescript(SQLITE_MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        for table, rows in ROWS.items():
            marks = ",".join("?" * len(rows[0]))
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        db.commit()
        db.close()
    else:
        import psycopg
        from psycopg import sql

        from collabtrio.storage.postgres import parse_url

        conninfo, schema, _ = parse_url(store_url)
        assert schema is not None
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            conn.execute(POSTGRES_MIGRATIONS[0])  # type: ignore[arg-type]
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                         "applied_at DOUBLE PRECISION NOT NULL)")
            conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
            for table, rows in ROWS.items():
                marks = ",".join(["%s"] * len(rows[0]))
                with conn.cursor() as cur:
                    cur.executemany(f"INSERT INTO {table} VALUES ({marks})",  # type: ignore[arg-type]
                                    rows)
    store = await open_store(store_url)
    try:
        assert await store.schema_version() == LATEST_VERSION
        snap = await store.load_room("doc", history_limit=100, chat_limit=10)
        assert {key: rec.seq for key, rec in snap.operations.items()} == EXPECTED
    finally:
        await store.close()


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_version_3_rooms_get_epochs_that_stay(store_url: str) -> None:
    """Migration 4: rooms stored at version 3, Yjs-only ones included (they had no
    room row), get their epochs in the migration; reopening gives the same ones, and
    the data is untouched."""
    assert LATEST_VERSION >= 4
    rooms = [("doc", 2, 1.0, 1.0), ("other", 1, 1.0, 1.0)]
    snapshots = [("ydoc", b"\x00\x00", 1)]
    updates = [("ydoc", 2, b"\x00\x00"), ("ylog-only", 1, b"\x00\x00")]
    if store_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(store_url[len("sqlite:///"):])
        for script in SQLITE_MIGRATIONS[:3]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 3")
        db.executemany("INSERT INTO rooms VALUES (?, ?, ?, ?)", rooms)
        db.executemany("INSERT INTO yjs_snapshots VALUES (?, ?, ?)", snapshots)
        db.executemany("INSERT INTO yjs_updates VALUES (?, ?, ?)", updates)
        db.commit()
        db.close()
    else:
        import psycopg
        from psycopg import sql

        from collabtrio.storage.postgres import parse_url

        conninfo, schema, _ = parse_url(store_url)
        assert schema is not None
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            for script in POSTGRES_MIGRATIONS[:3]:
                conn.execute(script)  # type: ignore[arg-type]
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                         "applied_at DOUBLE PRECISION NOT NULL)")
            conn.execute("INSERT INTO schema_migrations VALUES (1, 0), (2, 0), (3, 0)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO rooms VALUES (%s, %s, %s, %s)", rooms)
                cur.executemany("INSERT INTO yjs_snapshots VALUES (%s, %s, %s)", snapshots)
                cur.executemany("INSERT INTO yjs_updates VALUES (%s, %s, %s)", updates)
    store = await open_store(store_url)
    try:
        assert await store.schema_version() == LATEST_VERSION
        epochs = {room: await store.load_epochs(room)
                  for room in ("doc", "other", "ydoc", "ylog-only")}
        values = [e for pair in epochs.values() for e in (pair.doc, pair.yjs)]
        assert len(set(values)) == len(values)  # all different
        assert (await store.load_room("doc", history_limit=10, chat_limit=10)).seq == 2
        ydoc = await store.load_yjs("ydoc")
        assert (ydoc.snapshot, ydoc.covers, ydoc.log) == (b"\x00\x00", 1, [(2, b"\x00\x00")])
        assert ydoc.epoch == epochs["ydoc"].yjs
    finally:
        await store.close()
    again = await open_store(store_url)
    try:
        for room, pair in epochs.items():
            assert await again.load_epochs(room) == pair
    finally:
        await again.close()
