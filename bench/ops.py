"""Persisted-operation throughput: group commit against one transaction per operation.

    bash bench/setup.sh && .venv/bin/python bench/ops.py

--clients C clients (default 10), each alone in its own room, each keep --window W (64)
``op add`` operations outstanding until each has sent --ops N (2000). An op's ack comes only
after its transaction committed. Every case runs on a fresh database and a fresh server:

- **group**: the default server (a room batches what is queued, the writer merges the batches
  of all rooms into one transaction);
- **naive**: the same server with ``--max-ops-per-commit 1`` (one transaction per operation,
  no merging across rooms).

for SQLite (``PRAGMA synchronous`` NORMAL, the default, and FULL) and PostgreSQL. It prints
acknowledged ops/s, ack latency, CPU and the transaction count (the server's shutdown log
line) per case, the group/naive ratios, and writes everything to bench/results/ops-*.json.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _servers as S

TAG = "ops"
MODES = {"group": [], "naive": ["--max-ops-per-commit", "1"]}


def backends(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(name, db kind, extra server flags)"""
    out: list[tuple[str, str, list[str]]] = []
    if args.only in (None, "sqlite"):
        out.append(("sqlite NORMAL", "sqlite", []))
        if not args.no_full:
            out.append(("sqlite FULL", "sqlite", ["--sqlite-synchronous", "FULL"]))
    if args.only in (None, "postgres"):
        out.append(("postgres", "postgres", []))
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]

    def med(*path: str) -> float | None:
        vals = []
        for r in ok:
            v: Any = r
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            vals.append(v)
        return S.median(vals)

    return {
        "runs": len(runs),
        "errors": [r["error"] for r in runs if "error" in r],
        "acked_per_s_median": med("acked_per_s"),
        "acked_per_s_all": [r.get("acked_per_s") for r in runs],
        "p50_ms_median": med("latency", "p50_ms"),
        "p99_ms_median": med("latency", "p99_ms"),
        "transactions_median": med("transactions"),
        "room_commits_median": med("room_commits"),
        "ops_per_transaction_median": S.median(
            [r["acked"] / r["transactions"] for r in ok if r.get("transactions")]
        ),
        "server_cpu_pct_median": med("server_cpu_pct"),
        "node_cpu_pct_median": med("node_cpu_pct"),
        "server_runqueue_wait_pct_median": med("server_runqueue_wait_pct"),
        "server_cpu_us_per_op_median": S.median(
            [1e6 * r["server_cpu_s"] / r["acked"] for r in ok if r.get("acked")]
        ),
        "pg_xact_commit_delta_median": med("pg_xact_commit_delta"),
        "failed_total": sum(r.get("failed", 0) + r.get("missing", 0) for r in ok),
        "any_timeout": any(r.get("timed_out") for r in ok),
    }


def f_int(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}"


def f_ms(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"


def f_pct(v: Any) -> str:
    return "-" if v is None else f"{v:.0f}%"


def render(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = [[
        "database", "mode", "acked ops/s", "all runs", "p50 ms", "p99 ms", "transactions",
        "ops/tx", "server CPU", "node CPU", "srv wait", "srv us/op",
    ]]  # fmt: skip
    for name, modes in summary.items():
        for mode, s in modes.items():
            runs = ", ".join(f_int(v) for v in s["acked_per_s_all"])
            opt = s["ops_per_transaction_median"]
            rows.append([
                name, mode, f_int(s["acked_per_s_median"]), runs,
                f_ms(s["p50_ms_median"]), f_ms(s["p99_ms_median"]),
                f_int(s["transactions_median"]), "-" if opt is None else f"{opt:.1f}",
                f_pct(s["server_cpu_pct_median"]), f_pct(s["node_cpu_pct_median"]),
                f_pct(s["server_runqueue_wait_pct_median"]),
                f_ms(s["server_cpu_us_per_op_median"]),
            ])  # fmt: skip
    return S.fmt_table(rows)


def ratios(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, modes in summary.items():
        g = (modes.get("group") or {}).get("acked_per_s_median")
        n = (modes.get("naive") or {}).get("acked_per_s_median")
        out[name] = g / n if g and n else None
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Persisted op throughput: group commit vs one transaction per operation."
    )
    S.add_common_args(p)
    p.add_argument("--ops", type=int, default=2000, help="ops per client")
    p.add_argument("--window", type=int, default=64, help="outstanding acked ops per client")
    p.add_argument("--payload-bytes", type=int, default=100, help="JSON size of each op's data")
    p.add_argument("--no-full", action="store_true", help="skip the SQLite synchronous=FULL cases")
    p.add_argument("--only-mode", choices=tuple(MODES), help="group or naive only")
    args = p.parse_args(argv)
    for name in ("repeat", "clients", "ops", "window"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problem = S.check_node(args.node)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    S.install_signal_handlers()
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    plan = backends(args)
    skipped: dict[str, str] = {}
    if any(kind == "postgres" for _, kind, _ in plan):
        why = S.postgres_available(args.pg_url)
        if why:
            skipped["postgres"] = why
            S.step(TAG, f"postgres skipped: {why}")
            plan = [b for b in plan if b[1] != "postgres"]
    modes = [args.only_mode] if args.only_mode else list(MODES)
    gen_args = [
        "--mode", "ops", "--clients", str(args.clients), "--ops", str(args.ops),
        "--window", str(args.window), "--payload-bytes", str(args.payload_bytes),
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with S.temp_dir(TAG) as tmp:
        ctx = S.make_ctx(TAG, args, tmp)
        S.step(TAG, f"pinning: {ctx.pin.description}")
        try:
            for name, kind, flags in plan:
                runs[name] = {m: [] for m in modes}
                for i in range(args.repeat):
                    for mode in modes:  # interleaved, so drift hits both modes alike
                        case = S.Case(f"{name} {mode}", kind, [*flags, *MODES[mode]], gen_args)
                        S.step(TAG, f"{case.label}: run {i + 1}/{args.repeat}")
                        r = S.run_case(ctx, case, gen_timeout=args.timeout + 60)
                        runs[name][mode].append(r)
                        if "error" in r:
                            S.step(TAG, f"  FAILED: {r['error']}")
                        else:
                            S.step(
                                TAG,
                                f"  {r['acked_per_s']:,} acked ops/s, p99 "
                                f"{r['latency'].get('p99_ms')} ms, {r.get('transactions')} "
                                f"transactions, server CPU {r['server_cpu_pct']:.0f}%, "
                                f"node CPU {r['node_cpu_pct']:.0f}%",
                            )
        except KeyboardInterrupt:
            S.step(TAG, "interrupted; stopping child processes")
            for gen in list(ctx.live):
                gen.finish(5)
            raise

    summary = {
        name: {m: summarize(rs) for m, rs in by_mode.items()} for name, by_mode in runs.items()
    }
    rat = ratios(summary)
    report = {
        "benchmark": "ops",
        "started_utc": started.isoformat(timespec="seconds"),
        "host": S.host_info(ctx.pin),
        "versions": S.tool_versions(args.node),
        "params": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
        },
        "skipped": skipped,
        "summary": summary,
        "ratios_group_over_naive": rat,
        "runs": runs,
    }
    out_path = args.output or S.RESULTS / f"ops-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(
        f"persisted ops: {args.clients} clients x {args.clients} rooms, {args.ops} op add each, "
        f"window {args.window}, ~{args.payload_bytes} B data; {args.repeat} run(s) per case "
        f"(median); {ctx.pin.description}"
    )
    print(render(summary))
    print()
    print("group/naive acked ops/s: " + (", ".join(
        f"{name} {r:.2f}x" if r is not None else f"{name} n/a" for name, r in rat.items()
    ) or "n/a"))  # fmt: skip
    failed = False
    for name, modes_ in summary.items():
        for mode, s in modes_.items():
            for err in s["errors"]:
                failed = True
                print(f"{name} {mode}: FAILED: {err}")
            if s["failed_total"]:
                print(f"{name} {mode}: warning: {s['failed_total']} ops not acknowledged ok")
            if s["any_timeout"]:
                print(f"{name} {mode}: warning: a run hit the --timeout")
            node = s["node_cpu_pct_median"]
            if node is not None and node > 85:
                print(f"{name} {mode}: warning: node used {node:.0f}% of a CPU: the load "
                      "generator may be the bottleneck")  # fmt: skip
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")
    print(f"\nresults: {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
