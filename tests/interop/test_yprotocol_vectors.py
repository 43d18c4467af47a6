"""The y-protocols codec against bytes from the real yjs, y-protocols, lib0 and y-websocket.

``node/yvectors.mjs vectors`` builds y-websocket messages with the real packages; each
must decode to the fields the script reports and encode back to the same bytes.
``node/yvectors.mjs decode`` reads messages this codec encoded with lib0's decoder and
the y-protocols readers. Needs ``node`` on PATH and ``npm ci`` in tests/interop/node;
without them these tests skip, unless ``COLLABTRIO_REQUIRE_SERVICES=1``, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from collabtrio.protocol import yprotocol as yp
from collabtrio.protocol.yprotocol import (
    AuthMessage,
    AwarenessEntry,
    AwarenessMessage,
    Message,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    SyncUpdate,
)

pytestmark = [pytest.mark.interop, pytest.mark.node]

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "yvectors.mjs"
NODE = shutil.which("node")
REQUIRED = os.environ.get("COLLABTRIO_REQUIRE_SERVICES") == "1"
PACKAGES = ("yjs", "y-protocols", "lib0", "y-websocket")

_SYNC = {"step1": SyncStep1, "step2": SyncStep2, "update": SyncUpdate}


def _missing() -> str | None:
    if NODE is None:
        return "node is not on PATH"
    absent = [p for p in PACKAGES if not (NODE_DIR / "node_modules" / p).is_dir()]
    if absent:
        return (f"{', '.join(absent)} missing from {NODE_DIR}/node_modules: run "
                f"'npm ci --no-audit --no-fund' in {NODE_DIR}")
    return None


@pytest.fixture(autouse=True)
def _node_available() -> None:
    why = _missing()
    if why is None:
        return
    if REQUIRED:
        pytest.fail(f"COLLABTRIO_REQUIRE_SERVICES=1 but {why}")
    pytest.skip(why)


def _node(mode: str, stdin: Any = None) -> Any:
    assert NODE is not None
    proc = subprocess.run([NODE, str(SCRIPT), mode],
                          input=None if stdin is None else json.dumps(stdin),
                          capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"yvectors.mjs {mode} printed no JSON (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    assert proc.returncode == 0, (out, proc.stderr)
    assert "error" not in out, (out, proc.stderr)
    return out


@pytest.fixture(scope="module")
def vectors() -> list[dict[str, Any]]:
    if _missing() is not None:  # the autouse fixture skips or fails the test
        return []
    return _node("vectors")["vectors"]  # type: ignore[no-any-return]


def _of(vectors: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    found = [v for v in vectors if v["kind"] == kind]
    assert found, f"no {kind} vectors"
    return found


def _named(vectors: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(v for v in vectors if v["name"] == name)


def _entries(raw: list[dict[str, Any]]) -> list[AwarenessEntry]:
    return [AwarenessEntry(e["clientId"], e["clock"], e["state"]) for e in raw]


# --- real bytes into our codec -----------------------------------------------------------


def test_the_vectors_cover_every_shape(vectors: list[dict[str, Any]]) -> None:
    assert {v["kind"] for v in vectors} == {"sync", "awareness", "auth", "query"}
    assert {v["sub"] for v in _of(vectors, "sync")} == set(_SYNC)
    assert any(v.get("bump") is True for v in vectors)
    assert any(v.get("bump") is False for v in vectors)
    # a payload length that needs three varUint bytes
    assert any(len(v["payload"]) // 2 > 16383 for v in _of(vectors, "sync"))


def test_sync_vectors(vectors: list[dict[str, Any]]) -> None:
    for v in _of(vectors, "sync"):
        data = bytes.fromhex(v["hex"])
        expected = _SYNC[v["sub"]](bytes.fromhex(v["payload"]))
        assert yp.decode_message(data) == expected, v["name"]
        assert yp.encode_message(expected) == data, v["name"]


def test_awareness_vectors(vectors: list[dict[str, Any]]) -> None:
    for v in _of(vectors, "awareness"):
        data, update = bytes.fromhex(v["hex"]), bytes.fromhex(v["update"])
        assert yp.decode_message(data) == AwarenessMessage(update), v["name"]
        assert yp.encode_message(AwarenessMessage(update)) == data, v["name"]
        entries = _entries(v["entries"])
        assert yp.decode_awareness(update) == entries, v["name"]
        assert yp.encode_awareness(entries) == update, v["name"]


def test_removal_vectors_match_removal_update(vectors: list[dict[str, Any]]) -> None:
    removals = [v for v in _of(vectors, "awareness") if "removed" in v]
    assert len(removals) >= 2
    for v in removals:
        # a remote client's removal keeps its clock; only the own client's is bumped
        pairs = [(cid, clock + 1 if v["bump"] else clock) for cid, clock in v["removed"]]
        assert yp.removal_update(pairs) == bytes.fromhex(v["update"]), v["name"]


def test_remote_removal_carries_the_last_clock(vectors: list[dict[str, Any]]) -> None:
    v = _named(vectors, "removal of remote clients (removeAwarenessStates)")
    before = {cid: clock for cid, clock in v["removed"]}
    for entry in yp.decode_awareness(bytes.fromhex(v["update"])):
        assert entry.state == "null"
        assert entry.clock == before[entry.client_id]


def test_auth_vectors(vectors: list[dict[str, Any]]) -> None:
    for v in _of(vectors, "auth"):
        data = bytes.fromhex(v["hex"])
        assert yp.decode_message(data) == AuthMessage(v["reason"]), v["name"]
        assert yp.encode_message(AuthMessage(v["reason"])) == data, v["name"]


def test_query_awareness_vector(vectors: list[dict[str, Any]]) -> None:
    (v,) = _of(vectors, "query")
    assert yp.decode_message(bytes.fromhex(v["hex"])) == QueryAwareness()
    assert yp.encode_message(QueryAwareness()).hex() == v["hex"]


# --- our bytes into the real decoders ----------------------------------------------------

OURS = [
    AwarenessEntry(0, 0, '{"a":1}'),
    AwarenessEntry(1, 127, '{"name": "Zo\\u00eb \U0001f600", "cursor": {"anchor": 1, '
                           '"head": [2, 3]}}'),
    AwarenessEntry(300, 128, '[1, 2.5, "x", true, null]'),
    AwarenessEntry(2**32 - 1, 2**53 - 1, '"just a string"'),
    AwarenessEntry(2**53 - 1, 5, "42"),
]


def test_real_decoders_read_what_we_encode(vectors: list[dict[str, Any]]) -> None:
    with_text = _named(vectors, "step1 of a doc with text")
    full = _named(vectors, "step2 answering an empty step1")
    huge = _named(vectors, "step2 over 16383 bytes")
    first = _named(vectors, "update: insert")
    reason = "read-only \u2713 \U0001f6ab"
    ours: list[tuple[str, Message]] = [
        ("step1", SyncStep1(bytes.fromhex(with_text["payload"]))),
        ("step2", SyncStep2(bytes.fromhex(full["payload"]))),
        ("step2 huge", SyncStep2(bytes.fromhex(huge["payload"]))),
        ("update", SyncUpdate(bytes.fromhex(first["payload"]))),
        ("awareness", AwarenessMessage(yp.encode_awareness(OURS))),
        ("removal", AwarenessMessage(yp.removal_update([(300, 128)]))),
        ("auth", AuthMessage(reason)),
        ("query", QueryAwareness()),
    ]
    messages = [{"name": name, "hex": yp.encode_message(msg).hex()} for name, msg in ours]
    decoded = {d["name"]: d for d in _node("decode", {"messages": messages})["decoded"]}

    for name, _ in ours:
        assert decoded[name]["rest"] == 0, decoded[name]
        assert "error" not in decoded[name], decoded[name]

    step1 = decoded["step1"]
    assert (step1["type"], step1["sub"], step1["payload"]) == (0, 0, with_text["payload"])
    assert step1["stateVector"] == {"1": 21}  # client 1 wrote 21 characters
    for name, vector, sub in [("step2", full, 1), ("step2 huge", huge, 1), ("update", first, 2)]:
        got = decoded[name]
        assert (got["type"], got["sub"], got["payload"]) == (0, sub, vector["payload"]), name
    assert decoded["step2"]["text"] == full["text"]
    assert decoded["step2 huge"]["text"] == huge["text"]
    assert decoded["update"]["text"] == "hello world"

    awareness = decoded["awareness"]
    assert awareness["type"] == 1
    assert awareness["updateRest"] == 0
    assert awareness["entries"] == [
        {"clientId": e.client_id, "clock": e.clock, "state": json.loads(e.state)} for e in OURS
    ]
    # the observer Awareness applied the update: every state is there, at its clock, but
    # client 0's: applyAwarenessUpdate counts an unknown client as clock 0 and keeps only
    # newer clocks, so a first state at clock 0 is dropped
    seen = [e for e in OURS if e.clock > 0]
    assert sorted((o["clientId"], o["clock"], o["state"]) for o in awareness["observed"]) == \
        sorted((e.client_id, e.clock, json.loads(e.state)) for e in seen)
    # and our removal (same clock, state null) removed client 300 from it
    removal = decoded["removal"]
    assert removal["entries"] == [{"clientId": 300, "clock": 128, "state": None}]
    assert sorted(o["clientId"] for o in removal["observed"]) == \
        sorted(e.client_id for e in seen if e.client_id != 300)

    assert (decoded["auth"]["type"], decoded["auth"]["reason"]) == (2, reason)
    assert decoded["query"]["type"] == 3
