"""Long-run fuzzing of the codecs and state machines, outside CI (atheris / libFuzzer).

Each target is one of ``tests/fuzz/targets.py``'s byte drivers, so the property is the
one CI checks with hypothesis: no exception but the codec's own error type, and
round-trips where they apply. Coverage-guided: collabtrio (and h11 for the front door)
is instrumented, and the corpus starts from the target's valid seeds.

Usage (from the repository root)::

    nice -n 10 .venv/bin/python bench/fuzz.py --target socketio --runs 1000000
    .venv/bin/python bench/fuzz.py --list

Every input that raises is saved under ``bench/fuzz-crashes/`` (``<target>-<sha1>`` and
its traceback in ``.txt``; at most 20 per distinct crash site) and the run goes on; at
the end it prints inputs, seconds, inputs/s and crashes, and appends the same as one
JSON line to ``bench/fuzz-crashes/runs.jsonl``. Reproduce one input with
``--repro FILE``. Without atheris installed (``pip install -e '.[bench]'``), or with
``--engine random``, inputs are the seeds under random mutations (not coverage-guided).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the targets live in tests/fuzz
CRASH_DIR = ROOT / "bench" / "fuzz-crashes"
MAX_PER_SITE = 20


def _site(exc: BaseException) -> str:
    """Where a crash comes from: the innermost collabtrio frame of the root cause (an
    assertion about a logged exception has that exception as its cause)."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    frames = traceback.extract_tb(root.__traceback__)
    ours = [f for f in frames if "/collabtrio/" in f.filename] or frames
    if not ours:
        return type(root).__name__
    return f"{type(root).__name__} at {Path(ours[-1].filename).name}:{ours[-1].lineno}"


class Run:
    """Counts inputs and saves crashing ones."""

    def __init__(self, name: str, from_bytes: Callable[[bytes], None], runs: int,
                 crash_dir: Path, engine: str, known: Counter[str]) -> None:
        self.name = name
        self.from_bytes = from_bytes
        self.runs = runs
        self.crash_dir = crash_dir
        self.engine = engine
        self.known = known
        self.count = 0
        self.crashes = 0
        self.sites: Counter[str] = Counter()
        self.started = time.perf_counter()
        self.reported = False
        self.progress_every = max(1, runs // 20)

    def one(self, data: bytes) -> None:
        """Run the target on one input; save it if it raises."""
        self.count += 1
        try:
            self.from_bytes(data)
        except Exception as exc:
            self.crashed(data, exc)
        if self.count % self.progress_every == 0:
            rate = self.count / (time.perf_counter() - self.started)
            print(f"[{self.name}] {self.count} inputs, {rate:.0f}/s, {self.crashes} crashes",
                  flush=True)
        if self.count >= self.runs:
            self.report()

    def crashed(self, data: bytes, exc: BaseException) -> None:
        self.crashes += 1
        site = _site(exc)
        self.sites[site] += 1
        if self.sites[site] > MAX_PER_SITE:
            return
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        path = self.crash_dir / f"{self.name}-{hashlib.sha1(data).hexdigest()[:16]}"
        path.write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        path.with_suffix(".txt").write_text(f"input: {data!r}\n\n{text}")
        if self.sites[site] == 1:
            print(f"[{self.name}] NEW CRASH {site}: saved {path}\n{text}", flush=True)

    def report(self) -> None:
        """Print the summary once and append it to runs.jsonl."""
        if self.reported:
            return
        self.reported = True
        seconds = time.perf_counter() - self.started
        summary: dict[str, Any] = {
            "target": self.name, "engine": self.engine, "inputs": self.count,
            "seconds": round(seconds, 1), "inputs_per_s": round(self.count / seconds),
            "crashes": self.crashes, "sites": dict(self.sites), "known_bugs": dict(self.known),
        }
        print(f"[{self.name}] done: {self.count} inputs in {seconds:.1f} s "
              f"({self.count / seconds:.0f}/s), {self.crashes} crashing inputs, "
              f"{len(self.sites)} distinct sites; known bugs met: {dict(self.known)}", flush=True)
        self.crash_dir.mkdir(parents=True, exist_ok=True)
        with (self.crash_dir / "runs.jsonl").open("a") as f:
            f.write(json.dumps(summary) + "\n")


def _import_targets(instrument: bool) -> Any:
    if not instrument:
        from tests.fuzz import targets
        return targets
    import atheris

    with atheris.instrument_imports(include=["collabtrio", "h11"]):
        from tests.fuzz import targets
    return targets


def _dictionary(tokens: tuple[bytes, ...], path: Path) -> None:
    """Write ``tokens`` as a libFuzzer dictionary (one quoted, escaped token a line)."""
    lines = ['"' + "".join(f"\\x{b:02x}" for b in token) + '"' for token in tokens]
    path.write_text("\n".join(lines) + "\n")


def run_atheris(run: Run, seeds: list[bytes], tokens: tuple[bytes, ...], max_len: int,
                in_trio: bool) -> None:
    """Coverage-guided: libFuzzer mutates a corpus that starts from ``seeds``, with the
    targets' interesting fragments as its dictionary."""
    import atheris

    run.crash_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"collabtrio-fuzz-{run.name}-"))
    corpus = work / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    _dictionary(tokens, work / "tokens.dict")
    # libFuzzer counts the corpus it reads in -runs too, so -runs is the input total
    argv = [sys.argv[0], str(corpus), f"-runs={run.runs}", f"-max_len={max_len}",
            f"-dict={work / 'tokens.dict'}", "-timeout=60", "-print_final_stats=1",
            # libFuzzer's own artifacts (slow-unit-*, timeout-*) go beside ours, not in cwd
            f"-artifact_prefix={run.crash_dir}/{run.name}-"]
    atheris.Setup(argv, run.one)
    if in_trio:
        import trio

        async def fuzz_in_a_task() -> None:
            atheris.Fuzz()  # never returns: libFuzzer exits the process when done

        trio.run(fuzz_in_a_task)
    else:
        atheris.Fuzz()


def run_random(run: Run, seeds: list[bytes], seed: int, in_trio: bool) -> None:
    """Not coverage-guided: random mutations (up to 8) of the seeds."""
    from tests.fuzz.targets import mutate

    def loop() -> None:
        rng = random.Random(seed)
        while run.count < run.runs:
            base = rng.choice(seeds)
            ops = [(rng.randrange(7), rng.randrange(1 << 16), rng.randrange(256))
                   for _ in range(rng.randrange(9))]
            run.one(mutate(base, ops))

    if in_trio:
        import trio

        async def in_a_task() -> None:
            loop()

        trio.run(in_a_task)
    else:
        loop()
    run.report()


def main() -> None:
    """Parse the command line and fuzz one target (or reproduce one input)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="the target to fuzz (see --list)")
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs to run")
    parser.add_argument("--engine", choices=["atheris", "random"], default=None,
                        help="default: atheris when installed, else random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random engine")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input (atheris)")
    parser.add_argument("--crash-dir", type=Path, default=CRASH_DIR)
    parser.add_argument("--repro", type=Path, help="run the target once on this input file")
    parser.add_argument("--list", action="store_true", help="list the targets")
    args = parser.parse_args()

    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    targets = _import_targets(engine == "atheris" and args.repro is None and not args.list)
    if args.list:
        print("\n".join(targets.TARGETS))
        return
    if args.target not in targets.TARGETS:
        parser.error(f"--target must be one of {', '.join(targets.TARGETS)}")
    target = targets.TARGETS[args.target]
    if args.repro is not None:
        target.from_bytes(args.repro.read_bytes())  # raises as it did
        print("no exception")
        return
    run = Run(target.name, target.from_bytes, args.runs, args.crash_dir, engine,
              targets.KNOWN_HITS)
    print(f"[{target.name}] {engine}: {args.runs} inputs", flush=True)
    if engine == "atheris":
        run_atheris(run, target.seeds(), targets.TOKENS, args.max_len, target.in_trio)
    else:
        run_random(run, target.seeds(), args.seed, target.in_trio)
    run.report()


if __name__ == "__main__":
    main()
