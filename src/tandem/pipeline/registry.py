"""The loop's stages by name, in the loop's order: what the orchestrators (the DVC stages, the Airflow
tasks, the Kubeflow components) and the per-stage command line look a stage up in, instead of `getattr`
on `tandem.pipeline.stages`.

Every step an orchestrator runs is named here: a stage (`STAGES`), a declared group of consecutive stages
that one orchestrator runs as one step (`GROUPS`), or a step around the loop that is no stage of it
(`BEFORE`, `AFTER`). `tests/test_stage_names.py` reads dvc.yaml, the daily DAG, the Kubeflow pipeline and
the command line and fails when one of them drifts from this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tandem.pipeline import stages
from tandem.pipeline.align import align

STAGES: dict[str, Callable[..., dict]] = {
    "load": stages.load,
    "mine": stages.mine,
    "validate": stages.validate,
    "features": stages.features,
    "align": align,  # a vision tower trained on the catalogue's photos, when the recipe names none
    "train": stages.train,
    "embed": stages.embed,
    "index": stages.index,
    "evaluate": stages.evaluate,
    "gate": stages.gate,
    "promote": stages.promote,
}
WITH_PROGRESS = frozenset({"align", "train", "embed", "evaluate"})  # the stages that take `progress=`

# Groups: one orchestrator step that runs these stages, in this order. DVC's `publish` is one stage because
# its persisted output, the Milvus database with the live alias, can belong to one DVC stage only; it also
# releases the model to a folder DVC does not own (tandem.orchestration.dvc_stages).
GROUPS: dict[str, tuple[str, ...]] = {
    "publish": ("index", "evaluate", "gate", "promote"),
}
# Steps around the loop, no stage of it: the daily DAG's ingest of the interval's log partitions (before
# load), and the report (report.json / .md / .html from the stages' summaries, after promote).
BEFORE: tuple[str, ...] = ("ingest",)
AFTER: tuple[str, ...] = ("report",)


def stage(name: str) -> Callable[..., dict]:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    return STAGES[name]


def run_stage(name: str, run: stages.RunPaths, cfg, **kwargs) -> dict:
    """Run stage `name` over `run`; `progress` is passed only to the stages that take it."""
    progress = kwargs.pop("progress", None)
    if progress is not None and name in WITH_PROGRESS:
        kwargs["progress"] = progress
    return stage(name)(run, cfg=cfg, **kwargs)


def expand(steps: Iterable[str]) -> list[str]:
    """The stages that orchestrator `steps` run, in their order: a group becomes its stages, the steps
    around the loop drop out; an unknown name is an error that names the known ones."""
    out: list[str] = []
    for name in steps:
        if name in GROUPS:
            out.extend(GROUPS[name])
        elif name in STAGES:
            out.append(name)
        elif name not in BEFORE + AFTER:
            known = [*STAGES, *GROUPS, *BEFORE, *AFTER]
            raise ValueError(f"unknown step {name!r}: use a stage or a group of tandem.pipeline.registry ({known})")
    return out


def drift(steps: Iterable[str]) -> str:
    """'' when `steps` run the whole loop in order, with `BEFORE` steps only first and `AFTER` steps only
    last; otherwise what is wrong, for a test's message."""
    steps = list(steps)
    try:
        expanded = expand(steps)
    except ValueError as e:
        return str(e)
    if expanded != list(STAGES):
        return f"{steps} run the stages {expanded}, not the loop {list(STAGES)}"
    inner = [i for i, s in enumerate(steps) if s not in BEFORE + AFTER]
    misplaced = [s for i, s in enumerate(steps) if (s in BEFORE and i > inner[0]) or (s in AFTER and i < inner[-1])]
    return f"{misplaced} must come before load / after promote" if misplaced else ""
