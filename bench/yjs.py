"""Yjs benchmark: collabtrio against @y/websocket-server and pycrdt-websocket, in one run.

    bash bench/setup.sh && .venv/bin/python bench/yjs.py

Targets (``--targets``): ``collabtrio`` (``collabtrio serve``, its y-websocket endpoint
``/yjs/<room>`` and its Socket.IO ``yjs-*`` events), ``node`` (@y/websocket-server's own
``bin/server``, the reference y-websocket server of the yjs 13 line, no persistence, as
shipped) and ``pycrdt`` (bench/yjs_pycrdt_server.py: pycrdt-websocket's ``ASGIServer`` and
``WebsocketServer`` under uvicorn, no YStore). Each server is pinned to one CPU and
bench/yjsgen.mjs (Node: raw y-protocols framing over ``ws``, socket.io-client) to the other.

Scenarios (``--only``):

- ``relay``: 1 writer and 10 / 50 readers in one room, one-character inserts: at a fixed rate
  (latency from the writer's send to each reader's receipt, server CPU per delivery) and flat
  out (deliveries/s); over y-websocket for every target, over Socket.IO for collabtrio too;
- ``sync``: a ~420 KB and a ~1.6 MB document (a deterministic editing trace) preloaded by a
  writer that stays connected; open -> synced for 1 client (several, one after another) and
  for 20 fresh clients at once;
- ``ingest``: collabtrio only, SQLite: 10 Socket.IO clients in one room, each keeping a
  window of acked ``yjs-update``s in flight; the default server against
  ``--max-ops-per-commit 1``;
- ``rooms``: RSS of the server with 1000 rooms holding a ~10 KB document each (every room
  loaded by a client that synced it), with the clients connected, 3 s after they all closed,
  and (not with ``--quick``) after collabtrio's ``room_idle_s`` (30 s) has passed.

It prints a table (median of ``--repeat`` runs) with collabtrio/node and collabtrio/pycrdt
ratios, and writes every figure to bench/results/yjs-<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fanout import (  # the same process helpers as the other benchmarks
    BenchError,
    Loadgen,
    Pinning,
    Server,
    _cpu_model,
    choose_pinning,
    free_port,
    settle_rss,
    tool_versions,
)

BENCH = Path(__file__).resolve().parent
YJSGEN = BENCH / "yjsgen.mjs"
PYCRDT = BENCH / "yjs_pycrdt_server.py"
NODE_SERVER = BENCH / "node_modules" / "@y" / "websocket-server" / "src" / "server.js"
RESULTS = BENCH / "results"
TRACES = RESULTS / "yjs-traces"  # generated documents, reused across runs (gitignored)
TARGETS = ("collabtrio", "node", "pycrdt")
SCENARIOS = ("relay", "sync", "ingest", "rooms")
STORAGE_LINE = re.compile(r"storage: (\d+) transactions for (\d+) room commits")
TRACE_VERSION = 1  # bump when yjsgen.mjs's trace changes


def step(message: str) -> None:
    print(f"[yjs] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[Any]) -> float | None:
    vals = sorted(v for v in values if isinstance(v, int | float))
    if not vals:
        return None
    mid = len(vals) // 2
    return float(vals[mid]) if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2.0


def get(d: Any, *path: str) -> Any:
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


# ------------------------------------------------------------------------------------------
# servers


@dataclass
class Ctx:
    args: argparse.Namespace
    pin: Pinning
    workdir: Path
    counter: int = 0
    live: list[Loadgen] = field(default_factory=list)
    server_info: dict[str, Any] = field(default_factory=dict)

    def next_dir(self, name: str) -> Path:
        self.counter += 1
        path = self.workdir / f"{self.counter:03d}-{name}"
        path.mkdir()
        return path

    @contextlib.contextmanager
    def gen(self, workdir: Path, *argv: str) -> Iterator[Loadgen]:
        lg = Loadgen(self.pin.loadgen, self.args.node, list(argv), workdir, script=YJSGEN)
        self.live.append(lg)
        try:
            yield lg
        finally:
            lg.kill()
            self.live.remove(lg)


@dataclass
class Target:
    name: str
    server: Server
    workdir: Path

    @property
    def yws_base(self) -> str:
        path = "/yjs/" if self.name == "collabtrio" else "/"
        return f"ws://127.0.0.1:{self.server.port}{path}"

    @property
    def sio_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def storage_counts(self) -> tuple[int, int] | None:
        with contextlib.suppress(OSError):
            text = self.server.log_path.read_text(errors="replace")
            for line in reversed(text.splitlines()):
                m = STORAGE_LINE.search(line)
                if m:
                    return int(m.group(1)), int(m.group(2))
        return None


def server_argv(ctx: Ctx, name: str, port: int, workdir: Path, extra: Sequence[str]) -> list[str]:
    a = ctx.args
    if name == "collabtrio":
        db = "memory://" if a.collabtrio_db == "memory" else f"sqlite:///{workdir}/bench.db"
        return [
            *ctx.pin.server, a.collabtrio, "serve", "--port", str(port), "--anonymous",
            "--db", db, "--log-level", "info",
            "--rate-limit-per-s", "1000000", "--rate-limit-burst", "1000000", *extra,
        ]  # fmt: skip
    if name == "node":
        return [*ctx.pin.server, a.node, str(NODE_SERVER)]
    return [*ctx.pin.server, a.python, str(PYCRDT), "--port", str(port), "--loop", a.pycrdt_loop]


@contextlib.contextmanager
def running(ctx: Ctx, name: str, label: str, extra: Sequence[str] = ()) -> Iterator[Target]:
    """A fresh server for one scenario; stopped (SIGINT, then SIGKILL) afterwards."""
    workdir = ctx.next_dir(f"{name}-{label}")
    port = free_port()
    argv = server_argv(ctx, name, port, workdir, extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLABTRIO_")}
    if name == "node":
        env.update(HOST="127.0.0.1", PORT=str(port))
    server = Server(name, argv, port, workdir)
    target = Target(name, server, workdir)
    try:
        server.start(env, ready_timeout=ctx.args.startup_timeout)
        warm_up(ctx, target)
        yield target
    finally:
        server.stop()
        with contextlib.suppress(OSError):
            for line in server.log_path.read_text(errors="replace").splitlines():
                if line.startswith("yjs_pycrdt_server: "):
                    ctx.server_info["pycrdt"] = json.loads(line.split(": ", 1)[1])


def warm_up(ctx: Ctx, t: Target) -> None:
    """Lazy imports and first-use caches: a tiny relay before anything is measured."""
    protos = ["yws", "sio"] if t.name == "collabtrio" else ["yws"]
    for proto in protos:
        gen_args = [
            "--mode", "relay", "--proto", proto, "--yws-base", t.yws_base, "--sio-url", t.sio_url,
            "--room", f"warmup-{proto}", "--readers", "2", "--flat", "--updates", "100",
            "--timeout", "30",
        ]  # fmt: skip
        with ctx.gen(t.workdir, *gen_args) as lg:
            lg.read(timeout=60)
            lg.finish()


def main_thread_wait(server: Server) -> float | None:
    """Seconds the server's main thread was runnable but waited for its CPU (schedstat).

    Only the main thread: the helper threads of a process pinned to one CPU (V8's, a thread
    pool's) wait for each other, which says nothing about other processes on that CPU.
    """
    assert server.proc is not None
    pid = server.proc.pid
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def measured(ctx: Ctx, t: Target, gen_args: list[str], timeout: float) -> dict[str, Any]:
    """Run yjsgen with --wait-go; the result with server/Node CPU over the go -> result window."""
    with ctx.gen(t.workdir, *gen_args, "--wait-go") as lg:
        ready = lg.read(timeout=max(120.0, timeout))
        wait0 = main_thread_wait(t.server)
        srv0, node0, t0 = t.server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        lg.send_line()
        result = lg.read(timeout=timeout)
        srv1, node1, t1 = t.server.cpu_seconds(), lg.cpu_seconds(), time.perf_counter()
        wait1 = main_thread_wait(t.server)
        t.server.check_alive()
        lg.finish()
    wall = t1 - t0
    result["ready"] = ready
    result["window_s"] = round(wall, 3)
    result["server_cpu_s"] = round(srv1 - srv0, 4)
    result["server_cpu_pct"] = round(100.0 * (srv1 - srv0) / wall, 1)
    result["node_cpu_pct"] = round(100.0 * (node1 - node0) / wall, 1)
    if wait0 is not None and wait1 is not None:
        result["server_runqueue_wait_pct"] = round(100.0 * (wait1 - wait0) / wall, 1)
    return result


# ------------------------------------------------------------------------------------------
# traces


def trace_file(ctx: Ctx, doc_bytes: int) -> tuple[Path, dict[str, Any]]:
    """A deterministic document of ~doc_bytes (encoded), generated once and cached."""
    TRACES.mkdir(parents=True, exist_ok=True)
    path = TRACES / f"trace-v{TRACE_VERSION}-{doc_bytes}-s{ctx.args.seed}.bin"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    step(f"generating a ~{doc_bytes:,} B editing trace -> {path}")
    tmp = path.with_suffix(".tmp")
    gen_args = ["--mode", "trace", "--doc-bytes", str(doc_bytes), "--seed", str(ctx.args.seed),
                "--out", str(tmp)]  # fmt: skip
    with ctx.gen(ctx.workdir, *gen_args) as lg:
        meta = lg.read(timeout=600)
        lg.finish()
    tmp.replace(path)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return path, meta


# ------------------------------------------------------------------------------------------
# scenarios


def relay_cases(ctx: Ctx, name: str) -> list[tuple[str, str, int, bool]]:
    """(key, proto, readers, flat)"""
    protos = ["yws", "sio"] if name == "collabtrio" else ["yws"]
    out = []
    for proto in protos:
        for readers in ctx.args.readers:
            for flat in (False, True):
                key = f"relay_{proto}_{readers}_{'flat' if flat else 'rate'}"
                out.append((key, proto, readers, flat))
    return out


def run_relay(ctx: Ctx, name: str) -> dict[str, Any]:
    a = ctx.args
    out: dict[str, Any] = {}
    with running(ctx, name, "relay") as t:
        for key, proto, readers, flat in relay_cases(ctx, name):
            runs = []
            for rep in range(a.repeat):
                step(f"{name}: {key} run {rep + 1}/{a.repeat}")
                gen_args = [
                    "--mode", "relay", "--proto", proto, "--yws-base", t.yws_base,
                    "--sio-url", t.sio_url, "--room", f"{key}-{rep}", "--readers", str(readers),
                    "--timeout", str(a.timeout),
                ]  # fmt: skip
                if flat:
                    gen_args += ["--flat", "--updates", str(a.flat_updates)]
                else:
                    gen_args += ["--rate", str(a.rate), "--duration", str(a.duration)]
                try:
                    r = measured(ctx, t, gen_args, a.timeout + 30)
                except BenchError as exc:
                    runs.append({"error": str(exc)})
                    step(f"{name}: {key}: {exc}")
                    continue
                if r.get("deliveries"):
                    r["server_cpu_us_per_delivery"] = round(
                        1e6 * r["server_cpu_s"] / r["deliveries"], 2
                    )
                runs.append(r)
            out[key] = summarize_relay(runs)
    return out


def summarize_relay(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    return {
        "p50_ms": median([get(r, "latency", "p50_ms") for r in ok]),
        "p99_ms": median([get(r, "latency", "p99_ms") for r in ok]),
        "max_ms": median([get(r, "latency", "max_ms") for r in ok]),
        "deliveries_per_s": median([r.get("deliveries_per_s") for r in ok]),
        "server_cpu_us_per_delivery": median([r.get("server_cpu_us_per_delivery") for r in ok]),
        "server_cpu_pct": median([r.get("server_cpu_pct") for r in ok]),
        "node_cpu_pct": median([r.get("node_cpu_pct") for r in ok]),
        "server_runqueue_wait_pct": median([r.get("server_runqueue_wait_pct") for r in ok]),
        "missing_total": sum(r.get("missing", 0) for r in ok),
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }


def run_sync(ctx: Ctx, name: str) -> dict[str, Any]:
    a = ctx.args
    out: dict[str, Any] = {}
    extra = []
    if name == "collabtrio" and a.sync_outbox_bytes > 0:
        extra = ["--outbox-max-bytes", str(a.sync_outbox_bytes)]
    with running(ctx, name, "sync", extra) as t:
        for size in a.doc_sizes:
            path, meta = trace_file(ctx, size)
            runs = []
            for rep in range(a.repeat):
                step(f"{name}: sync {size:,} B run {rep + 1}/{a.repeat}")
                gen_args = [
                    "--mode", "sync", "--yws-base", t.yws_base, "--room", f"sync-{size}-{rep}",
                    "--trace", str(path), "--single", str(a.sync_single),
                    "--clients", str(a.sync_clients), "--timeout", str(a.timeout),
                ]  # fmt: skip
                try:
                    runs.append(measured(ctx, t, gen_args, a.timeout + 30))
                except BenchError as exc:
                    runs.append({"error": str(exc)})
                    step(f"{name}: sync {size}: {exc}")
            ok = [r for r in runs if "error" not in r]
            out[f"sync_{size}"] = {
                "doc_bytes": meta["doc_bytes"],
                "chars": meta["chars"],
                "trace_ops": meta["ops"],
                "single_p50_ms": median([get(r, "single", "open_to_synced", "p50_ms") for r in ok]),
                "single_max_ms": median([get(r, "single", "open_to_synced", "max_ms") for r in ok]),
                "concurrent_p50_ms": median(
                    [get(r, "concurrent", "open_to_synced", "p50_ms") for r in ok]
                ),
                "concurrent_max_ms": median(
                    [get(r, "concurrent", "open_to_synced", "max_ms") for r in ok]
                ),
                "preload_ms": median([r.get("preload_ms") for r in ok]),
                "errors": [r["error"] for r in runs if "error" in r],
                "runs": runs,
            }
    return out


INGEST_MODES = {"group": [], "one-per-commit": ["--max-ops-per-commit", "1"]}


def run_ingest(ctx: Ctx, name: str) -> dict[str, Any]:
    a = ctx.args
    out: dict[str, Any] = {}
    if name != "collabtrio" or a.collabtrio_db != "sqlite":
        return out
    for mode, flags in INGEST_MODES.items():
        if mode != "group" and not a.ingest_one_per_commit:
            continue
        runs = []
        for rep in range(a.repeat):
            step(f"{name}: ingest {mode} run {rep + 1}/{a.repeat}")
            run: dict[str, Any]
            try:
                with running(ctx, name, f"ingest-{mode}", flags) as t:
                    gen_args = [
                        "--mode", "ingest", "--sio-url", t.sio_url, "--room", "ingest",
                        "--clients", str(a.ingest_clients), "--window", str(a.ingest_window),
                        "--updates", str(a.ingest_updates), "--timeout", str(a.timeout),
                    ]  # fmt: skip
                    run = measured(ctx, t, gen_args, a.timeout + 30)
                counts = t.storage_counts()
                if counts is not None:
                    run["transactions"], run["room_commits"] = counts
                run["server_flags"] = flags
            except BenchError as exc:
                run = {"error": str(exc)}
                step(f"{name}: ingest {mode}: {exc}")
            runs.append(run)
        ok = [r for r in runs if "error" not in r]
        out[f"ingest_{mode}"] = {
            "acked_per_s": median([r.get("acked_per_s") for r in ok]),
            "p50_ms": median([get(r, "latency", "p50_ms") for r in ok]),
            "p99_ms": median([get(r, "latency", "p99_ms") for r in ok]),
            "transactions": median([r.get("transactions") for r in ok]),
            "updates_per_transaction": median(
                [r["acked"] / r["transactions"] for r in ok if r.get("transactions")]
            ),
            "server_cpu_pct": median([r.get("server_cpu_pct") for r in ok]),
            "node_cpu_pct": median([r.get("node_cpu_pct") for r in ok]),
            "server_runqueue_wait_pct": median([r.get("server_runqueue_wait_pct") for r in ok]),
            "failed_total": sum(r.get("failed", 0) + r.get("missing", 0) for r in ok),
            "errors": [r["error"] for r in runs if "error" in r],
            "runs": runs,
        }
    return out


def run_rooms(ctx: Ctx, name: str) -> dict[str, Any]:
    a = ctx.args
    path, meta = trace_file(ctx, a.room_doc_bytes)
    runs = []
    for rep in range(a.repeat):
        step(f"{name}: rooms x{a.rooms} run {rep + 1}/{a.repeat}")
        try:
            with running(ctx, name, "rooms") as t:
                runs.append(rooms_once(ctx, t, path))
        except BenchError as exc:
            runs.append({"error": str(exc)})
            step(f"{name}: rooms: {exc}")
    ok = [r for r in runs if "error" not in r]
    return {"rooms": {
        "rooms": a.rooms,
        "doc_bytes": meta["doc_bytes"],
        "rss_before_mb": median([r.get("rss_before_mb") for r in ok]),
        "rss_loaded_mb": median([r.get("rss_loaded_mb") for r in ok]),
        "per_room_kb": median([r.get("per_room_kb") for r in ok]),
        "rss_after_close_mb": median([r.get("rss_after_close_mb") for r in ok]),
        "rss_after_idle_mb": median([r.get("rss_after_idle_mb") for r in ok]),
        "setup_ms": median([r.get("setup_ms") for r in ok]),
        "errors": [r["error"] for r in runs if "error" in r],
        "runs": runs,
    }}  # fmt: skip


def rooms_once(ctx: Ctx, t: Target, trace: Path) -> dict[str, Any]:
    a = ctx.args
    mb = 1024 * 1024
    rss_before = settle_rss(t.server, 1.0)
    gen_args = [
        "--mode",
        "rooms",
        "--yws-base",
        t.yws_base,
        "--prefix",
        "rooms",
        "--rooms",
        str(a.rooms),
        "--trace",
        str(trace),
        "--timeout",
        str(a.timeout),
    ]
    with ctx.gen(t.workdir, *gen_args) as lg:
        ready = lg.read(timeout=a.timeout)
        rss_loaded = settle_rss(t.server, a.settle)
        t.server.check_alive()
        lg.send_line("close")
        result = lg.read(timeout=60)
        lg.finish()
    rss_closed = settle_rss(t.server, 3.0)
    rss_idle = None
    if a.idle_wait > 0:
        rss_idle = settle_rss(t.server, a.idle_wait)
    t.server.check_alive()
    return {
        "setup_ms": ready.get("setup_ms"),
        "still_open_at_close": result.get("still_open_at_close"),
        "rss_before_mb": round(rss_before / mb, 1),
        "rss_loaded_mb": round(rss_loaded / mb, 1),
        "per_room_kb": round((rss_loaded - rss_before) / a.rooms / 1024, 1),
        "rss_after_close_mb": round(rss_closed / mb, 1),
        "rss_after_idle_mb": None if rss_idle is None else round(rss_idle / mb, 1),
        "idle_wait_s": a.idle_wait,
    }


RUNNERS: dict[str, Callable[[Ctx, str], dict[str, Any]]] = {
    "relay": run_relay,
    "sync": run_sync,
    "ingest": run_ingest,
    "rooms": run_rooms,
}


# ------------------------------------------------------------------------------------------
# report


def fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.1f}" if v < 100 else f"{v:,.0f}"
    if kind == "us":
        return f"{v:.1f}"
    if kind == "mb":
        return f"{v:,.1f}"
    return str(v)


def ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return a / b
    return None


def table_rows(ctx: Ctx, results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(label, scenario key, metric, kind); the ratio is collabtrio / peer for every row."""
    a = ctx.args
    rows: list[tuple[str, str, str, str]] = []
    for proto, what in (("yws", "y-websocket"), ("sio", "Socket.IO")):
        for readers in a.readers:
            key = f"relay_{proto}_{readers}_rate"
            base = f"relay {what}, 1 -> {readers}, {a.rate}/s"
            rows += [
                (f"{base}: p50 ms", key, "p50_ms", "ms"),
                (f"{base}: p99 ms", key, "p99_ms", "ms"),
                (f"{base}: server CPU us/delivery", key, "server_cpu_us_per_delivery", "us"),
            ]
        for readers in a.readers:
            key = f"relay_{proto}_{readers}_flat"
            base = f"relay {what}, 1 -> {readers}, flat out"
            rows += [
                (f"{base}: deliveries/s", key, "deliveries_per_s", "int"),
                (f"{base}: server CPU us/delivery", key, "server_cpu_us_per_delivery", "us"),
            ]
    for size in a.doc_sizes:
        key = f"sync_{size}"
        kb = next((get(r, key, "doc_bytes") for r in results.values() if get(r, key)), size)
        base = f"sync {kb / 1024:,.0f} KiB doc"
        rows += [
            (f"{base}, 1 client: p50 ms", key, "single_p50_ms", "ms"),
            (f"{base}, 1 client: max ms", key, "single_max_ms", "ms"),
            (f"{base}, {a.sync_clients} at once: p50 ms", key, "concurrent_p50_ms", "ms"),
            (f"{base}, {a.sync_clients} at once: max ms", key, "concurrent_max_ms", "ms"),
        ]
    base = f"{a.rooms} rooms x {a.room_doc_bytes / 1000:.0f} KB"
    rows += [
        (f"{base}: RSS before, MiB", "rooms", "rss_before_mb", "mb"),
        (f"{base}: RSS loaded, MiB", "rooms", "rss_loaded_mb", "mb"),
        (f"{base}: KiB per room", "rooms", "per_room_kb", "mb"),
        (f"{base}: RSS 3 s after close, MiB", "rooms", "rss_after_close_mb", "mb"),
    ]
    if a.idle_wait > 0:
        rows.append(
            (
                f"{base}: RSS {a.idle_wait:.0f} s after close, MiB",
                "rooms",
                "rss_after_idle_mb",
                "mb",
            )
        )
    present = {k for r in results.values() for k in r}
    return [row for row in rows if row[1] in present]


def render(ctx: Ctx, results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    names = [n for n in TARGETS if n in results]
    header = ["", *names]
    peers = [p for p in ("node", "pycrdt") if p in names and "collabtrio" in names]
    header += [f"ct/{p}" for p in peers]
    rows = [header]
    ratios: dict[str, Any] = {p: {} for p in peers}
    for label, key, metric, kind in table_rows(ctx, results):
        vals = {n: get(results[n], key, metric) for n in names}
        row = [label, *(fmt(vals[n], kind) for n in names)]
        for p in peers:
            r = ratio(vals.get("collabtrio"), vals.get(p))
            ratios[p][f"{key}.{metric}"] = None if r is None else round(r, 3)
            row.append("-" if r is None else f"{r:.2f}")
        rows.append(row)
    return fmt_table(rows), ratios


def render_ingest(res: dict[str, Any]) -> str:
    rows = [["mode", "acked upd/s", "p50 ms", "p99 ms", "transactions", "upd/tx",
             "server CPU", "node CPU", "srv wait"]]  # fmt: skip
    for mode in INGEST_MODES:
        s = res.get(f"ingest_{mode}")
        if not s:
            continue
        upt = s.get("updates_per_transaction")
        rows.append([
            mode, fmt(s["acked_per_s"], "int"), fmt(s["p50_ms"], "ms"), fmt(s["p99_ms"], "ms"),
            fmt(s["transactions"], "int"), "-" if upt is None else f"{upt:.1f}",
            "-" if s["server_cpu_pct"] is None else f"{s['server_cpu_pct']:.0f}%",
            "-" if s["node_cpu_pct"] is None else f"{s['node_cpu_pct']:.0f}%",
            "-" if s["server_runqueue_wait_pct"] is None
            else f"{s['server_runqueue_wait_pct']:.0f}%",
        ])  # fmt: skip
    return fmt_table(rows)


def fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def warnings_for(results: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, res in results.items():
        for key, s in res.items():
            if not isinstance(s, dict):
                continue
            for err in s.get("errors") or []:
                out.append(f"{name} {key}: FAILED: {err}")
            if s.get("missing_total"):
                out.append(f"{name} {key}: {s['missing_total']} deliveries missing")
            if s.get("failed_total"):
                out.append(f"{name} {key}: {s['failed_total']} updates not acked ok")
            wait = s.get("server_runqueue_wait_pct")
            if isinstance(wait, int | float) and wait > 10:
                out.append(
                    f"{name} {key}: the server's main thread waited {wait:.0f}% of the run for "
                    "its CPU (another process shared it)"
                )
            node = s.get("node_cpu_pct")
            if isinstance(node, int | float) and node > 85:
                out.append(
                    f"{name} {key}: node used {node:.0f}% of its CPU: the load generator "
                    "may be the bottleneck"
                )
    return out


# ------------------------------------------------------------------------------------------
# main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, run in this order (default {','.join(TARGETS)})",
    )
    p.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default {','.join(SCENARIOS)})",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per case (the table: median)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs for development: figures are not comparable",
    )
    p.add_argument("--readers", type=int_list, default=[10, 50], help="relay: readers (10,50)")
    p.add_argument("--rate", type=int, default=100, help="relay: updates/s at the fixed rate")
    p.add_argument("--duration", type=float, default=10.0, help="relay: fixed-rate length, s")
    p.add_argument("--flat-updates", type=int, default=5000, help="relay: updates flat out")
    p.add_argument(
        "--doc-sizes",
        type=int_list,
        default=[420_000, 1_600_000],
        help="sync: encoded document sizes, bytes (420000,1600000)",
    )
    p.add_argument(
        "--sync-single", type=int, default=5, help="sync: single clients, one after another"
    )
    p.add_argument("--sync-clients", type=int, default=20, help="sync: clients at once")
    p.add_argument("--ingest-clients", type=int, default=10)
    p.add_argument(
        "--ingest-window", type=int, default=32, help="ingest: updates in flight per client"
    )
    p.add_argument("--ingest-updates", type=int, default=2000, help="ingest: updates per client")
    p.add_argument(
        "--ingest-one-per-commit",
        action="store_true",
        help="ingest: also run the server with --max-ops-per-commit 1 (it bounds how many room "
        "batches one transaction merges; a room's Yjs batch still commits as one)",
    )
    p.add_argument(
        "--sync-outbox-bytes",
        type=int,
        default=0,
        help="sync: collabtrio's --outbox-max-bytes (0, the default: the server's own, "
        "1 MiB, which a 1.6 MB sync step 2 may pass: the first message in line is not "
        "counted against it)",
    )
    p.add_argument("--rooms", type=int, default=1000, help="rooms: how many")
    p.add_argument("--room-doc-bytes", type=int, default=10_000, help="rooms: document size")
    p.add_argument("--settle", type=float, default=2.0, help="rooms: s before sampling RSS")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=35.0,
        help="rooms: s after close for the last RSS sample (collabtrio's room_idle_s "
        "is 30 s; 0 skips it)",
    )
    p.add_argument("--seed", type=int, default=1, help="the editing trace's seed")
    p.add_argument(
        "--collabtrio-db",
        choices=("sqlite", "memory"),
        default="sqlite",
        help="collabtrio's storage (default sqlite, a fresh file per server)",
    )
    p.add_argument(
        "--pycrdt-loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="uvicorn's event loop for pycrdt-websocket (auto: uvloop if installed)",
    )
    p.add_argument("--timeout", type=float, default=180.0, help="one run's time limit, s")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--python", default=sys.executable, help="interpreter for pycrdt-websocket")
    p.add_argument("--collabtrio", default=str(Path(sys.executable).parent / "collabtrio"))
    p.add_argument("--node", default=shutil.which("node") or "node")
    p.add_argument("--output", type=Path, help="results file (default bench/results/yjs-*.json)")
    args = p.parse_args(argv)
    if args.quick:
        given = set(argv if argv is not None else sys.argv[1:])
        quick = {"--duration": ("duration", 3.0), "--flat-updates": ("flat_updates", 1000),
                 "--sync-single": ("sync_single", 3), "--ingest-updates": ("ingest_updates", 500),
                 "--rooms": ("rooms", 200), "--idle-wait": ("idle_wait", 0.0),
                 "--settle": ("settle", 1.0)}  # fmt: skip
        for flag, (name, value) in quick.items():
            if flag not in given:
                setattr(args, name, value)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if not args.targets or any(t not in TARGETS for t in args.targets):
        p.error(f"--targets: a comma-separated list of {', '.join(TARGETS)}")
    if not args.only or any(s not in SCENARIOS for s in args.only):
        p.error(f"--only: a comma-separated list of {', '.join(SCENARIOS)}")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def missing_deps(args: argparse.Namespace) -> str | None:
    for pkg in ("ws", "yjs", "lib0", "socket.io-client", "@y/websocket-server"):
        if not (BENCH / "node_modules" / pkg).is_dir():
            return f"bench/node_modules/{pkg} is missing: run `bash bench/setup.sh` first"
    if shutil.which(args.node) is None and not Path(args.node).exists():
        return f"node not found ({args.node})"
    if "pycrdt" in args.targets:
        probe = subprocess.run(
            [args.python, "-c", "import pycrdt.websocket, uvicorn"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            return (
                f"the pycrdt target needs pycrdt-websocket and uvicorn in {args.python}: "
                "run `bash bench/setup.sh` first, or leave it out with --targets"
            )
    return None


def versions(args: argparse.Namespace) -> dict[str, Any]:
    out = tool_versions(args.node)
    for pkg in (
        "yjs",
        "y-protocols",
        "lib0",
        "@y/websocket-server",
        "@y/websocket-server/node_modules/ws",
    ):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((BENCH / "node_modules" / pkg / "package.json").read_text())
            key = "ws (@y/websocket-server's)" if "node_modules" in pkg else pkg
            out[key] = meta["version"]
    from importlib.metadata import version

    for dist in ("pycrdt", "pycrdt-websocket"):
        with contextlib.suppress(Exception):
            out[dist] = version(dist)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    why = missing_deps(args)
    if why:
        print(why, file=sys.stderr)
        return 2
    from _servers import install_signal_handlers

    install_signal_handlers()
    pin = choose_pinning(not args.no_pin)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    step(f"pinning: {pin.description}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="collabtrio-yjs-") as tmp:
        ctx = Ctx(args=args, pin=pin, workdir=Path(tmp))
        try:
            for scenario in args.only:  # every target's figures of one scenario close in time
                for name in args.targets:
                    res = results.setdefault(name, {})
                    try:
                        res.update(RUNNERS[scenario](ctx, name))
                    except BenchError as exc:
                        res[f"{scenario}_error"] = {"errors": [str(exc)]}
                        step(f"{name}: {scenario} failed: {exc}")
        except KeyboardInterrupt:
            step("interrupted; stopping child processes")
            for lg in list(ctx.live):
                lg.kill()
            raise
        table, ratios = render(ctx, results)
    ingest = results.get("collabtrio", {})
    report = {
        "benchmark": "yjs",
        "started_utc": started.isoformat(timespec="seconds"),
        "host": {
            "platform": os.uname().sysname + " " + os.uname().release,
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "pinning": pin.description,
        },
        "versions": versions(args),
        "servers": ctx.server_info,
        "params": {k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())},
        "results": results,
        "ratios_collabtrio_over": ratios,
    }
    out_path = args.output or RESULTS / f"yjs-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")

    print()
    pyc = ctx.server_info.get("pycrdt") or {}
    print(
        f"Yjs benchmark{' (--quick: short runs, not comparable)' if args.quick else ''}; "
        f"median of {args.repeat} run(s); {pin.description}"
    )
    print(
        f"collabtrio --db {args.collabtrio_db}; node: @y/websocket-server "
        f"{report['versions'].get('@y/websocket-server')} bin/server; pycrdt: pycrdt-websocket "
        f"{report['versions'].get('pycrdt-websocket')} ASGIServer under uvicorn "
        f"{pyc.get('uvicorn', '?')} ({pyc.get('loop', '?')} loop, {pyc.get('http', '?')}, "
        f"ws {pyc.get('ws', '?')})"
    )
    if table.count("\n") > 1:
        print(table)
        print(
            "ct/<peer> = collabtrio's figure / the peer's: below 1 is better for ms, us and MiB, "
            "above 1 for deliveries/s"
        )
    if any(k.startswith("ingest_") for k in ingest):
        print(
            f"\ningest: collabtrio, SQLite, {args.ingest_clients} Socket.IO clients in one room, "
            f"{args.ingest_window} acked yjs-update in flight each, {args.ingest_updates} each"
        )
        print(render_ingest(ingest))
        g = get(ingest, "ingest_group", "acked_per_s")
        if isinstance(g, int | float):
            print(f"goal >= 5,000 acked updates/s: {g:,.0f} ({'met' if g >= 5000 else 'NOT met'})")
    for w in warnings_for(results):
        print(f"warning: {w}")
    print(f"\nresults: {out_path}")
    return 1 if any("FAILED" in w for w in warnings_for(results)) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
