"""Pair mining at scale: events/s and peak memory of each engine on synthetic logs.

    .venv/bin/python benchmarks/pairs_scale.py [--sizes 1M,10M,50M] [--engines duckdb,spark,reference]
        [--reference-max 1M] [--data-dir /tmp/tandem-pairs-scale] [--seed 0] [--timeout 3600] [--no-write]

For each size the log is generated once with `tandem.data.synth.write_logs` (Zipf items, heavy
users, sessions) into --data-dir and reused by later runs. Every engine then mines pairs
(`tandem.pairs.mine.mine_pairs(path, cfg, contract, engine=...)`, or
`tandem.pairs.reference.mine_pairs_reference` for the pandas reference) in a fresh
subprocess, so each measurement has its own memory high-water mark: `os.wait4` gives the
worker's ru_maxrss (the parent holds no data and does not count), and the worker's process
tree (Spark's JVM included) is also sampled every 0.1 s. The pairs of all engines that ran on
one size must be identical (row count and a hash of the sorted rows); a mismatch is marked in
the table and makes the script exit non-zero. The Markdown table (command, machine, per-engine
figures, DuckDB speed-up over the reference) is printed and written to
benchmarks/results/pairs_scale.md.

Mining seconds time `mine_pairs` alone (Parquet read included); wall seconds the whole
subprocess (interpreter, imports, Spark start-up). The reference is pure Python per user:
sizes above --reference-max are reported as "skipped (memory)" instead of run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "pairs_scale.md"
ENGINES = ("duckdb", "spark", "reference")
UNITS = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "")
    scale = UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in UNITS else text
    try:
        return int(float(number) * scale)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"size {text!r}: use a number with an optional k/M/G, e.g. 50k or 10M") from e


def label(n: int) -> str:
    for suffix, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{suffix}"
    return str(n)


# --- workers: run in a fresh interpreter, print one JSON line --------------------------------


def worker_generate(path: str, n_events: int, seed: int) -> dict:
    from tandem.data.synth import write_logs

    tmp = Path(path + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    write_logs(tmp, n_events, seed=seed)
    tmp.rename(path)  # only complete logs are cached
    return {"seconds": time.perf_counter() - started}


def pairs_digest(pairs) -> str:
    """A hash of the pairs, independent of row order; scores to 12 decimals (the engines' fixed point)."""
    rows = pairs.sort_values(["item_id", "related_item_id"])
    text = "\n".join(
        f"{a}\t{b}\t{s:.12f}\t{n}"
        for a, b, s, n in zip(rows["item_id"], rows["related_item_id"], rows["score"], rows["support"])
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def worker_mine(engine: str, path: str) -> dict:
    from tandem.core.config import ContractConfig, PairsConfig

    cfg, contract = PairsConfig(), ContractConfig()
    if engine == "reference":
        from tandem.pairs.reference import mine_pairs_reference

        def mine():
            return mine_pairs_reference(path, cfg, contract)
    else:
        from tandem.pairs.mine import mine_pairs

        def mine():
            return mine_pairs(path, cfg, contract, engine=engine)

    started = time.perf_counter()
    pairs = mine()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "pairs": len(pairs), "hash": pairs_digest(pairs)}


# --- the parent: never loads data ----------------------------------------------------------


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_worker(args: list[str], timeout: float) -> dict:
    """Run this script as a worker; its result, wall seconds, wait4 ru_maxrss and sampled tree peak."""
    cmd = [sys.executable, __file__, "--worker", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = [0], threading.Event()

    def sample() -> None:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = [], []
    readers = [
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
        threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),
    ]
    for r in readers:
        r.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, nothing else's
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    for r in readers:
        r.join()
    wall = time.perf_counter() - started
    result = {"wall": wall, "maxrss_mb": usage.ru_maxrss / 1024, "tree_peak_mb": peak[0] / 2**20, "rc": proc.returncode}
    lines = [ln for ln in "".join(out).splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        result.update(json.loads(lines[-1]))
    else:
        tail = [ln for ln in "".join(err).splitlines() if ln.strip()][-1:] or ["no output"]
        result["error"] = ("timed out; " if wall >= timeout else "") + f"rc={proc.returncode}: {tail[0][:120]}"
    return result


def machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1M,10M,50M", help="events per log, comma-separated (k/M/G suffixes)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {ENGINES}")
    parser.add_argument(
        "--reference-max", type=parse_size, default=parse_size("1M"), help="largest size the pandas reference runs on"
    )
    parser.add_argument(
        "--spark-max", type=parse_size, default=parse_size("10M"), help="largest size local Spark runs on"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/tandem-pairs-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # internal: one measurement in this fresh process
        kind, *rest = args.worker
        if kind == "generate":
            result = worker_generate(rest[0], int(rest[1]), int(rest[2]))
        else:
            result = worker_mine(rest[0], rest[1])
        print(json.dumps(result))
        return 0

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; use {', '.join(ENGINES)}")
    args.data_dir.mkdir(parents=True, exist_ok=True)

    rows, notes, mismatch = [], [], False
    for n in sizes:
        path = args.data_dir / f"logs-{label(n)}-seed{args.seed}"
        if not path.exists():
            gen = run_worker(["generate", str(path), str(n), str(args.seed)], args.timeout)
            if "error" in gen:
                raise SystemExit(f"generating {label(n)} events failed: {gen['error']}")
            notes.append(f"generated {label(n)} events in {gen['seconds']:.1f} s (peak RSS {gen['maxrss_mb']:.0f} MB)")
            print(notes[-1], flush=True)
        results = {}
        for engine in engines:
            if engine == "reference" and n > args.reference_max:
                results[engine] = {"skipped": "skipped (memory)"}
            elif engine == "spark" and n > args.spark_max:
                results[engine] = {"skipped": "skipped (time: local Spark on this machine)"}
            else:
                results[engine] = run_worker(["mine", engine, str(path)], args.timeout)
            r = results[engine]
            print(
                f"{label(n)} {engine}: "
                + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}),
                flush=True,
            )
        digests = {(r["pairs"], r["hash"]) for r in results.values() if "hash" in r}
        same = len(digests) <= 1
        mismatch |= not same
        ref, duck = results.get("reference", {}), results.get("duckdb", {})
        speedup = f"{ref['seconds'] / duck['seconds']:.1f}x" if "seconds" in ref and "seconds" in duck else "n/a"
        for engine, r in results.items():
            if "seconds" in r:
                rows.append(
                    f"| {label(n)} | {engine} | {n / r['seconds']:,.0f} | {r['seconds']:.1f} | {r['wall']:.1f} | "
                    f"{r['maxrss_mb']:,.0f} | {r['tree_peak_mb']:,.0f} | {r['pairs']:,} | `{r['hash']}` | "
                    f"{'identical' if same else 'MISMATCH'} |"
                )
            else:
                status = r.get("skipped") or f"failed ({r['error']})"
                rows.append(f"| {label(n)} | {engine} | {status} | | | | | | | |")
        notes.append(f"{label(n)}: DuckDB / reference speed ratio {speedup}")

    lines = [
        "# Pair mining at scale",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {machine()}",
        "Data: `tandem.data.synth.write_logs` (seed "
        f"{args.seed}: Zipf items, lognormal users, sessions), PairsConfig() defaults.",
        "",
        "| events | engine | events/s | mine s | wall s | peak RSS MB (wait4) | peak tree RSS MB | pairs | hash "
        "| engines agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- {note}" for note in notes),
        "",
        "events/s = events / mine s. Peak RSS (wait4) is the worker's high-water mark; the tree figure "
        "adds its children (Spark's JVM), sampled every 0.1 s.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
