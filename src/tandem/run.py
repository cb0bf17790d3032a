"""One pass through the loop: load -> pairs -> validate -> train -> embed -> index -> evaluate -> gate.

Everything a run produces lands in `WORKDIR/runs/<run_id>/`; the Milvus database (Lite)
lives in `WORKDIR/milvus.db`, shared by runs so that the `live` alias can move between them.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.config import RunConfig
from tandem.contract import load_catalog, load_logs
from tandem.evaluate import RetrievalEvaluator
from tandem.gate import decide
from tandem.index import ItemIndex, collection_name
from tandem.pairs import popularity, split_pairs
from tandem.report import write_report

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class _Timer(dict):
    @contextmanager
    def stage(self, name: str):
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        self[name] = round(time.perf_counter() - start, 2)
        log.info("stage %s done in %.1fs", name, self[name])


def _champion_dir(workdir: Path, collection: str) -> Path | None:
    for run_dir in sorted((workdir / "runs").glob("*")):
        if collection_name(run_dir.name) == collection and (run_dir / "model").is_dir():
            return run_dir / "model"
    return None


def run(
    logs_path: str | Path,
    catalog_path: str | Path,
    workdir: str | Path,
    cfg: RunConfig = RunConfig(),
    run_id: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole loop once; returns the report (also written to runs/<run_id>/report.json)."""
    import torch

    from tandem.model import DualEncoder
    from tandem.train import train
    from tandem.validate import validate_run

    workdir = Path(workdir).resolve()
    run_id = run_id or new_run_id()
    run_dir = workdir / "runs" / run_id
    (run_dir / "quarantine").mkdir(parents=True, exist_ok=True)
    (run_dir / "pairs").mkdir(exist_ok=True)
    timer = _Timer()
    report: dict = {
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "inputs": {"logs": str(logs_path), "catalog": str(catalog_path)},
        "config": asdict(cfg),
    }

    with timer.stage("load"):
        catalog = load_catalog(catalog_path, cfg.contract)
        logs = load_logs(logs_path, cfg.contract, catalog_ids=catalog.kept["item_id"])
        logs.quarantined.to_csv(run_dir / "quarantine" / "logs.csv", index=False)
        catalog.quarantined.to_csv(run_dir / "quarantine" / "catalog.csv", index=False)
        catalog.dropped_images.to_csv(run_dir / "quarantine" / "images.csv", index=False)
        report["data"] = {
            "logs": logs.counts(),
            "catalog": catalog.counts() | {"images_dropped": len(catalog.dropped_images)},
            "quarantine_dir": str(run_dir / "quarantine"),
        }
    items = catalog.kept

    with timer.stage("pairs"):
        split = split_pairs(logs.kept, cfg.pairs, cfg.split, cfg.contract)
        for name in ("train", "valid", "test"):
            getattr(split, name).to_parquet(run_dir / "pairs" / f"{name}.parquet", index=False)
        report["pairs"] = split.counts() | {"cutoff": split.cutoff.isoformat()}
        for name in ("train", "test"):
            if getattr(split, name).empty:
                raise ValueError(
                    f"no {name} pairs: the {'earlier' if name == 'train' else 'later'} part of the log has no "
                    "co-occurrence within the window and thresholds; widen --window-hours, lower the 'low' "
                    "threshold, change --test-fraction, or bring more logs"
                )

    with timer.stage("validate"):
        result = validate_run(logs.kept, items, split.all(), run_dir / "validation", cfg.contract, cfg.pairs)
        report["validation"] = {
            "success": result.success,
            "data_docs": str(result.docs_path),
            "suites": {k: v["success"] for k, v in result.suites.items()},
        }

    evaluator = RetrievalEvaluator.from_pairs(split.test, items, cfg.eval)
    metrics: dict[str, dict[str, float]] = {}
    torch.manual_seed(cfg.train.seed)  # the new layers' initial weights: same seed, same run
    model = DualEncoder(cfg.model)

    with timer.stage("baselines"):
        metrics["untrained"], _ = evaluator.score_encoder(model, items, progress=progress)
        pop = popularity(split.train_logs, cfg.contract).reindex(items["item_id"]).fillna(0).to_numpy()
        metrics["popularity"] = evaluator.score_static(pop)

    with timer.stage("train"):
        report["training"] = train(model, split.train, items, cfg.train, valid_pairs=split.valid, progress=progress)
        model.save(run_dir / "model")

    with timer.stage("embed"):
        metrics["model"], item_vecs = evaluator.score_encoder(model, items, progress=progress)

    name = collection_name(run_id)
    with ItemIndex(cfg.index, workdir) as index:
        with timer.stage("index"):
            n = index.write(name, items["item_id"].tolist(), item_vecs, items["title"].tolist())
            champion_collection = index.live()
        with timer.stage("champion"):
            champion_metrics = None
            if champion_collection:
                champion_dir = _champion_dir(workdir, champion_collection)
                if champion_dir is None:
                    raise ValueError(
                        f"the live alias points at {champion_collection}, whose model is not under {workdir}/runs; "
                        "run with the workdir that trained it, or re-point the alias"
                    )
                champion_metrics, _ = evaluator.score_encoder(DualEncoder.load(champion_dir), items, progress=progress)
                metrics["champion"] = champion_metrics
        gate = decide(cfg.eval.primary_metric, metrics["model"], champion_metrics, champion_collection, cfg.gate)
        if gate.decision == "promote":
            index.promote(name)
        report["index"] = {
            "uri": index.uri,
            "collection": name,
            "alias": cfg.index.alias,
            "vectors": n,
            "items": len(items),
            "live_collection": index.live(),
        }
    report["gate"] = gate.to_dict()
    report["metrics"] = metrics
    report["eval"] = {
        "test_pairs": len(split.test),
        "query_items": len(evaluator.query_texts),
        "pool": "catalogue minus the query item",
        "primary_metric": cfg.eval.primary_metric,
    }
    report["timings_s"] = dict(timer)
    paths = write_report(report, run_dir)
    report["report_files"] = {k: str(v) for k, v in paths.items()}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    return report


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (pd.Timestamp, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
