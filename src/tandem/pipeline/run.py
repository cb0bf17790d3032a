"""One pass through the loop, stage after stage (see `tandem.pipeline.stages`), and its report.

Everything a run produces lands in `WORKDIR/runs/<run_id>/`; the Milvus database (Lite)
lives in `WORKDIR/milvus.db`, shared by runs so that the `live` alias can move between them.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tandem.core.config import RunConfig, config_to_dict
from tandem.pipeline import stages
from tandem.pipeline.report import write_report

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


def run(
    logs_path: str | Path,
    catalog_path: str | Path,
    workdir: str | Path,
    cfg: RunConfig = RunConfig(),
    run_id: str | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole loop once; returns the report (also written to runs/<run_id>/report.json)."""
    run = stages.RunPaths.of(workdir, run_id or new_run_id())
    timer = _Timer()
    with timer.stage("load"):
        stages.load(run, logs_path, catalog_path, cfg)
    with timer.stage("pairs"):
        stages.mine(run, cfg)
    with timer.stage("validate"):
        stages.validate(run, cfg)
    with timer.stage("features"):
        stages.features(run, cfg)
    with timer.stage("train"):
        stages.train(run, cfg, progress)
    with timer.stage("embed"):
        stages.embed(run, cfg, progress)
    with timer.stage("index"):
        stages.index(run, cfg)
    with timer.stage("evaluate"):
        stages.evaluate(run, cfg, progress)
    with timer.stage("gate"):
        stages.gate(run, cfg)
    with timer.stage("promote"):
        stages.promote(run, cfg)
    return write(run, cfg, dict(timer))


def redacted(cfg: RunConfig) -> dict:
    """The config as plain values (a recipe `--config` reads), secrets masked: reports are shared, tokens are not."""
    return config_to_dict(cfg, redact=True)


def write(run: stages.RunPaths, cfg: RunConfig, timings: dict[str, float] | None = None) -> dict:
    """Assemble report.json / report.md / report.html / recall.png from the stages' summaries."""
    loaded, ev, idx = (run.summary(s) for s in ("load", "evaluate", "index"))
    if run.summary("gate")["decision"] == "reject" and not (run / "promote.json").is_file():
        promoted = {"alias": cfg.index.alias, "live_collection": None}  # promotion skipped (Kubeflow's dsl.If)
    else:
        promoted = run.summary("promote")
    report = {
        "run_id": run.run_id,
        "created_at": datetime.now(UTC).isoformat(),
        "inputs": loaded["inputs"],
        "config": redacted(cfg),
        "data": {k: loaded[k] for k in ("logs", "catalog", "quarantine_dir")},
        "pairs": run.summary("pairs"),
        "validation": run.summary("validate"),
        "training": run.summary("train"),
        "metrics": ev["metrics"],
        "ci": ev["ci"],
        "latency_ms": ev["latency_ms"],
        "eval": {k: ev[k] for k in ("test_pairs", "query_items", "pool", "primary_metric", "protocol", "counts")},
        "gate": run.summary("gate"),
        "index": idx | {"alias": promoted["alias"], "live_collection": promoted["live_collection"]},
        "timings_s": timings or {},
    }
    paths = write_report(report, run.dir)
    report["report_files"] = {k: str(v) for k, v in paths.items()}
    run.save("report", report)
    return report
