"""The loop on Kubeflow Pipelines: build, compile, run locally, submit.

The components and the pipeline are defined in `tandem.orchestration.kfp_pipeline`, the prompt
generator's pipeline (`tandem-promptgen`: teacher -> train_promptgen, both GPU tasks) in
`tandem.orchestration.kfp_promptgen` (`pipeline="promptgen"`); both import kfp, so this module
imports them on first use and stays cheap to import. The compiled YAML goes to `components/` of the
current folder (or `$TANDEM_COMPONENTS_DIR`); a checkout commits it there.

Each component calls `tandem.orchestration.kfp_steps.step`, which runs one stage of `tandem.pipeline.registry`
over a run folder:

- input artifacts are directories that mirror part of the run folder (the Dataset `data` holds
  `data/`, `quarantine/` and `load.json`, the Model holds `model/` and `train.json`, ...); they
  are copied into the run folder, the stage runs, and the files it wrote are copied into the
  output artifacts the same way.
- load, mine and validate use a private scratch run folder: they need nothing but their
  artifacts (and the catalogue's image files).
- from features on, steps use shared state (the Feast store, Milvus) in `WORKDIR/runs/<run_id>/` of the
  shared workdir (a ReadWriteMany volume in a cluster): the Milvus Lite file (or a Milvus
  server by URI) with its `live` alias, and the models of earlier runs, which `evaluate` needs
  to score the champion. So the shared workdir gets the same layout as `tandem run` gives.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.core.setup import without_secrets

DEFAULT_IMAGE = "tandem:latest"
DEFAULT_PVC = "tandem-workdir"
MOUNT_PATH = "/mnt/tandem"  # where the shared volume is mounted in every task; the default workdir
MILVUS_SECRET = "tandem-milvus"  # optional Kubernetes Secret with key `token` -> TANDEM_MILVUS_TOKEN
PIPELINE_YAML = "pipeline.yaml"
# pipeline name -> (definition module, compiled YAML in components/)
PIPELINES = {
    "tandem": ("tandem.orchestration.kfp_pipeline", PIPELINE_YAML),
    "promptgen": ("tandem.orchestration.kfp_promptgen", "promptgen.yaml"),
}
PROMPTGEN_OPTIONS = (  # the promptgen pipeline's parameters besides its source, workdir and pvc
    "n", "few_shot", "max_new_tokens", "teacher_batch_size", "temperature", "allow_download", "preset", "epochs", "seed"
)  # fmt: skip


# ------------------------------------------------------------------------- the definitions
def components_dir() -> Path:
    """`$TANDEM_COMPONENTS_DIR`, else `components/` of the current folder (a checkout's root, or a folder that
    `tandem init` wrote): where the compiled pipeline YAML is written and read."""
    return Path(os.environ.get("TANDEM_COMPONENTS_DIR") or "components")


def _pipeline_files(pipeline: str) -> tuple[str, str]:
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline {pipeline!r} is not one of {sorted(PIPELINES)}")
    return PIPELINES[pipeline]


def definitions(pipeline: str = "tandem"):
    """The module defining a pipeline's components (imports kfp): `tandem.orchestration.kfp_pipeline`,
    or `kfp_promptgen` for "promptgen"."""
    _pipeline_files(pipeline)
    if pipeline == "promptgen":
        from tandem.orchestration import kfp_promptgen

        return kfp_promptgen
    from tandem.orchestration import kfp_pipeline

    return kfp_pipeline


def build_pipeline(image: str = DEFAULT_IMAGE, pipeline: str = "tandem"):
    """The `tandem` (or `tandem-promptgen`) pipeline, a kfp GraphComponent whose components run in `image`."""
    if pipeline == "promptgen":
        return definitions("promptgen").build(image=image, mount_path=MOUNT_PATH)
    return definitions(pipeline).build(image=image, mount_path=MOUNT_PATH, milvus_secret=MILVUS_SECRET)


def compile(path: str | Path | None = None, image: str = DEFAULT_IMAGE, pipeline: str = "tandem") -> Path:
    """Compile a pipeline to IR YAML; by default to the committed `components/pipeline.yaml`
    (`components/promptgen.yaml` for pipeline="promptgen")."""
    from kfp import compiler

    path = Path(path) if path else components_dir() / _pipeline_files(pipeline)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image, pipeline), str(path))
    return path


def arguments(
    logs: str | Path,
    catalog: str | Path,
    workdir: str | Path = MOUNT_PATH,
    cfg: RunConfig = RunConfig(),
    run_id: str = "",
    pvc: str = DEFAULT_PVC,
) -> dict:
    """The pipeline's parameters. The config travels as JSON; secrets never do."""
    if cfg.index.token:
        raise ValueError(
            "the Milvus token must not travel as a pipeline parameter (it would be stored with the run); "
            f"put it in the Kubernetes Secret {MILVUS_SECRET!r} (key 'token'), or TANDEM_MILVUS_TOKEN locally"
        )
    return {
        "logs": str(logs),
        "catalog": str(catalog),
        "workdir": str(workdir),
        "config": json.dumps(asdict(cfg), sort_keys=True),
        "run_id": run_id,
        "pvc": pvc,
    }


def run_local(*args, **kwargs) -> dict:
    """`tandem.pipeline.run.run` (logs, catalog, workdir, cfg, run_id) with the whole pipeline on kfp.local,
    each component a subprocess of this interpreter.

    Returns the run folder's summaries (`WORKDIR/runs/<run_id>/`), plus `run_id` and
    `pipeline_root` (where kfp.local keeps the artifacts: `WORKDIR/kfp/`).
    """
    from tandem.pipeline.run import run

    return run(*args, runner=_on_kfp_local, **kwargs)


def _on_kfp_local(run, logs: str | Path, catalog: str | Path, cfg: RunConfig, progress: bool = False) -> dict:
    """A `tandem.pipeline.run.Runner`: the pipeline on kfp.local into the run folder `run`."""
    import kfp.local

    root = layout.kfp_root(run.workdir)
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    # the tokens come from the environment in every component, as in the cluster
    cfg = without_secrets(cfg)
    with warnings.catch_warnings():  # this interpreter stands in for the image, on purpose
        warnings.filterwarnings("ignore", "You may be attemping to run a task that uses custom")
        build_pipeline()(**arguments(logs, catalog, run.workdir, cfg, run.run_id))
    summaries = {p.stem: json.loads(p.read_text()) for p in sorted(run.dir.glob("*.json"))}
    return {"run_id": run.run_id, "run_dir": str(run.dir), "pipeline_root": str(root), **summaries}


def promptgen_arguments(
    teacher_model: str = "catalogue",
    catalog: str | Path = "",
    intents: str | Path = "",
    teacher_jsonl: str | Path = "",
    workdir: str | Path = MOUNT_PATH,
    pvc: str = DEFAULT_PVC,
    **options,
) -> dict:
    """The promptgen pipeline's parameters; `options` are its other parameters (n, few_shot,
    max_new_tokens, teacher_batch_size, temperature, allow_download, preset, epochs, seed).
    The source is checked here, so a bad combination fails before anything runs."""
    from tandem.promptgen.pipeline_steps import check_source
    from tandem.promptgen.train import preset_config

    paths = {"catalog": catalog, "intents": intents, "teacher_jsonl": teacher_jsonl}
    paths = {k: str(v) if v else "" for k, v in paths.items()}
    check_source(teacher_model, **paths)
    unknown = set(options) - set(PROMPTGEN_OPTIONS)
    if unknown:
        raise ValueError(f"unknown promptgen pipeline parameters {sorted(unknown)}; use some of {PROMPTGEN_OPTIONS}")
    preset_config(options.get("preset", "small"))
    for name in ("n", "epochs", "max_new_tokens", "teacher_batch_size"):
        if name in options and int(options[name]) < 1:
            raise ValueError(f"promptgen parameter {name}={options[name]}; use 1 or more")
    return {"teacher_model": teacher_model, **paths, "workdir": str(workdir), "pvc": pvc, **options}


def run_local_promptgen(workdir: str | Path, **arguments) -> dict:
    """Run the promptgen pipeline with kfp.local (`arguments`: as `promptgen_arguments`).

    Returns `model` (the trained folder, loadable with `tandem.promptgen.train.load`),
    `examples` (the teacher's folder), `teacher` (its summary), `promptgen` (the training
    metadata) and `pipeline_root` (`WORKDIR/kfp/`).
    """
    import kfp.local

    from tandem.promptgen.pipeline_steps import SUMMARY_FILE
    from tandem.promptgen.train import META_FILE

    workdir = Path(workdir).resolve()
    args = promptgen_arguments(workdir=workdir, **arguments)
    root = layout.kfp_root(workdir)
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with warnings.catch_warnings():  # this interpreter stands in for the image, on purpose
        warnings.filterwarnings("ignore", "You may be attemping to run a task that uses custom")
        run = build_pipeline(pipeline="promptgen")(**args)
    model = Path(run.output.path)
    examples = model.parents[1] / "teacher" / "examples"  # kfp.local: <root>/<run>/<task>/<output>
    return {
        "model": str(model),
        "examples": str(examples),
        "teacher": json.loads((examples / SUMMARY_FILE).read_text()),
        "promptgen": json.loads((model / META_FILE).read_text()),
        "pipeline_root": str(root),
    }


def submit(
    host: str,
    arguments: Mapping[str, object],
    experiment: str = "tandem",
    wait: bool = False,
    package: str | Path | None = None,
    run_name: str | None = None,
    timeout_s: int = 6 * 3600,
    pipeline: str = "tandem",
) -> dict:
    """Submit a run to the KFP API at `host` (the committed YAML of `pipeline` unless `package` is given).

    Authentication is the kfp client's: a kubeconfig / in-cluster service account, or
    `KF_PIPELINES_SA_TOKEN_PATH`; nothing is stored here.
    """
    import kfp

    package = Path(package) if package else components_dir() / _pipeline_files(pipeline)[1]
    if not package.is_file():
        raise ValueError(f"no compiled pipeline at {package}; run `tandem kfp compile` first")
    client = kfp.Client(host=host)  # contacts the server: created only when submitting
    result = client.create_run_from_pipeline_package(
        str(package), arguments=dict(arguments), run_name=run_name, experiment_name=experiment
    )
    out = {
        "host": host,
        "experiment": experiment,
        "run_id": result.run_id,
        "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}",
    }
    if wait:
        finished = client.wait_for_run_completion(result.run_id, timeout=timeout_s)
        out["state"] = str(getattr(finished, "state", ""))
    return out
