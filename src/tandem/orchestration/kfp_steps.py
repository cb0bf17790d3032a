"""What a Kubeflow component runs inside the image: `step` runs one stage of `tandem.pipeline.stages`
over a run folder, copying artifacts in and out (see `tandem.orchestration.kubeflow` for the layout of
artifacts and shared state). The components in `tandem.orchestration.kfp_pipeline` call it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from tandem.core.config import config_from_dict
from tandem.core.setup import setup_process, with_secrets
from tandem.pipeline.registry import run_stage


# -------------------------------------------------------------------- inside a component
def step(
    stage: str,
    config: str,
    run_id: str,
    inputs: Iterable[str] = (),
    outputs: Mapping[str, Iterable[str]] | None = None,
    workdir: str = "",
    **kwargs,
) -> dict:
    """Run `tandem.pipeline.stages.<stage>` the way a component does; returns the stage's summary.

    `inputs`: artifact directories copied into the run folder. `outputs`: artifact directory ->
    names (files or folders) in the run folder copied there after the stage (missing ones are
    skipped). `workdir`: the shared workdir; empty = a private scratch folder, removed after.
    """

    from tandem.pipeline import stages

    setup_process(offline_hub=True)
    if not run_id:
        raise ValueError("run_id is empty; the load component gives every later step one")
    cfg = config_from_dict(json.loads(config or "{}"), "config parameter")
    cfg = with_secrets(cfg)
    scratch = None if workdir else tempfile.mkdtemp(prefix="tandem-step-")
    try:
        run = stages.RunPaths.of(workdir or scratch, run_id)
        run.dir.mkdir(parents=True, exist_ok=True)
        for artifact in inputs:
            shutil.copytree(artifact, run.dir, dirs_exist_ok=True)
        summary = run_stage(stage, run, cfg, **kwargs)
        for artifact, names in (outputs or {}).items():
            Path(artifact).mkdir(parents=True, exist_ok=True)
            for name in names:
                source, target = run / name, Path(artifact) / name
                if source.is_dir():
                    shutil.copytree(source, target, dirs_exist_ok=True)
                elif source.is_file():
                    shutil.copy2(source, target)
        return summary
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def numbers(summary: Mapping, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a (nested) summary as flat `a.b` names, for Metrics.log_metric."""
    flat: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= numbers(value, f"{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
            flat[name] = float(value)
    return flat
