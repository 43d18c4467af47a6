"""The database goes away while clients work, then comes back.

What a user checks: while storage is down, document operations are refused with
``STORAGE_UNAVAILABLE`` (retryable) in bounded time, nothing is applied, the server stays
up and everything that does not need storage (relays, presence) keeps working; once
storage is back, retried operations succeed, and the stored document holds every
acknowledged operation with gapless seqs.

PostgreSQL is reached through a :class:`~tests.faults.conftest.TcpProxy` that can cut
every connection and refuse new ones (as if the database server were stopped). SQLite
gets a full disk: its file lives on a small tmpfs that the test fills up.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

from tests.conftest import ServerProcess
from tests.faults.conftest import (
    Client,
    Mounts,
    Servers,
    TcpProxy,
    check_replay,
    connected,
    read_room,
    run,
    via,
)

ROOM = "doc:outage"
REFUSED_WITHIN_S = 15.0  # an op sent while storage is down is answered within this
RECOVERY_WITHIN_S = 30.0  # after storage is back, a retried op succeeds within this


def _healthz(server: ServerProcess, timeout: float = 15) -> int:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code)


def _is_unavailable(ack: dict[str, Any]) -> bool:
    error = ack.get("error") or {}
    return (ack.get("ok") is False and error.get("code") == "STORAGE_UNAVAILABLE"
            and error.get("retryable") is True)


async def _retry_until_ok(client: Client, send: Any, within: float) -> tuple[dict[str, Any],
                                                                            float, int]:
    """Call ``send()`` (the same operation id each time) until it is acknowledged;
    returns the ack, the seconds it took and the number of attempts."""
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        ack = await send()
        if ack.get("ok") is True:
            return ack, time.monotonic() - started, attempts
        assert _is_unavailable(ack), f"while storage recovers: {ack}"
        if time.monotonic() - started > within:
            raise AssertionError(f"storage is back but the op still fails after "
                                 f"{within}s and {attempts} attempts: {ack}")
        await asyncio.sleep(0.5)


async def _outage(server: ServerProcess, cut: Any, restore: Any,
                  data: Any = None) -> dict[str, Any]:
    """The scenario shared by both backends; ``cut()``/``restore()`` break and repair
    storage, ``data`` is the payload of the ops sent while it is broken. Returns what
    was acknowledged and measured."""
    report: dict[str, Any] = {}
    async with connected(server, "alice", "bob") as (alice, bob):
        await alice.join(ROOM)
        await bob.join(ROOM)
        acked: list[dict[str, Any]] = []
        for i in range(5):
            ack = await alice.op(ROOM, f"before-{i}", "add", "items", f"before-{i}", {"n": i})
            assert ack.get("ok") is True, ack
            acked.append(ack)
        assert [a["seq"] for a in acked] == [1, 2, 3, 4, 5]

        # -- storage goes away ------------------------------------------------------------
        await asyncio.to_thread(cut)
        payload = data if data is not None else {"n": -1}

        async def refused() -> None:
            # a field write first: its flush is the first commit to fail; the ops sent
            # meanwhile all wait for that one and then fail together in the next commit
            started = time.monotonic()
            field = asyncio.ensure_future(alice.field(
                ROOM, "down-field", "items", "before-1", ["label"], "late",
                timeout=REFUSED_WITHIN_S + 5))
            await asyncio.sleep(0.1)
            acks = await asyncio.gather(
                *(alice.op(ROOM, f"down-{i}", "add", "items", f"down-{i}", payload,
                           timeout=REFUSED_WITHIN_S + 5) for i in range(3)),
                alice.op(ROOM, "down-update", "update", "items", "before-0",
                         {"n": 100, "blob": payload}, timeout=REFUSED_WITHIN_S + 5))
            report["refused_s"] = time.monotonic() - started
            for ack in [await field, *acks]:
                assert _is_unavailable(ack), f"a write while storage is down answered {ack}"

        async def still_working() -> None:
            # relays and presence do not need storage
            mark, alice_mark = len(bob.events), len(alice.events)
            assert (await alice.call("broadcast", {"room": ROOM, "event": "progress",
                                                   "data": {"pct": 50}}))["ok"] is True
            await alice.sio.emit("cursor", {"room": ROOM, "cursor": {"x": 1, "y": 2}})
            got = await bob.wait_for("broadcast", lambda d: d.get("event") == "progress",
                                     start=mark)
            assert got["data"] == {"pct": 50}
            assert got["socketId"] == alice.sid
            await bob.wait_for("cursor", lambda d: d.get("cursor") == {"x": 1, "y": 2},
                               start=mark)
            report["relays_s"] = time.monotonic() - cut_at
            started = time.monotonic()
            carol = Client(server, "carol")
            try:
                await carol.connect(timeout=REFUSED_WITHIN_S)
                report["connect_while_down_s"] = time.monotonic() - started
                joined = await carol.join(ROOM)
                report["join_while_down_s"] = time.monotonic() - started
                assert joined["seq"] == 5, joined
                assert set(joined["state"]["items"]) == {f"before-{i}" for i in range(5)}
                await alice.wait_for("presence", lambda d: d["connections"] == 3,
                                     start=alice_mark)
            finally:
                await carol.close()
            await alice.wait_for("presence", lambda d: d["connections"] == 2,
                                 start=alice_mark)

        async def health() -> None:
            report["healthz_down"] = await asyncio.to_thread(_healthz, server)

        cut_at = time.monotonic()
        await asyncio.gather(refused(), still_working(), health())
        assert report["refused_s"] < REFUSED_WITHIN_S, report
        assert server.proc.poll() is None, "the server died when storage went away"
        assert [e["seq"] for e in bob.named("op")] == [1, 2, 3, 4, 5], bob.named("op")

        # -- storage is back --------------------------------------------------------------
        await asyncio.to_thread(restore)
        restored = time.monotonic()
        first, report["recovered_s"], report["attempts"] = await _retry_until_ok(
            alice, lambda: alice.op(ROOM, "down-0", "add", "items", "down-0", payload,
                                    timeout=REFUSED_WITHIN_S + 5),
            RECOVERY_WITHIN_S)
        acked.append(first)
        for i in (1, 2):  # the other refused ops, retried with the same operation ids
            ack, _, _ = await _retry_until_ok(
                alice, lambda i=i: alice.op(ROOM, f"down-{i}", "add", "items", f"down-{i}",
                                            payload), RECOVERY_WITHIN_S)
            acked.append(ack)
        ack, _, _ = await _retry_until_ok(
            alice, lambda: alice.op(ROOM, "down-update", "update", "items", "before-0",
                                    {"n": 100, "blob": payload}), RECOVERY_WITHIN_S)
        acked.append(ack)
        ack, _, _ = await _retry_until_ok(
            alice, lambda: alice.field(ROOM, "down-field", "items", "before-1", ["label"],
                                       "late"), RECOVERY_WITHIN_S)
        acked.append(ack)
        for i in range(3):
            ack = await bob.op(ROOM, f"after-{i}", "add", "items", f"after-{i}", {"n": i})
            assert ack.get("ok") is True, ack
            acked.append(ack)
        report["all_ok_after_s"] = time.monotonic() - restored
        report["healthz_up"] = await asyncio.to_thread(_healthz, server)
        report["acked"] = acked
        seqs = [a["seq"] for a in acked]
        assert seqs == list(range(1, len(acked) + 1)), f"acked seqs are not gapless: {seqs}"
        # a member saw every change exactly once, the refused ones once they were applied
        await bob.wait_for("field", lambda d: d.get("operationId") == "down-field")
        seen = sorted([e["seq"] for e in bob.named("op") + bob.named("field")]
                      + [a["seq"] for a in acked if a["operationId"].startswith("after-")])
        assert seen == seqs, f"bob saw seqs {seen}"
    return report


def _check_stored(server: ServerProcess, acked: list[dict[str, Any]], payload: Any) -> None:
    """A new client sees every acknowledged op, in a gapless replay."""
    ack, replayed = run(read_room(server, ROOM))
    assert ack["seq"] == len(acked), (ack["seq"], len(acked))
    by_seq = check_replay(replayed, ack["seq"])
    for a in acked:
        assert by_seq[a["seq"]]["operationId"] == a["operationId"], (a, by_seq[a["seq"]])
    items = ack["state"]["items"]
    expected = ({f"before-{i}" for i in range(5)} | {f"down-{i}" for i in range(3)}
                | {f"after-{i}" for i in range(3)})
    assert set(items) == expected, sorted(items)
    assert items["before-0"] == {"n": 100, "blob": payload}
    assert items["before-1"] == {"n": 1, "label": "late"}
    assert items["down-1"] == payload


# -- PostgreSQL stopped and started again ---------------------------------------------------


def test_postgres_down_and_back(servers: Servers, postgres_server: str, postgres_schema: str,
                                postgres_proxy: TcpProxy) -> None:
    url = via(postgres_server, "127.0.0.1", postgres_proxy.port, schema=postgres_schema,
              application_name=postgres_schema)
    srv = servers.start(db=url)
    report = run(_outage(srv, postgres_proxy.cut, postgres_proxy.restore), timeout=120)
    print(f"\npostgres outage: { {k: v for k, v in report.items() if k != 'acked'} }")
    assert report["healthz_down"] == 503, report
    assert report["healthz_up"] == 200, report

    # what is stored survives a restart (still through the proxy)
    assert srv.stop() == 0, srv.log()[-3000:]
    again = servers.start(db=url)
    _check_stored(again, report["acked"], {"n": -1})
    assert "Traceback" not in srv.log(), srv.log()[-6000:]


def test_postgres_down_new_connections_do_not_delay_refusals(
        servers: Servers, postgres_server: str, postgres_schema: str,
        postgres_proxy: TcpProxy) -> None:
    """Users keep opening the app while the database is down: their connections must not
    hold up the answer to an edit (or each other) for many times the usual delay."""
    url = via(postgres_server, "127.0.0.1", postgres_proxy.port, schema=postgres_schema,
              application_name=postgres_schema)
    srv = servers.start(db=url)
    newcomers = 8
    bound = 10.0  # alone, a refusal takes about 5 s (the pool's wait for a connection)

    async def main() -> tuple[float, list[float]]:
        async with connected(srv, "alice") as (alice,):
            await alice.join(ROOM)
            assert (await alice.op(ROOM, "before", "add", "items", "a", {"n": 1}))["ok"]
            await asyncio.to_thread(postgres_proxy.cut)
            started = time.monotonic()

            async def newcomer(i: int) -> float:
                client = Client(srv, f"user{i}")
                try:
                    await client.connect(timeout=60)
                    await client.join(ROOM)
                    return time.monotonic() - started
                finally:
                    await client.close()

            async def edit() -> float:
                await asyncio.sleep(0.2)  # the newcomers are already connecting
                ack = await alice.op(ROOM, "down", "add", "items", "b", {"n": 2}, timeout=60)
                assert _is_unavailable(ack), ack
                return time.monotonic() - started

            refused_s, *joined_s = await asyncio.gather(
                edit(), *(newcomer(i) for i in range(newcomers)))
            return refused_s, joined_s

    refused_s, joined_s = run(main(), timeout=120)
    print(f"\nrefused after {refused_s:.1f}s; newcomers joined after "
          f"{[round(s, 1) for s in sorted(joined_s)]}")
    assert srv.proc.poll() is None
    assert refused_s < bound, (
        f"with {newcomers} clients connecting during the outage, an op was refused only "
        f"after {refused_s:.1f}s (newcomers joined after "
        f"{[round(s, 1) for s in sorted(joined_s)]} s)")
    assert max(joined_s) < bound, f"newcomers joined after {sorted(joined_s)} s"


def test_postgres_commit_reply_lost_then_back(
        servers: Servers, postgres_server: str, postgres_schema: str,
        postgres_proxy: TcpProxy) -> None:
    """The connection breaks after PostgreSQL committed but before the server heard back
    (network loss, or the database stopped at that moment). The writer gets
    STORAGE_UNAVAILABLE (the server cannot know better); once the database is reachable
    again, the room must work again: the retried operation id gets its first result,
    new ops get the next seqs, and the operation is applied once."""
    import psycopg
    from psycopg import sql

    url = via(postgres_server, "127.0.0.1", postgres_proxy.port, schema=postgres_schema,
              application_name=postgres_schema)
    srv = servers.start(db=url)
    recovery_within = 10.0

    def stored_seq() -> int | None:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            row = conn.execute(sql.SQL("SELECT seq FROM {}.rooms WHERE id = %s").format(
                sql.Identifier(postgres_schema)), (ROOM,)).fetchone()
        return None if row is None else int(row[0])

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with connected(srv, "alice", "bob") as (alice, bob):
            await alice.join(ROOM)
            await bob.join(ROOM)
            assert (await alice.op(ROOM, "first", "add", "items", "a", {"n": 1}))["seq"] == 1
            # from the next COMMIT on, the database's answers are lost
            postgres_proxy.drop_replies_after = b"COMMIT"
            pending = asyncio.ensure_future(
                alice.op(ROOM, "lost", "add", "items", "b", {"n": 2}, timeout=30))
            deadline = time.monotonic() + 10
            while await asyncio.to_thread(stored_seq) != 2:
                assert time.monotonic() < deadline, "the commit never reached PostgreSQL"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(postgres_proxy.cut)
            out["lost"] = await pending
            postgres_proxy.drop_replies = False
            postgres_proxy.drop_replies_after = None
            await asyncio.to_thread(postgres_proxy.restore)
            started = time.monotonic()
            attempts: list[Any] = []
            while True:
                retry = await alice.op(ROOM, "lost", "add", "items", "b", {"n": 2})
                nxt = await bob.op(ROOM, f"next-{len(attempts)}", "add", "items",
                                   f"c{len(attempts)}", {"n": 3})
                attempts.append((retry, nxt))
                if retry.get("ok") and nxt.get("ok"):
                    break
                if time.monotonic() - started > recovery_within:
                    break
                await asyncio.sleep(0.5)
            out["attempts"] = attempts
            out["recovery_s"] = time.monotonic() - started
        return out

    out = run(main(), timeout=120)
    lost = out["lost"]
    assert lost.get("ok") is True or _is_unavailable(lost), lost
    retry, nxt = out["attempts"][-1]
    assert retry.get("ok") is True, (
        f"the database has been reachable again for {out['recovery_s']:.1f}s, but the room "
        f"still refuses every write ({len(out['attempts'])} attempts); last retry of the "
        f"lost op: {retry}; last new op: {nxt}; server log:\n{srv.log()[-1500:]}")
    assert nxt.get("ok") is True, nxt
    assert retry["seq"] == 2, f"the retried op was answered {retry}, its commit has seq 2"
    assert nxt["seq"] == 3, nxt
    ack, replayed = run(read_room(srv, ROOM))
    assert ack["seq"] == 3
    by_seq = check_replay(replayed, 3)
    assert [by_seq[s]["operationId"] for s in (1, 2, 3)] == ["first", "lost", nxt["operationId"]]
    assert set(ack["state"]["items"]) == {"a", "b", nxt["operationId"].replace("next-", "c")}


# -- SQLite on a full disk --------------------------------------------------------------------


def test_sqlite_disk_full_and_freed(mounts: Mounts, servers: Servers) -> None:
    disk = mounts.tmpfs("small-disk", size="4m")
    db = f"sqlite:///{disk}/collab.db"
    srv = servers.start(db=db)
    filler = disk / "filler"
    report_fill: dict[str, Any] = {}
    # ops big enough that the WAL has to grow (a full disk cannot be hidden by reuse)
    blob = {"text": "x" * 200_000}

    def fill() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            for size in (1 << 16, 512):  # big chunks, then the last few blocks
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        report_fill["free_bytes"] = shutil.disk_usage(disk).free

    def free() -> None:
        filler.unlink()

    report = run(_outage(srv, fill, free, data=blob), timeout=120)
    print(f"\nsqlite disk full: { {k: v for k, v in report.items() if k != 'acked'} }, "
          f"{report_fill}")
    assert report["healthz_up"] == 200, report
    assert srv.stop() == 0, srv.log()[-3000:]
    again = servers.start(db=db)
    _check_stored(again, report["acked"], blob)
