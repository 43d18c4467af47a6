"""Shared plumbing for the persistence benchmarks (bench/ops.py, bench/fields.py).

Each *case* gets a fresh database (a new SQLite file in its own temporary directory, or a new
PostgreSQL schema that is dropped afterwards) and a fresh ``collabtrio serve`` pinned to one
CPU, runs bench/opsgen.js pinned to another, samples both processes' CPU over the measured
window, stops the server with SIGTERM and reads the transaction count from its last log line
(``storage: N transactions for M room commits``).

The generic process helpers (pinning, port, stopping, CPU accounting) come from fanout.py,
so all benchmarks measure the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
from fanout import (  # the same helpers as the fan-out benchmark
    BenchError,
    Loadgen,
    Pinning,
    _cpu_model,
    choose_pinning,
    cpu_breakdown,
    free_port,
    percpu_snapshot,
    runqueue_wait_seconds,
    tail,
    tool_versions,
)

BENCH = Path(__file__).resolve().parent
OPSGEN = BENCH / "opsgen.js"
RESULTS = BENCH / "results"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
STORAGE_LINE = re.compile(r"storage: (\d+) transactions for (\d+) room commits")

__all__ = [
    "BenchError",
    "Case",
    "Ctx",
    "Pinning",
    "add_common_args",
    "check_node",
    "fmt_table",
    "host_info",
    "median",
    "postgres_available",
    "run_case",
    "step",
    "tool_versions",
]


def step(tag: str, message: str) -> None:
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float | int | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# ------------------------------------------------------------------------------------------
# databases


def psql(url: str, sql: str, timeout: float = 30.0) -> str:
    out = subprocess.run(
        ["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-Atc", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise BenchError(f"psql failed ({sql!r}): {out.stderr.strip()}")
    return out.stdout.strip()


def postgres_available(url: str) -> str | None:
    """None if PostgreSQL answers at ``url``, else why not."""
    if shutil.which("psql") is None:
        return "psql not found"
    try:
        psql(url, "select 1", timeout=10)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        return str(exc)
    return None


def pg_xact_commit(url: str) -> int | None:
    """pg_stat_database.xact_commit for the URL's database (all sessions: noisy)."""
    with contextlib.suppress(BenchError, subprocess.TimeoutExpired, OSError, ValueError):
        return int(
            psql(url, "select xact_commit from pg_stat_database where datname = current_database()")
        )
    return None


@dataclass
class Database:
    kind: str  # "sqlite" | "postgres"
    pg_url: str
    workdir: Path
    schema: str | None = None

    def url(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.workdir}/bench.db"
        sep = "&" if "?" in self.pg_url else "?"
        return f"{self.pg_url}{sep}schema={self.schema}"

    def create(self) -> None:
        if self.kind == "postgres":
            assert self.schema is not None
            psql(
                self.pg_url,
                f"drop schema if exists {self.schema} cascade; create schema {self.schema}",
            )

    def drop(self) -> None:
        if self.kind == "postgres" and self.schema is not None:
            with contextlib.suppress(BenchError, subprocess.TimeoutExpired, OSError):
                psql(self.pg_url, f"drop schema if exists {self.schema} cascade")


# ------------------------------------------------------------------------------------------
# processes


class Server:
    """``collabtrio serve`` in its own session, logging at info level to a file."""

    def __init__(self, argv: list[str], port: int, workdir: Path) -> None:
        self.argv = argv
        self.port = port
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self, env: dict[str, str], ready_timeout: float) -> None:
        with self.log_path.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    env=env,
                    cwd=self.log_path.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BenchError(f"cannot start {self.argv}: {exc}") from exc
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"server exited with code {self.proc.returncode} before accepting "
                    f"connections:\n{tail(self.log_path)}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"port {self.port} not accepting:\n{tail(self.log_path)}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"server died (exit {self.proc.returncode}):\n{tail(self.log_path)}")

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (the server flushes and logs its storage line), SIGKILL after ``grace``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def storage_counts(self) -> tuple[int, int] | None:
        """(transactions, room commits) from the shutdown log line, if it is there."""
        with contextlib.suppress(OSError):
            for line in reversed(self.log_path.read_text(errors="replace").splitlines()):
                m = STORAGE_LINE.search(line)
                if m:
                    return int(m.group(1)), int(m.group(2))
        return None


# one case: fresh db + fresh server + one opsgen run


@dataclass
class Case:
    label: str  # e.g. "sqlite NORMAL group"
    db: str  # "sqlite" | "postgres"
    server_flags: list[str]
    gen_args: list[str]


@dataclass
class Ctx:
    tag: str
    args: argparse.Namespace
    pin: Pinning
    workdir: Path
    counter: int = 0
    live: list[Any] = field(default_factory=list)


def run_case(ctx: Ctx, case: Case, gen_timeout: float) -> dict[str, Any]:
    """Run one case on a fresh database and server; the figures of one run."""
    a = ctx.args
    ctx.counter += 1
    n = ctx.counter
    workdir = ctx.workdir / f"run{n:03d}"
    workdir.mkdir()
    schema = f"bench_{ctx.tag}_{os.getpid()}_{n}" if case.db == "postgres" else None
    db = Database(case.db, a.pg_url, workdir, schema)
    port = free_port()
    argv = [
        *ctx.pin.server, a.collabtrio, "serve", "--port", str(port), "--anonymous",
        "--db", db.url(), "--log-level", "info",
        "--rate-limit-per-s", "1000000", "--rate-limit-burst", "1000000",
        *case.server_flags,
    ]  # fmt: skip
    out: dict[str, Any] = {"label": case.label, "db": case.db, "command": argv}
    server = Server(argv, port, workdir)
    gen: Loadgen | None = None
    xact0 = xact1 = None
    try:
        db.create()
        if case.db == "postgres":
            xact0 = pg_xact_commit(a.pg_url)
        env = dict(os.environ)
        for key in list(env):  # the command line says everything; no stray COLLABTRIO_*
            if key.startswith("COLLABTRIO_"):
                del env[key]
        server.start(env, ready_timeout=a.startup_timeout)
        gen_argv = ["--url", f"http://127.0.0.1:{port}", "--wait-go", *case.gen_args]
        gen = Loadgen(ctx.pin.loadgen, a.node, gen_argv, workdir, script=OPSGEN)
        ctx.live.append(gen)
        gen.read(timeout=120)  # {"phase": "ready"}
        srv_wait0 = runqueue_wait_seconds(server.proc.pid)  # type: ignore[union-attr]
        cpus0 = percpu_snapshot()
        srv0, node0, t0 = server.cpu_seconds(), gen.cpu_seconds(), time.perf_counter()
        gen.send_line()
        result = gen.read(timeout=gen_timeout)
        srv1, node1, t1 = server.cpu_seconds(), gen.cpu_seconds(), time.perf_counter()
        cpus1 = percpu_snapshot()
        srv_wait1 = runqueue_wait_seconds(server.proc.pid)  # type: ignore[union-attr]
        server.check_alive()
        gen.finish(5)
        wall = t1 - t0
        out.update(result)
        out["window_s"] = wall
        out["server_cpu_s"] = srv1 - srv0
        out["server_cpu_pct"] = 100.0 * (srv1 - srv0) / wall
        out["node_cpu_pct"] = 100.0 * (node1 - node0) / wall
        if srv_wait0 is not None and srv_wait1 is not None:
            out["server_runqueue_wait_pct"] = 100.0 * (srv_wait1 - srv_wait0) / wall
        out["server_cpu_breakdown_pct"] = cpu_breakdown(cpus0, cpus1, ctx.pin.server_cpu)
        out["loadgen_cpu_breakdown_pct"] = cpu_breakdown(cpus0, cpus1, ctx.pin.loadgen_cpu)
    except BenchError as exc:
        out["error"] = str(exc)
    finally:
        if gen is not None:
            gen.finish(5)
            ctx.live.remove(gen)
        out["server_exit"] = server.stop()
        counts = server.storage_counts()
        if counts is not None:
            out["transactions"], out["room_commits"] = counts
        elif "error" not in out:
            out["error"] = "no `storage: N transactions` line in the server log"
        if case.db == "postgres":
            xact1 = pg_xact_commit(a.pg_url)
            if xact0 is not None and xact1 is not None:
                # includes migrations, the schema's creation and these psql queries
                out["pg_xact_commit_delta"] = xact1 - xact0
        out["server_log_tail"] = tail(server.log_path, 8)
        db.drop()
    return out


# ------------------------------------------------------------------------------------------
# command line and report helpers


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", choices=("sqlite", "postgres"), help="one database only")
    p.add_argument("--repeat", type=int, default=1, help="runs per case (table: median)")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG),
                   help=f"PostgreSQL database for the postgres cases (default {DEFAULT_PG}); "
                        "each run gets a fresh schema, dropped afterwards")  # fmt: skip
    p.add_argument("--timeout", type=float, default=300.0, help="one run's time limit, s")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument(
        "--collabtrio",
        default=str(Path(sys.executable).parent / "collabtrio"),
        help="the collabtrio executable (default: next to this Python)",
    )
    p.add_argument("--node", default=shutil.which("node") or "node")
    p.add_argument("--output", type=Path, help="results file (default bench/results/*.json)")


def check_node(node: str) -> str | None:
    if not (BENCH / "node_modules" / "socket.io-client").is_dir():
        return "bench/node_modules is missing: run `bash bench/setup.sh` first"
    if shutil.which(node) is None and not Path(node).exists():
        return f"node not found ({node})"
    return None


def host_info(pin: Pinning) -> dict[str, Any]:
    import platform

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "pinning": pin.description,
    }


def fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        values = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in values]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def make_ctx(tag: str, args: argparse.Namespace, tmp: str) -> Ctx:
    return Ctx(tag=tag, args=args, pin=choose_pinning(not args.no_pin), workdir=Path(tmp))


def temp_dir(tag: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"collabtrio-{tag}-")


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP -> KeyboardInterrupt, so the finally blocks stop every child."""

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
