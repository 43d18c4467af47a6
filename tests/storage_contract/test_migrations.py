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
