"""What a Kubeflow component runs inside the image: `step` runs one stage of `tandem.pipeline.registry`
over a run folder, copying artifacts in and out (`ARTIFACTS`: what each holds; see
`tandem.orchestration.kubeflow` for the shared state). The components in `tandem.orchestration.kfp_pipeline`
call it."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from tandem.core.config import config_from_dict
from tandem.core.setup import setup_process, with_secrets
from tandem.pipeline.registry import run_stage

# What each artifact of the pipeline holds: names (files or folders) of the run folder. A component copies
# its input artifacts into the run folder, runs its stage, then fills its output artifacts from it.
ARTIFACTS: dict[str, tuple[str, ...]] = {
    "data": ("data", "quarantine", "load.json"),
    "pairs": ("pairs", "pairs.json"),
    "docs": ("validation", "validate.json"),
    "features": ("features.json",),
    "vision": ("align.json",),  # the tower it names stays in the workdir volume (WORKDIR/vision/<digest>/)
    "model": ("model", "train.json"),
    "vectors": ("vectors", "embed.json"),
    "report": ("evaluate.json", "evaluate"),  # evaluate/: per-pair arrays for the gate
}


# -------------------------------------------------------------------- inside a component
def step(
    stage: str,
    config: str,
    run_id: str,
    workdir: str = "",
    inputs: Iterable = (),
    outputs: Mapping[str, object] | None = None,
    **kwargs,
) -> dict:
    """Run the registry's stage `stage` the way a component does; returns the stage's summary.

    `inputs`: input artifacts (anything with a `.path`: a directory) copied into the run folder.
    `outputs`: artifact name (a key of ARTIFACTS) -> output artifact, filled after the stage with what
    ARTIFACTS names (missing ones are skipped). `workdir`: the shared workdir; empty = a private scratch
    folder, removed after. `progress` is off (a component logs, it has no terminal).
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
            shutil.copytree(artifact.path, run.dir, dirs_exist_ok=True)
        summary = run_stage(stage, run, cfg, progress=False, **kwargs)
        for name, artifact in (outputs or {}).items():
            target = Path(artifact.path)
            target.mkdir(parents=True, exist_ok=True)
            for item in ARTIFACTS[name]:
                source = run / item
                if source.is_dir():
                    shutil.copytree(source, target / item, dirs_exist_ok=True)
                elif source.is_file():
                    shutil.copy2(source, target / item)
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
