"""Demo quality and stage timings: `tandem run` on Complete Journey, every model against its baselines.

    .venv/bin/python benchmarks/demo_quality.py [--max-items 3000] [--workdir /tmp/tandem-bench]

Prints a Markdown table (and writes it to benchmarks/results/demo_quality.md) with the
command, the machine, Recall@K / MRR@10 of the trained model, the untrained encoder and
popularity on the same held-out pairs, and where the time went. Quality is compared within
one run, so the figures hold on a noisy shared machine; the seconds are indicative only.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from tandem.cli import setup_logging
from tandem.data.adapters import completejourney
from tandem.pipeline.run import run

RESULTS = Path(__file__).parent / "results" / "demo_quality.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-items", type=int, default=3000, help="0 = all products")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-bench"))
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    args = parser.parse_args()
    setup_logging(verbose=False)
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh Milvus: the first run is its own champion

    started = time.perf_counter()
    logs, catalog = completejourney.write(args.workdir / "data", args.max_items or None)
    report = run(logs, catalog, args.workdir, progress=False)
    total = time.perf_counter() - started

    import torch

    metrics, training = report["metrics"], report["training"]
    ratio = metrics["model"]["recall@100"] / max(metrics["untrained"]["recall@100"], 1e-9)
    wanted = ("recall@10", "recall@100", "recall@1000", "mrr@10", "ndcg@10", "short_query/recall@100")
    columns = [c for c in wanted if c in metrics["model"]]
    ci = report.get("ci", {})

    def cell(name: str, metric: str) -> str:
        value = metrics[name].get(metric, float("nan"))
        lo_hi = ci.get(name, {}).get(metric)
        return f"{value:.4f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi and metric == "recall@100" else "")

    lines = [
        "# Demo quality: Complete Journey",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), no GPU"
        if not torch.cuda.is_available()
        else "GPU",
        "",
        f"Data: {report['data']['catalog']['rows_kept']} items, {report['data']['logs']['rows_kept']} events kept; "
        f"pairs {report['pairs']['train']} train / {report['pairs']['valid']} valid / {report['pairs']['test']} test; "
        f"{report['eval']['query_items']} distinct query items.",
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *(f"| {name} | " + " | ".join(cell(name, c) for c in columns) + " |" for name in metrics),
        "",
        f"Protocol {report.get('eval', {}).get('protocol', 'hotelmatch')}; recall@100 with its 95 % bootstrap "
        "interval over test pairs; short_query = query item text under 50 tokens. "
        f"Gate: {report['gate']['decision']} ({report['gate']['reason']}).",
        "",
        f"Trained / untrained Recall@100: {ratio:.2f}x. Training: {training['steps']} steps, "
        f"{training['pairs_per_s']:.0f} pairs/s, final loss {training['final_loss']:.3f}, "
        f"best validation {report['eval']['primary_metric']} {training.get('best_metric') or float('nan'):.4f}.",
        "",
        "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings_s"].items()) + f"; total {total:.0f}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
