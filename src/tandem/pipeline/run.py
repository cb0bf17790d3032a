"""One pass through the loop, stage after stage (`tandem.pipeline.registry`), and its report.

Everything a run produces lands in `WORKDIR/runs/<run_id>/`; the Milvus database (Lite)
lives in `WORKDIR/milvus.db`, shared by runs so that the `live` alias can move between them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tandem.core.config import RunConfig, config_to_dict
from tandem.pipeline import registry, stages
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


# How a loop runs: (run folder, logs, catalogue, config, progress) -> what the caller gets back.
Runner = Callable[..., dict]


def run(
    logs_path: str | Path,
    catalog_path: str | Path,
    workdir: str | Path,
    cfg: RunConfig = RunConfig(),
    run_id: str | None = None,
    progress: bool = True,
    runner: Runner | None = None,
) -> dict:
    """Run the whole loop once into WORKDIR/runs/<run_id>/ (a new run id when none is given).

    In this process by default (`in_process`): returns the report (also written to runs/<run_id>/report.json).
    `runner` runs it another way and returns what it returns (`tandem.orchestration.kubeflow.run_local`:
    the Kubeflow pipeline on kfp.local)."""
    run = stages.RunPaths.of(workdir, run_id or new_run_id())
    return (runner or in_process)(run, logs_path, catalog_path, cfg, progress)


def in_process(run: stages.RunPaths, logs_path, catalog_path, cfg: RunConfig, progress: bool = True) -> dict:
    """The registry's stages one after the other, timed, then the report."""
    timer = _Timer()
    for name in registry.STAGES:
        inputs = {"logs_path": logs_path, "catalog_path": catalog_path} if name == "load" else {}
        with timer.stage(name):
            registry.run_stage(name, run, cfg, progress=progress, **inputs)
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
        "vision": run.summary("align") if (run / "align.json").is_file() else None,  # runs before the stage: none
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
