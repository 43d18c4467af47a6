"""The y-websocket endpoint ``/yjs/<room>``: y-protocols peers share a room's Yjs
document with Socket.IO clients. A trio-websocket client speaks y-protocols through
the project's codec and keeps a pycrdt document; in-process server, mock clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pycrdt
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, wrap_client_stream

from collabtrio.protocol import yprotocol as yp
from collabtrio.testing import TestServer, open_test_server


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@asynccontextmanager
async def yws(server: TestServer, room: str, token: str | None,
              headers: list[tuple[bytes, bytes]] | None = None,
              epoch: str | None = None) -> AsyncIterator[Any]:
    client_end, server_end = trio.testing.memory_stream_pair()
    server.server.connect_stream(server_end)
    query = [f"token={token}"] if token else []
    if epoch is not None:
        query.append(f"epoch={epoch}")
    resource = f"/yjs/{room}" + ("?" + "&".join(query) if query else "")
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, client_end, "localhost", resource,
                                          extra_headers=headers or [])
            try:
                yield ws
            finally:
                await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # the client library raises from its reader task: surface the one error
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def receive(ws: Any) -> yp.Message:
    with trio.fail_after(10):
        return yp.decode_message(await ws.get_message())


async def receive_until(ws: Any, kind: type) -> Any:
    while True:
        msg = await receive(ws)
        if isinstance(msg, kind):
            return msg


def text_doc() -> tuple[pycrdt.Doc[Any], pycrdt.Text]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    return doc, doc.get("text", type=pycrdt.Text)


async def test_a_y_websocket_peer_and_a_socketio_client_edit_one_document(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server, server.client("sio") as sio:
        await sio.join("doc")
        seed, seed_text = text_doc()
        seed_text += "hello"
        assert (await sio.call("yjs-update", {"room": "doc", "update": seed.get_update()}))["ok"]
        async with yws(server, "doc", server.token("yuser")) as ws:
            # the server opens with its sync step 1; our step 1 gets its step 2
            step1 = await receive(ws)
            assert isinstance(step1, yp.SyncStep1)
            doc, text = text_doc()
            await ws.send_message(yp.encode_message(yp.SyncStep1(doc.get_state())))
            step2 = await receive_until(ws, yp.SyncStep2)
            doc.apply_update(step2.update)
            assert str(text) == "hello"
            # answer the server's step 1 with what it misses (nothing yet)
            await ws.send_message(yp.encode_message(
                yp.SyncStep2(doc.get_update(step1.state_vector))))
            # our edit reaches the Socket.IO client, and is stored
            before = doc.get_state()
            text += " world"
            await ws.send_message(yp.encode_message(yp.SyncUpdate(doc.get_update(before))))
            got = await sio.next_event("yjs-update")
            assert got["userId"] == "yuser"
            assert got["socketId"].startswith("yws-")
            # and a Socket.IO edit reaches us as a sync update
            seed.apply_update(got["update"])
            assert str(seed_text) == "hello world"  # the empty step 2 was not relayed
            before = seed.get_state()
            seed_text += "!"
            await sio.call("yjs-update", {"room": "doc", "update": seed.get_update(before)})
            update = await receive_until(ws, yp.SyncUpdate)
            doc.apply_update(update.update)
            assert str(text) == "hello world!"
            # awareness: echoed to us, relayed to the others, removed when we go
            mine = yp.encode_awareness([yp.AwarenessEntry(doc.client_id, 1, '{"u":1}')])
            await ws.send_message(yp.encode_message(yp.AwarenessMessage(mine)))
            echo = await receive_until(ws, yp.AwarenessMessage)
            assert echo.update == mine
            assert (await sio.next_event("yjs-awareness"))["update"] == mine
        gone = yp.decode_awareness((await sio.next_event("yjs-awareness"))["update"])
        assert [(e.client_id, e.state) for e in gone] == [(doc.client_id, "null")]
        async with server.client("late") as late:
            await late.join("doc")
            ack = await late.call("yjs-sync", {"room": "doc",
                                               "stateVector": pycrdt.Doc().get_state()})
            check, check_text = text_doc()
            check.apply_update(ack["update"])
            assert str(check_text) == "hello world!"


async def test_refusals_on_the_y_websocket_endpoint(autojump_clock: trio.testing.MockClock
                                                    ) -> None:
    async with open_test_server() as server:
        for token, status in [(None, 401), ("not-a-token", 401)]:
            with pytest.raises(ConnectionRejected) as info:
                async with yws(server, "doc", token):
                    pass
            assert info.value.status_code == status
        with pytest.raises(ConnectionRejected) as info:
            async with yws(server, "user:someone-else", server.token("me")):
                pass
        assert info.value.status_code == 403
        with pytest.raises(ConnectionRejected) as info:
            async with yws(server, "bad!room", server.token("me")):
                pass
        assert info.value.status_code == 400
        # the Bearer header works too
        bearer = [(b"authorization", f"Bearer {server.token('hdr')}".encode())]
        async with yws(server, "doc", None, bearer) as ws:
            assert isinstance(await receive(ws), yp.SyncStep1)
        # a read member's update is not applied: it is told (auth: permission denied)
        async with yws(server, "doc", server.token("reader", rooms={"doc": "read"})) as ws:
            await receive(ws)
            doc, text = text_doc()
            text += "nope"
            await ws.send_message(yp.encode_message(yp.SyncUpdate(doc.get_update())))
            denied = await receive_until(ws, yp.AuthMessage)
            assert denied.denied_reason == "permission denied"
        async with server.client("check") as check:
            await check.join("doc")
            ack = await check.call("yjs-sync", {"room": "doc",
                                                "stateVector": pycrdt.Doc().get_state()})
            empty, empty_text = text_doc()
            empty.apply_update(ack["update"])
            assert str(empty_text) == ""
        # a malformed message closes with 4400 (the provider stops reconnecting)
        async with yws(server, "doc", server.token("bad")) as ws:
            await receive(ws)
            await ws.send_message(b"\x07\x01")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await receive(ws)
            assert closed.value.reason.code == 4400


async def test_the_connection_ends_with_its_token(autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    """y-websocket has no refresh-token: when the token expires the socket is closed
    with 4401 (the provider does not reconnect with the expired token)."""
    async with open_test_server() as server:
        async with yws(server, "doc", server.token("brief", ttl_s=30)) as ws:
            assert isinstance(await receive(ws), yp.SyncStep1)
            await trio.sleep(25)
            await ws.send_message(yp.encode_message(yp.QueryAwareness()))  # still open
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await receive(ws)
            assert closed.value.reason.code == 4401


async def test_an_old_timeline_provider_is_closed_with_4409(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A provider that holds a document from before a replace (its ``?epoch=`` is the
    old one) is closed with 4409 before any document data, so its document, merged into
    the re-seeded one, cannot double the text; providers connected during the replace
    are closed with 4409 too."""
    async with open_test_server() as server, server.client("sio") as sio:
        old_epoch = (await sio.join("doc"))["yjsEpoch"]
        held, held_text = text_doc()
        held_text += "hello"
        assert (await sio.call("yjs-update", {"room": "doc", "update": held.get_update()}))["ok"]
        reseed, reseed_text = text_doc()
        reseed_text += await server.server.yjs_text("doc", "text")
        merged, merged_text = text_doc()  # what the epoch prevents
        merged.apply_update(reseed.get_update())
        merged.apply_update(held.get_update())
        assert str(merged_text) == "hellohello"
        async with yws(server, "doc", server.token("early"), epoch=old_epoch) as early:
            assert isinstance(await receive(early), yp.SyncStep1)  # the epoch matched
            new_epoch = await server.server.replace_yjs("doc", reseed.get_update())
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await receive(early)
            assert (closed.value.reason.code, closed.value.reason.reason) == (
                4409, "epoch mismatch")
        async with yws(server, "doc", server.token("late"), epoch=old_epoch) as late:
            with pytest.raises(ConnectionClosed) as closed:
                # the provider's first messages: its step 1, its whole (old) document
                await late.send_message(yp.encode_message(yp.SyncStep1(held.get_state())))
                await late.send_message(yp.encode_message(yp.SyncStep2(held.get_update())))
                while True:
                    msg = await receive(late)
                    assert not isinstance(msg, yp.SyncStep1 | yp.SyncStep2)  # no data
            assert closed.value.reason.code == 4409
        assert await server.server.yjs_text("doc", "text") == "hello"
        # with the new epoch (or none) a provider syncs as usual
        async with yws(server, "doc", server.token("ok"), epoch=new_epoch) as ok:
            assert isinstance(await receive(ok), yp.SyncStep1)
        # a malformed epoch is refused at the handshake
        with pytest.raises(ConnectionRejected) as rejected:
            async with yws(server, "doc", server.token("bad"), epoch="not%20an%20epoch"):
                pass
        assert rejected.value.status_code == 400


async def test_y_websocket_peers_count_against_max_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A y-websocket peer takes one of ``max_connections`` like a Socket.IO client: with
    one slot, a second connection of either kind is refused (503), and the slot is
    free again once the peer goes."""
    async with open_test_server(max_connections=1) as server:
        async with yws(server, "doc", server.token("y1")) as ws:
            assert isinstance(await receive(ws), yp.SyncStep1)
            with pytest.raises(ConnectionRejected) as info:
                async with yws(server, "doc", server.token("y2")):
                    pass
            assert info.value.status_code == 503
            with pytest.raises(Exception):  # noqa: B017,PT011 - the handshake is refused
                async with server.client("sio"):
                    pass
        await trio.testing.wait_all_tasks_blocked()
        async with server.client("sio") as sio:
            assert sio.sid
            with pytest.raises(ConnectionRejected) as info:
                async with yws(server, "doc", server.token("y3")):
                    pass
            assert info.value.status_code == 503
