"""Poison values: every field of every client event fed what no backend can store or
no JSON peer can read, while two other rooms do ordinary work on the same server.

The property (docs/protocol.md, "Errors and limits"): the poisoner gets a refusal
(``VALIDATION``, or ``TOO_LARGE`` for sizes) on each, nothing is applied, nothing
is logged as an error, and the other clients' work is untouched: every ack ok, every
broadcast received in seq order. The store is SQLite, so the innocent rooms' commits
share the group-commit transactions the poisoner's would have used.

The fields come from the event models themselves (``messages.EVENT_MODELS``): a field
added to an event without a place here fails :func:`test_every_event_field_is_poisoned`.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from collabtrio.client import Client
from collabtrio.protocol import messages
from collabtrio.testing import TestServer, open_test_server

ROOM = "poison"

BASE: dict[str, dict[str, Any]] = {
    "join": {"room": ROOM, "since": 0, "epoch": "e0"},
    "leave": {"room": ROOM},
    "op": {"room": ROOM, "operationId": "p-op", "op": "update", "collection": "c", "id": "e",
           "data": {"k": 1}, "timestamp": 1},
    "field": {"room": ROOM, "operationId": "p-f", "collection": "c", "id": "e",
              "path": ["k"], "value": 1, "timestamp": 1},
    "cursor": {"room": ROOM, "cursor": {"x": 1}},
    "selection": {"room": ROOM, "selection": {"x": 1}},
    "typing": {"room": ROOM, "typing": True},
    "broadcast": {"room": ROOM, "event": "e", "data": {"k": 1}},
    "chat": {"room": ROOM, "text": "hi", "clientId": "p-c"},
    "chat-history": {"room": ROOM, "before": 1, "limit": 10},
    "yjs-update": {"room": ROOM, "epoch": "e0"},
    "yjs-sync": {"room": ROOM, "epoch": "e0"},
    "yjs-awareness": {"room": ROOM},
    "refresh-token": {"token": "x"},
}
# binary fields travel as attachments, never as JSON: nothing to poison in the text
BINARY_FIELDS = {"update", "stateVector"}

# fields whose value is stored: NUL and over-deep nesting are refused there too
STORED = {("op", f) for f in ("operationId", "collection", "id", "data")} | {
    ("field", f) for f in ("operationId", "collection", "id", "path", "value")} | {
    ("chat", f) for f in ("text", "clientId")}

EVERYWHERE: list[tuple[str, str]] = [
    ("lone-high-surrogate", '"\\ud800"'),
    ("lone-low-surrogate", '"x\\udfff"'),
    ("surrogate-key", '{"\\udbff":1}'),
    ("overflow", "1e400"),
    ("negative-overflow", "-1e400"),
    ("nan", "NaN"),
    ("infinity", "Infinity"),
    ("5000-digit-int", "1" * 5000),
    ("100k-deep", "[" * 100_000 + "]" * 100_000),
    ("600k-string", '"' + "x" * 600_000 + '"'),
]
STORED_ONLY: list[tuple[str, str]] = [
    ("nul", '"a\\u0000b"'),
    ("70-deep", "[" * 70 + "]" * 70),
]
MARK = "@@POISON@@"


def _fields(event: str) -> list[str]:
    model = messages.EVENT_MODELS[event]
    names = [f.alias or name for name, f in model.model_fields.items()]
    return [n for n in names if n not in BINARY_FIELDS]


def _cases() -> list[tuple[str, str, str, str]]:
    """(event, field, poison name, payload JSON with the poison in that field)."""
    cases = []
    for event, base in BASE.items():
        for fld in _fields(event):
            poisons = EVERYWHERE + (STORED_ONLY if (event, fld) in STORED else [])
            for where in ("top", "nested"):
                if where == "nested" and fld not in ("data", "value", "cursor", "selection",
                                                     "path"):
                    continue
                payload = dict(base)
                if fld == "path":
                    payload[fld] = [MARK] if where == "top" else ["k", MARK]
                else:
                    payload[fld] = MARK if where == "top" else {"inner": [MARK]}
                text = json.dumps(payload)
                for name, raw in poisons:
                    cases.append((event, fld, f"{name}-{where}",
                                  text.replace(json.dumps(MARK), raw)))
    return cases


def test_every_event_field_is_poisoned() -> None:
    for event in messages.EVENT_MODELS:
        assert event in BASE, f"no base payload for {event}"
        missing = set(_fields(event)) - set(BASE[event])
        assert not missing, f"{event}: {missing} not poisoned"
    assert len(_cases()) > 400


_ids = itertools.count(7000)


async def _raw_call(client: Client, event: str, payload_json: str) -> Any:
    ack_id = next(_ids)
    await client.send_raw(f"42{ack_id}[{json.dumps(event)},{payload_json}]")
    with trio.fail_after(20):
        while True:
            for got_id, data in client.unmatched_acks:
                if got_id == ack_id:
                    return data
            await trio.sleep(0.002)


async def _ordinary_work(server: TestServer, room: str, count: int,
                         done: dict[str, list[Any]]) -> None:
    """A writer and a watcher: every op acked ok, every op seen by the watcher."""
    async with server.client(f"{room}-writer") as writer, \
            server.client(f"{room}-watcher") as watcher:
        await writer.join(room)
        await watcher.join(room)
        acks = []
        for i in range(count):
            acks.append(await writer.call("op", {
                "room": room, "operationId": f"{room}-{i}", "op": "add", "collection": "c",
                "id": f"e{i}", "data": {"i": i, "t": "é 🎉"}}))
            await writer.call("cursor", {"room": room, "cursor": {"x": i}})
        seen = []
        while len(seen) < count:
            seen.append(await watcher.next_event("op"))
        done[room] = [acks, seen]


async def test_poison_values_are_refused_and_cost_nobody_else_anything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cases = _cases()
    done: dict[str, list[Any]] = {}
    refused: list[tuple[str, str, str, Any]] = []
    with caplog.at_level(logging.WARNING):
        async with open_test_server(db=f"sqlite:///{tmp_path}/poison.db",
                                    rate_limit_per_s=100_000, rate_limit_burst=100_000,
                                    max_room_members=10) as server:
            async with server.client("poisoner") as poisoner, \
                    server.client("bystander") as bystander:
                await poisoner.join(ROOM)
                await bystander.join(ROOM)
                assert (await poisoner.call("op", {
                    "room": ROOM, "operationId": "setup", "op": "add", "collection": "c",
                    "id": "e", "data": {"k": 0}}))["seq"] == 1
                async with trio.open_nursery() as nursery:
                    for room in ("calm-1", "calm-2"):
                        nursery.start_soon(_ordinary_work, server, room, 60, done)
                    for event, fld, name, payload in cases:
                        ack = await _raw_call(poisoner, event, payload)
                        refused.append((event, fld, name, ack))
                # the poisoner and its room are fine, and nothing was applied there
                ack = await poisoner.call("op", {
                    "room": ROOM, "operationId": "after", "op": "update", "collection": "c",
                    "id": "e", "data": {"k": 2}})
                assert ack["seq"] == 2
                async with server.client("late") as late:
                    joined = await late.join(ROOM)
                    assert joined["state"] == {"c": {"e": {"k": 2}}}
                    assert joined["chat"] == []
                    users = {u["userId"]: u for u in joined["presence"]["users"]}
                    assert users["poisoner"]["cursor"] is None
                    assert users["poisoner"]["selection"] is None
                    assert set(users) == {"poisoner", "bystander", "late"}
                ordinary = {"op", "cursor", "selection", "typing", "broadcast", "chat"}
                heard = [e for e, _ in bystander.pending_events() if e in ordinary]
                assert heard == ["op", "op"]  # the "setup" and "after" ops only
    wrong = []
    for event, fld, name, ack in refused:
        allowed = {"VALIDATION", "TOO_LARGE"}
        if fld == "room":
            allowed.add("INVALID_ROOM")
        if fld == "token":
            allowed.add("INVALID_TOKEN")
        if ack.get("ok") is not False or ack["error"]["code"] not in allowed:
            wrong.append((event, fld, name, ack))
    assert not wrong, wrong[:10]
    assert {ack["error"]["code"] for *_, ack in refused if "600k" in _[2]} == {"TOO_LARGE"}
    for room in ("calm-1", "calm-2"):
        acks, seen = done[room]
        assert all(a["ok"] is True for a in acks)
        assert [a["seq"] for a in acks] == list(range(1, 61))
        assert [e["seq"] for e in seen] == list(range(1, 61))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors[:5]]
