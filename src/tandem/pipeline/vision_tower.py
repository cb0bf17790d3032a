"""Which vision tower a run's model starts from: the one the align stage trained (`tandem.pipeline.align`) when
the recipe names none. Apart from the stage's module so that `tandem.pipeline.stages` can import it (the
stage itself reads items through `stages`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tandem.core import layout
from tandem.core.atomic import is_done
from tandem.core.config import RunConfig


def aligned_folder(workdir: str | Path, digest: str) -> Path:
    return layout.vision_dir(workdir) / digest


def with_vision(run, cfg: RunConfig) -> RunConfig:
    """`cfg` with `model.vision_encoder` set to the tower the align stage trained for `run` (a `RunPaths`).

    `cfg` itself when the recipe names a vision encoder, or the stage aligned nothing (no images, `vision.align:
    off`, too few pairs) or has not run for this run folder (stages called one by one, older runs). The folder is
    found by the digest in align.json under this workdir, so a moved workdir still finds it."""
    summary = run / "align.json"
    if cfg.model.vision_encoder or not summary.is_file():
        return cfg
    digest = json.loads(summary.read_text()).get("digest")
    if not digest:
        return cfg
    folder = aligned_folder(run.workdir, digest)
    if not is_done(folder):
        raise ValueError(
            f"the vision tower the align stage trained for run {run.run_id} ({folder}) is missing or incomplete "
            "(removed by vision.keep, or the stage was interrupted): rerun the align stage for this run"
        )
    return replace(cfg, model=replace(cfg.model, vision_encoder=str(folder)))
