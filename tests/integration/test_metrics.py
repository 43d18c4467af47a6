"""``GET /metrics``: what an operator scrapes moves by exactly what clients did.

A scripted session (three clients in one room, cursors, operations, a refusal, a slow
consumer) is read back through Prometheus' own parser; gauges show the live counts;
the key, when configured, is required; ``--no-metrics`` has no route; two servers in
one process share no counter.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from collabtrio.client import Disconnected
from collabtrio.observability.sink import disconnect_reason
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import TestServer, open_test_server

METRICS_KEY = "scrape-key-0123456789"


async def _scrape(server: TestServer, key: str | None = None) -> dict[str, dict[Any, float]]:
    """``{family: {labels or sample name: value}}`` of one scrape."""
    answer = await server.request("GET", "/metrics", key=key)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: dict[str, dict[Any, float]] = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        samples = found.setdefault(family.name, {})
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return found


def _value(scrape: dict[str, dict[Any, float]], family: str, **labels: str) -> float:
    samples = scrape[family]
    wanted = tuple(sorted(labels.items()))
    values = [v for (name, got), v in samples.items()
              if got == wanted and not name.endswith(("_created", "_bucket"))
              and name in (family, family + "_total")]
    assert len(values) == 1, (family, labels, samples)
    return values[0]


def _count(scrape: dict[str, dict[Any, float]], family: str) -> float:
    return scrape[family][(family + "_count", ())]


def _delta(before: dict[str, dict[Any, float]], after: dict[str, dict[Any, float]],
           family: str, **labels: str) -> float:
    return _value(after, family, **labels) - _value(before, family, **labels)


def _op(room: str, op_id: str, eid: str) -> dict[str, Any]:
    return {"room": room, "operationId": op_id, "op": "add", "collection": "notes",
            "id": eid, "data": {"text": eid}}


async def test_counters_move_by_what_a_scripted_session_did(
        autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_test_server(outbox_max_bytes=4096, rate_limit_per_s=10_000,
                         rate_limit_burst=10_000) as server,
        server.client("alice") as a,
        server.client("bob") as b,
        server.client("slow", stream_pair=trio.testing.lockstep_stream_pair) as slow,
    ):
        for client in (a, b, slow):
            assert (await client.join("r"))["ok"] is True
        await trio.testing.wait_all_tasks_blocked()
        start = await _scrape(server)
        assert _value(start, "collabtrio_connects", transport="websocket") == 3
        assert _value(start, "collabtrio_connections", transport="websocket") == 3
        assert _value(start, "collabtrio_connections", transport="polling") == 0
        assert _value(start, "collabtrio_rooms_open") == 1
        assert _value(start, "collabtrio_users") == 3
        assert _value(start, "collabtrio_events_received", event="join") == 3
        members = start["collabtrio_room_members"]
        assert members[("collabtrio_room_members_bucket", (("le", "2"),))] == 0
        assert members[("collabtrio_room_members_bucket", (("le", "5"),))] == 1
        assert _value(start, "collabtrio_room_members_gsum") == 3
        assert _value(start, "collabtrio_storage_up") == 1
        assert _value(start, "collabtrio_up") == 1

        # 10 cursors: volatile relays to the two others
        for i in range(10):
            assert await a.call("cursor", {"room": "r", "cursor": {"x": i}}) == {"ok": True}
        await trio.testing.wait_all_tasks_blocked()
        after_cursors = await _scrape(server)
        assert _delta(start, after_cursors, "collabtrio_events_received", event="cursor") == 10
        assert _delta(start, after_cursors, "collabtrio_deliveries") == 20

        # 5 operations: persisted, broadcast to the others, acknowledged
        for i in range(5):
            ack = await a.call("op", _op("r", f"op-{i}", f"n{i}"))
            assert ack["ok"] is True, ack
        await trio.testing.wait_all_tasks_blocked()
        after_ops = await _scrape(server)
        assert _delta(after_cursors, after_ops, "collabtrio_events_received", event="op") == 5
        assert _delta(after_cursors, after_ops, "collabtrio_ops_acknowledged") == 5
        assert _delta(after_cursors, after_ops, "collabtrio_deliveries") == 10
        assert (_count(after_ops, "collabtrio_ack_latency_seconds")
                - _count(after_cursors, "collabtrio_ack_latency_seconds")) == 5
        transactions = _delta(after_cursors, after_ops, "collabtrio_storage_transactions")
        assert transactions == 5  # one op waited for at a time: one transaction each
        assert (_count(after_ops, "collabtrio_commit_duration_seconds")
                - _count(after_cursors, "collabtrio_commit_duration_seconds")) == transactions
        ops_hist = after_ops["collabtrio_commit_operations"]
        assert ops_hist[("collabtrio_commit_operations_sum", ())] >= 5

        # 1 refusal: an op for a room it is not in
        ack = await a.call("op", _op("elsewhere", "op-x", "nx"))
        assert ack["error"]["code"] == "NOT_JOINED"
        refused = await _scrape(server)
        assert _delta(after_ops, refused, "collabtrio_events_refused", code="NOT_JOINED") == 1
        assert sum(_delta(after_ops, refused, "collabtrio_events_refused", code=code)
                   for (_, labels) in refused["collabtrio_events_refused"]
                   for code in [dict(labels)["code"]]) == 1
        assert _delta(after_ops, refused, "collabtrio_events_received", event="op") == 1

        # 1 slow consumer: it stops reading; broadcasts that do not fit disconnect it
        slow.pause_reading()
        for _ in range(300):
            await a.call("broadcast", {"room": "r", "event": "e", "data": "y" * 100})
            conns = [c for c in server.server.connections if c.sid == slow.sid]
            if not conns or conns[0].close_reason is not None:
                break
        slow.resume_reading()
        with pytest.raises(Disconnected):
            while True:
                await slow.next_event()
        await trio.testing.wait_all_tasks_blocked()
        end = await _scrape(server)
        assert _delta(refused, end, "collabtrio_slow_consumer_disconnects") == 1
        assert _delta(refused, end, "collabtrio_disconnects", reason="slow-consumer") == 1
        assert _value(end, "collabtrio_connections", transport="websocket") == 2
        assert _value(end, "collabtrio_rate_limited") == 0
        assert _value(end, "collabtrio_storage_errors", kind="unavailable") == 0


async def test_volatile_drops_and_rate_limits_are_counted(
        autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_test_server(outbox_max_bytes=4096, rate_limit_per_s=1, rate_limit_burst=5
                         ) as server,
        server.client("fast") as fast,
        server.client("slow", stream_pair=trio.testing.lockstep_stream_pair) as slow,
    ):
        await fast.join("r")
        await slow.join("r")
        await trio.testing.wait_all_tasks_blocked()
        slow.pause_reading()
        answers = [await fast.call("cursor", {"room": "r", "cursor": {"pad": "x" * 900}})
                   for _ in range(10)]
        limited = sum(1 for ans in answers if ans != {"ok": True})
        assert limited >= 5
        scrape = await _scrape(server)
        assert _value(scrape, "collabtrio_rate_limited") == limited
        assert _value(scrape, "collabtrio_events_refused", code="RATE_LIMITED") == limited
        assert _value(scrape, "collabtrio_events_received", event="cursor") == 10


async def test_unknown_events_count_as_other(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as server, server.client("a") as a:
        ack = await a.call("no-such-event", {})
        assert ack["error"]["code"] == "UNKNOWN_EVENT"
        scrape = await _scrape(server)
        assert _value(scrape, "collabtrio_events_received", event="other") == 1
        assert "no-such-event" not in str(scrape)


async def test_the_process_collector_and_api_requests_are_there(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(api_keys="ops:" + "k" * 20) as server:
        assert (await server.request("GET", "/api/stats", key="k" * 20)).status == 200
        scrape = await _scrape(server)
        assert "process_cpu_seconds" in scrape or "python_info" in scrape
        assert "python_info" in scrape
        assert _value(scrape, "collabtrio_http_api_requests") == 1


async def test_the_metrics_key_is_required_when_set(
        autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(metrics_api_key=METRICS_KEY) as server:
        answer = await server.request("GET", "/metrics")
        assert answer.status == 401
        assert "bearer" in answer.headers["www-authenticate"].lower()
        assert (await server.request("GET", "/metrics", key="wrong-key-0123456789")).status == 401
        assert "collabtrio_up" in await _scrape(server, key=METRICS_KEY)


async def test_a_bad_metrics_key_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="metrics_api_key") as info:
        async with open_test_server(metrics_api_key="short"):
            pass  # pragma: no cover
    assert "short" not in str(info.value)


async def test_no_metrics_means_no_route(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(metrics=False) as server, server.client("a") as a:
        await a.join("r")
        assert (await server.request("GET", "/metrics")).status == 404
        assert server.server.metrics.enabled is False
        assert server.server.metrics.connects["websocket"] == 0
        assert server.server.metrics_registry is None


async def test_two_servers_share_no_counter(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server() as one, open_test_server() as two, one.client("a") as a:
        await a.join("r")
        first, second = await _scrape(one), await _scrape(two)
        assert _value(first, "collabtrio_connects", transport="websocket") == 1
        assert _value(second, "collabtrio_connects", transport="websocket") == 0
        assert one.server.metrics_registry is not two.server.metrics_registry


def test_disconnect_reasons_are_a_fixed_set() -> None:
    assert disconnect_reason("ping timeout") == "ping-timeout"
    assert disconnect_reason("transport close (1001)") == "client"
    assert disconnect_reason("protocol error: Engine.IO: bad") == "protocol-error"
    assert disconnect_reason("slow-consumer") == "slow-consumer"
    assert disconnect_reason("server shutdown") == "shutdown"
    assert disconnect_reason("a reason an API caller wrote") == "other"


async def test_storage_errors_and_state_are_reported(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with open_test_server(store=store) as server, server.client("a") as a:
        await a.join("r")
        store.fail_next(1)
        ack = await a.call("op", _op("r", "op-1", "n1"))
        assert ack["error"]["code"] == "STORAGE_UNAVAILABLE"
        scrape = await _scrape(server)
        assert _value(scrape, "collabtrio_storage_errors", kind="unavailable") == 1
        assert _value(scrape, "collabtrio_events_refused", code="STORAGE_UNAVAILABLE") == 1
        assert _count(scrape, "collabtrio_commit_duration_seconds") == 1  # failed, counted
        assert _value(scrape, "collabtrio_ops_acknowledged") == 0
        store.failing = True
        down = await _scrape(server)
        assert _value(down, "collabtrio_storage_up") == 0
        store.failing = False
