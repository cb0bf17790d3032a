"""Query -> item pairs through `tandem run` (issue 17 item 1): counts, and real queries vs the title proxy.

    .venv/bin/python benchmarks/query_pairs.py [--items 96] [--users 200] [--max-steps 60]

Data: `tandem.data.synth.make_dataset` (items "red lamp 7" with topics, content and drawn images; users
view and click items of one kind), plus a search query on 60 % of the clicks, typed in words of the
user's choice ("crimson lantern" for a red lamp: synonyms, so that a query rarely equals a title).
Three runs of the installed `tandem run` (the default HotelMatch recipe: all-MiniLM-L6-v2 item tower,
its first 2 layers as the query tower), each in its own workdir:

- `ratio 0.5`: the logs with queries, `pairs.query_ratio` 0.5 (the default);
- `ratio 0`: the same logs, query pairs left out of training (item pairs with title queries only);
  both are evaluated on the same held-out real queries;
- `no queries`: the logs without the query column: evaluation on the title proxy (other test pairs).

Writes benchmarks/results/query_pairs.md (counts, the evaluation's query kind, MRR@10 / Recall@10 with
95 % bootstrap intervals for the model and the baselines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.data.synth import make_dataset

RESULTS = Path(__file__).parent / "results" / "query_pairs.md"
WORDS = {
    "red": ["red", "crimson", "scarlet"], "green": ["green", "emerald", "olive"], "blue": ["blue", "navy", "azure"],
    "yellow": ["yellow", "golden", "lemon"], "black": ["black", "dark", "ebony"], "white": ["white", "ivory", "snow"],
    "shirt": ["shirt", "tee", "top"], "shoe": ["shoe", "sneaker", "boot"], "lamp": ["lamp", "light", "lantern"],
    "mug": ["mug", "cup", "beaker"],
}  # fmt: skip


def with_queries(logs_csv: Path, catalog_csv: Path, share: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    logs, catalog = pd.read_csv(logs_csv), pd.read_csv(catalog_csv)
    words = catalog.set_index("item_id")["title"].str.split()  # "red lamp 7"
    searched = (logs["event"] == "click") & (rng.random(len(logs)) < share)
    logs["query"] = None
    logs.loc[searched, "query"] = [
        f"{rng.choice(WORDS[words[i][0]])} {rng.choice(WORDS[words[i][1]])}" for i in logs.loc[searched, "item_id"]
    ]
    return logs


def tandem_run(logs: Path, catalog: Path, workdir: Path, recipe: Path, max_steps: int) -> tuple[dict, float]:
    command = [str(Path(sys.executable).parent / "tandem"), "run", "--logs", str(logs), "--catalog", str(catalog)]
    command += ["--workdir", str(workdir), "--config", str(recipe), "--max-steps", str(max_steps)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line and line[0] != " ")
    return json.loads(Path(lines["report.json"]).read_text()), time.perf_counter() - start


def cell(report: dict, model: str, metric: str) -> str:
    if model not in report["metrics"]:
        return "n/a"
    lo, hi = report["ci"][model][metric]
    return f"{report['metrics'][model][metric]:.4f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tandem-query-pairs"))
    args = parser.parse_args()
    logs_csv, catalog = make_dataset(args.work / "data", n_items=args.items, n_users=args.users)
    logs = with_queries(logs_csv, catalog, share=0.6)
    paths = {"queries": args.work / "logs_queries.csv", "none": args.work / "logs_none.csv"}
    logs.to_csv(paths["queries"], index=False)
    logs.drop(columns="query").to_csv(paths["none"], index=False)
    runs = {"ratio 0.5": ("queries", 0.5), "ratio 0": ("queries", 0.0), "no queries": ("none", 0.5)}
    reports, seconds = {}, {}
    for name, (logs_kind, ratio) in runs.items():
        recipe = args.work / f"recipe-{logs_kind}-{ratio}.yaml"
        values = {"pairs": {"query_ratio": ratio}, "train": {"batch_size": 32}}
        recipe.write_text(json.dumps(values | {"eval": {"n_boot": 500, "latency_queries": 8}}))
        workdir = args.work / f"work-{logs_kind}-{ratio}"
        reports[name], seconds[name] = tandem_run(paths[logs_kind], catalog, workdir, recipe, args.max_steps)
        print(name, f"{seconds[name]:.0f}s", reports[name]["eval"]["counts"].get("queries_are"), flush=True)

    cmd = "tandem run --logs LOGS --catalog catalog.csv --workdir W --config R --max-steps " + str(args.max_steps)
    out = [
        "# Query -> item pairs through `tandem run` (issue 17 item 1)",
        "",
        f"Command: `.venv/bin/python benchmarks/query_pairs.py --items {args.items} --users {args.users} "
        f"--max-steps {args.max_steps}`; each run is `{cmd}` (the installed CLI, default HotelMatch recipe, "
        "R sets pairs.query_ratio, train.batch_size 32, eval.n_boot 500).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs, no GPU; load average "
        f"at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Data: make_dataset({args.items} items, {args.users} users), {len(logs)} log rows, "
        f"{int(logs['query'].notna().sum())} clicks with a typed query (60 %, synonyms: 'crimson lantern').",
        "",
        "| run | query pairs train / test (queries) | trained on (query / item pairs) | evaluated on "
        "| pairs evaluated | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, report in reports.items():
        q, mix, counts = report["pairs"].get("query_pairs", {}), report["training"]["mix"], report["eval"]["counts"]
        out.append(
            f"| {name} | {q.get('train', 0)} / {q.get('test', 0)} ({q.get('train_queries', 0)} / "
            f"{q.get('test_queries', 0)}) | {mix['query_pairs_used']} / {mix['item_pairs_used']} | "
            f"{counts.get('queries_are')} | {counts['pairs_evaluated']} | {seconds[name]:.0f} |"
        )
    models = ("model", "untrained", "popularity", "bm25", "cooccurrence")
    for metric in ("mrr@10", "recall@10"):
        out += ["", f"{metric} (mean [95 % bootstrap interval]; the two first runs on the same real queries):", ""]
        out += ["| run | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for name, report in reports.items():
            out.append(f"| {name} | " + " | ".join(cell(report, m, metric) for m in models) + " |")
    RESULTS.write_text("\n".join(out) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
