"""The loop's stages by name, in the loop's order: what the orchestrators (the DVC stages, the Airflow
tasks, the Kubeflow components) look a stage up in, instead of `getattr` on `tandem.pipeline.stages`."""

from __future__ import annotations

from collections.abc import Callable

from tandem.pipeline import stages

STAGES: dict[str, Callable[..., dict]] = {
    "load": stages.load,
    "mine": stages.mine,
    "validate": stages.validate,
    "features": stages.features,
    "train": stages.train,
    "embed": stages.embed,
    "index": stages.index,
    "evaluate": stages.evaluate,
    "gate": stages.gate,
    "promote": stages.promote,
}
WITH_PROGRESS = frozenset({"train", "embed", "evaluate"})  # the stages that take `progress=`


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
