"""Field-write amplification: coalesced field writes against one transaction per write.

    bash bench/setup.sh && .venv/bin/python bench/fields.py

--clients C clients (default 10) join ONE room; client 0 creates the entity items/doc. Then
each client sends --writes N (1000) ``field`` writes at --rate R (200) per second on a fixed
schedule; write k of client i goes to path ["f", "p<(i + k) % P>"] (P = --paths, 10), so every
path is written by every client, 2000 writes/s into the room. Every write asks for an ack,
which the server sends once the flush holding it committed. Every case runs on a fresh
database and a fresh server:

- **collabtrio**: the default server (writes to one path coalesced, 25 ms trailing window,
  held at most 250 ms, one transaction per room flush);
- **naive**: ``--field-debounce-ms 0 --field-max-hold-ms 0 --max-ops-per-commit 1`` (every
  field value in its own transaction, broadcast to everyone else).

It reports the transactions executed (the server's shutdown log line, minus the one that
created the entity), transactions per second per room, the ``field`` events the members
received, and send-to-confirmation (ack) percentiles; JSON in bench/results/fields-*.json.
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

TAG = "fields"
MODES = {
    "collabtrio": [],
    "naive": ["--field-debounce-ms", "0", "--field-max-hold-ms", "0", "--max-ops-per-commit", "1"],
}
SETUP_TRANSACTIONS = 1  # the `op add` of items/doc before the measured writes


def derive(r: dict[str, Any]) -> None:
    """Add the per-run figures that need the server's transaction count."""
    if "transactions" in r and "elapsed_ms" in r:
        tx = r["transactions"] - SETUP_TRANSACTIONS
        r["field_transactions"] = tx
        r["transactions_per_s_per_room"] = tx / (r["elapsed_ms"] / 1000.0)  # one room
        if r.get("acked"):
            r["writes_per_transaction"] = r["acked"] / tx if tx > 0 else None


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
        "field_transactions_median": med("field_transactions"),
        "transactions_per_s_per_room_median": med("transactions_per_s_per_room"),
        "transactions_per_s_per_room_all": [r.get("transactions_per_s_per_room") for r in runs],
        "writes_per_transaction_median": med("writes_per_transaction"),
        "field_events_received_median": med("field_events_received"),
        "field_events_uncoalesced": med("field_events_uncoalesced"),
        "p50_ms_median": med("latency", "p50_ms"),
        "p99_ms_median": med("latency", "p99_ms"),
        "p99_ms_all": [(r.get("latency") or {}).get("p99_ms") for r in runs],
        "max_ms_median": med("latency", "max_ms"),
        "elapsed_ms_median": med("elapsed_ms"),
        "send_span_ms_median": med("send_span_ms"),
        "late_sends_median": med("late_sends"),
        "server_cpu_pct_median": med("server_cpu_pct"),
        "node_cpu_pct_median": med("node_cpu_pct"),
        "server_runqueue_wait_pct_median": med("server_runqueue_wait_pct"),
        "pg_xact_commit_delta_median": med("pg_xact_commit_delta"),
        "failed_total": sum(r.get("failed", 0) + r.get("missing", 0) for r in ok),
        "any_timeout": any(r.get("timed_out") for r in ok),
    }


def _f(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    return {"int": f"{v:,.0f}", "ms": f"{v:.1f}", "pct": f"{v:.0f}%", "x": f"{v:.1f}"}[kind]


ROWS: list[tuple[str, str, str]] = [
    ("field transactions", "field_transactions_median", "int"),
    ("transactions/s per room", "transactions_per_s_per_room_median", "ms"),
    ("field writes per transaction", "writes_per_transaction_median", "x"),
    ("field events received", "field_events_received_median", "int"),
    ("  without coalescing", "field_events_uncoalesced", "int"),
    ("confirmation p50 ms", "p50_ms_median", "ms"),
    ("confirmation p99 ms", "p99_ms_median", "ms"),
    ("confirmation max ms", "max_ms_median", "ms"),
    ("first send to last ack ms", "elapsed_ms_median", "int"),
    ("send span ms", "send_span_ms_median", "int"),
    ("writes sent > 2 ms late", "late_sends_median", "int"),
    ("server CPU", "server_cpu_pct_median", "pct"),
    ("node CPU", "node_cpu_pct_median", "pct"),
    ("server waiting for its CPU", "server_runqueue_wait_pct_median", "pct"),
    ("pg xact_commit delta (noisy)", "pg_xact_commit_delta_median", "int"),
]


def render(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    cols = [(db, mode) for db, modes in summary.items() for mode in modes]
    rows = [["metric", *[f"{db} {mode}" for db, mode in cols]]]
    for label, key, kind in ROWS:
        values = [summary[db][mode].get(key) for db, mode in cols]
        if all(v is None for v in values):
            continue
        rows.append([label, *[_f(v, kind) for v in values]])
    return S.fmt_table(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Field-write amplification: coalescing vs a transaction per field write."
    )
    S.add_common_args(p)
    p.add_argument("--writes", type=int, default=1000, help="field writes per client")
    p.add_argument("--rate", type=float, default=200, help="field writes per second per client")
    p.add_argument("--paths", type=int, default=10, help="distinct paths in the entity")
    p.add_argument("--only-mode", choices=tuple(MODES), help="collabtrio or naive only")
    args = p.parse_args(argv)
    for name in ("repeat", "clients", "writes", "paths"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.rate <= 0:
        p.error("--rate must be positive")
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
    dbs = ["sqlite", "postgres"] if args.only is None else [args.only]
    skipped: dict[str, str] = {}
    if "postgres" in dbs:
        why = S.postgres_available(args.pg_url)
        if why:
            skipped["postgres"] = why
            S.step(TAG, f"postgres skipped: {why}")
            dbs.remove("postgres")
    modes = [args.only_mode] if args.only_mode else list(MODES)
    gen_args = [
        "--mode", "fields", "--clients", str(args.clients), "--writes", str(args.writes),
        "--rate", str(args.rate), "--paths", str(args.paths), "--timeout", str(args.timeout),
    ]  # fmt: skip
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with S.temp_dir(TAG) as tmp:
        ctx = S.make_ctx(TAG, args, tmp)
        S.step(TAG, f"pinning: {ctx.pin.description}")
        try:
            for db in dbs:
                runs[db] = {m: [] for m in modes}
                for i in range(args.repeat):
                    for mode in modes:
                        case = S.Case(f"{db} {mode}", db, MODES[mode], gen_args)
                        S.step(TAG, f"{case.label}: run {i + 1}/{args.repeat}")
                        r = S.run_case(ctx, case, gen_timeout=args.timeout + 60)
                        derive(r)
                        runs[db][mode].append(r)
                        if "error" in r:
                            S.step(TAG, f"  FAILED: {r['error']}")
                        else:
                            lat = r["latency"]
                            S.step(
                                TAG,
                                f"  {r.get('field_transactions')} transactions "
                                f"({r.get('transactions_per_s_per_room', 0):.1f}/s), "
                                f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
                                f"{r['field_events_received']} field events received, server "
                                f"CPU {r['server_cpu_pct']:.0f}%, node CPU "
                                f"{r['node_cpu_pct']:.0f}%",
                            )
        except KeyboardInterrupt:
            S.step(TAG, "interrupted; stopping child processes")
            for gen in list(ctx.live):
                gen.finish(5)
            raise

    summary = {db: {m: summarize(rs) for m, rs in by_mode.items()} for db, by_mode in runs.items()}
    report = {
        "benchmark": "fields",
        "started_utc": started.isoformat(timespec="seconds"),
        "host": S.host_info(ctx.pin),
        "versions": S.tool_versions(args.node),
        "params": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
        },
        "skipped": skipped,
        "summary": summary,
        "runs": runs,
    }
    out_path = args.output or S.RESULTS / f"fields-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(
        f"field writes: {args.clients} clients in one room, {args.writes} writes each at "
        f"{args.rate:g}/s over {args.paths} paths; {args.repeat} run(s) per case (median); "
        f"{ctx.pin.description}"
    )
    print(render(summary))
    failed = False
    for db, modes_ in summary.items():
        for mode, s in modes_.items():
            for err in s["errors"]:
                failed = True
                print(f"{db} {mode}: FAILED: {err}")
            if s["failed_total"]:
                print(f"{db} {mode}: warning: {s['failed_total']} writes not confirmed ok")
            if s["any_timeout"]:
                print(f"{db} {mode}: warning: a run hit the --timeout")
            node = s["node_cpu_pct_median"]
            if node is not None and node > 85:
                print(f"{db} {mode}: warning: node used {node:.0f}% of a CPU: the load "
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
