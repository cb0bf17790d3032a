"""Retrieval quality against the baselines (issue 16): the real pipeline on two public datasets, both families.

    .venv/bin/python benchmarks/quality.py [--quick] [--datasets completejourney,movielens]
        [--families hotelmatch,notellm2] [--ablation model.popularity_feature=off] [--workdir /tmp/tandem-quality]

For each dataset (Complete Journey, the demo data; MovieLens-100k, ratings >= 4 as clicks) and each model
family (hotelmatch: the default recipe; notellm2: training/notellm2_cpu.yaml), `tandem.pipeline.run.run` runs
the whole loop in a fresh workdir (so the gate compares with the baselines only), once with the recipe as it is
and once with its popularity-aware parts off (`--ablation`, repeatable KEY=VALUE recipe overrides). The table
rows are the trained model, the same recipe without the popularity parts, the untrained encoder and every
baseline, on the same split and pool: Recall@100, MRR@10 and nDCG@10 on all / warm / cold test pairs (cold =
the target item in no training pair), each with its 95 % bootstrap interval. Every goal of issue 16 is flagged
met or missed. Written to benchmarks/results/quality.md (`--quick`: quality_quick.md, a small slice for
iteration whose numbers say little). Quality is compared within one run; the seconds are indicative only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tandem.core.config import RunConfig, config_from_dict, config_to_dict, load_config
from tandem.data.adapters import completejourney, movielens
from tandem.pipeline.run import run

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
DATASETS = {  # name: (writer, max items full, max items --quick)
    "completejourney": (completejourney.write, 3000, 300),
    "movielens": (movielens.write, None, 300),
}
FAMILIES = {"hotelmatch": None, "notellm2": ROOT / "training" / "notellm2_cpu.yaml"}
METRICS = ("recall@100", "mrr@10", "ndcg@10")
SUBSETS = ("all", "warm", "cold")
BASELINES = ("untrained", "popularity", "cooccurrence", "bm25")
DEMO_LIMIT_S = 900  # issue 16: `make demo` within 15 minutes on this machine


def recipe(family: str, overrides: list[str], max_steps: int) -> RunConfig:
    """The family's default recipe, `overrides` (KEY=VALUE, VALUE as YAML) applied, optionally capped in steps."""
    import yaml

    path = FAMILIES[family]
    values = config_to_dict(load_config(path) if path else RunConfig(), redact=False)
    values["model"]["family"] = family
    for item in overrides:
        dotted, _, raw = item.partition("=")
        section, _, key = dotted.partition(".")
        if not key or section not in values or key not in values[section]:
            raise SystemExit(f"--ablation {item!r}: no recipe key {dotted!r} (expected SECTION.KEY=VALUE)")
        values[section][key] = raw if isinstance(values[section][key], str) else yaml.safe_load(raw)  # 'off' stays
    if max_steps:
        values["train"]["max_steps"] = max_steps
    return config_from_dict(values, "benchmarks/quality.py")


def one_run(data: tuple[Path, Path], workdir: Path, cfg: RunConfig, run_id: str, keep_training: bool = False) -> dict:
    """One fresh pipeline run; its metrics, intervals, counts, gate and seconds. `keep_training`: the
    run's training/ folder (checkpoints) survives the wipe, so an unchanged training resumes finished."""
    kept, aside = workdir / "runs" / run_id / "training", workdir.parent / f".{workdir.name}-training"
    shutil.rmtree(aside, ignore_errors=True)
    if keep_training and kept.is_dir():
        kept.rename(aside)
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh Milvus: no champion, the gate sees the baselines only
    if aside.is_dir():
        kept.parent.mkdir(parents=True)
        aside.rename(kept)
    started = time.perf_counter()
    report = run(*data, workdir, cfg, run_id=run_id, progress=False)
    return summary(workdir, run_id, report, time.perf_counter() - started)


def ablation_run(workdir: Path, run_id: str, cfg: RunConfig, new_id: str, overrides: list[str]) -> dict:
    """The same recipe with its popularity parts off, on the default run's data: its load / mine / validate /
    features outputs are copied, then the registry's stages from train on run (own alias: no champion).

    When every override is a `model.popularity_*` key, the term is attached after training (tandem.pipeline.
    model_term) and training does not depend on it: the default run's trained weights are reused without
    their popularity.json (what popularity_feature=off saves) and the stages run from embed on."""
    from tandem.pipeline import registry, stages
    from tandem.pipeline.run import write

    reuse = all(o.startswith("model.popularity_") for o in overrides)
    later = list(registry.STAGES)[list(registry.STAGES).index("embed" if reuse else "train") :]
    keep = {"data", "pairs", "quarantine", "validation", "load.json", "mine.json", "pairs.json", "validate.json",
            "features.json"} | ({"model", "train.json"} if reuse else set())  # fmt: skip
    source, target = workdir / "runs" / run_id, workdir / "runs" / new_id
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=lambda d, names: [n for n in names if d == str(source) and n not in keep])
    if reuse:
        (target / "model" / "popularity.json").unlink(missing_ok=True)
        trained = json.loads((target / "train.json").read_text())
        trained["popularity"] = {
            "off": "the default run's weights without the popularity term",
            "was": trained.get("popularity"),
        }
        (target / "train.json").write_text(json.dumps(trained))
    cfg = replace(cfg, index=replace(cfg.index, alias="ablation"), eval=replace(cfg.eval, baselines=()))
    run_paths, timings = stages.RunPaths.of(workdir, new_id), {}
    started = time.perf_counter()
    for name in later:
        clock = time.perf_counter()
        registry.run_stage(name, run_paths, cfg, progress=False)
        timings[name] = round(time.perf_counter() - clock, 1)
    report = write(run_paths, cfg, timings)
    return summary(workdir, new_id, report, time.perf_counter() - started)


def summary(workdir: Path, run_id: str, report: dict, seconds: float) -> dict:
    ev = json.loads((workdir / "runs" / run_id / "evaluate.json").read_text())
    return {
        "metrics": ev["metrics"],
        "ci": ev["ci"],
        "counts": ev["counts"],
        "protocol": ev["protocol"],
        "pool": ev["pool"],
        "unavailable": ev.get("unavailable", {}),
        "pairs": report["pairs"],
        "gate": {k: report["gate"][k] for k in ("decision", "reason")},
        "training": {k: report["training"].get(k) for k in ("steps", "pairs_seen", "final_loss", "seconds")},
        "timings_s": report["timings_s"],
        "seconds": round(seconds, 1),
        "items": report["data"]["catalog"]["rows_kept"],
        "events": report["data"]["logs"]["rows_kept"],
    }


# ------------------------------------------------------------------------------------------ table
def key(metric: str, subset: str) -> str:
    return metric if subset == "all" else f"{subset}/{metric}"


def value(result: dict, name: str, metric: str, subset: str = "all") -> float | None:
    got = result["metrics"].get(name, {}).get(key(metric, subset))
    return None if got is None or got != got else float(got)


def cell(result: dict, name: str, metric: str, subset: str) -> str:
    mean = value(result, name, metric, subset)
    if mean is None:
        return "n/a" if name in result.get("unavailable", {}) else "-"
    lo, hi = result["ci"].get(name, {}).get(key(metric, subset), [float("nan")] * 2)
    return f"{mean:.4f} [{lo:.3f}, {hi:.3f}]" if lo == lo else f"{mean:.4f}"


def table(default: dict, ablated: dict | None) -> list[str]:
    header = [f"{m} {s}" for m in METRICS for s in SUBSETS]
    lines = ["| ranker | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    rows = [("trained (default recipe)", default, "model")]
    if ablated:
        rows.append(("trained, popularity parts off", ablated, "model"))
    rows += [
        (name, default, name) for name in BASELINES if name in default["metrics"] or name in default["unavailable"]
    ]
    for label, result, name in rows:
        lines.append(f"| {label} | " + " | ".join(cell(result, name, m, s) for m in METRICS for s in SUBSETS) + " |")
    lines += [f"\n{name}: n/a, {why}" for name, why in default["unavailable"].items()]
    return lines


def goals(default: dict, ablated: dict | None) -> list[tuple[str, str, str]]:
    """(goal, met / missed / not measured, the figures) for one dataset and family."""
    out = []
    model = value(default, "model", "recall@100")
    scored = {n: value(default, n, "recall@100") for n in BASELINES}
    scored = {n: v for n, v in scored.items() if v is not None}
    best = max(scored, key=lambda n: (scored[n], n != "untrained"))  # a tie names the non-trivial baseline
    verdict = "met" if model >= scored[best] else "missed"
    out.append(("Recall@100 >= the best baseline (all pairs)", verdict,
                f"{model:.4f} vs {best} {scored[best]:.4f} ({model - scored[best]:+.4f})"))  # fmt: skip
    cold, untrained = value(default, "model", "recall@100", "cold"), value(default, "untrained", "recall@100", "cold")
    if cold is None or untrained is None:
        out.append(("cold Recall@100 >= 2x the untrained encoder's", "not measured", "no cold test pairs"))
    else:
        verdict = "met" if cold >= 2 * untrained else "missed"
        ratio = f"{cold / untrained:.2f}x" if untrained else "untrained 0"
        out.append(("cold Recall@100 >= 2x the untrained encoder's", verdict,
                    f"{cold:.4f} vs {untrained:.4f} ({ratio})"))  # fmt: skip
    plain = value(ablated, "model", "recall@100", "cold") if ablated else None
    if cold is None or plain is None:
        why = "no cold test pairs" if cold is None else "no ablation run"
        out.append(("cold Recall@100 not below the recipe without popularity parts", "not measured", why))
    else:
        hi = default["ci"]["model"][key("recall@100", "cold")][1]
        verdict = "met" if cold >= plain else ("missed (inside the 95 % interval)" if plain <= hi else "missed")
        out.append(("cold Recall@100 not below the recipe without popularity parts", verdict,
                    f"{cold:.4f} vs {plain:.4f} ({cold - plain:+.4f})"))  # fmt: skip
    has = all(value(default, "model", m) is not None for m in ("mrr@10", "ndcg@10"))
    out.append(("MRR@10 and nDCG@10 beside Recall@100", "met" if has else "missed", "in the table above"))
    return out


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{device}; load average {load:.1f} at the end (the machine was shared)"
    )


def commit() -> str:
    """The code measured: HEAD of this checkout (+ "with uncommitted changes"), or $QUALITY_CODE_AT."""
    if os.environ.get("QUALITY_CODE_AT"):
        return os.environ["QUALITY_CODE_AT"]
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True)
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return (head.stdout.strip() or "unknown") + (
            " with uncommitted changes in src/" if dirty.stdout.strip() else ""
        )
    except OSError:
        return "unknown"


def meta(args, started: datetime, seconds: float) -> dict:
    """What reproduces a results file: the command, the machine, the time, the code, the slice."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "time": f"{started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.0f} min",
        "code": commit(),
        "quick": args.quick,
        "slice": (f"at most {args.max_items} items per dataset; " if args.max_items else "")
        + (f"training capped at {args.max_steps or 30} steps" if args.quick or args.max_steps else "full training"),
        "ablation": ", ".join(args.ablation) or "not run",
        "keep_training": bool(getattr(args, "keep_training", False)),
    }


def render(results: dict, metas: list[dict]) -> str:
    lines = [
        "# Retrieval quality against the baselines (issue 16)" + (" — quick slice" if metas[0]["quick"] else ""),
        "",
    ]
    for m in metas:
        lines += [
            f"Command: `{m['command']}`  ",
            f"Machine: {m['machine']}  ",
            f"Time: {m['time']}; code at {m['code']}; {m['slice']}; popularity parts off in the ablation: "
            f"{m['ablation']}."
            + (
                " Training resumed from the checkpoints of an earlier run where its pairs and settings were"
                " unchanged (--keep-training): its seconds leave that training out."
                if m.get("keep_training")
                else ""
            ),
            "",
        ]
    lines += [
        "Recipes: hotelmatch = the default recipe (what `tandem demo` runs), notellm2 = training/notellm2_cpu.yaml.",
        "",
        "Each cell: mean [95 % percentile bootstrap interval over test pairs]. warm = the target item is in a "
        "training pair, cold = it is in none. Every row of one table is on the same split and pool.",
        "",
    ]
    summary = []
    for (dataset, family), (default, ablated) in results.items():
        c, p, gate = default["counts"], default["pairs"], default["gate"]
        lines += [
            f"## {dataset}, {family}",
            "",
            f"{default['items']} items, {default['events']} events; pairs {default['pairs']['train']} train / "
            f"{default['pairs']['valid']} valid / {default['pairs']['test']} test (test pairs dropped as trained: "
            f"{p.get('test_dropped_seen', '-')} the same, {p.get('test_dropped_reverse', '-')} reversed); "
            f"protocol {default['protocol']}, pool: {default['pool']}; {c['pairs_evaluated']} pairs evaluated "
            f"({c.get('warm', '-')} warm, {c.get('cold', '-')} cold), {c['queries']} query items.",
            "",
            *table(default, ablated),
            "",
            f"Gate (fresh workdir: against the baselines): **{gate['decision']}** — {gate['reason']}.",
            f"Training: {default['training']['steps']} steps, final loss {default['training']['final_loss']:.3f}; "
            f"run {default['seconds']:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in default["timings_s"].items())
            + ")" + (f"; the ablation run {ablated['seconds']:.0f} s." if ablated else "."),
            "",
        ]  # fmt: skip
        summary += [(dataset, family, *g) for g in goals(default, ablated)]
    demo = (results.get(("completejourney", "hotelmatch")) or [None])[0]
    lines += ["## Goals of issue 16", "", "| dataset | family | goal | verdict | figures |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {f} | {g} | **{v}** | {x} |" for d, f, g, v, x in summary]
    recorded = [(m, _parser().parse_known_args(shlex.split(m["command"])[2:])[0]) for m in metas]
    timed = [
        (m, a)
        for m, a in recorded
        if "completejourney" in a.datasets.split(",") and "hotelmatch" in a.families.split(",")
    ]
    fresh = not any(a.max_items or m.get("keep_training") for m, a in timed)  # the run that timed the demo data
    if demo and not metas[0]["quick"] and fresh:
        verdict = "met" if demo["seconds"] <= DEMO_LIMIT_S else "missed"
        lines.append(f"| completejourney | hotelmatch | the demo's run within 15 min | **{verdict}** | "
                     f"{demo['seconds']:.0f} s for `run` on the demo data (without building .venv) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _metas(saved: dict) -> list[dict]:
    return saved["meta"] if isinstance(saved["meta"], list) else [saved["meta"]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 items per dataset and 30 steps: for iteration")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--ablation", action="append", default=None, help="KEY=VALUE override that turns the "
                        "popularity-aware parts off (repeatable; default model.popularity_feature=off)")  # fmt: skip
    parser.add_argument("--no-ablation", action="store_true", help="skip the run without the popularity parts")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override of every "
                        "run, ablation included (repeatable): to measure a setting against the defaults")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=0, help="cap training steps (0 = the recipe's; --quick 30)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tandem-quality"))
    parser.add_argument("--max-items", type=int, default=0, help="cap items per dataset (0 = 3000 / all; --quick 300)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave the results file alone")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in WORKDIR/quality.json")
    keep = "keep each run's checkpoints: an unchanged training resumes finished (its seconds then leave it out)"
    parser.add_argument("--keep-training", action="store_true", help=keep)
    parser.add_argument("--merge", type=Path, nargs="+", help="render the quality.json of earlier runs into one file")
    return parser


def main() -> None:
    args = _parser().parse_args()
    if args.merge:
        loaded = [json.loads(p.read_text()) for p in args.merge]
        results = {tuple(k.split("/")): v for got in loaded for k, v in got["results"].items()}
        metas = [m for got in loaded for m in _metas(got)]
        out = RESULTS / ("quality_quick.md" if metas[0]["quick"] else "quality.md")
        out.write_text(render(results, metas))
        return print(f"written to {out}")
    args.ablation = [] if args.no_ablation else (args.ablation or ["model.popularity_feature=off"])
    datasets, families = args.datasets.split(","), args.families.split(",")
    for name, known in ((datasets, DATASETS), (families, FAMILIES)):
        if set(name) - set(known):
            raise SystemExit(f"unknown {sorted(set(name) - set(known))}; choose from {list(known)}")
    from tandem.cli import setup_logging

    setup_logging(verbose=False)
    started, clock = datetime.now(UTC), time.perf_counter()
    max_steps = args.max_steps or (30 if args.quick else 0)
    out = RESULTS / ("quality_quick.md" if args.quick else "quality.md")
    data = {}
    for dataset in datasets:
        writer, full, quick = DATASETS[dataset]
        data[dataset] = writer(args.workdir / "data" / dataset, args.max_items or (quick if args.quick else full))
    results: dict[tuple[str, str], list] = {}
    saved = args.workdir / "quality.json"
    earlier: list[dict] = []
    if args.resume and saved.is_file():  # runs already finished in this workdir are kept, not rerun
        got = json.loads(saved.read_text())
        results = {tuple(k.split("/")): v for k, v in got["results"].items()}
        earlier = _metas(got)
    text = render(results, earlier) if results else ""
    # every default recipe first, then the ablations: an interrupted benchmark still has the main rows
    plan = [(d, f, False) for d in datasets for f in families] + [(d, f, True) for d in datasets for f in families]
    for dataset, family, ablate in plan:
        if (ablate and not args.ablation) or (results.get((dataset, family)) or [None, None])[int(ablate)]:
            continue
        cfg = recipe(family, [*args.set, *(args.ablation if ablate else [])], max_steps)
        where, run_id = args.workdir / dataset / family, f"{dataset}-{family}"
        if ablate:
            got = ablation_run(where, run_id, cfg, f"{run_id}-ablation", args.ablation)
        else:
            got = one_run(data[dataset], where, cfg, run_id, args.keep_training)
        results.setdefault((dataset, family), [None, None])[int(ablate)] = got
        about = [*earlier, meta(args, started, time.perf_counter() - clock)]
        (args.workdir / "quality.json").write_text(
            json.dumps({"meta": about, "results": {f"{d}/{f}": r for (d, f), r in results.items()}}, indent=1)
        )
        text = render(results, about)
        if not args.no_write:  # after every run: partial results survive an interrupted benchmark
            out.write_text(text)
    print(text)
    if not args.no_write:
        print(f"written to {out}")


if __name__ == "__main__":
    main()
