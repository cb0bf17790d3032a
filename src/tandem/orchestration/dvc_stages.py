"""The per-stage command line, made from `tandem.pipeline.registry`: one command per stage over one run
folder (what `dvc.yaml`'s stages run), one per declared group of stages.

    python -m tandem.orchestration.dvc_stages data --out data/completejourney --max-items 1000
        # raw data, then `dvc add data`
    python -m tandem.orchestration.dvc_stages load --logs L --catalog C
        [--params params.yaml] [--workdir work/dvc] [--run-id dvc]
    python -m tandem.orchestration.dvc_stages mine|validate|features|train|embed|index|evaluate|gate|promote ...
    python -m tandem.orchestration.dvc_stages publish --metrics metrics.json --recall recall.json
        # the group index, evaluate, gate, promote (registry.GROUPS), on the released model

`params.yaml` holds a RunConfig (the same keys as training/*.yaml), so `tandem run --config params.yaml`
accepts it too; `--feature-store` names the feature_store.yaml of the Feast store (tandem.data.features).
Errors in the data or the config exit with status 2 and a message.

DVC rewrites the one run folder on every repro, so a model must outlive it to be a champion: publish
releases the trained model to `runs/<run_id>-<hash of the model>/` (model, vectors, catalogue; a folder
that DVC does not own) and indexes it as that release's collection. The next repro's evaluate finds it
as the live alias's model (`tandem.release.index.model_dir_of`), like the service does; the Milvus database and
the Feast store are `persist` outputs, and releases whose collection retention dropped are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tandem.core import layout
from tandem.core.atomic import is_done
from tandem.core.setup import setup_process
from tandem.pipeline import registry, stages
from tandem.release.index import ItemIndex, built_by, collection_name

COMMANDS = (*registry.STAGES, *registry.GROUPS)  # the per-stage commands, in the loop's order


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tandem.orchestration.dvc_stages", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    data = sub.add_parser("data", help="write the Complete Journey data in the contract (logs/catalog.parquet)")
    data.add_argument("--out", type=Path, default=Path("data/completejourney"))
    data.add_argument("--max-items", type=int, default=1000, help="products kept, most households first (0 = all)")
    for name in COMMANDS:
        group = registry.GROUPS.get(name)
        what = (registry.STAGES[name].__doc__ or name).split("\n")[0] if name in registry.STAGES else ""
        stage = sub.add_parser(name, help=f"the stages {', '.join(group)} as one" if group else what)
        stage.add_argument("--params", type=Path, default=Path("params.yaml"), help="RunConfig YAML")
        stage.add_argument("--workdir", type=Path, default=Path("work/dvc"))
        stage.add_argument("--run-id", default="dvc")
        stage.add_argument(
            "--feature-store", type=Path, help="feature_store.yaml (default: features/ here, else the package's)"
        )
        if name == "load":
            stage.add_argument("--logs", type=Path, required=True)
            stage.add_argument("--catalog", type=Path, required=True)
        if name == "publish":
            stage.add_argument("--metrics", type=Path, default=Path("metrics.json"), help="flat metrics file")
            stage.add_argument("--recall", type=Path, default=Path("recall.json"), help="Recall@K per model, to plot")
    return parser


@dataclass(frozen=True)
class Release(stages.RunPaths):
    """The DVC run folder published as `release`: the summaries stay in runs/<run_id> (DVC's outputs), the
    collection is the release's, and runs/<release>/ holds the model that the gate and the service load."""

    release: str = ""

    @property
    def base_collection(self) -> str:
        return collection_name(self.release)


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()


def release(run: stages.RunPaths) -> Release:
    """Copy the run's model, vectors and catalogue to runs/<run_id>-<model hash>/ (once per model)."""
    if not is_done(run / "model"):  # written last by the model's save
        raise ValueError(f"no trained model in {run / 'model'}: run the train stage first")
    name = f"{run.run_id}-{_digest(run / 'model')[:12]}"
    target = layout.run_dir(run.workdir, name)
    if not is_done(target / "model"):
        tmp = layout.run_dir(run.workdir, f".{name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run / "model", tmp / "model")
        shutil.copytree(run / "vectors", tmp / "vectors")  # what the audit of the live collection reads
        (tmp / "data").mkdir()
        shutil.copy2(run / "data" / "catalog.parquet", tmp / "data" / "catalog.parquet")
        note = {"release": name, "from": str(run.dir), "created_at": datetime.now(UTC).isoformat()}
        (tmp / "release.json").write_text(json.dumps(note | {"train": run.summary("train")}, indent=2, default=str))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return Release(run.workdir, run.run_id, name)


def _prune_releases(run: Release, cfg) -> list[str]:
    """Delete the released folders whose collection retention has dropped (never the current one)."""
    with ItemIndex(cfg.index, run.workdir) as idx:
        kept = set(idx.run_collections())
    gone = []
    for folder in sorted(layout.runs_dir(run.workdir).glob(f"{run.run_id}-*")):
        if folder.name != run.release and not any(built_by(c, folder.name) for c in kept):
            shutil.rmtree(folder)
            gone.append(folder.name)
    return gone


def recall_curve(metrics: dict[str, dict[str, float]]) -> list[dict]:
    """Rows {model, k, recall} of every model's recall@k (the `plots:` data of dvc.yaml)."""
    rows = []
    for model, values in metrics.items():
        for name, value in values.items():
            k = re.fullmatch(r"recall@(\d+)", name)
            if k:
                rows.append({"model": model, "k": int(k.group(1)), "recall": float(value)})
    return sorted(rows, key=lambda r: (r["model"], r["k"]))


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def _publish(run: stages.RunPaths, cfg, metrics_path: Path, recall_path: Path) -> dict:
    from tandem.pipeline import run as loop

    published = release(run)
    with ItemIndex(cfg.index, run.workdir) as idx:
        live_before = idx.live()
    done = {}
    for name in registry.GROUPS["publish"]:  # index, evaluate, gate, promote
        done[name] = registry.run_stage(name, published, cfg, progress=False)
        if name == "gate" and live_before == published.collection:  # e.g. only gate params changed: the same
            reason = f"this model is already live ({live_before}): republished, nothing to gate"  # model, live
            done[name] = published.save("gate", done[name] | {"reason": reason})
    evaluated, decision, promoted = done["evaluate"], done["gate"], done["promote"]
    pruned = _prune_releases(published, cfg)
    loop.write(published, cfg)  # report.json / .md / .html in the run folder, as `tandem run` and the DAG write them
    flat = {
        "primary_metric": evaluated["primary_metric"],
        "test_pairs": evaluated["test_pairs"],
        **evaluated["metrics"],  # model / untrained / popularity / champion -> {recall@k, mrr@k}
        "gate": decision["decision"],
        "collection": published.collection,
        "champion_collection": evaluated["champion_collection"],
        "live_collection": promoted["live_collection"],
    }
    _write_json(metrics_path, flat)
    _write_json(recall_path, recall_curve(evaluated["metrics"]))
    return flat | {"release": published.release, "releases_pruned": pruned}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_process()
    try:
        if args.stage == "data":
            from tandem.data.adapters import completejourney

            completejourney.write(args.out, args.max_items or None)
            return 0
        from tandem.core.config import load_config
        from tandem.data.features import STORE_YAML_ENV

        cfg = load_config(args.params)
        if args.feature_store is not None:
            if not args.feature_store.is_file():
                raise ValueError(f"--feature-store {args.feature_store} does not exist")
            os.environ[STORE_YAML_ENV] = str(args.feature_store.resolve())  # read by tandem.data.features.store
        run = stages.RunPaths.of(args.workdir, args.run_id)
        if args.stage == "publish":
            summary = _publish(run, cfg, args.metrics, args.recall)
        else:
            inputs = {"logs_path": args.logs, "catalog_path": args.catalog} if args.stage == "load" else {}
            summary = registry.run_stage(args.stage, run, cfg, progress=False, **inputs)
    except ValueError as e:  # bad data or config: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("%s: %s", args.stage, json.dumps(summary, default=str)[:500])
    return 0


if __name__ == "__main__":
    sys.exit(main())
