"""The 10,000-connection run: one server process holding 10,000 Socket.IO connections.

Per target (collabtrio, and Node's Socket.IO 4 as the peer), on the 2-core machine with
the server on CPU 0 and the Node load generator on CPU 1:

1. ``--idle`` connections (default 9,000) over ``--idle-rooms`` rooms (default 90), opened
   ``--connect-concurrency`` at a time (default 200): the time to connect them all, and
   the server's RSS per connection once they are in;
2. while they are held, one room of ``--subscribers`` members (default 1,000) and a
   publisher (so 10,001 connections in all) gets ``--rate`` broadcasts/s (default 10) for
   ``--duration`` s (default 10): every broadcast must reach all 1,000 members, with its
   latency percentiles and the server's CPU per delivery.

Each process needs a file descriptor per connection: run it with ``ulimit -n 20000`` (or
more) in the shell that starts it; the run refuses to start below ``--idle +
--subscribers + 100``.

Usage (after ``bash bench/setup.sh``)::

    ulimit -n 20000 && .venv/bin/python bench/tenk.py [--targets collabtrio,node]

The result lands in ``bench/results/tenk-<stamp>.json``, with a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fanout
from fanout import RESULTS, BenchError, Ctx, Server, choose_pinning, free_port, server_argv, step


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """This run's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--targets", default="collabtrio,node")
    p.add_argument("--idle", type=int, default=9000, help="idle connections held")
    p.add_argument("--idle-rooms", type=int, default=90)
    p.add_argument("--connect-concurrency", type=int, default=200)
    p.add_argument("--subscribers", type=int, default=1000, help="members of the busy room")
    p.add_argument("--rate", type=int, default=10, help="broadcasts/s to the busy room")
    p.add_argument("--duration", type=float, default=10.0, help="s of broadcasting")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--output", type=Path)
    return p.parse_args(argv)


def run_target(ctx: Ctx, target: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Both steps against one fresh server."""
    port = free_port()
    workdir = ctx.workdir / target
    workdir.mkdir()
    argv = [*ctx.pin.server, *server_argv(target, port, workdir, ctx.args)]
    if target == "collabtrio":
        # the busy room holds the subscribers and the publisher (1,000 by default)
        argv += ["--max-room-members", str(opts.subscribers + 1)]
    server = Server(target, argv, port, workdir)
    out: dict[str, Any] = {"target": target, "command": argv}
    try:
        step(f"{target}: starting server on port {port}")
        server.start({**os.environ, "COLLABTRIO_LOG_LEVEL": "warning"}, 30.0)
        fanout.run_warmup(ctx, server)
        rss0 = fanout.settle_rss(server, 1.0)
        step(f"{target}: {opts.idle} idle connections over {opts.idle_rooms} rooms, "
             f"{opts.connect_concurrency} at a time")  # fmt: skip
        with ctx.loadgen(
            target, port, "idle", "--connections", str(opts.idle),
            "--rooms", str(opts.idle_rooms),
            "--connect-concurrency", str(opts.connect_concurrency), "--connect-timeout", "120",
        ) as idle:  # fmt: skip
            ready = idle.read(timeout=600)
            if "error" in ready:
                raise BenchError(f"idle: {ready['error']}")
            rss1 = fanout.settle_rss(server, 2.0)
            out["idle"] = {
                "connections": opts.idle,
                "connect_all_ms": ready.get("setup_ms"),
                "connects_per_s": opts.idle / (ready["setup_ms"] / 1000),
                "rss_before_bytes": rss0,
                "rss_idle_bytes": rss1,
                "rss_per_conn_bytes": (rss1 - rss0) / opts.idle,
            }
            step(f"  connected in {ready.get('setup_ms')} ms; RSS per connection "
                 f"{(rss1 - rss0) / opts.idle / 1024:.1f} KiB")  # fmt: skip
            step(f"{target}: {opts.rate}/s to a room of {opts.subscribers} for "
                 f"{opts.duration:g} s, beside the idle ones")  # fmt: skip
            busy = fanout.run_latency(ctx, server, rate=opts.rate, duration=opts.duration,
                                      subscribers=opts.subscribers, label="tenk")
            out["busy_room"] = busy
            step(f"  delivered {busy['delivered']:,}, losses {busy['losses']}, p50 "
                 f"{busy.get('p50_ms')} ms, p99 {busy.get('p99_ms')} ms, server CPU "
                 f"{busy.get('server_cpu_us_per_delivery', 0):.1f} us/delivery")  # fmt: skip
            out["rss_peak_bytes"] = server.rss()
            idle.close_stdin()
            held = idle.read(timeout=60)
            out["idle"]["still_open_at_end"] = held.get("still_open")
            idle.finish()
    except BenchError as exc:
        out["error"] = str(exc)
        step(f"{target}: FAILED: {exc}")
    finally:
        server.stop()
        out["server_log_tail"] = fanout.tail(server.log_path, 15)
    return out


ROWS: list[tuple[str, tuple[str, ...], str, float]] = [
    # label, path into a target's result, format, scale
    ("connect the idle ones (ms)", ("idle", "connect_all_ms"), "{:,.0f}", 1),
    ("connects/s", ("idle", "connects_per_s"), "{:,.0f}", 1),
    ("RSS per idle connection (KiB)", ("idle", "rss_per_conn_bytes"), "{:.1f}", 1 / 1024),
    ("idle still open at the end", ("idle", "still_open_at_end"), "{}", 1),
    ("busy room: deliveries", ("busy_room", "delivered"), "{:,}", 1),
    ("busy room: losses", ("busy_room", "losses"), "{}", 1),
    ("busy room: latency p50 (ms)", ("busy_room", "p50_ms"), "{:.2f}", 1),
    ("busy room: latency p99 (ms)", ("busy_room", "p99_ms"), "{:.2f}", 1),
    ("busy room: server CPU per delivery (us)", ("busy_room", "server_cpu_us_per_delivery"),
     "{:.1f}", 1),
    ("RSS at the end (MiB)", ("rss_peak_bytes",), "{:.0f}", 1 / 2**20),
]


def render(results: dict[str, dict[str, Any]]) -> str:
    """The results as a text table, one column per target."""
    targets = list(results)
    lines = [" | ".join(["metric", *targets])]
    for label, path, fmt, scale in ROWS:
        cells = []
        for t in targets:
            value = fanout._get(results[t], *path)
            if isinstance(value, int | float) and not isinstance(value, bool) and scale != 1:
                value = value * scale
            cells.append("-" if value is None else fmt.format(value))
        lines.append(" | ".join([label, *cells]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every target; write the results file and print the table."""
    opts = parse_args(argv)
    need = opts.idle + opts.subscribers + 100
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        print(f"ulimit -n is {soft}: this run needs at least {need} (ulimit -n 20000)",
              file=sys.stderr)
        return 2
    targets = [t.strip() for t in opts.targets.split(",") if t.strip()]
    # the fan-out benchmark's settings, with its limits raised for 10,000 connections
    args = fanout.parse_args(["--targets", ",".join(targets),
                              "--storm-connections", str(opts.idle + opts.subscribers + 1)]
                             + (["--no-pin"] if opts.no_pin else []))
    pin = choose_pinning(not opts.no_pin)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="collabtrio-tenk-") as tmp:
        ctx = Ctx(args=args, node=args.node, pin=pin, workdir=Path(tmp), stamp=stamp)
        try:
            for target in targets:
                results[target] = run_target(ctx, target, opts)
                time.sleep(2.0)
        except KeyboardInterrupt:
            for lg in list(ctx.live):
                lg.kill()
            raise
    report = {
        "benchmark": "tenk",
        "started_utc": started.isoformat(timespec="seconds"),
        "pinning": pin.description,
        "ulimit_n": soft,
        "params": vars(opts) | {"output": str(opts.output) if opts.output else None},
        "versions": fanout.tool_versions(args.node),
        "results": results,
    }
    out_path = opts.output or RESULTS / f"tenk-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{opts.idle} idle connections + a room of {opts.subscribers} at {opts.rate}/s; "
          f"{pin.description}")  # fmt: skip
    print(render(results))
    failed = [t for t, r in results.items() if "error" in r]
    for t in failed:
        print(f"{t}: FAILED: {results[t]['error']}")
    print(f"\nresults: {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
