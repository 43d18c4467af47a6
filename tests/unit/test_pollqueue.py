"""The long-polling queue: what a poll takes, and how the queue is bounded."""

from __future__ import annotations

import trio
import trio.testing

from collabtrio.protocol import engineio
from collabtrio.protocol.outgoing import Outgoing
from collabtrio.transport.polling import MAX_PACKETS_PER_POLL, PollQueue


def _records(body: bytes) -> list[str]:
    return body.decode().split(engineio.RECORD_SEPARATOR)


def test_a_poll_takes_whole_messages_up_to_the_packet_cap() -> None:
    queue = PollQueue(1 << 20)
    for n in range(20):
        queue.push(Outgoing.event("n", n))
    first = _records(queue.payload())
    assert len(first) == MAX_PACKETS_PER_POLL == 16
    assert first[0] == '42["n",0]'
    assert _records(queue.payload()) == [f'42["n",{n}]' for n in range(16, 20)]
    assert len(queue) == 0


def test_attachments_travel_with_their_event_and_count_as_packets() -> None:
    queue = PollQueue(1 << 20)
    for n in range(6):
        queue.push(Outgoing.event("b", {"n": n, "x": b"\x01", "y": b"\x02"}))  # 3 packets
    assert len(_records(queue.payload())) == 15  # 5 whole messages: a 6th would be 18
    last = _records(queue.payload())
    assert last[0].startswith("452-")
    assert last[1:] == ["bAQ==", "bAg=="]


def test_a_message_bigger_than_the_cap_still_goes_alone() -> None:
    queue = PollQueue(1 << 20)
    queue.push(Outgoing.event("big", [bytes([i]) for i in range(20)]))
    queue.push(Outgoing.event("next", 1))
    assert len(_records(queue.payload())) == 21
    assert _records(queue.payload()) == ['42["next",1]']


def test_a_client_away_is_bounded_volatile_first() -> None:
    queue = PollQueue(130)  # the first message in line is not counted
    assert queue.push(Outgoing.event("cursor", "x" * 60), volatile=True)
    assert queue.push(Outgoing.event("cursor", "y" * 60), volatile=True)
    assert queue.push(Outgoing.event("op", "z" * 60))  # fits once the cursors are dropped
    assert queue.dropped_volatile == 2
    assert not queue.push(Outgoing.event("op", "w" * 200))  # does not fit: slow consumer
    assert _records(queue.payload()) == ['42["op","' + "z" * 60 + '"]']


def test_a_single_message_into_an_empty_queue_always_fits() -> None:
    queue = PollQueue(10)
    assert queue.push(Outgoing.event("state", "s" * 1000))
    assert len(queue) == 1


def test_a_large_message_first_in_line_leaves_the_bound_to_what_follows() -> None:
    """A message larger than the bound (a Yjs sync of a large document) is taken by
    the next poll: what queues behind it is bounded as if the queue were empty."""
    queue = PollQueue(100)
    assert queue.push(Outgoing.event("state", "s" * 1000))
    assert queue.push(Outgoing.event("op", "a" * 30))
    assert queue.push(Outgoing.event("op", "b" * 30))
    assert not queue.push(Outgoing.event("op", "c" * 30))  # 3 x 42 bytes behind it


async def test_wait_returns_when_something_is_queued_or_the_queue_closes() -> None:
    queue = PollQueue(1000)
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def poll() -> None:
            await queue.wait()
            done.set()

        nursery.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        queue.push(Outgoing.engineio("2"))
        await done.wait()
    queue.take()
    queue.close()
    with trio.fail_after(1):
        await queue.wait()  # closed: returns at once
