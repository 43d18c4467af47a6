"""`collabtrio grant` / `revoke` against a running server: connected members learn
their new role without reconnecting (python-socketio client, real processes)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServerProcess
from tests.interop.conftest import clients, run


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collabtrio", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def _op(op_id: str, eid: str) -> dict[str, object]:
    return {"room": "doc:g", "operationId": op_id, "op": "add", "collection": "c", "id": eid,
            "data": {}}


def test_grant_and_revoke_reach_a_connected_member(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/grants.db"
    server = server_factory("--default-role", "read", "--grants-poll-s", "0.2", db=db)

    async def main() -> None:
        async with clients(server, "alice") as (alice,):
            assert (await alice.join("doc:g"))["role"] == "read"
            refused = await alice.call("op", _op("1", "a"))
            assert refused["error"]["code"] == "FORBIDDEN"

            done = await asyncio.to_thread(_cli, "grant", "doc:*", "alice", "write", "--db", db)
            assert done.returncode == 0, done.stderr
            changed = await alice.wait_for("role-changed")
            assert changed == {"room": "doc:g", "role": "write"}
            assert (await alice.call("op", _op("2", "a")))["ok"] is True

            done = await asyncio.to_thread(_cli, "revoke", "doc:*", "alice", "--db", db)
            assert done.returncode == 0, done.stderr
            await alice.wait_for("role-changed", where=lambda d: d["role"] == "read")
            refused = await alice.call("op", _op("3", "b"))
            assert refused["error"]["code"] == "FORBIDDEN"

    run(main())


def test_grant_refuses_a_bad_pattern_and_role(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/g.db"
    bad = _cli("grant", "no spaces allowed", "alice", "write", "--db", db)
    assert bad.returncode == 2
    assert "bad room pattern" in bad.stderr
    bad_role = _cli("grant", "doc:1", "alice", "owner", "--db", db)
    assert bad_role.returncode == 2
    assert "invalid choice" in bad_role.stderr
