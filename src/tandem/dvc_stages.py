"""Thin entry points for `dvc.yaml`: one command per pipeline stage over a fixed run folder.

    python -m tandem.dvc_stages data --out data/completejourney --max-items 1000   # raw data, then `dvc add data`
    python -m tandem.dvc_stages load --logs L --catalog C [--params params.yaml] [--workdir work/dvc] [--run-id dvc]
    python -m tandem.dvc_stages pairs|validate|features|train|embed ...
    python -m tandem.dvc_stages publish --metrics metrics.json ...   # index, evaluate, gate, promote

`params.yaml` holds a RunConfig (the same keys as training/*.yaml), so `tandem run --config params.yaml`
accepts it too. Errors in the data or the config exit with status 2 and a message.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

STAGES = ("load", "pairs", "validate", "features", "train", "embed", "publish")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tandem.dvc_stages", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    data = sub.add_parser("data", help="write the Complete Journey data in the contract (logs/catalog.parquet)")
    data.add_argument("--out", type=Path, default=Path("data/completejourney"))
    data.add_argument("--max-items", type=int, default=1000, help="products kept, most households first (0 = all)")
    for name in STAGES:
        stage = sub.add_parser(name)
        stage.add_argument("--params", type=Path, default=Path("params.yaml"), help="RunConfig YAML")
        stage.add_argument("--workdir", type=Path, default=Path("work/dvc"))
        stage.add_argument("--run-id", default="dvc")
        if name == "load":
            stage.add_argument("--logs", type=Path, required=True)
            stage.add_argument("--catalog", type=Path, required=True)
        if name == "publish":
            stage.add_argument("--metrics", type=Path, default=Path("metrics.json"), help="flat metrics file")
    return parser


def _publish(run, cfg, metrics_path: Path) -> dict:
    from tandem import stages

    stages.index(run, cfg)
    evaluated = stages.evaluate(run, cfg, progress=False)
    decision = stages.gate(run, cfg)
    promoted = stages.promote(run, cfg)
    from tandem import run as loop

    loop.write(run, cfg)  # report.json / .md / .html in the run folder, as `tandem run` and the DAG write them
    flat = {
        "primary_metric": evaluated["primary_metric"],
        "test_pairs": evaluated["test_pairs"],
        **evaluated["metrics"],  # model / untrained / popularity / champion -> {recall@k, mrr@k}
        "gate": decision["decision"],
        "live_collection": promoted["live_collection"],
    }
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(flat, indent=2) + "\n")
    return flat


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "PIL", "pymilvus", "milvus_lite", "filelock", "faiss", "matplotlib", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.stage == "data":
            from tandem.adapters import completejourney

            completejourney.write(args.out, args.max_items or None)
            return 0
        from tandem import stages
        from tandem.config import load_config

        cfg = load_config(args.params)
        run = stages.RunPaths.of(args.workdir, args.run_id)
        if args.stage == "load":
            summary = stages.load(run, args.logs, args.catalog, cfg)
        elif args.stage == "pairs":
            summary = stages.mine(run, cfg)
        elif args.stage in ("train", "embed"):
            summary = getattr(stages, args.stage)(run, cfg, progress=False)
        elif args.stage == "publish":
            summary = _publish(run, cfg, args.metrics)
        else:
            summary = getattr(stages, args.stage)(run, cfg)
    except ValueError as e:  # bad data or config: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("%s: %s", args.stage, json.dumps(summary, default=str)[:500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
