"""Log output: the text format or one JSON object per line, and the ids a line carries.

``--log-format text`` (the default) writes ``<time> <LEVEL> <logger>: <message>``;
``--log-format json`` writes one JSON object per line::

    {"time": "2026-12-01T10:00:00.123Z", "level": "INFO", "logger": "collabtrio.access",
     "message": "GET /api/stats 200 1.2 ms key=dashboard", "method": "GET", ...}

with ``time`` in ISO 8601, UTC, and, where they apply, the connection (``sid``), the
room (``room``) and the user (``user``) the line is about, and the access log's
fields (``method``, ``path``, ``status``, ``duration_ms``, ``key``). A call passes
them with ``extra={"sid": ...}``; code that logs on behalf of one room or
connection for a while sets them once with :func:`bind` (a context variable, so trio
tasks started afterwards inherit them, and other tasks never see them). A traceback
goes in ``exception``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "bind", "setup_logging"]

FORMATS = ("text", "json")
"""The values of ``--log-format``."""

FIELDS = ("sid", "room", "user", "method", "path", "status", "duration_ms", "key")
"""Record attributes (``extra=``) that JSON lines carry when set."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ids: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "collabtrio_log_ids", default=None)


def bind(**ids: str | None) -> None:
    """Attach ids (``sid``, ``room``, ``user``) to every line this task logs from now
    on (and the tasks it starts later); a None value removes one."""
    current = dict(_ids.get() or {})
    for name, value in ids.items():
        if value is None:
            current.pop(name, None)
        else:
            current[name] = value
    _ids.set(current)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        created = time.gmtime(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created)
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        bound = _ids.get()
        if bound:
            line.update(bound)
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send the root logger's output to ``stream`` (standard error) at ``level``, in
    ``fmt`` (``text`` or ``json``).

    As :func:`logging.basicConfig`, it leaves logging alone when the root logger has
    handlers set up by someone else (a program embedding the server, a test runner);
    a handler it installed before is replaced.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_collabtrio", False):
            root.removeHandler(old)
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._collabtrio = True  # type: ignore[attr-defined]  # ours to replace
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
