"""Hard negatives from the live champion's index (`train.hard_negatives`, issue 16 item 1), measured the way a
user meets them: a first run of the recipe goes live; the next run on the same logs trains with hard negatives
mined from it. Nothing else differs (same pairs, split and seed), and the next run's evaluate scores the live
champion beside it on the same test pairs, so the two rows are a paired comparison (the gate's verdict below).

    .venv/bin/python benchmarks/hard_negatives.py [--datasets movielens,completejourney] [--family hotelmatch]
        [--hard 32] [--depth 20] [--set KEY=VALUE ...] [--workdir /tmp/tandem-hard] [--reuse]

`--reuse` keeps a first run already finished in WORKDIR. Writes benchmarks/results/hard_negatives.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import BASELINES, DATASETS, METRICS, SUBSETS, cell, commit, machine, one_run, recipe, summary  # noqa: E402

from tandem.pipeline import registry, stages  # noqa: E402
from tandem.pipeline.run import write  # noqa: E402

OUT = Path(__file__).parent / "results" / "hard_negatives.md"
KEEP = {"data", "pairs", "quarantine", "validation", "load.json", "mine.json", "pairs.json", "validate.json",
        "features.json"}  # fmt: skip


def next_run(workdir: Path, first_id: str, cfg, new_id: str) -> dict:
    """The stages from train to gate of a run on the first run's data (its load / pairs / validate / features
    outputs copied) in the same workdir, so the first run's collection is the live champion."""
    source, target = workdir / "runs" / first_id, workdir / "runs" / new_id
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=lambda d, names: [n for n in names if d == str(source) and n not in KEEP])
    run_paths, timings, started = stages.RunPaths.of(workdir, new_id), {}, time.perf_counter()
    names = list(registry.STAGES)
    for name in names[names.index("train") : names.index("gate") + 1]:  # not promote: the champion stays live
        clock = time.perf_counter()
        registry.run_stage(name, run_paths, cfg, progress=False)
        timings[name] = round(time.perf_counter() - clock, 1)
    report = write(run_paths, cfg, timings)
    result = summary(workdir, new_id, report, time.perf_counter() - started)
    trained = json.loads((target / "train.json").read_text())
    return result | {"mined": trained["hard_negatives"], "drawn": trained.get("hard_negatives_drawn", 0)}


def section(dataset: str, family: str, got: dict, hard: int) -> list[str]:
    header = [f"{m} {s}" for m in METRICS for s in SUBSETS]
    lines = [f"## {dataset}, {family}", ""]
    mined = got["mined"]
    lines.append(
        f"{got['items']} items; pairs {got['pairs']['train']} train / {got['pairs']['test']} test; "
        f"{got['counts']['pairs_evaluated']} test pairs ({got['counts'].get('warm', '?')} warm, "
        f"{got['counts'].get('cold', '?')} cold). Hard negatives from {mined.get('champion')}: "
        f"{mined.get('queries', 0)} of {mined.get('of_queries', '?')} training queries with a list "
        f"(depth {mined.get('depth')}), {mined.get('items', 0)} distinct items, mined in "
        f"{mined.get('seconds', '?')} s; "
        f"{got['drawn']} drawn by the trainer; next run {got['seconds']:.0f} s."
    )
    lines += ["", "| ranker | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    rows = [(f"next run, {hard} hard negatives per batch", "model"), ("champion (first run, none)", "champion")]
    rows += [(name, name) for name in BASELINES if name in got["metrics"]]
    for label, name in rows:
        lines.append(f"| {label} | " + " | ".join(cell(got, name, m, s) for m in METRICS for s in SUBSETS) + " |")
    lines += ["", f"Gate of the next run against the champion: **{got['gate']['decision']}** — {got['gate']['reason']}"]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="movielens,completejourney")
    parser.add_argument("--family", default="hotelmatch")
    parser.add_argument("--hard", type=int, default=32, help="train.hard_negatives of the next run")
    parser.add_argument("--depth", type=int, default=20, help="train.hard_negative_depth of the next run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, both runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-hard"))
    parser.add_argument("--reuse", action="store_true", help="keep a finished first run in WORKDIR")
    args = parser.parse_args()
    from tandem.cli import setup_logging

    setup_logging(verbose=False)
    started, clock = datetime.now(UTC), time.perf_counter()
    first_cfg = recipe(args.family, args.set, 0)
    cfg = recipe(
        args.family, [*args.set, f"train.hard_negatives={args.hard}", f"train.hard_negative_depth={args.depth}"], 0
    )
    command = "python benchmarks/hard_negatives.py " + " ".join(sys.argv[1:])
    lines = [
        "# Hard negatives from the live champion's index (issue 16 item 1)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Code at {commit()}; {started:%Y-%m-%d %H:%M} UTC. The recipe: the {args.family} default"
        + (f" with {', '.join(args.set)}" if args.set else "") + ". Each cell: mean [95 % percentile bootstrap "
        "interval over test pairs]; both model rows are on the same test pairs and pool.",
        "",
    ]  # fmt: skip
    for dataset in args.datasets.split(","):
        writer, full, _ = DATASETS[dataset]
        where, first_id = args.workdir / dataset / args.family, f"{dataset}-{args.family}"
        if not (args.reuse and (where / "runs" / first_id / "report.json").is_file()):
            data = writer(args.workdir / "data" / dataset, full)
            one_run(data, where, first_cfg, first_id)
        got = next_run(where, first_id, cfg, f"{first_id}-hard")
        lines += section(dataset, args.family, got, args.hard)
        lines[3] = f"Machine: {machine()}  "  # the load at the end of this dataset
        OUT.write_text("\n".join(lines + [f"Total {time.perf_counter() - clock:.0f} s."]) + "\n")
        print("\n".join(section(dataset, args.family, got, args.hard)))
    print(f"written to {OUT}")


if __name__ == "__main__":
    main()
