"""Soak benchmark: does collabtrio's memory stay flat under steady mixed traffic?

One command (after ``bash bench/setup.sh``, which installs bench/node_modules)::

    .venv/bin/python bench/soak.py                 # 5 minutes, 10 rooms x 10 clients

It starts ``collabtrio serve --anonymous`` on a throwaway SQLite file (pinned to CPU 0 with
``taskset`` when there are two CPUs), then runs bench/soakgen.js (pinned to CPU 1) for
``--duration`` seconds. The load runs all at once:

- ordinary traffic: ``--rooms`` x ``--clients`` members, each sending an acked ``op`` every
  500 ms, a ``cursor`` every 100 ms and some ``chat``, and receiving the room's events; a
  publisher in room 0 (the busy room) adds a ~4 KiB ``broadcast`` every 20 ms;
- one slow reader in room 0 that stops reading its socket, so the server drops it as
  ``slow-consumer``; it then reconnects and rejoins with ``since``, in a loop;
- reconnect churn: ``--churn`` clients that disconnect and rejoin with ``since`` every 2-6 s.

Every ``--interval`` seconds it samples the server's RSS (psutil), its CPU, open TCP
connections and file descriptors. At the end it prints the RSS curve, the load's counters,
the slow-consumer drops (from the server log and as the reader saw them) and a verdict: RSS
is *flat* when, after the ``--warmup`` (60 s), max/min of the samples is within
``--tolerance`` (10%). ``--no-churn`` and ``--no-slow-reader`` switch parts of the load off,
to find which one makes memory grow. ``--json out.json`` writes everything.

The server and the load generator are stopped on exit, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
from fanout import (  # the same process plumbing as the other benchmarks
    BenchError,
    Loadgen,
    Server,
    choose_pinning,
    free_port,
    runqueue_wait_seconds,
    tail,
    tool_versions,
)

BENCH = Path(__file__).resolve().parent
SOAKGEN = BENCH / "soakgen.js"
MIB = 1024 * 1024
# server log lines worth counting (the server logs at info during the soak)
LOG_PATTERNS = {
    "slow_consumer": re.compile(r"disconnecting \S+: slow consumer"),
    "ping_timeout": re.compile(r"disconnecting \S+: ping timeout"),
    "upgrade_abandoned": re.compile(r"upgrade abandoned"),
    "warning": re.compile(r" WARNING "),
    "error": re.compile(r" (ERROR|CRITICAL) "),
    "traceback": re.compile(r"^Traceback"),
}
# warnings every run has: not worth reporting as odd
EXPECTED_WARNINGS = ("anonymous mode",)


def step(message: str) -> None:
    """A progress line on stderr."""
    print(f"[soak] {message}", file=sys.stderr, flush=True)


def tcp_connections(ps: psutil.Process, port: int) -> int | None:
    """Established TCP connections on the server's port, or None if psutil cannot tell."""
    getter = getattr(ps, "net_connections", None) or ps.connections  # psutil < 6
    try:
        conns = getter(kind="tcp")
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return None
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)


def drain(lg: Loadgen, latest: dict[str, Any]) -> dict[str, Any]:
    """Consume the load generator's pending stats lines; return the newest."""
    while True:
        try:
            line = lg.lines.get_nowait()
        except queue.Empty:
            return latest
        if line is None:
            raise BenchError(f"soakgen exited early:\n{tail(lg.stderr_path)}")
        if line.startswith("{"):
            msg = json.loads(line)
            if msg.get("phase") == "stats":
                latest = msg


def count_log(path: Path) -> tuple[dict[str, int], list[str]]:
    """Counts of the LOG_PATTERNS in the server log, and the unexpected warning/error lines."""
    counts = dict.fromkeys(LOG_PATTERNS, 0)
    odd: list[str] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            for name, pattern in LOG_PATTERNS.items():
                if pattern.search(line):
                    counts[name] += 1
            is_warning = LOG_PATTERNS["warning"].search(line) or LOG_PATTERNS["error"].search(line)
            if (is_warning or line.startswith("Traceback")) and not any(
                w in line for w in EXPECTED_WARNINGS
            ):
                odd.append(line)
    return counts, odd


def verdict(samples: Sequence[dict[str, Any]], warmup: float, tolerance: float) -> dict[str, Any]:
    """Flat if max/min of the RSS samples after ``warmup`` seconds is within ``tolerance``."""
    rest = [s for s in samples if s["t_s"] >= warmup]
    if len(rest) < 2:
        return {"flat": None, "why": f"fewer than 2 samples after the {warmup:.0f} s warm-up"}
    rss = [s["rss_mib"] for s in rest]
    lo, hi = min(rss), max(rss)
    # least-squares slope, to tell a steady climb from noise
    ts = [s["t_s"] for s in rest]
    mt, mr = sum(ts) / len(ts), sum(rss) / len(rss)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rss, strict=True)) / var if var else 0.0
    ratio = hi / lo if lo > 0 else float("inf")
    return {
        "flat": ratio - 1 <= tolerance,
        "min_mib": round(lo, 1),
        "max_mib": round(hi, 1),
        "max_over_min": round(ratio, 4),
        "first_mib": round(rss[0], 1),
        "last_mib": round(rss[-1], 1),
        "slope_mib_per_min": round(slope * 60, 3),
        "samples": len(rest),
        "tolerance": tolerance,
        "warmup_s": warmup,
    }


def render_curve(samples: Sequence[dict[str, Any]], warmup: float) -> str:
    """The RSS curve as a text table."""
    head = ("t s", "RSS MiB", "dRSS", "CPU %", "wait %", "tcp conns", "fds", "clients",
            "ops ok", "slow drops")
    rows = [head]
    prev: float | None = None
    for s in samples:
        g = s.get("load_final") or s.get("load") or {}
        mark = "*" if s["t_s"] < warmup else ""
        rows.append((
            f"{s['t_s']:.0f}{mark}",
            f"{s['rss_mib']:.1f}",
            "" if prev is None else f"{s['rss_mib'] - prev:+.1f}",
            "" if s.get("cpu_pct") is None else f"{s['cpu_pct']:.0f}",
            "" if s.get("wait_pct") is None else f"{s['wait_pct']:.0f}",
            "?" if s.get("tcp_conns") is None else str(s["tcp_conns"]),
            "?" if s.get("fds") is None else str(s["fds"]),
            str(g.get("connected", "")),
            str(g.get("ops_ok", "")),
            str(s.get("slow_consumer_log", "")),
        ))
        prev = s["rss_mib"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"(* = warm-up, the first {warmup:.0f} s, left out of the verdict)")
    return "\n".join(lines)


def loadgen_args(args: argparse.Namespace, port: int) -> list[str]:
    """bench/soakgen.js options for this run."""
    out = [
        "--url", f"http://127.0.0.1:{port}", "--rooms", str(args.rooms),
        "--clients", str(args.clients), "--churn", "0" if args.no_churn else str(args.churn),
        "--busy-bytes", str(args.busy_bytes), "--stats-ms", "1000",  # fresh counters per sample
    ]  # fmt: skip
    if args.no_slow_reader:
        out.append("--no-slow-reader")
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Start the server and the load, sample for ``args.duration`` s, return every figure."""
    pin = choose_pinning(not args.no_pin)
    step(f"pinning: {pin.description}; workdir {workdir}")
    port = free_port()
    argv = [
        *pin.server, args.collabtrio, "serve", "--port", str(port), "--anonymous",
        "--db", f"sqlite:///{workdir}/soak.db",
    ]  # fmt: skip
    env = dict(os.environ)
    env.setdefault("COLLABTRIO_LOG_LEVEL", "info")  # info: one line per slow-consumer drop
    server = Server("collabtrio", argv, port, workdir)
    lg: Loadgen | None = None
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        server.start(env, ready_timeout=30)
        assert server.ps is not None
        step(f"server pid {server.ps.pid} on port {port}; RSS {server.rss() / MIB:.1f} MiB")
        lg = Loadgen(pin.loadgen, args.node, loadgen_args(args, port), workdir, script=SOAKGEN)
        ready = lg.read(timeout=120)
        step(f"load ready: {ready.get('clients')} clients in {ready.get('setup_ms')} ms")
        t0 = time.monotonic()
        latest: dict[str, Any] = {}
        cpu_prev, t_prev = server.cpu_seconds(), t0
        wait_prev = runqueue_wait_seconds(server.ps.pid)
        n = 0
        while True:
            now = time.monotonic()
            server.check_alive()
            latest = drain(lg, latest)
            cpu = server.cpu_seconds()
            wait = runqueue_wait_seconds(server.ps.pid)
            fds: int | None = None
            with contextlib.suppress(psutil.AccessDenied, AttributeError):
                fds = int(server.ps.num_fds())
            sample = {
                "t_s": round(now - t0, 1),
                "rss_mib": round(server.rss() / MIB, 2),
                "cpu_pct": round(100 * (cpu - cpu_prev) / (now - t_prev), 1) if n else None,
                # runnable but not running: other work on the server's CPU
                "wait_pct": round(100 * (wait - wait_prev) / (now - t_prev), 1)
                if n and wait is not None and wait_prev is not None else None,
                "tcp_conns": tcp_connections(server.ps, port),
                "fds": fds,
                "slow_consumer_log": count_log(server.log_path)[0]["slow_consumer"],
                "load": {
                    k: latest.get(k)
                    for k in ("connected", "ops_ok", "ops_failed", "ops_timeout", "ops_lost",
                              "churn_cycles", "slow_dropped")
                } if latest else None,
            }  # fmt: skip
            samples.append(sample)
            cpu_prev, t_prev, wait_prev = cpu, now, wait
            step(
                f"t={sample['t_s']:5.0f}s RSS {sample['rss_mib']:7.1f} MiB  "
                f"cpu {sample['cpu_pct'] or 0:3.0f}%  conns {sample['tcp_conns']}  "
                f"ops ok {latest.get('ops_ok', 0)}  slow drops {sample['slow_consumer_log']}"
            )
            if now - t0 >= args.duration:
                break
            n += 1
            # sample on a fixed schedule, not drifting by how long sampling took
            time.sleep(max(0.0, t0 + n * args.interval - time.monotonic()))
        lg.close_stdin()
        result = lg.read(timeout=30)
        while result.get("phase") != "result":  # stats lines not drained yet
            result = lg.read(timeout=30)
        lg.finish()
        samples[-1]["load_final"] = result  # the last sample's stats line may not have come yet
        server.check_alive()
    finally:
        if lg is not None:
            lg.kill()
        server.stop()  # SIGINT: a graceful shutdown, so its last log lines are in the file
    counts, odd = count_log(server.log_path)
    return {
        "samples": samples,
        "load": result,
        "server_log_counts": counts,
        "server_log_odd_lines": odd[:50],
        "server_log_tail": tail(server.log_path, 15),
        "server_argv": argv,
        "loadgen_argv": lg.argv if lg is not None else None,
        "pinning": pin.description,
    }


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    """The human-readable summary printed at the end."""
    load = res["load"]
    v = res["verdict"]
    counts = res["server_log_counts"]
    out = [
        f"soak: {args.duration:.0f} s, {args.rooms} rooms x {args.clients} clients, "
        f"churn {0 if args.no_churn else args.churn}, "
        f"slow reader {'off' if args.no_slow_reader else 'on'}; {res['pinning']}",
        "",
        render_curve(res["samples"], args.warmup),
        "",
        f"ops: sent {load.get('ops_sent')}, acked ok {load.get('ops_ok')}, "
        f"failed {load.get('ops_failed')} {load.get('op_errors') or ''}, "
        f"timed out {load.get('ops_timeout')}, lost to a closed connection "
        f"{load.get('ops_lost')}; ack ms {load.get('ack_ms')}",
        f"sent: cursors {load.get('cursors_sent')}, chats {load.get('chats_sent')}, "
        f"busy broadcasts {load.get('broadcasts_sent')}",
        f"received: {json.dumps(load.get('received'), sort_keys=True)}",
        f"joins {load.get('joins')} (recovered with since {load.get('joins_recovered')}, "
        f"full state on a rejoin {load.get('joins_full_state')}, errors "
        f"{load.get('join_errors') or 0}); churn cycles {load.get('churn_cycles')} "
        f"{load.get('churn_sessions') or ''}; unexpected disconnects of ordinary clients "
        f"{load.get('server_disconnects')} {load.get('disconnect_reasons') or ''}",
        f"slow reader: {load.get('slow_cycles')} cycles, dropped {load.get('slow_dropped')} "
        f"times, still open after a pause {load.get('slow_not_dropped')}, closes seen "
        f"{load.get('slow_closes')}, SLOW_CONSUMER events read {load.get('slow_error_events')}",
        f"server log: {counts['slow_consumer']} slow-consumer drops, {counts['ping_timeout']} "
        f"ping timeouts, {counts['upgrade_abandoned']} upgrades abandoned, "
        f"{len(res['server_log_odd_lines'])} unexpected warning/error lines",
    ]
    out += [f"  | {line}" for line in res["server_log_odd_lines"][:10]]
    out.append(
        "CPU % is the server's share of one core; wait % the time it was runnable but another "
        "process had its CPU (a shared machine)."
    )
    if v.get("flat") is None:
        out.append(f"verdict: n/a ({v['why']})")
    else:
        word = "FLAT" if v["flat"] else "NOT FLAT"
        out.append(
            f"verdict: {word}: after the {args.warmup:.0f} s warm-up RSS ranged "
            f"{v['min_mib']}-{v['max_mib']} MiB (max/min {v['max_over_min']:.3f}, tolerance "
            f"{1 + args.tolerance:.2f}); {v['first_mib']} -> {v['last_mib']} MiB, slope "
            f"{v['slope_mib_per_min']:+.2f} MiB/min"
        )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    venv_bin = Path(sys.executable).parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (300)")
    p.add_argument("--rooms", type=int, default=10, help="rooms of ordinary traffic (10)")
    p.add_argument("--clients", type=int, default=10, help="clients per room (10)")
    p.add_argument("--churn", type=int, default=10, help="reconnecting clients (10)")
    p.add_argument("--no-churn", action="store_true", help="no reconnect churn")
    p.add_argument("--no-slow-reader", action="store_true", help="no slow reader")
    p.add_argument("--busy-bytes", type=int, default=4096,
                   help="size of the busy room's broadcasts, every 20 ms (0: none)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the verdict")
    p.add_argument("--tolerance", type=float, default=0.10, help="max/min - 1 still flat (0.10)")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--node", default="node", help="Node executable")
    p.add_argument("--collabtrio", default=str(venv_bin / "collabtrio"),
                   help="server executable (collabtrio beside the running Python)")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temporary directory (server log, database, loadgen stderr)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0:
        p.error("--duration and --interval must be positive")
    return args


def git_revision() -> str | None:
    """The checkout's commit, with "+dirty" when files differ from it (others edit it)."""
    try:
        rev = subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(BENCH.parent), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty.strip() else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak; exit status 0 if RSS was flat, 1 if not, 2 if the run failed."""
    args = parse_args(argv)
    if not (BENCH / "node_modules" / "socket.io-client").is_dir():
        print("bench/node_modules is missing: run `bash bench/setup.sh` first", file=sys.stderr)
        return 2
    if shutil.which(args.node) is None and not Path(args.node).exists():
        print(f"node not found ({args.node})", file=sys.stderr)
        return 2

    # SIGINT/SIGTERM/SIGHUP -> KeyboardInterrupt, so the finally blocks stop both children.
    # SIGINT explicitly: a shell starts background jobs with it ignored, and `kill -INT`
    # should still stop the run. SIGHUP only if not ignored (nohup).
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, interrupted)

    started = dt.datetime.now(dt.UTC)
    tmp = tempfile.mkdtemp(prefix="collabtrio-soak-")
    try:
        res = run(args, Path(tmp))
    except BenchError as exc:
        print(f"soak failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        step("interrupted; server and load generator stopped")
        return 130
    finally:
        if args.keep_workdir:
            step(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["verdict"] = verdict(res["samples"], args.warmup, args.tolerance)
    res["params"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    res["started"] = started.isoformat()
    res["host"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "niceness": os.nice(0),
    }
    res["versions"] = tool_versions(args.node)
    res["versions"]["git"] = git_revision()
    print(report(res, args))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        step(f"wrote {args.json}")
    return 0 if res["verdict"].get("flat") is not False else 1


if __name__ == "__main__":
    sys.exit(main())
