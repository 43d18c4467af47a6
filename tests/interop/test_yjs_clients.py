"""Yjs documents edited by real clients: yjs 13 ``Y.Doc``s on the stock JavaScript
``socket.io-client`` (defaults: polling, then the upgrade) and pycrdt on python-socketio,
in one room of a real server, converging; what was acknowledged survives a SIGKILL.

``node/yjsclient.mjs`` drives the JavaScript side. Needs ``node`` and ``npm install`` in
tests/interop/node (skips without, fails under ``COLLABTRIO_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycrdt
import pytest

from tests.conftest import ServerProcess, start_server

from .conftest import clients, run
from .test_node_client import NODE, NODE_DIR, _node_available  # noqa: F401 (autouse)

pytestmark = [pytest.mark.interop, pytest.mark.node]

SCRIPT = NODE_DIR / "yjsclient.mjs"


class PyEditor:
    """A pycrdt document kept in step with the room through a python-socketio client."""

    def __init__(self) -> None:
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)
        self.local: list[bytes] = []
        self._remote = False
        self.doc.observe(self._on_update)

    def _on_update(self, event: Any) -> None:
        if not self._remote:
            self.local.append(event.update)

    def apply(self, update: bytes) -> None:
        self._remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._remote = False


def _node(scenario: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    proc = subprocess.run([NODE, str(SCRIPT)], input=json.dumps(scenario), capture_output=True,
                          text=True, timeout=90, cwd=NODE_DIR)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (out, proc.stderr)
    assert "error" not in out, (out, proc.stderr)
    return out["results"]  # type: ignore[no-any-return]


def test_js_and_python_clients_edit_one_document(
    server_factory: Callable[..., ServerProcess], tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path}/yjs.db"
    server = start_server(tmp_path / "first", db=db)  # killed below, not by the factory
    py_text = "py:"
    js_edits = {"alice": [[0, "Hello"], [3, " there"], [100, "!"]],
                "bob": [[0, "Bonjour"], [2, "-"], [5, " monde"]]}
    total = len(py_text) + sum(len(t) for e in js_edits.values() for _, t in e)

    async def scenario() -> None:
        async with clients(server, "carol") as [carol]:
            await carol.join("doc")
            editor = PyEditor()
            editor.text.insert(0, py_text)
            [update] = editor.local
            assert await carol.call("yjs-update", {"room": "doc", "update": update}) == \
                {"ok": True}
            results = await asyncio.to_thread(_node, {
                "url": server.url, "room": "doc", "timeoutMs": 10_000,
                "expectLength": total,
                "clients": [{"name": name, "token": server.token(name), "edits": edits}
                            for name, edits in js_edits.items()],
            })
            texts = {name: r["text"] for name, r in results.items()}
            assert len(set(texts.values())) == 1, texts
            [final] = set(texts.values())
            assert len(final) == total
            for name, r in results.items():
                assert r["acks"] == [{"ok": True}] * len(js_edits[name]), r
            # carol, in the room before either JavaScript client, heard each of their
            # edits relayed exactly once and converged from those alone (between the two
            # JavaScript clients, what one made before the other synced comes in the
            # sync's answer instead, so their own counts depend on timing)
            expected = sum(len(edits) for edits in js_edits.values())
            for _ in range(500):  # the relays may still be on their way to carol
                seen = [d for e, d in carol.events if e == "yjs-update"]
                if len(seen) >= expected:
                    break
                await asyncio.sleep(0.01)
            assert len(seen) == expected
            for data in seen:
                editor.apply(data["update"])
            assert str(editor.text) == final
            assert {d["userId"] for d in seen} == {"alice", "bob"}
        # SIGKILL right after the acks: nothing acknowledged is lost
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        again = server_factory(db=db)
        async with clients(again, "dave") as [dave]:
            await dave.join("doc")
            late = PyEditor()
            ack = await dave.call("yjs-sync", {"room": "doc",
                                               "stateVector": late.doc.get_state()})
            late.apply(ack["update"])
            assert str(late.text) == final

    try:
        run(scenario())
    finally:
        server.stop(signal.SIGKILL)


def test_stock_websocket_providers_and_a_socketio_client_edit_one_document(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """Two y-websocket 3 ``WebsocketProvider``s (on ``/yjs/<room>``) and a
    socket.io-client Yjs peer type at once and converge; the awareness of a provider
    that goes disappears for the others."""
    server = server_factory()
    assert NODE is not None
    scenario = {
        "url": server.url, "room": "doc:1", "timeoutMs": 10_000,
        "providers": [{"name": "p1", "token": server.token("p1"), "text": "one "},
                      {"name": "p2", "token": server.token("p2"), "text": "two "}],
        "socketio": {"token": server.token("s"), "text": "three "},
    }
    proc = subprocess.run([NODE, str(NODE_DIR / "ywsclient.mjs")], input=json.dumps(scenario),
                          capture_output=True, text=True, timeout=90, cwd=NODE_DIR)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, (out, proc.stderr)
    results = out["results"]
    texts = {results["p1"], results["p2"], results["socketio"]}
    assert len(texts) == 1, results
    assert sorted(texts.pop().split()) == ["one", "three", "two"]
    assert results["acks"] == [{"ok": True}]
    assert results["awarenessGone"] < 2000
