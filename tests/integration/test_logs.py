"""Logs an operator can parse: JSON lines with the ids they are about, and the HTTP
API's access log (status, duration, key name; never the secret)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
import trio.testing

from collabtrio.cli import build_parser, config_from
from collabtrio.logs import JsonFormatter, bind, setup_logging
from collabtrio.storage.memory import MemoryStore
from collabtrio.testing import open_test_server

SECRET = "dashboard-secret-0123456789"


@contextmanager
def json_lines() -> Iterator[list[dict[str, Any]]]:
    """Every line logged under ``collabtrio`` meanwhile, as parsed JSON."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("collabtrio")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    lines: list[dict[str, Any]] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        lines.extend(json.loads(line) for line in stream.getvalue().splitlines())


def test_a_json_line_has_time_level_logger_message_and_ids() -> None:
    record = logging.LogRecord("collabtrio.test", logging.WARNING, __file__, 1,
                               "room %s: %s", ("r", "x"), None)
    record.created = 1_700_000_000.25
    record.msecs = 250.0
    record.room = "r"
    line = json.loads(JsonFormatter().format(record))
    assert line == {"time": "2023-11-14T22:13:20.250Z", "level": "WARNING",
                    "logger": "collabtrio.test", "message": "room r: x", "room": "r"}


def test_bound_ids_and_tracebacks_are_carried() -> None:
    async def main() -> dict[str, Any]:
        bind(room="doc:1", user="alice")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            record = logging.getLogger("collabtrio.t").makeRecord(
                "collabtrio.t", logging.ERROR, __file__, 1, "failed", (), None)
            record.exc_info = sys.exc_info()
        return dict(json.loads(JsonFormatter().format(record)))

    line = trio.run(main)
    assert line["room"] == "doc:1"
    assert line["user"] == "alice"
    assert "RuntimeError: boom" in line["exception"]
    # another task (here: another run) never sees them
    record = logging.LogRecord("collabtrio.t", logging.INFO, __file__, 1, "m", (), None)
    assert "room" not in json.loads(JsonFormatter().format(record))


async def test_the_access_log_has_status_duration_and_key_name_only(
        autojump_clock: trio.testing.MockClock) -> None:
    with json_lines() as lines:
        async with open_test_server(api_keys=f"dashboard:{SECRET}:read") as server:
            assert (await server.request("GET", "/api/stats", key=SECRET)).status == 200
            assert (await server.request("GET", "/api/stats", key="x" * 20)).status == 401
            assert (await server.request("POST", "/api/users/u/disconnect", key=SECRET,
                                         json={})).status == 403
    access = [line for line in lines if line["logger"] == "collabtrio.access"]
    assert [(a["method"], a["path"], a["status"], a["key"]) for a in access] == [
        ("GET", "/api/stats", 200, "dashboard"),
        ("GET", "/api/stats", 401, "-"),
        ("POST", "/api/users/u/disconnect", 403, "dashboard"),
    ]
    for line in access:
        assert isinstance(line["duration_ms"], float)
        assert line["time"].endswith("Z")
        assert line["level"] == "INFO"
    text = json.dumps(lines)
    assert SECRET not in text
    assert "x" * 20 not in text
    assert "authorization" not in text.lower()
    assert "bearer" not in text.lower()


async def test_connection_and_room_lines_carry_their_ids(
        autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    with json_lines() as lines:
        async with (
            open_test_server(store=store, outbox_max_bytes=4096, rate_limit_per_s=10_000,
                             rate_limit_burst=10_000) as server,
            server.client("fast") as fast,
            server.client("slow", stream_pair=trio.testing.lockstep_stream_pair) as slow,
        ):
            await fast.join("doc:logs")
            await slow.join("doc:logs")
            await trio.testing.wait_all_tasks_blocked()
            slow.pause_reading()
            for _ in range(100):
                await fast.call("broadcast", {"room": "doc:logs", "event": "e",
                                              "data": "y" * 200})
            store.fail_next(1)
            ack = await fast.call("op", {"room": "doc:logs", "operationId": "o1",
                                         "op": "add", "collection": "c", "id": "1",
                                         "data": {}})
            assert ack["error"]["code"] == "STORAGE_UNAVAILABLE"
    slow_lines = [line for line in lines if "slow consumer" in line["message"]]
    assert slow_lines
    assert slow_lines[0]["sid"] == slow.sid
    failed = [line for line in lines if "commit failed" in line["message"]]
    assert failed
    assert failed[0]["room"] == "doc:logs"
    assert failed[0]["level"] == "WARNING"


def test_log_format_is_a_flag_and_setup_leaves_other_handlers_alone() -> None:
    args = build_parser().parse_args(["serve", "--log-format", "json", "--no-metrics"])
    config = config_from(args, {})
    assert config.log_format == "json"
    assert config.metrics is False
    assert config_from(build_parser().parse_args(["serve"]), {}).metrics is True
    assert config_from(build_parser().parse_args(["serve"]),
                       {"COLLABTRIO_METRICS": "false"}).metrics is False
    root = logging.getLogger()
    before = list(root.handlers)
    stream = io.StringIO()
    saved, root.handlers = root.handlers, []
    try:
        setup_logging("info", "json", stream)
        logging.getLogger("collabtrio.t").info("hello %s", "there", extra={"sid": "s1"})
        setup_logging("info", "json", stream)  # replaces its own handler
        assert len(root.handlers) == 1
    finally:
        for handler in root.handlers:
            root.removeHandler(handler)
        root.handlers = saved
    line = json.loads(stream.getvalue().splitlines()[0])
    assert line["message"] == "hello there"
    assert line["sid"] == "s1"
    assert root.handlers == before
