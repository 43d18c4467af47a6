"""Durability of what the server acknowledged, across crashes, restarts and signals, and
clear start-up failures when the database file cannot be used.

An ``op`` ack and a ``field`` ack are promises that the change is committed: after a
SIGKILL right after the last ack, a new server on the same file must show every one of
them. SIGTERM must commit what is still held in the field debouncer (and tell the
writers) before it exits 0. A retried operation id is answered with its first result
even by a restarted server. A database the server cannot use makes it exit 2 with a
message naming the file and what to do.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess
from tests.faults.conftest import (
    Client,
    Mounts,
    Servers,
    check_replay,
    connected,
    read_room,
    run,
    run_serve_to_exit,
)

ROOM = "doc:durable"
CLIENTS = 6
OPS_PER_CLIENT = 50  # 300 ops in all
FIELD_KEYS_PER_CLIENT = 5
FIELD_WRITES_PER_KEY = 4


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # path is absolute: sqlite:////abs/file.db


# -- SIGKILL after acknowledgements -------------------------------------------------------


async def _write_burst(server: ServerProcess, kill: Any) -> tuple[list[dict[str, Any]],
                                                                  dict[tuple[str, str], Any],
                                                                  dict[tuple[str, str], int]]:
    """Every client sends its ops and field writes at once (no waiting between them);
    as soon as the last ack is in, ``kill()``. Returns the op acks, the last value
    written to each field key, and the seq its ack carried."""
    async with connected(server, *(f"writer{c}" for c in range(CLIENTS))) as clients:
        await asyncio.gather(*(c.join(ROOM) for c in clients))

        async def one_client(idx: int, client: Client) -> tuple[list[Any], list[Any]]:
            # the entities the field writes go to exist first
            base = [await client.op(ROOM, f"w{idx}-base{k}", "add", "notes", f"n{idx}-{k}",
                                    {"by": idx, "title": "untitled"})
                    for k in range(FIELD_KEYS_PER_CLIENT)]
            ops = [client.op(ROOM, f"w{idx}-op{i}", "add", "items", f"i{idx}-{i}",
                             {"by": idx, "n": i, "text": f"item {i} of writer {idx}"})
                   for i in range(OPS_PER_CLIENT)]
            fields = [client.field(ROOM, f"w{idx}-f{k}-{v}", "notes", f"n{idx}-{k}",
                                   ["title"], f"title {v} by {idx}")
                      for v in range(FIELD_WRITES_PER_KEY)
                      for k in range(FIELD_KEYS_PER_CLIENT)]
            answers = await asyncio.gather(*ops, *fields)
            return base + list(answers[:OPS_PER_CLIENT]), list(answers[OPS_PER_CLIENT:])

        results = await asyncio.gather(*(one_client(i, c) for i, c in enumerate(clients)))
        kill()  # the moment the last ack has arrived: no shutdown, no flush
    op_acks: list[dict[str, Any]] = []
    last_value: dict[tuple[str, str], Any] = {}
    field_seq: dict[tuple[str, str], int] = {}
    for idx, (ops_answers, field_answers) in enumerate(results):
        for ack in ops_answers:
            assert ack.get("ok") is True, ack
            op_acks.append(ack)
        i = 0
        for v in range(FIELD_WRITES_PER_KEY):
            for k in range(FIELD_KEYS_PER_CLIENT):
                ack = field_answers[i]
                i += 1
                assert ack.get("ok") is True, ack
                key = (f"n{idx}-{k}", f"w{idx}-f{k}-{v}")
                assert ack["operationId"] == key[1], ack
                last_value[(f"n{idx}-{k}", "title")] = f"title {v} by {idx}"
                field_seq[(f"n{idx}-{k}", "title")] = max(
                    field_seq.get((f"n{idx}-{k}", "title"), 0), ack["seq"])
    return op_acks, last_value, field_seq


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_sigkill_right_after_the_last_ack_loses_nothing_acknowledged(
        servers: Servers, tmp_path: Path, synchronous: str) -> None:
    db = _sqlite_url(tmp_path / "durable.db")
    flags = ("--sqlite-synchronous", synchronous)
    first = servers.start(*flags, db=db)
    started = time.monotonic()
    op_acks, last_value, field_seq = run(_write_burst(first, lambda: servers.kill(first)))
    burst_s = time.monotonic() - started
    assert first.proc.returncode == -signal.SIGKILL

    second = servers.start(*flags, db=db)
    ack, replayed = run(read_room(second, ROOM))
    state, seq = ack["state"], ack["seq"]
    highest = max([a["seq"] for a in op_acks] + list(field_seq.values()))
    assert seq >= highest, f"seq {seq} after restart, but seq {highest} was acknowledged"

    items = state.get("items", {})
    lost = [f"i{idx}-{i}" for idx in range(CLIENTS) for i in range(OPS_PER_CLIENT)
            if f"i{idx}-{i}" not in items]
    assert not lost, f"{len(lost)} acknowledged ops lost by SIGKILL: {lost[:10]}"
    for idx in range(CLIENTS):
        for i in range(OPS_PER_CLIENT):
            entity = items[f"i{idx}-{i}"]
            assert entity == {"by": idx, "n": i, "text": f"item {i} of writer {idx}"}, entity
    for (entity_id, path), value in last_value.items():
        stored = state["notes"][entity_id][path]
        assert stored == value, (
            f"field notes/{entity_id}/{path}: acknowledged {value!r} (seq "
            f"{field_seq[(entity_id, path)]}), stored after SIGKILL {stored!r}")

    # the replay a reconnecting client gets: gapless, and each ack's seq is its op
    by_seq = check_replay(replayed, seq)
    for a in op_acks:
        event = by_seq[a["seq"]]
        assert event["operationId"] == a["operationId"], (a, event)
    fields = CLIENTS * FIELD_KEYS_PER_CLIENT * FIELD_WRITES_PER_KEY
    print(f"{synchronous}: {len(op_acks)} ops + {fields} field writes acked in "
          f"{burst_s:.2f}s; seq {seq}")


# -- SIGTERM commits what the debouncer holds -----------------------------------------------


def _wait(srv: ServerProcess, timeout: float) -> int | None:
    try:
        return srv.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def test_sigterm_commits_pending_field_writes_and_confirms_them(
        servers: Servers, tmp_path: Path) -> None:
    db = _sqlite_url(tmp_path / "fields.db")
    # field writes would be held for 5 s (10 s at most): SIGTERM comes well before
    srv = servers.start("--field-debounce-ms", "5000", "--field-max-hold-ms", "10000", db=db)
    room = "doc:fields"
    values = {f"f{k}": {"v": k, "text": f"value {k}"} for k in range(10)}

    async def main() -> tuple[list[Any], float, list[Any], int | None]:
        async with connected(srv, "alice", "bob") as (alice, bob):
            await alice.join(room)
            await bob.join(room)
            assert (await alice.op(room, "base", "add", "forms", "f", {"title": "form"}))["ok"]
            pending = [asyncio.ensure_future(alice.field(room, f"field-{name}", "forms", "f",
                                                         ["answers", name], value, timeout=15))
                       for name, value in values.items()]
            # a relay acked after the field writes: they have reached the room by then
            assert (await alice.call("broadcast", {"room": room, "event": "sync",
                                                   "data": 1}))["ok"]
            await asyncio.sleep(0.2)
            assert not any(p.done() for p in pending), "field writes acked before the debounce"
            sent_at = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(_wait, srv, 10)
            exit_s = time.monotonic() - sent_at
            await asyncio.wait(pending, timeout=2)
            acks = [p.result() if p.done() and not p.exception() else
                    f"no ack ({p.exception()!r})" if p.done() else "no ack" for p in pending]
            for p in pending:
                p.cancel()
            await alice.wait_disconnect()
            bob_fields = bob.named("field")
            return acks, exit_s, bob_fields, code

    acks, exit_s, bob_fields, code = run(main())
    assert code == 0, f"SIGTERM exit code {code}:\n{srv.log()[-3000:]}"
    assert exit_s < 5.0, f"SIGTERM took {exit_s:.1f}s"

    # what was held is stored
    second = servers.start(db=db)
    ack, _ = run(read_room(second, room))
    assert ack["state"]["forms"]["f"]["answers"] == values, ack["state"]
    assert ack["seq"] == 1 + len(values)

    # and the writer was told before its connection closed (the server flushes rooms
    # before it closes connections), the other member got the values
    not_acked = [a for a in acks if not (isinstance(a, dict) and a.get("ok") is True)]
    assert not not_acked, (
        f"{len(not_acked)} of {len(acks)} field writes committed at shutdown were never "
        f"confirmed to their sender: {not_acked[:3]}")
    assert sorted(a["seq"] for a in acks) == list(range(2, 2 + len(values)))
    assert {tuple(f["path"]) for f in bob_fields} == {("answers", n) for n in values}


# -- idempotent retry across a restart ----------------------------------------------------


def test_retry_after_restart_gets_the_first_answer_and_is_applied_once(
        servers: Servers, tmp_path: Path) -> None:
    db = _sqlite_url(tmp_path / "retry.db")
    room = "doc:retry"
    first = servers.start(db=db)

    async def before() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with connected(first, "alice") as (alice,):
            await alice.join(room)
            add = await alice.op(room, "op-add", "add", "cards", "c1", {"count": 1})
            dup = await alice.op(room, "op-dup", "duplicate", "cards", "c1", {"newId": "c2"})
            field = await alice.field(room, "op-field", "cards", "c1", ["label"], "first")
            return add, dup, field

    add, dup, field = run(before())
    for answer in (add, dup, field):
        assert answer["ok"] is True, answer
    assert first.stop() == 0

    second = servers.start(db=db)

    async def after() -> tuple[list[Any], dict[str, Any], list[Any]]:
        async with connected(second, "alice", "bob") as (alice, bob):
            await alice.join(room)
            await bob.join(room)
            again = [
                # the same operation ids, sent again as a client retries after a reconnect
                await alice.op(room, "op-dup", "duplicate", "cards", "c1", {"newId": "c2"}),
                await alice.op(room, "op-add", "add", "cards", "c1", {"count": 1}),
                await alice.field(room, "op-field", "cards", "c1", ["label"], "first"),
            ]
            await asyncio.sleep(0.3)  # a second application would be broadcast by now
            ack = await bob.call("join", {"room": room})
            return again, ack, bob.named("op") + bob.named("field")

    again, ack, broadcasts = run(after())
    assert again[0] == dup, f"retried duplicate answered {again[0]}, first answer was {dup}"
    assert again[1] == add, f"retried add answered {again[1]}, first answer was {add}"
    assert again[2] == field, f"retried field answered {again[2]}, first answer was {field}"
    assert ack["seq"] == field["seq"] == 3, f"seq moved after retries: {ack['seq']}"
    assert ack["state"] == {"cards": {"c1": {"count": 1, "label": "first"},
                                      "c2": {"count": 1}}}, ack["state"]
    assert broadcasts == [], f"a retry was applied again: {broadcasts}"


# -- start-up problems: exit 2 with a clear message ---------------------------------------


def _assert_exit_2(code: int, output: str, *expected: str) -> None:
    assert "Traceback" not in output, output
    assert code == 2, f"exit code {code}, expected 2:\n{output}"
    low = output.lower()
    for word in expected:
        assert word.lower() in low, f"{word!r} not in the message:\n{output}"


def test_sqlite_in_a_missing_directory_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "t.db"
    code, output, _ = run_serve_to_exit(tmp_path, "--db", _sqlite_url(path))
    _assert_exit_2(code, output, str(path), "does not exist")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "collabtrio-db"])
def test_sqlite_file_locked_by_another_process_exits_2(
        servers: Servers, tmp_path: Path, existing: bool) -> None:
    path = tmp_path / "locked.db"
    if existing:  # a real collabtrio database (WAL mode) with a document in it
        srv = servers.start(db=_sqlite_url(path))

        async def write() -> None:
            async with connected(srv, "alice") as (alice,):
                await alice.join("doc:x")
                assert (await alice.op("doc:x", "o1", "add", "c", "1", {"a": 1}))["ok"]

        run(write())
        assert srv.stop() == 0
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("CREATE TABLE IF NOT EXISTS other_tool (x)")
        holder.execute("INSERT INTO other_tool VALUES (1)")
        holder.execute("COMMIT")  # exclusive mode: the lock stays after the commit
        code, output, seconds = run_serve_to_exit(tmp_path, "--db", _sqlite_url(path))
    finally:
        holder.close()
    _assert_exit_2(code, output, str(path), "lock")
    assert seconds < 15, f"took {seconds:.1f}s to give up on the lock"


@pytest.mark.parametrize("existing", [False, True], ids=["empty-dir", "collabtrio-db"])
def test_sqlite_on_a_read_only_file_system_exits_2(
        mounts: Mounts, servers: Servers, existing: bool) -> None:
    where = mounts.tmpfs("ro")
    path = where / "t.db"
    if existing:
        srv = servers.start(db=_sqlite_url(path))
        assert srv.stop() == 0
        assert path.exists()
    mounts.remount_ro(where)
    code, output, _ = run_serve_to_exit(where.parent, "--db", _sqlite_url(path))
    _assert_exit_2(code, output, str(path), "read-only")
