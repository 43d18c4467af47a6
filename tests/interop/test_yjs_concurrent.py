"""Five clients over both Yjs endpoints type into one ``Y.Text`` at once and converge.

Two stock y-websocket 3 ``WebsocketProvider``s (``/yjs/<room>``) and one yjs 13 document
on ``socket.io-client`` run in node (``node/yjs_typing.mjs``); two pycrdt documents on
python-socketio run here. For 10 s each inserts its own letter at random positions
(seeded) and deletes some of its own letters, so what every document must end with is
known exactly: each letter's count (inserted minus deleted by its one writer) and each
client's clock (the characters it inserted). All five must reach that state with the
same text, and a server stopped with SIGTERM and started again on the same SQLite file
must give a fresh client that very text.

Needs ``node`` and ``npm install`` in tests/interop/node (skips without, fails under
``COLLABTRIO_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pycrdt
import pytest

from collabtrio.protocol.yprotocol import decode_state_vector
from tests.conftest import ServerProcess

from .conftest import Client, clients, run
from .test_node_client import NODE, NODE_DIR, _node_available  # noqa: F401 (autouse)

pytestmark = [pytest.mark.interop, pytest.mark.node]

SCRIPT = NODE_DIR / "yjs_typing.mjs"
ROOM = "doc:typing"
DURATION_S = 10.0
SEED = 424242
TIMEOUT_MS = 20_000


def _state_vector(doc: pycrdt.Doc[Any]) -> dict[int, int]:
    """``{client id: clock}`` of ``doc``."""
    return decode_state_vector(doc.get_state())


class Typist:
    """A pycrdt document on a python-socketio client that types its own letter."""

    def __init__(self, name: str, client: Client, letter: str, seed: int) -> None:
        self.name = name
        self.client = client
        self.letter = letter
        self.rng = random.Random(seed)
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)
        self.inserted = self.deleted = self.edits = 0
        self.acks: list[Any] = []
        self._local: list[bytes] = []
        self._remote = False
        self._sends: list[asyncio.Task[None]] = []
        self.doc.observe(self._on_update)
        client.sio.on("yjs-update", self._on_remote)

    def _on_update(self, event: Any) -> None:
        if not self._remote:
            self._local.append(event.update)

    def _apply(self, update: bytes) -> None:
        self._remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._remote = False

    async def _on_remote(self, data: dict[str, Any]) -> None:
        self._apply(data["update"])

    async def start(self) -> None:
        await self.client.join(ROOM)
        ack = await self.client.call("yjs-sync", {"room": ROOM,
                                                  "stateVector": self.doc.get_state()})
        assert ack["ok"] is True, ack
        self._apply(ack["update"])

    async def _send(self, update: bytes) -> None:
        self.acks.append(await self.client.call(
            "yjs-update", {"room": ROOM, "update": update}, timeout=TIMEOUT_MS / 1000))

    async def type(self, duration_s: float) -> None:
        """What the node peers do: every 20-60 ms insert 1-3 of our letter somewhere, or
        (3 times in 10) delete one of ours; each update is sent with an ack."""
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            s = str(self.text)
            mine = [i for i, ch in enumerate(s) if ch == self.letter]
            if mine and self.rng.random() < 0.3:
                del self.text[self.rng.choice(mine)]
                self.deleted += 1
            else:
                n = self.rng.randint(1, 3)
                self.text.insert(self.rng.randint(0, len(s)), self.letter * n)
                self.inserted += n
            self.edits += 1
            for update in self._local:
                self._sends.append(asyncio.create_task(self._send(update)))
            self._local.clear()
            await asyncio.sleep(self.rng.uniform(0.02, 0.06))
        await asyncio.gather(*self._sends)

    def matches(self, counts: dict[str, int], clocks: dict[int, int]) -> bool:
        sv = _state_vector(self.doc)
        if any(sv.get(cid, 0) != clock for cid, clock in clocks.items()):
            return False
        return Counter(str(self.text)) == Counter({k: v for k, v in counts.items() if v})


class NodePeers:
    """``yjs_typing.mjs`` in a subprocess, spoken to in JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    async def receive(self, key: str, timeout: float) -> Any:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                assert self.proc.stderr is not None
                err = await asyncio.wait_for(self.proc.stderr.read(), 5)
                raise AssertionError(f"yjs_typing.mjs ended before {key!r}: {err.decode()}")
            if not line.startswith(b"{"):
                continue  # not ours
            message = json.loads(line)
            assert "error" not in message, message["error"]
            if key in message:
                return message[key]


async def _read_text(server: ServerProcess) -> str:
    async with clients(server, "reader") as [reader]:
        await reader.join(ROOM)
        ack = await reader.call("yjs-sync", {"room": ROOM,
                                             "stateVector": pycrdt.Doc().get_state()})
        assert ack["ok"] is True, ack
        doc: pycrdt.Doc[Any] = pycrdt.Doc()
        doc.apply_update(ack["update"])
        return str(doc.get("text", type=pycrdt.Text))


def test_five_clients_over_both_endpoints_type_at_once_and_converge(
        server_factory: Callable[..., ServerProcess], tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/typing.db"
    server = server_factory(db=db)
    scenario = {
        "url": server.url, "room": ROOM, "timeoutMs": TIMEOUT_MS,
        "durationMs": int(DURATION_S * 1000), "seed": SEED,
        "providers": [{"name": f"yws-{x}", "token": server.token(f"yws-{x}"), "letter": x}
                      for x in "de"],
        "socketio": [{"name": "js-c", "token": server.token("js-c"), "letter": "c"}],
    }

    async def scenario_run() -> tuple[dict[str, Any], dict[str, str], list[Typist]]:
        assert NODE is not None
        proc = await asyncio.create_subprocess_exec(
            NODE, str(SCRIPT), cwd=NODE_DIR, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        node = NodePeers(proc)
        try:
            async with clients(server, "py-a", "py-b") as py_clients:
                typists = [Typist(f"py-{letter}", c, letter, SEED + 100 + i)
                           for i, (c, letter) in enumerate(zip(py_clients, "ab", strict=True))]
                await node.send(scenario)
                await asyncio.gather(node.receive("ready", TIMEOUT_MS / 1000),
                                     *(t.start() for t in typists))
                await node.send({"go": True})
                _, typed = await asyncio.gather(
                    asyncio.gather(*(t.type(DURATION_S) for t in typists)),
                    node.receive("typed", DURATION_S + TIMEOUT_MS / 1000))
                for t in typists:
                    typed[t.name] = {
                        "letter": t.letter, "clientId": t.doc.client_id,
                        "inserted": t.inserted, "deleted": t.deleted, "edits": t.edits,
                        "acks": [sum(a == {"ok": True} for a in t.acks),
                                 sum(a != {"ok": True} for a in t.acks)]}
                counts = {p["letter"]: p["inserted"] - p["deleted"] for p in typed.values()}
                clocks = {p["clientId"]: p["inserted"] for p in typed.values()}
                await node.send({"expect": {"counts": counts,
                                            "clocks": {str(k): v for k, v in clocks.items()}}})
                deadline = time.monotonic() + TIMEOUT_MS / 1000
                for t in typists:
                    while not t.matches(counts, clocks):
                        assert time.monotonic() < deadline, (
                            f"{t.name} did not converge: {Counter(str(t.text))} "
                            f"!= {counts}")
                        await asyncio.sleep(0.02)
                texts = await node.receive("results", TIMEOUT_MS / 1000)
                for t in typists:
                    texts[t.name] = str(t.text)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            return typed, texts, typists
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    typed, texts, _ = run(scenario_run(), timeout=DURATION_S + 60)
    assert len(texts) == 5, texts
    assert len(set(texts.values())) == 1, {k: Counter(v) for k, v in texts.items()}
    [final] = set(texts.values())
    for name, p in typed.items():
        assert p["edits"] >= 50, (name, p)  # ~250 in 10 s when the machine keeps up
        assert p["inserted"] > p["deleted"] > 0, (name, p)
        assert final.count(p["letter"]) == p["inserted"] - p["deleted"], (name, p)
    for name in ("js-c", "py-a", "py-b"):  # the Socket.IO peers' updates, all acked
        ok, refused = typed[name]["acks"]
        assert refused == 0, (name, typed[name])
        assert ok == typed[name]["edits"], (name, typed[name])
    assert set(final) == set("abcde")

    # the stored document is the converged one, after a clean stop and a restart
    assert server.stop() == 0, server.log()[-3000:]
    again = server_factory(db=db)
    assert run(_read_text(again)) == final
    print(f"converged on {len(final)} characters: "
          + ", ".join(f"{n} {p['edits']} edits" for n, p in typed.items()))
