"""Fan-out benchmark: collabtrio against the trio-websocket floor, python-socketio and Node's
Socket.IO, load driven from Node.

One command runs everything (see bench/README.md)::

    bash bench/setup.sh && .venv/bin/python bench/fanout.py

For each target (``floor``: bench/floor_server.py, ``collabtrio``: ``collabtrio serve``,
``psio``: bench/psio_server.py, python-socketio's AsyncServer under uvicorn, ``node``:
bench/sio_node_server.js, the npm ``socket.io`` 4 server on Node's http server) it

1. starts the server pinned to one CPU and waits for its port;
2. warms it up with one connection that joins and leaves, then samples its RSS;
3. *idle*: opens 1000 joined connections over 100 rooms and samples RSS again;
4. *throughput*: 100 subscribers + 1 publisher, 2000 events fired back to back
   (``--repeat K`` runs it K times), sampling server and Node CPU over the run;
5. *latency*: the publisher sends 100 events/s for 10 s; per-delivery latency;
6. *upgraded* (collabtrio): throughput and latency again with clients on socket.io-client's
   default transports, each one started on long-polling and upgraded to WebSocket before
   the measurement;
7. *polling* (collabtrio, psio, node): the latency test with every client on
   ``transports: ["polling"]``: deliveries, latency, server CPU per delivery.

It prints a table with collabtrio/floor, collabtrio/psio and collabtrio/node ratios, the
upgraded and polling
tables, and writes all figures to bench/results/fanout-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOADGEN = BENCH / "loadgen.js"
FLOOR = BENCH / "floor_server.py"
PSIO = BENCH / "psio_server.py"
NODE_SERVER = BENCH / "sio_node_server.js"
RESULTS = BENCH / "results"
TARGETS = ("floor", "collabtrio", "psio", "node")
REFERENCES = ("floor", "psio", "node")  # the table's collabtrio/<reference> ratio columns
# loadgen.js --target for each server: psio and node speak the same events as collabtrio
LOADGEN_TARGET = {
    "floor": "floor", "collabtrio": "collabtrio", "psio": "collabtrio", "node": "collabtrio",
}  # fmt: skip
STATS_TARGETS = ("psio", "node")  # the servers that answer GET /bench-stats


class BenchError(RuntimeError):
    """A scenario could not run; the message says why."""


# ------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pinning:
    server: list[str] = field(default_factory=list)  # command prefix, e.g. ["taskset", "-c", "0"]
    loadgen: list[str] = field(default_factory=list)
    description: str = "not pinned"
    server_cpu: int | None = None
    loadgen_cpu: int | None = None


def choose_pinning(enabled: bool) -> Pinning:
    if not enabled:
        return Pinning(description="not pinned (--no-pin)")
    taskset = shutil.which("taskset")
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    if taskset is None:
        return Pinning(description="not pinned (no taskset)")
    if len(cpus) < 2:
        return Pinning(description=f"not pinned (only {len(cpus)} CPU available)")
    server_cpu, loadgen_cpu = cpus[0], cpus[1]
    return Pinning(
        server=[taskset, "-c", str(server_cpu)],
        loadgen=[taskset, "-c", str(loadgen_cpu)],
        description=f"server on CPU {server_cpu}, loadgen on CPU {loadgen_cpu} (of {len(cpus)})",
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
    )


def percpu_snapshot() -> list[Any]:
    return list(psutil.cpu_times(percpu=True))


def cpu_breakdown(before: list[Any], after: list[Any], cpu: int | None) -> dict[str, float] | None:
    """How one whole CPU spent a window, in percent (user, system, softirq, idle, ...)."""
    if cpu is None or cpu >= len(before) or cpu >= len(after):
        return None
    b, a = before[cpu], after[cpu]
    deltas = {name: getattr(a, name) - getattr(b, name) for name in a._fields}
    total = sum(deltas.values())
    if total <= 0:
        return None
    return {name: round(100.0 * d / total, 1) for name, d in deltas.items() if d > 0}


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Stop a process this script started (its own session), politely first."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(grace)
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def runqueue_wait_seconds(pid: int) -> float | None:
    """Seconds the process's threads spent runnable but waiting for a CPU (Linux schedstat).

    If this grows during a run, something else was competing for the pinned CPU and the
    CPU% figures understate how busy the process wanted to be.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[1])
    except OSError:
        return None
    return total / 1e9


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """One server under test, started in its own session so it can be stopped as a group."""

    def __init__(self, target: str, argv: list[str], port: int, workdir: Path) -> None:
        self.target = target
        self.argv = argv
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / f"{target}-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def start(self, env: dict[str, str], ready_timeout: float) -> None:
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise BenchError(f"{self.target}: cannot start {self.argv[0]}: {exc}") from exc
        finally:
            log.close()
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.target}: server exited with code {self.proc.returncode} before "
                    f"accepting connections:\n{tail(self.log_path)}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.target}: port {self.port} not accepting after {ready_timeout:.0f}s:\n"
                    f"{tail(self.log_path)}"
                )
            time.sleep(0.1)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.target}: server died (exit {self.proc.returncode}):\n{tail(self.log_path)}"
            )

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def uss(self) -> int | None:
        assert self.ps is not None
        try:
            return int(self.ps.memory_full_info().uss)
        except (psutil.AccessDenied, AttributeError):
            return None

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def num_threads(self) -> int:
        assert self.ps is not None
        return int(self.ps.num_threads())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Loadgen:
    """A running Node load generator (bench/loadgen.js by default); its stdout JSON
    lines arrive on a queue."""

    def __init__(
        self, prefix: list[str], node: str, args: list[str], workdir: Path,
        script: Path = LOADGEN,
    ) -> None:
        self.name = script.stem
        self.argv = [*prefix, node, str(script), *args]
        self.stderr_path = workdir / f"{self.name}.stderr.log"
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=BENCH,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self.ps = psutil.Process(self.proc.pid)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").strip())
        self.lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; BenchError on EOF, timeout or an error result."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no output within {timeout:.0f}s ({self.argv[2:]})")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                raise BenchError(
                    f"{self.name} exited (code {self.proc.returncode}) without a result:\n"
                    f"{tail(self.stderr_path)}"
                )
            if not line.startswith("{"):
                continue
            msg: dict[str, Any] = json.loads(line)
            if "error" in msg:
                raise BenchError(f"{self.name} {msg.get('mode')}: {msg['error']}")
            return msg

    def send_line(self, text: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def finish(self, timeout: float = 10.0) -> None:
        self.close_stdin()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)

    def kill(self) -> None:
        self.close_stdin()
        stop_process(self.proc, grace=2.0)


# ------------------------------------------------------------------------------------------
# scenarios


@dataclass
class Ctx:
    args: argparse.Namespace
    node: str
    pin: Pinning
    workdir: Path
    stamp: str
    live: list[Loadgen] = field(default_factory=list)

    @contextlib.contextmanager
    def loadgen(self, target: str, port: int, mode: str, *extra: str) -> Iterator[Loadgen]:
        argv = [
            "--target", LOADGEN_TARGET.get(target, target), "--url", f"http://127.0.0.1:{port}",
            "--mode", mode, *extra,
        ]  # fmt: skip
        lg = Loadgen(self.pin.loadgen, self.node, argv, self.workdir)
        self.live.append(lg)
        try:
            yield lg
        finally:
            lg.kill()
            self.live.remove(lg)


def settle_rss(server: Server, seconds: float) -> int:
    """RSS after letting the server settle; the last of a few samples."""
    time.sleep(seconds)
    samples = []
    for _ in range(5):
        samples.append(server.rss())
        time.sleep(0.1)
    return samples[-1]


def run_warmup(ctx: Ctx, server: Server) -> None:
    warmup = ("--connections", "1", "--rooms", "1")
    with ctx.loadgen(server.target, server.port, "idle", *warmup) as lg:
        lg.read(timeout=30)  # ready
        lg.close_stdin()
        lg.read(timeout=15)  # result
        lg.finish()


def run_idle(ctx: Ctx, server: Server) -> dict[str, Any]:
    a = ctx.args
    rss_before = settle_rss(server, 1.0)
    uss_before = server.uss()
    with ctx.loadgen(
        server.target, server.port, "idle",
        "--connections", str(a.idle_connections), "--rooms", str(a.idle_rooms),
    ) as lg:  # fmt: skip
        ready = lg.read(timeout=120)
        rss_idle = settle_rss(server, a.idle_settle)
        uss_idle = server.uss()
        threads = server.num_threads()
        server.check_alive()
        lg.close_stdin()
        result = lg.read(timeout=30)
        lg.finish()
    delta = rss_idle - rss_before
    out: dict[str, Any] = {
        "connections": a.idle_connections,
        "rooms": a.idle_rooms,
        "setup_ms": ready.get("setup_ms"),
        "still_open_at_end": result.get("still_open"),
        "rss_before_bytes": rss_before,
        "rss_idle_bytes": rss_idle,
        "rss_delta_bytes": delta,
        "rss_per_conn_bytes": delta / a.idle_connections,
        "server_threads": threads,
    }
    if uss_before is not None and uss_idle is not None:
        out["uss_before_bytes"] = uss_before
        out["uss_idle_bytes"] = uss_idle
        out["uss_per_conn_bytes"] = (uss_idle - uss_before) / a.idle_connections
    if result.get("still_open") != a.idle_connections:
        out["warning"] = (
            f"only {result.get('still_open')} of {a.idle_connections} idle connections were "
            "still open when the hold ended"
        )
    return out


STORM_SECRET = "fanout-storm-secret-0123456789abcdef"  # HS256 key for the storm's tokens


def run_storm(ctx: Ctx, server: Server) -> dict[str, Any]:
    """Connect storm: C clients, each WebSocket + CONNECT with a JWT + join, all at once; the
    server's CPU from the first connect to the last join ack (and the presence that follows)."""
    a = ctx.args
    with ctx.loadgen(
        server.target, server.port, "storm", "--wait-go",
        "--connections", str(a.storm_connections), "--rooms", str(a.storm_rooms),
        "--jwt-secret", STORM_SECRET, "--connect-timeout", str(a.storm_timeout),
    ) as lg:  # fmt: skip
        lg.read(timeout=120)  # {"phase": "ready"}: tokens signed
        assert server.proc is not None
        srv_wait0 = runqueue_wait_seconds(server.proc.pid)
        cpus0 = percpu_snapshot()
        srv0, node0, t0 = server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        rss0 = server.rss()
        lg.send_line("go")
        result = lg.read(timeout=a.storm_timeout + 60)
        srv1, node1, t1 = server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        cpus1 = percpu_snapshot()
        srv_wait1 = runqueue_wait_seconds(server.proc.pid)
        rss1 = server.rss()
        lg.finish()
    server.check_alive()
    if "error" in result:
        raise BenchError(f"storm: {result['error']}")
    conns = int(result["connections"])
    srv_cpu = srv1 - srv0
    result.update(
        {
            "window_s": t1 - t0,
            "server_cpu_s": srv_cpu,
            "server_cpu_ms_per_connect": 1e3 * srv_cpu / conns,
            "node_cpu_s_psutil": node1 - node0,
            "server_cpu_breakdown_pct": cpu_breakdown(cpus0, cpus1, ctx.pin.server_cpu),
            "loadgen_cpu_breakdown_pct": cpu_breakdown(cpus0, cpus1, ctx.pin.loadgen_cpu),
            "rss_growth_bytes": rss1 - rss0,
        }
    )
    if srv_wait0 is not None and srv_wait1 is not None:
        result["server_runqueue_wait_pct"] = 100.0 * (srv_wait1 - srv_wait0) / (t1 - t0)
    if result.get("still_open") != conns:
        result["warning"] = f"only {result.get('still_open')} of {conns} were open at the end"
    return result


def summarize_storms(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the storm runs."""

    def med(*path: str) -> float | None:
        values = [v for r in runs if isinstance(v := _get(r, *path), int | float)]
        return statistics.median(values) if values else None

    return {
        "runs": len(runs),
        "connections": runs[0]["connections"] if runs else None,
        "rooms": runs[0]["rooms"] if runs else None,
        "storm_ms_median": med("storm_ms"),
        "storm_ms_all": [r.get("storm_ms") for r in runs],
        "connects_per_s_median": med("connects_per_s"),
        "time_to_joined_p50_ms_median": med("time_to_joined", "p50_ms"),
        "time_to_joined_p99_ms_median": med("time_to_joined", "p99_ms"),
        "server_cpu_ms_per_connect_median": med("server_cpu_ms_per_connect"),
        "presence_events_total_median": med("presence_events_total"),
        "presence_complete_ms_median": med("presence_complete_ms"),
    }


def transport_args(ctx: Ctx, transports: str) -> list[str]:
    """loadgen.js options for clients on ``transports`` (websocket: none, as before)."""
    if transports == "websocket":
        return []
    extra = ["--transports", transports]
    http = ctx.args.polling_http
    extra += ["--polling-http", "raw"] if http == "raw" else ["--polling-http", "xhr"]
    if http == "xhr":
        extra.append("--keep-alive")
    return extra


def check_transports(result: dict[str, Any], transports: str, clients: int) -> str | None:
    """Why the clients were not all on the transport the scenario is about, or None."""
    want = {"websocket": "websocket", "default": "websocket", "polling": "polling"}[transports]
    for when in ("transports_at_go", "transports_at_end"):
        counts = result.get(when)
        if counts is not None and counts != {want: clients}:
            return f"expected all {clients} clients on {want} ({when}), got {counts}"
    return None


def bench_stats(server: Server) -> dict[str, Any] | None:
    """A peer's session counts by transport (GET /bench-stats on bench/psio_server.py and
    bench/sio_node_server.js), or None."""
    if server.target not in STATS_TARGETS:
        return None
    url = f"http://127.0.0.1:{server.port}/bench-stats"
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=5) as resp:
        stats: dict[str, Any] = json.loads(resp.read())
        return stats
    return None


def window_figures(
    result: dict[str, Any], ctx: Ctx, wall: float, srv: tuple[float, float],
    node: tuple[float, float], cpus: tuple[list[Any], list[Any]],
    srv_wait: tuple[float | None, float | None], node_wait: tuple[float | None, float | None],
) -> None:
    """Add the CPU figures of one measured window (start, end pairs) to ``result``."""
    srv_cpu, node_cpu = srv[1] - srv[0], node[1] - node[0]
    delivered = int(result["delivered"])
    result.update(
        {
            "window_s": wall,
            "server_cpu_s": srv_cpu,
            "server_cpu_pct": 100.0 * srv_cpu / wall,
            "node_cpu_s_psutil": node_cpu,
            "node_cpu_pct": 100.0 * node_cpu / wall,
            "server_cpu_us_per_delivery": (1e6 * srv_cpu / delivered) if delivered else None,
            "node_cpu_us_per_delivery": (1e6 * node_cpu / delivered) if delivered else None,
            "server_cpu_breakdown_pct": cpu_breakdown(cpus[0], cpus[1], ctx.pin.server_cpu),
            "loadgen_cpu_breakdown_pct": cpu_breakdown(cpus[0], cpus[1], ctx.pin.loadgen_cpu),
        }
    )
    for key, (w0, w1) in (("server", srv_wait), ("node", node_wait)):
        if w0 is not None and w1 is not None:
            result[f"{key}_runqueue_wait_pct"] = 100.0 * (w1 - w0) / wall


def run_throughput(ctx: Ctx, server: Server, transports: str = "websocket") -> dict[str, Any]:
    a = ctx.args
    with ctx.loadgen(
        server.target, server.port, "throughput", "--wait-go",
        "--subscribers", str(a.subscribers), "--events", str(a.events),
        "--payload-bytes", str(a.payload_bytes), "--timeout", str(a.timeout),
        *transport_args(ctx, transports),
    ) as lg:  # fmt: skip
        lg.read(timeout=120)  # {"phase": "ready"}: everyone joined
        assert server.proc is not None
        srv_wait0 = runqueue_wait_seconds(server.proc.pid)
        node_wait0 = runqueue_wait_seconds(lg.proc.pid)
        cpus0 = percpu_snapshot()
        srv0, node0, t0 = server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        lg.send_line("go")
        result = lg.read(timeout=a.timeout + 30)
        srv1, node1, t1 = server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        cpus1 = percpu_snapshot()
        srv_wait1 = runqueue_wait_seconds(server.proc.pid)
        node_wait1 = runqueue_wait_seconds(lg.proc.pid)
        lg.finish()
    server.check_alive()
    window_figures(result, ctx, t1 - t0, (srv0, srv1), (node0, node1), (cpus0, cpus1),
                   (srv_wait0, srv_wait1), (node_wait0, node_wait1))
    problem = check_transports(result, transports, a.subscribers + 1)
    if problem is not None:
        result["transport_warning"] = problem
    return result


def run_latency(
    ctx: Ctx,
    server: Server,
    transports: str = "websocket",
    label: str = "latency",
    rate: int | None = None,
    duration: float | None = None,
    subscribers: int | None = None,
) -> dict[str, Any]:
    """R events/s for S s to the room; latency percentiles, and the server's and Node's CPU
    from the first send to the result (the clients join before the clock starts)."""
    a = ctx.args
    rate = a.latency_rate if rate is None else rate
    duration = a.latency_duration if duration is None else duration
    subscribers = a.subscribers if subscribers is None else subscribers
    extra: list[str] = []
    trace = RESULTS / f"fanout-{ctx.stamp}-{server.target}-{label}.csv"
    if a.latency_trace:
        RESULTS.mkdir(parents=True, exist_ok=True)
        extra = ["--latency-trace", str(trace)]
    with ctx.loadgen(
        server.target, server.port, "latency", "--wait-go",
        "--subscribers", str(subscribers), "--rate", str(rate),
        "--duration", str(duration), "--payload-bytes", str(a.payload_bytes),
        *transport_args(ctx, transports), *extra,
    ) as lg:  # fmt: skip
        lg.read(timeout=120)  # {"phase": "ready"}: everyone joined (and upgraded)
        assert server.proc is not None
        stats0 = bench_stats(server)
        srv_wait0 = runqueue_wait_seconds(server.proc.pid)
        node_wait0 = runqueue_wait_seconds(lg.proc.pid)
        cpus0 = percpu_snapshot()
        srv0, node0, t0 = server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        lg.send_line("go")
        result = lg.read(timeout=duration + 60)
        srv1, node1, t1 = server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        cpus1 = percpu_snapshot()
        srv_wait1 = runqueue_wait_seconds(server.proc.pid)
        node_wait1 = runqueue_wait_seconds(lg.proc.pid)
        stats1 = bench_stats(server)
        lg.finish()
    server.check_alive()
    window_figures(result, ctx, t1 - t0, (srv0, srv1), (node0, node1), (cpus0, cpus1),
                   (srv_wait0, srv_wait1), (node_wait0, node_wait1))
    srv_cpu, delivered = srv1 - srv0, int(result["delivered"])
    polls = result.get("polls")
    if polls:
        # a saturated server answers fewer, fuller polls: CPU per delivery then tends to
        # wall / deliveries for any server, and CPU per answered poll tells them apart
        result["deliveries_per_poll"] = delivered / polls
        result["server_cpu_us_per_poll"] = 1e6 * srv_cpu / polls
    if stats0 is not None and stats1 is not None:
        # what the server saw: its open Engine.IO sessions by transport when the clock
        # started (at the end the clients are already closing), and connections by the
        # transport they connected on: since the server started, and during the run (none)
        result["server_sessions_at_go"] = stats0.get("open_by_transport")
        before = stats0.get("connected_since_start_on") or {}
        after = stats1.get("connected_since_start_on") or {}
        result["server_connected_since_start_on"] = after
        result["server_connects_during_run"] = {
            k: after.get(k, 0) - before.get(k, 0) for k in after
        }
    problem = check_transports(result, transports, subscribers + 1)
    if problem is not None:
        result["transport_warning"] = problem
    if a.latency_trace:
        result["trace_csv"] = str(trace)
    return result


def summarize_throughput(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "runs": len(runs),
        "deliveries_per_s_median": med("deliveries_per_s"),
        "deliveries_per_s_all": [r["deliveries_per_s"] for r in runs],
        "losses_all": [r["losses"] for r in runs],
        "elapsed_ms_median": med("elapsed_ms"),
        "server_cpu_pct_median": med("server_cpu_pct"),
        "node_cpu_pct_median": med("node_cpu_pct"),
        "server_runqueue_wait_pct_median": med("server_runqueue_wait_pct"),
        "node_runqueue_wait_pct_median": med("node_runqueue_wait_pct"),
        "server_cpu_us_per_delivery_median": med("server_cpu_us_per_delivery"),
        "any_timeout": any(r["timed_out"] for r in runs),
        "out_of_order_total": sum(r["out_of_order"] for r in runs),
        "echoes_to_sender_total": sum(r["echoes_to_sender"] for r in runs),
    }


POLLING_TARGETS = ("collabtrio", "psio", "node")
SATURATED_PCT = 90.0  # server CPU % from which the polling CPU-per-delivery goal is moot
POLLING_HTTP = {
    "raw": "loadgen.js's keep-alive HTTP/1.1 client",
    "xhr": "socket.io-client's xmlhttprequest-ssl, keep-alive agent",
    "xhr-close": "socket.io-client's xmlhttprequest-ssl, a new connection per request",
}


def polling_load(args: argparse.Namespace) -> tuple[int, float, int]:
    """The polling scenario's rate, duration and subscribers (the latency test's unless
    given)."""
    rate = args.latency_rate if args.polling_rate is None else args.polling_rate
    duration = args.latency_duration if args.polling_duration is None else args.polling_duration
    subs = args.subscribers if args.polling_subscribers is None else args.polling_subscribers
    return rate, duration, subs


def server_argv(target: str, port: int, workdir: Path, args: argparse.Namespace) -> list[str]:
    # every server checks the storm's tokens; the other scenarios' clients send none
    if target == "floor":
        return [args.python, str(FLOOR), "--port", str(port), "--jwt-secret", STORM_SECRET]
    if target == "psio":
        return [args.python, str(PSIO), "--port", str(port), "--ws", args.psio_ws,
                "--jwt-secret", STORM_SECRET]  # fmt: skip
    if target == "node":
        return [args.node, str(NODE_SERVER), "--port", str(port), "--jwt-secret", STORM_SECRET]
    return [
        args.collabtrio, "serve", "--port", str(port), "--anonymous",
        "--auth-secret", STORM_SECRET,
        # the storm's clients all come from 127.0.0.1: its sessions before CONNECT are
        # allowed past the per-address default (100), as behind a proxy
        "--max-unauthenticated", str(max(1000, args.storm_connections)),
        "--max-unauthenticated-per-address", str(max(100, args.storm_connections)),
        "--max-connections", str(max(10000, args.storm_connections + 1000)),
        "--db", f"sqlite:///{workdir}/bench.db",
        "--rate-limit-per-s", "100000", "--rate-limit-burst", "100000",
    ]  # fmt: skip


def run_target(ctx: Ctx, target: str) -> dict[str, Any]:
    a = ctx.args
    port = free_port()
    workdir = ctx.workdir / target
    workdir.mkdir()
    argv = [*ctx.pin.server, *server_argv(target, port, workdir, a)]
    server = Server(target, argv, port, workdir)
    out: dict[str, Any] = {"target": target, "command": argv}
    env = dict(os.environ)
    env.setdefault("COLLABTRIO_LOG_LEVEL", "warning")
    try:
        step(f"{target}: starting server on port {port}")
        server.start(env, ready_timeout=a.startup_timeout)
        step(f"{target}: warm-up connection")
        run_warmup(ctx, server)
        step(f"{target}: idle, {a.idle_connections} connections over {a.idle_rooms} rooms")
        out["idle"] = run_idle(ctx, server)
        time.sleep(1.0)  # let the server reap the idle connections
        if a.storm:
            storms = []
            for i in range(a.repeat):
                step(f"{target}: connect storm {i + 1}/{a.repeat}, {a.storm_connections} "
                     f"clients (JWT) over {a.storm_rooms} rooms, all at once")  # fmt: skip
                storms.append(run_storm(ctx, server))
                st = storms[-1]
                step(
                    f"  {st['storm_ms']:,.0f} ms ({st['connects_per_s']:,}/s), server CPU "
                    f"{st['server_cpu_ms_per_connect']:.2f} ms/connect, presence events "
                    f"{st.get('presence_events_total')}, all complete at "
                    f"{st.get('presence_complete_ms')} ms"
                )
                time.sleep(1.5)  # let the server reap the storm's connections
            out["storm_runs"] = storms
            out["storm"] = summarize_storms(storms)
        runs = []
        for i in range(a.repeat):
            step(f"{target}: throughput run {i + 1}/{a.repeat}")
            runs.append(run_throughput(ctx, server))
            step(
                f"  {runs[-1]['deliveries_per_s']:,.0f} deliveries/s, "
                f"losses {runs[-1]['losses']}, server CPU {runs[-1]['server_cpu_pct']:.0f}%, "
                f"node CPU {runs[-1]['node_cpu_pct']:.0f}%, server runqueue wait "
                f"{runs[-1].get('server_runqueue_wait_pct', float('nan')):.0f}%"
            )
            time.sleep(0.5)
        out["throughput_runs"] = runs
        out["throughput"] = summarize_throughput(runs)
        step(f"{target}: latency, {a.latency_rate}/s for {a.latency_duration}s")
        out["latency"] = run_latency(ctx, server)
        step(f"  p50 {out['latency'].get('p50_ms')} ms, p99 {out['latency'].get('p99_ms')} ms")
        if target == "collabtrio" and a.upgraded:
            runs = []
            for i in range(a.repeat):
                step(f"{target}: upgraded (polling, then WebSocket) throughput run "
                     f"{i + 1}/{a.repeat}")  # fmt: skip
                runs.append(run_throughput(ctx, server, transports="default"))
                step(
                    f"  {runs[-1]['deliveries_per_s']:,.0f} deliveries/s, "
                    f"losses {runs[-1]['losses']}, server CPU {runs[-1]['server_cpu_pct']:.0f}%, "
                    f"node CPU {runs[-1]['node_cpu_pct']:.0f}%"
                )
                time.sleep(0.5)
            out["upgraded_throughput_runs"] = runs
            out["upgraded_throughput"] = summarize_throughput(runs)
            step(f"{target}: upgraded latency, {a.latency_rate}/s for {a.latency_duration}s")
            out["upgraded_latency"] = run_latency(
                ctx, server, transports="default", label="upgraded-latency"
            )
            step(
                f"  p50 {out['upgraded_latency'].get('p50_ms')} ms, "
                f"p99 {out['upgraded_latency'].get('p99_ms')} ms"
            )
        if target in POLLING_TARGETS and a.polling:
            rate, duration, subs = polling_load(a)
            step(f"{target}: polling, {subs} subscribers, {rate}/s for {duration}s")
            out["polling"] = run_latency(
                ctx, server, transports="polling", label="polling", rate=rate, duration=duration,
                subscribers=subs,
            )  # fmt: skip
            pol = out["polling"]
            step(
                f"  delivered {pol['delivered']:,}, losses {pol['losses']}, p50 "
                f"{pol.get('p50_ms')} ms, p99 {pol.get('p99_ms')} ms, server CPU "
                f"{pol['server_cpu_pct']:.0f}%, node CPU {pol['node_cpu_pct']:.0f}%, "
                f"clients on {pol.get('transports_at_go')}"
                + (f", server sessions {pol['server_sessions_at_go']}"
                   if "server_sessions_at_go" in pol else "")
            )  # fmt: skip
        out["rss_end_bytes"] = server.rss()
    except BenchError as exc:
        out["error"] = str(exc)
        step(f"{target}: FAILED: {exc}")
    finally:
        server.stop()
        out["server_log_tail"] = tail(server.log_path, 15)
    return out


# ------------------------------------------------------------------------------------------
# report


def step(message: str) -> None:
    print(f"[fanout] {message}", file=sys.stderr, flush=True)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "int":
        return f"{value:,.0f}"
    if kind in ("ms", "f2"):
        return f"{value:.2f}"
    if kind == "pct":
        return f"{value:.0f}%"
    if kind == "us":
        return f"{value:.1f}"
    if kind == "kib":
        return f"{value / 1024:,.1f}"
    if kind == "mib":
        return f"{value / 1048576:,.1f}"
    if kind == "counts" and isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
    return str(value)


def _get(result: dict[str, Any] | None, *path: str) -> Any:
    node: Any = result
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


ROWS: list[tuple[str, tuple[str, ...], str, bool]] = [
    # label, path into a target's result, format, include collabtrio/<reference> ratios
    ("throughput deliveries/s (median)", ("throughput", "deliveries_per_s_median"), "int", True),
    ("throughput losses (all runs)", ("throughput", "losses_all"), "raw", False),
    ("throughput elapsed ms (median)", ("throughput", "elapsed_ms_median"), "int", False),
    ("server CPU during throughput", ("throughput", "server_cpu_pct_median"), "pct", False),
    ("node CPU during throughput", ("throughput", "node_cpu_pct_median"), "pct", False),
    (
        "server waiting for its CPU",
        ("throughput", "server_runqueue_wait_pct_median"),
        "pct",
        False,
    ),
    (
        "server CPU us/delivery",
        ("throughput", "server_cpu_us_per_delivery_median"),
        "us",
        True,
    ),
    ("latency p50 ms", ("latency", "p50_ms"), "ms", True),
    ("latency p99 ms", ("latency", "p99_ms"), "ms", True),
    ("latency max ms", ("latency", "max_ms"), "ms", False),
    ("latency losses", ("latency", "losses"), "int", False),
    ("latency server CPU us/delivery", ("latency", "server_cpu_us_per_delivery"), "us", True),
    ("RSS before connections MiB", ("idle", "rss_before_bytes"), "mib", False),
    ("RSS with idle conns MiB", ("idle", "rss_idle_bytes"), "mib", False),
    ("RSS per idle conn KiB", ("idle", "rss_per_conn_bytes"), "kib", True),
    ("connect storm ms (median)", ("storm", "storm_ms_median"), "int", True),
    ("connect storm connects/s", ("storm", "connects_per_s_median"), "int", True),
    ("storm: time to joined p50 ms", ("storm", "time_to_joined_p50_ms_median"), "ms", True),
    ("storm: time to joined p99 ms", ("storm", "time_to_joined_p99_ms_median"), "ms", True),
    ("storm: server CPU ms/connect", ("storm", "server_cpu_ms_per_connect_median"), "f2", True),
    ("storm: presence events received", ("storm", "presence_events_total_median"), "int", False),
    ("storm: presence complete ms", ("storm", "presence_complete_ms_median"), "int", False),
]


# the polling scenario (collabtrio, psio and node)
POLLING_ROWS: list[tuple[str, tuple[str, ...], str, bool]] = [
    ("deliveries", ("polling", "delivered"), "int", False),
    ("losses", ("polling", "losses"), "int", False),
    ("latency p50 ms", ("polling", "p50_ms"), "ms", True),
    ("latency p99 ms", ("polling", "p99_ms"), "ms", True),
    ("latency max ms", ("polling", "max_ms"), "ms", False),
    ("server CPU", ("polling", "server_cpu_pct"), "pct", False),
    ("node CPU", ("polling", "node_cpu_pct"), "pct", False),
    ("node CPU us/delivery", ("polling", "node_cpu_us_per_delivery"), "us", False),
    ("node event-loop delay p99 ms", ("polling", "loop_delay_p99_ms"), "ms", False),
    ("server waiting for its CPU", ("polling", "server_runqueue_wait_pct"), "pct", False),
    ("server CPU us/delivery", ("polling", "server_cpu_us_per_delivery"), "us", True),
    ("polls answered (GETs)", ("polling", "polls"), "int", False),
    ("deliveries per poll", ("polling", "deliveries_per_poll"), "f2", False),
    ("server CPU us/poll", ("polling", "server_cpu_us_per_poll"), "us", True),
    ("clients' transports at go", ("polling", "transports_at_go"), "counts", False),
    ("clients' transports at end", ("polling", "transports_at_end"), "counts", False),
    ("server's sessions at go", ("polling", "server_sessions_at_go"), "counts", False),
]

# collabtrio's upgraded clients against its direct WebSocket clients: label, direct path,
# upgraded path, format
UPGRADED_ROWS: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    (
        "throughput deliveries/s (median)",
        ("throughput", "deliveries_per_s_median"),
        ("upgraded_throughput", "deliveries_per_s_median"),
        "int",
    ),
    (
        "server CPU us/delivery (throughput)",
        ("throughput", "server_cpu_us_per_delivery_median"),
        ("upgraded_throughput", "server_cpu_us_per_delivery_median"),
        "us",
    ),
    (
        "server CPU during throughput",
        ("throughput", "server_cpu_pct_median"),
        ("upgraded_throughput", "server_cpu_pct_median"),
        "pct",
    ),
    (
        "node CPU during throughput",
        ("throughput", "node_cpu_pct_median"),
        ("upgraded_throughput", "node_cpu_pct_median"),
        "pct",
    ),
    ("latency p50 ms", ("latency", "p50_ms"), ("upgraded_latency", "p50_ms"), "ms"),
    ("latency p99 ms", ("latency", "p99_ms"), ("upgraded_latency", "p99_ms"), "ms"),
    ("latency max ms", ("latency", "max_ms"), ("upgraded_latency", "max_ms"), "ms"),
    (
        "latency server CPU us/delivery",
        ("latency", "server_cpu_us_per_delivery"),
        ("upgraded_latency", "server_cpu_us_per_delivery"),
        "us",
    ),
]


def _div(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b == 0:
        return None
    return float(a) / float(b)


def ratio(
    results: dict[str, dict[str, Any]], path: tuple[str, ...], reference: str = "floor"
) -> float | None:
    """collabtrio's figure at ``path`` divided by ``reference``'s."""
    return _div(_get(results.get("collabtrio"), *path), _get(results.get(reference), *path))


RATIO_PATHS: dict[str, tuple[str, ...]] = {
    # name in the report -> path into a target's result
    "throughput": ("throughput", "deliveries_per_s_median"),
    "p99_latency": ("latency", "p99_ms"),
    "rss_per_idle_conn": ("idle", "rss_per_conn_bytes"),
    "server_cpu_us_per_delivery": ("throughput", "server_cpu_us_per_delivery_median"),
    "steady_server_cpu_us_per_delivery": ("latency", "server_cpu_us_per_delivery"),
    "p50_latency": ("latency", "p50_ms"),
    "connect_storm_ms": ("storm", "storm_ms_median"),
    "polling_p50_latency": ("polling", "p50_ms"),
    "polling_p99_latency": ("polling", "p99_ms"),
    "polling_server_cpu_us_per_delivery": ("polling", "server_cpu_us_per_delivery"),
}


def ratios_against(results: dict[str, dict[str, Any]], reference: str) -> dict[str, float | None]:
    """collabtrio's figures over ``reference``'s, by the names of :data:`RATIO_PATHS`."""
    return {name: ratio(results, path, reference) for name, path in RATIO_PATHS.items()}


def render_table(
    results: dict[str, dict[str, Any]],
    rows_spec: Sequence[tuple[str, tuple[str, ...], str, bool]] = ROWS,
    targets: Sequence[str] | None = None,
) -> str:
    if targets is None:
        targets = [t for t in TARGETS if t in results]
    refs = [r for r in REFERENCES if r in targets and "collabtrio" in targets]
    header = ["metric", *targets] + [f"collabtrio/{r}" for r in refs]
    rows = [header]
    for label, path, kind, with_ratio in rows_spec:
        row = [label] + [_fmt(_get(results[t], *path), kind) for t in targets]
        for ref in refs:
            r = ratio(results, path, ref) if with_ratio else None
            row.append(f"{r:.2f}x" if r is not None else "")
        rows.append(row)
    return _layout(rows)


def render_upgraded(res: dict[str, Any]) -> str:
    rows = [["metric", "direct", "upgraded", "upgraded/direct"]]
    for label, direct, upgraded, kind in UPGRADED_ROWS:
        d, u = _get(res, *direct), _get(res, *upgraded)
        r = _div(u, d) if kind != "pct" else None
        rows.append([label, _fmt(d, kind), _fmt(u, kind), f"{r:.2f}x" if r is not None else ""])
    losses_d = _get(res, "throughput", "losses_all"), _get(res, "latency", "losses")
    losses_u = (
        _get(res, "upgraded_throughput", "losses_all"),
        _get(res, "upgraded_latency", "losses"),
    )
    rows.append(["losses (throughput runs, latency)", str(losses_d), str(losses_u), ""])
    rows.append([
        "clients' transports at go",
        _fmt(_get(res, "latency", "transports_at_go"), "counts"),
        _fmt(_get(res, "upgraded_latency", "transports_at_go"), "counts"),
        "",
    ])  # fmt: skip
    return _layout(rows)


def upgraded_ratios(res: dict[str, Any] | None) -> dict[str, float | None]:
    return {
        "throughput": _div(
            _get(res, "upgraded_throughput", "deliveries_per_s_median"),
            _get(res, "throughput", "deliveries_per_s_median"),
        ),
        "server_cpu_us_per_delivery": _div(
            _get(res, "upgraded_throughput", "server_cpu_us_per_delivery_median"),
            _get(res, "throughput", "server_cpu_us_per_delivery_median"),
        ),
        "p50_latency": _div(
            _get(res, "upgraded_latency", "p50_ms"), _get(res, "latency", "p50_ms")
        ),
        "p99_latency": _div(
            _get(res, "upgraded_latency", "p99_ms"), _get(res, "latency", "p99_ms")
        ),
    }


def _layout(rows: list[list[str]]) -> str:
    header = rows[0]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        values = zip(row[1:], widths[1:], strict=True)
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in values]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tool_versions(node: str) -> dict[str, Any]:
    versions: dict[str, Any] = {"python": platform.python_version()}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        versions["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    for pkg in ("socket.io-client", "ws", "socket.io", "engine.io"):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((BENCH / "node_modules" / pkg / "package.json").read_text())
            versions[pkg] = meta.get("version")
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        for dist in (
            "collabtrio", "trio", "trio-websocket", "wsproto",
            "python-socketio", "python-engineio", "uvicorn", "websockets", "uvloop", "httptools",
        ):  # fmt: skip
            with contextlib.suppress(Exception):
                versions[dist] = version(dist)
    return versions


# ------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Fan-out benchmark: collabtrio vs a naive trio-websocket relay (the floor), "
        "python-socketio (psio) and Node's Socket.IO 4 (node).",
    )
    p.add_argument("--only", choices=TARGETS, help="run one target only")
    p.add_argument(
        "--targets",
        help=f"comma-separated targets to run, in this order (default {','.join(TARGETS)}; "
        "node only when bench/node_modules has socket.io)",
    )
    p.add_argument("--subscribers", type=int, default=100, help="subscribers in the room")
    p.add_argument("--events", type=int, default=2000, help="events per throughput run")
    p.add_argument("--repeat", type=int, default=1, help="throughput runs per target (median)")
    p.add_argument("--payload-bytes", type=int, default=200, help="JSON size of each event's data")
    p.add_argument("--timeout", type=float, default=60.0, help="throughput run time limit, s")
    p.add_argument("--latency-rate", type=int, default=100, help="latency test events/s")
    p.add_argument("--latency-duration", type=float, default=10.0, help="latency test length, s")
    p.add_argument(
        "--latency-trace",
        action="store_true",
        help="also write per-event worst latency CSVs next to the results (stall hunting)",
    )
    p.add_argument(
        "--polling",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the polling scenario on collabtrio, psio and node (default: yes)",
    )
    p.add_argument(
        "--polling-rate", type=int, help="polling scenario events/s (default --latency-rate)"
    )
    p.add_argument(
        "--polling-subscribers",
        type=int,
        help="polling scenario subscribers (default --subscribers)",
    )
    p.add_argument(
        "--polling-duration",
        type=float,
        help="polling scenario length, s (default --latency-duration)",
    )
    p.add_argument(
        "--polling-http",
        choices=POLLING_HTTP,
        default="raw",
        help="HTTP layer under socket.io-client's long-polling transport, for the polling "
        "and upgraded clients: raw (default: loadgen.js's minimal keep-alive HTTP/1.1 "
        "client), xhr (socket.io-client's own, xmlhttprequest-ssl, with a keep-alive "
        "http.Agent), xhr-close (socket.io-client's own as it comes: a new TCP connection "
        "per request)",
    )
    p.add_argument(
        "--upgraded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run collabtrio's throughput and latency again with clients that start on "
        "polling and upgrade (default: yes)",
    )
    p.add_argument(
        "--psio-ws",
        default="websockets",
        choices=("websockets", "websockets-sansio", "wsproto"),
        help="uvicorn's WebSocket implementation for psio (default websockets)",
    )
    p.add_argument("--idle-connections", type=int, default=1000)
    p.add_argument("--idle-rooms", type=int, default=100)
    p.add_argument("--idle-settle", type=float, default=2.0, help="s before sampling idle RSS")
    p.add_argument(
        "--storm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the connect storm (default: yes), --repeat times",
    )
    p.add_argument("--storm-connections", type=int, default=1000)
    p.add_argument("--storm-rooms", type=int, default=10)
    p.add_argument("--storm-timeout", type=float, default=60.0, help="per client, s")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument(
        "--python", default=sys.executable, help="interpreter for the floor and psio servers"
    )
    p.add_argument(
        "--collabtrio",
        default=str(Path(sys.executable).parent / "collabtrio"),
        help="the collabtrio executable (default: next to this Python)",
    )
    p.add_argument("--node", default=shutil.which("node") or "node")
    p.add_argument("--output", type=Path, help="results file (default bench/results/fanout-*.json)")
    args = p.parse_args(argv)
    for name in ("subscribers", "events", "repeat", "idle_connections", "idle_rooms",
                 "storm_connections", "storm_rooms"):  # fmt: skip
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.polling_subscribers is not None and args.polling_subscribers < 1:
        p.error("--polling-subscribers must be at least 1")
    if args.only:
        args.targets = args.only
    if args.targets is None:
        args.targets = ",".join(t for t in TARGETS if t != "node" or node_server_missing() is None)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        p.error(f"--targets: a comma-separated list of distinct {', '.join(TARGETS)}")
    args.targets = targets
    return args


def psio_missing(python: str) -> str | None:
    """Why bench/psio_server.py cannot run with ``python``, or None."""
    probe = "import socketio, uvicorn, websockets"
    try:
        out = subprocess.run(
            [python, "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or ["import failed"])[-1]
    return None


def node_server_missing() -> str | None:
    """Why bench/sio_node_server.js cannot run (the npm socket.io package is missing), or None."""
    if not (BENCH / "node_modules" / "socket.io" / "package.json").is_file():
        return "bench/node_modules/socket.io is missing"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (BENCH / "node_modules" / "socket.io-client").is_dir():
        print("bench/node_modules is missing: run `bash bench/setup.sh` first", file=sys.stderr)
        return 2
    if shutil.which(args.node) is None and not Path(args.node).exists():
        print(f"node not found ({args.node})", file=sys.stderr)
        return 2

    # SIGTERM/SIGHUP -> KeyboardInterrupt, so the finally blocks stop every child.
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    if "psio" in args.targets:
        why = psio_missing(args.python)
        if why is not None:
            print(
                f"the psio target needs python-socketio and uvicorn in {args.python} ({why}): "
                "run `bash bench/setup.sh` first, or leave it out with --targets floor,collabtrio",
                file=sys.stderr,
            )
            return 2
    if "node" in args.targets:
        why = node_server_missing()
        if why is not None:
            print(
                f"the node target needs the npm socket.io package ({why}): run "
                "`bash bench/setup.sh` first, or leave it out with --targets",
                file=sys.stderr,
            )
            return 2
    pin = choose_pinning(not args.no_pin)
    targets = list(args.targets)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    step(f"pinning: {pin.description}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="collabtrio-fanout-") as tmp:
        ctx = Ctx(args=args, node=args.node, pin=pin, workdir=Path(tmp), stamp=stamp)
        try:
            for target in targets:
                results[target] = run_target(ctx, target)
        except KeyboardInterrupt:
            step("interrupted; stopping child processes")
            for lg in list(ctx.live):
                lg.kill()
            raise

    ratios = ratios_against(results, "floor")
    psio_ratios = ratios_against(results, "psio")
    node_ratios = ratios_against(results, "node")
    upgraded = upgraded_ratios(results.get("collabtrio")) if "collabtrio" in results else {}
    # the polling goals: no worse than python-socketio's polling
    goals: dict[str, dict[str, Any]] = {}
    for key in ("polling_server_cpu_us_per_delivery", "polling_p99_latency"):
        value = psio_ratios[key]
        if value is not None:
            goals[key] = {"ratio": value, "met": value <= 1.0}
    busy = [_get(results.get(t), "polling", "server_cpu_pct") for t in ("collabtrio", "psio")]
    # both at their core's limit: CPU per delivery is wall / deliveries for both (see README)
    saturated = all(isinstance(b, int | float) and b >= SATURATED_PCT for b in busy)
    if "polling_server_cpu_us_per_delivery" in goals:
        goals["polling_server_cpu_us_per_delivery"]["both_servers_saturated"] = saturated
    report = {
        "benchmark": "fanout",
        "started_utc": started.isoformat(timespec="seconds"),
        "host": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "pinning": pin.description,
        },
        "versions": tool_versions(args.node),
        "params": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
        },
        "results": results,
        "ratios_collabtrio_over_floor": ratios,
        "ratios_collabtrio_over_psio": psio_ratios,
        "ratios_collabtrio_over_node": node_ratios,
        "collabtrio_upgraded_over_direct": upgraded,
        "polling_goals_vs_psio": goals,
    }
    out_path = args.output or RESULTS / f"fanout-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(
        f"fan-out: {args.subscribers} subscribers, {args.events} events x ~{args.payload_bytes} B, "
        f"latency {args.latency_rate}/s x {args.latency_duration:g}s, "
        f"idle {args.idle_connections} conns / {args.idle_rooms} rooms; {pin.description}"
    )
    print(render_table(results))
    if "floor" in results and "collabtrio" in results:
        shown = ", ".join(
            f"{name} {value:.2f}x" for name, value in ratios.items() if value is not None
        )
        print(f"\ncollabtrio/floor: {shown or 'n/a'}")
    for ref, ref_ratios in (("psio", psio_ratios), ("node", node_ratios)):
        if ref in results and "collabtrio" in results:
            shown = ", ".join(
                f"{name} {value:.2f}x"
                for name, value in ref_ratios.items()
                if value is not None and not name.startswith("polling_")
            )
            print(f"collabtrio/{ref}: {shown or 'n/a'}")
    col = results.get("collabtrio") or {}
    if "upgraded_throughput" in col or "upgraded_latency" in col:
        print(
            "\nupgraded: collabtrio, clients on socket.io-client's default transports (polling, "
            "each upgraded to WebSocket before the clock starts) vs direct WebSocket clients; "
            "same server, after the direct runs"
        )
        print(render_upgraded(col))
    polled = [t for t in POLLING_TARGETS if "polling" in (results.get(t) or {})]
    if polled:
        rate, duration, subs = polling_load(args)
        print(
            f"\npolling: {subs} subscribers + 1 publisher on transports "
            f"['polling'], {rate}/s x {duration:g}s; HTTP: {POLLING_HTTP[args.polling_http]}"
        )
        print(render_table(results, POLLING_ROWS, polled))
        if goals:
            shown = ", ".join(
                f"{name.removeprefix('polling_')} {g['ratio']:.2f}x "
                f"({'met' if g['met'] else 'NOT met'})"
                for name, g in goals.items()
            )
            print(f"goal, collabtrio/psio <= 1.00x: {shown}")
            if saturated:
                print(
                    f"  both servers used >= {SATURATED_PCT:.0f}% of their CPU: CPU us/delivery "
                    "is then wall time / deliveries for both; compare server CPU us/poll and "
                    "latency, or rerun below saturation (--polling-subscribers, --polling-rate)"
                )
    failed = False
    for target, res in results.items():
        if "error" in res:
            failed = True
            print(f"\n{target}: FAILED\n{res['error']}")
        for warning in _warnings(res):
            print(f"{target}: warning: {warning}")
    print(f"\nresults: {out_path}")
    return 1 if failed else 0


def _warnings(res: dict[str, Any]) -> list[str]:
    warnings = []
    tp = res.get("throughput") or {}
    if tp.get("any_timeout"):
        warnings.append("a throughput run hit the timeout (see losses)")
    if tp.get("out_of_order_total"):
        warnings.append(f"{tp['out_of_order_total']} deliveries arrived out of order")
    if tp.get("echoes_to_sender_total"):
        warnings.append(f"{tp['echoes_to_sender_total']} events were echoed to the publisher")
    node_pct = tp.get("node_cpu_pct_median")
    if node_pct is not None and node_pct > 85:
        warnings.append(
            f"node used {node_pct:.0f}% of a CPU during throughput: the load generator may be "
            "the bottleneck"
        )
    wait = tp.get("server_runqueue_wait_pct_median")
    if wait is not None and wait > 10:
        warnings.append(
            f"the server spent {wait:.0f}% of the throughput run waiting for its CPU: another "
            "process shares it, so figures are pessimistic"
        )
    lat = res.get("latency") or {}
    if lat.get("losses"):
        warnings.append(f"latency test lost {lat['losses']} deliveries")
    for run in res.get("throughput_runs") or []:
        if "transport_warning" in run:
            warnings.append(f"throughput: {run['transport_warning']}")
            break
    for key, what in (("upgraded_throughput", "upgraded throughput"),):
        sub = res.get(key) or {}
        if sub.get("any_timeout"):
            warnings.append(f"an {what} run hit the timeout (see losses)")
        if any(sub.get("losses_all") or []):
            warnings.append(f"{what} lost deliveries: {sub['losses_all']}")
        if sub.get("out_of_order_total"):
            warnings.append(f"{what}: {sub['out_of_order_total']} deliveries out of order")
    for run in res.get("upgraded_throughput_runs") or []:
        if "transport_warning" in run:
            warnings.append(f"upgraded throughput: {run['transport_warning']}")
            break
    for key, what in (
        ("latency", "latency"), ("upgraded_latency", "upgraded latency"), ("polling", "polling"),
    ):  # fmt: skip
        sub = res.get(key) or {}
        if key != "latency" and sub.get("losses"):
            warnings.append(f"{what} lost {sub['losses']} deliveries")
        if "transport_warning" in sub:
            warnings.append(f"{what}: {sub['transport_warning']}")
        node = sub.get("node_cpu_pct")
        if node is not None and node > 85:
            warnings.append(
                f"node used {node:.0f}% of a CPU during {what}: the load generator may add "
                "to the latency"
            )
        wait = sub.get("server_runqueue_wait_pct")
        if wait is not None and wait > 10:
            warnings.append(
                f"the server spent {wait:.0f}% of the {what} run waiting for its CPU: another "
                "process shares it"
            )
    for run in res.get("storm_runs") or []:
        if "warning" in run:
            warnings.append(f"storm: {run['warning']}")
    idle = res.get("idle") or {}
    if "warning" in idle:
        warnings.append(idle["warning"])
    return warnings


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
