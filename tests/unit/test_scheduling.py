"""Timers, the room mailbox and the outbox bound, in isolation (mock clock)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from collabtrio.rooms.mailbox import Mailbox
from collabtrio.timers import Timers
from collabtrio.transport import outbox as outbox_module
from collabtrio.transport.outbox import Outbox


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_timers_fire_in_order_at_their_time(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers()
    fired: list[tuple[str, float]] = []
    start = trio.current_time()

    def record(name: str) -> None:
        fired.append((name, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        timers.call_later(5, lambda: record("b"))
        timers.call_later(2, lambda: record("a"))
        cancelled = timers.call_later(3, lambda: record("never"))
        cancelled.cancel()
        await trio.sleep(1)
        # a timer added later but due sooner wakes the timer task early
        timers.call_later(0.5, lambda: record("c"))
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert fired == [("c", pytest.approx(1.5)), ("a", pytest.approx(2)), ("b", pytest.approx(5))]


async def test_a_failing_timer_does_not_stop_the_others(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    timers = Timers()
    fired: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        timers.call_later(1, boom)
        timers.call_later(2, lambda: fired.append(2))
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    assert fired == [2]
    assert "timer callback failed" in caplog.text


async def test_mailbox_bound_applies_to_put_but_not_put_nowait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box: Mailbox[int] = Mailbox(bound=2)
    await box.put(1)
    await box.put(2)
    box.put_nowait(3)  # departures always get in
    assert len(box) == 3
    done = trio.Event()

    async def producer() -> None:
        await box.put(4)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()  # waiting for room
        assert await box.get_batch() == [1, 2, 3]
        await done.wait()
        assert await box.get_batch() == [4]


async def test_mailbox_get_batch_times_out_empty(autojump_clock: trio.testing.MockClock) -> None:
    box: Mailbox[int] = Mailbox(bound=2)
    start = trio.current_time()
    assert await box.get_batch(deadline=start + 7) == []
    assert trio.current_time() - start == pytest.approx(7)


async def test_outbox_bound_applies_behind_a_blocked_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    box = Outbox(max_bytes=60)  # the first frame in line is not counted
    client, server = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run_writer, client)
        # a burst queued while no write is in progress is accepted whole
        assert all(box.push(b"b" * 40) for _ in range(10))
        await trio.testing.wait_all_tasks_blocked()
        # the writer is now stuck in send_all (nobody reads): the bound applies
        assert box.push(b"v" * 40, volatile=True)
        assert box.push(b"n" * 40)
        assert box.push(b"m" * 40)
        assert box.dropped_volatile == 1
        assert not box.push(b"x" * 40)
        # reading drains it all, in order
        data = b""
        while len(data) < 400 + 80:
            data += await server.receive_some()
        assert data == b"b" * 400 + b"n" * 40 + b"m" * 40
        nursery.cancel_scope.cancel()


def test_outbox_drops_volatile_first_then_refuses() -> None:
    box = Outbox(max_bytes=60)  # the first frame in line is not counted
    box._sending = True  # as while the writer is blocked in send_all
    assert box.push(b"v" * 40, volatile=True)
    assert box.push(b"n" * 40)
    # does not fit: the queued volatile frame is dropped to make room
    assert box.push(b"m" * 40)
    assert box.dropped_volatile == 1
    assert box.queued_bytes == 80
    # a volatile frame that does not fit is dropped, not an error
    assert box.push(b"w" * 40, volatile=True)
    assert box.dropped_volatile == 2
    # a non-volatile frame that does not fit is refused: the caller disconnects
    assert not box.push(b"x" * 40)
    assert box.queued_bytes == 80


def test_outbox_takes_a_large_frame_behind_a_write_and_bounds_what_follows() -> None:
    """A frame larger than the bound (a Yjs sync of a large document, a large join
    state) is accepted while a write is in progress if nothing else waits; the bound
    then applies to what queues behind it."""
    box = Outbox(max_bytes=100)
    box._sending = True  # as while the writer is blocked in send_all
    assert box.push(b"s" * 1_600_000)
    assert box.push(b"a" * 60)
    assert box.push(b"b" * 40)
    assert not box.push(b"c" * 10)  # 110 bytes behind the large frame
    assert box.queued_bytes == 1_600_100


async def test_cancelled_timers_do_not_pile_up(autojump_clock: trio.testing.MockClock) -> None:
    timers = Timers()
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        keep = timers.call_later(10, lambda: None)
        for _ in range(1000):  # e.g. token-expiry timers of short connections
            timers.call_later(86400, lambda: None).cancel()
        assert len(timers) < 200
        assert not keep.cancelled
        nursery.cancel_scope.cancel()


async def _socket_pair() -> tuple[trio.SocketStream, socket.socket]:
    a, b = socket.socketpair()
    b.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(a)), b


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


async def test_outbox_writes_a_frame_at_once_when_its_writer_is_idle() -> None:
    """At a steady rate the pushing task writes the frame itself: it is on the socket
    before anything else runs, and the writer stays parked."""
    stream, peer = await _socket_pair()
    box = Outbox(max_bytes=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run_writer, stream)
        await trio.testing.wait_all_tasks_blocked()
        assert box.push(b"first")
        assert _read_all(peer) == b"first"  # no await since the push: written by it
        assert box._idle  # the writer was not woken
        nursery.cancel_scope.cancel()
    peer.close()
    await stream.aclose()


async def test_outbox_leaves_a_burst_to_its_writer_in_order() -> None:
    """Frames pushed back to back: only the first is written by the pusher, the rest
    wait for the writer (few large writes), and all arrive once, in order."""
    stream, peer = await _socket_pair()
    box = Outbox(max_bytes=100_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run_writer, stream)
        await trio.testing.wait_all_tasks_blocked()
        frames = [f"{i:04d}".encode() for i in range(200)]
        for frame in frames:
            assert box.push(frame)
        assert box.queued_bytes == 4 * 199  # everything after the first waits
        await trio.testing.wait_all_tasks_blocked()
        assert _read_all(peer) == b"".join(frames)
        nursery.cancel_scope.cancel()
    peer.close()
    await stream.aclose()


async def test_outbox_finishes_a_frame_the_socket_took_in_part() -> None:
    """A direct write the socket takes only in part: the rest goes out first, before
    the frames pushed after it."""
    stream, peer = await _socket_pair()
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    box = Outbox(max_bytes=10_000_000)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run_writer, stream)
        await trio.testing.wait_all_tasks_blocked()
        assert box.push(big)
        assert box._partial  # the socket took only part of it
        assert box.push(b"after")
        got = b""
        while len(got) < len(big) + 5:
            got += _read_all(peer)
            await trio.lowlevel.checkpoint()
        assert got == big + b"after"
        nursery.cancel_scope.cancel()
    peer.close()
    await stream.aclose()


async def test_outbox_writes_nothing_directly_once_its_writer_is_gone() -> None:
    """After the writer ends the socket may be closed and its descriptor reused: a
    push never writes to it."""
    stream, peer = await _socket_pair()
    box = Outbox(max_bytes=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run_writer, stream)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert box.push(b"late")
    assert _read_all(peer) == b""
    peer.close()
    await stream.aclose()


async def test_an_attached_outbox_runs_no_writer_while_frames_go_out_at_once() -> None:
    """Frames at a steady rate are written by the pushing task: an attached outbox
    starts no writer task for them (an idle connection holds none)."""
    stream, peer = await _socket_pair()
    box = Outbox(max_bytes=1000)
    async with trio.open_nursery() as nursery:
        box.attach(stream, nursery)
        for i in range(5):
            assert box.push(f"frame{i}".encode())
            assert not box._writing
            await trio.sleep(0.005)  # more than DIRECT_GAP_S between frames
        assert _read_all(peer) == b"".join(f"frame{i}".encode() for i in range(5))
        assert len(nursery.child_tasks) == 0
        box.close()
        await box.drain()
    peer.close()
    await stream.aclose()


async def test_an_attached_outbox_starts_a_writer_for_a_burst_that_ends_when_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst starts a writer in the connection's nursery; it writes everything in
    order, ends after WRITER_LINGER_S with nothing to write, and the next burst starts
    another: nothing is lost or reordered across writers."""
    monkeypatch.setattr(outbox_module, "WRITER_LINGER_S", 0.05)
    stream, peer = await _socket_pair()
    box = Outbox(max_bytes=100_000)
    sent: list[bytes] = []
    got = b""
    async with trio.open_nursery() as nursery:
        box.attach(stream, nursery)
        for burst in range(3):
            frames = [f"{burst}:{i:04d};".encode() for i in range(200)]
            for frame in frames:
                assert box.push(frame)
            sent += frames
            assert box._writing  # the frames after the first wait for a writer
            await trio.testing.wait_all_tasks_blocked()
            got += _read_all(peer)
            await trio.sleep(0.2)  # past the linger: the writer is gone
            assert not box._writing
            assert len(nursery.child_tasks) == 0
        assert got == b"".join(sent)
        box.close()
        await box.drain()
    peer.close()
    await stream.aclose()


async def test_an_attached_outbox_drains_after_close_and_then_writes_nothing() -> None:
    """close() then drain(): what is queued behind a frame the socket took in part is
    written, in order; after drain a push writes nothing (the socket is about to be
    closed and its descriptor reused)."""
    stream, peer = await _socket_pair()
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    box = Outbox(max_bytes=10_000_000)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    got = b""
    async with trio.open_nursery() as nursery:
        box.attach(stream, nursery)
        assert box.push(big)
        assert box._partial
        assert box._writing
        assert box.push(b"after")
        box.close()

        async def read() -> None:
            nonlocal got
            while len(got) < len(big) + 5:
                got += _read_all(peer)
                await trio.sleep(0.001)

        nursery.start_soon(read)
        await box.drain()
    assert got == big + b"after"
    assert box.push(b"late")
    assert _read_all(peer) == b""
    peer.close()
    await stream.aclose()
