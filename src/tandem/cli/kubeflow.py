"""`tandem kfp compile | run-local | submit`: the loop (or the prompt generator) as a Kubeflow pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tandem.cli.common import VERBOSE, WORKDIR, Recipe, choice, option, recipe_options, setup_logging, user_errors
from tandem.core.config import RunConfig
from tandem.core.setup import without_secrets
from tandem.orchestration.kubeflow import PIPELINES
from tandem.promptgen import PRESETS

Pipeline, Preset = choice(tuple(PIPELINES)), choice(PRESETS)

kfp_app = typer.Typer(
    help="Kubeflow Pipelines: compile the pipeline (components/*.yaml), run it locally with kfp.local, submit it.",
    no_args_is_help=True,
)

IMAGE = option("tandem:latest", envvar="TANDEM_IMAGE", help="image the components run in (see components/Dockerfile)")
PIPELINE = option("tandem", "--pipeline", help="tandem (the loop) or promptgen (the prompt generator, issue 7)")
TEACHER = option(
    "catalogue",
    "--teacher-model",
    help="promptgen: HF causal LM id or path (few-shot, GPU task), '' (--teacher-jsonl as it is) "
    "or 'catalogue' (OFFLINE DEMO teacher from --catalog)",
)
INTENTS = option(None, "--intents", help="promptgen: intents JSONL (intent, task[, target_items]) for an LM")
TEACHER_JSONL = option(None, "--teacher-jsonl", help="promptgen: teacher outputs, one JSON a line")
FEW_SHOT = option(
    "",
    "--few-shot",
    help='promptgen: {"search": [[intent, prompt], ...], ...} as JSON or a file',
    shown="the built-in examples",
)
PRESET = option("small", "--preset", help="promptgen: generator size tiny, small (~3.9M) or base (~100M)")
N_EXAMPLES = option(600, "-n", help="promptgen: examples (or intents) taken from the catalogue templates")
# the recipe flags of `kfp run-local` (`kfp submit` adds milvus_uri); the promptgen pipeline reads only epochs
KFP_FLAGS = ("epochs", "max_steps", "batch_size", "item_encoder", "min_improvement")


def _kfp_config(recipe: Recipe) -> RunConfig:
    """The recipe, minus the Milvus token: components read it from their environment (a Secret)."""
    return without_secrets(recipe.build())


def _epochs(recipe: Recipe) -> dict:
    """The promptgen pipeline's `epochs` parameter when --epochs was given."""
    epochs = recipe.flags["epochs"]
    return {"epochs": epochs} if epochs is not None else {}


def _needs(pipeline: str, **given) -> None:
    """The loop needs its inputs; typer cannot make an option required for one --pipeline only."""
    missing = [f"--{k}" for k, v in given.items() if pipeline == "tandem" and not v]
    if missing:
        raise ValueError(f"the tandem pipeline needs {' and '.join(missing)}")


@kfp_app.command("compile")
def kfp_compile(
    output: Path | None = option(
        None, "--output", "-o", help="where the YAML goes", shown="components/pipeline.yaml (promptgen.yaml)"
    ),
    image: str = IMAGE,
    pipeline: Pipeline = PIPELINE,
) -> None:
    """Compile a pipeline to KFP IR YAML (commit components/*.yaml after changing tandem.orchestration.kfp_*)."""
    from tandem.orchestration.kubeflow import compile as compile_pipeline

    with user_errors():
        typer.echo(f"compiled: {compile_pipeline(output, image=image, pipeline=pipeline)}")


@kfp_app.command("run-local")
@recipe_options(only=KFP_FLAGS)
def kfp_run_local(
    logs: Path | None = option(None, "--logs", help="behaviour log: CSV or Parquet (tandem pipeline)"),
    catalog: Path | None = option(None, "--catalog", help="catalogue: CSV, Parquet or JSONL"),
    workdir: Path = WORKDIR,
    run_id: str | None = option(None, help="run id", shown="a new one"),
    recipe: Recipe = None,  # --config and the KFP_FLAGS, see recipe_options
    verbose: bool = VERBOSE,
    pipeline: Pipeline = PIPELINE,
    teacher_model: str = TEACHER,
    intents: Path | None = INTENTS,
    teacher_jsonl: Path | None = TEACHER_JSONL,
    few_shot: str = FEW_SHOT,
    preset: Preset = PRESET,
    n: int = N_EXAMPLES,
) -> None:
    """Run a whole pipeline with kfp.local (a subprocess per component, no cluster, no Docker)."""
    setup_logging(verbose)
    from tandem.orchestration.kubeflow import run_local, run_local_promptgen

    if pipeline == "promptgen":
        with user_errors(RuntimeError):
            result = run_local_promptgen(
                workdir,
                teacher_model=teacher_model,
                catalog=catalog or "",
                intents=intents or "",
                teacher_jsonl=teacher_jsonl or "",
                n=n,
                few_shot=few_shot,
                preset=preset,
                **_epochs(recipe),
            )
        taught = result["teacher"]
        typer.echo(f"teacher ({taught['source']}): {taught['examples']} examples, {taught['quarantined']} quarantined")
        typer.echo(f"generator loss: {result['promptgen']['generator']['fit']['epoch_loss'][-1]:.4f}")
        typer.echo(f"model: {result['model']}")
        typer.echo(f"kfp artifacts: {result['pipeline_root']}")
        return
    with user_errors(RuntimeError):  # RuntimeError: a task failed; its log is above
        _needs(pipeline, logs=logs, catalog=catalog)
        result = run_local(logs, catalog, workdir, _kfp_config(recipe), run_id)
    gate, promoted = result["gate"], result.get("promote", {})
    typer.echo(f"gate: {gate['decision']} ({gate['reason']})")
    typer.echo(f"live collection: {promoted.get('live_collection', 'unchanged')}")
    typer.echo(f"run folder: {result['run_dir']}")
    typer.echo(f"kfp artifacts: {result['pipeline_root']}")


@kfp_app.command("submit")
@recipe_options(only=(*KFP_FLAGS, "milvus_uri"))
def kfp_submit(
    host: str = option(
        ..., "--host", envvar="TANDEM_KFP_HOST", help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80"
    ),
    logs: str = option("", "--logs", help="logs path as the pods see it (on the workdir volume)"),
    catalog: str = option("", "--catalog", help="catalogue path as the pods see it"),
    workdir: str = option("/mnt/tandem", "--workdir", help="the shared volume's mount path (or a folder in it)"),
    pvc: str = option("tandem-workdir", help="PersistentVolumeClaim (ReadWriteMany) mounted as the workdir"),
    run_id: str = option("", help="run id; empty: the load step makes a new one"),
    experiment: str = option("tandem", help="KFP experiment (promptgen: tandem-promptgen)"),
    package: Path | None = option(None, help="compiled pipeline", shown="components/pipeline.yaml (promptgen.yaml)"),
    wait: bool = option(False, "--wait", help="wait for the run to finish"),
    recipe: Recipe = None,  # --config and the KFP_FLAGS and milvus_uri, see recipe_options
    pipeline: Pipeline = PIPELINE,
    teacher_model: str = TEACHER,
    intents: str = option("", "--intents", help="promptgen: intents JSONL path as the pods see it"),
    teacher_jsonl: str = option("", "--teacher-jsonl", help="promptgen: teacher JSONL path as the pods see it"),
    few_shot: str = FEW_SHOT,
    preset: Preset = PRESET,
    n: int = N_EXAMPLES,
    allow_download: bool = option(
        False, "--allow-download", help="promptgen: the teacher may download a hub model (cached on the volume)"
    ),
) -> None:
    """Submit a compiled pipeline to a Kubeflow cluster. Credentials stay with the kfp client (kubeconfig,
    service account); the Milvus token comes from the cluster's Secret `tandem-milvus`, the Hub token for
    a gated teacher from `tandem-hf`, never from here."""
    from tandem.orchestration.kubeflow import arguments, promptgen_arguments, submit

    if experiment == "tandem" and pipeline == "promptgen":
        experiment = "tandem-promptgen"
    with user_errors():
        _needs(pipeline, logs=logs, catalog=catalog)
        if pipeline == "promptgen":
            options = {"n": n, "few_shot": few_shot, "preset": preset, "allow_download": allow_download}
            options |= _epochs(recipe)
            args = promptgen_arguments(teacher_model, catalog, intents, teacher_jsonl, workdir, pvc, **options)
        else:
            args = arguments(logs, catalog, workdir, _kfp_config(recipe), run_id, pvc)
        result = submit(host, args, experiment, wait, package, pipeline=pipeline)
    typer.echo(json.dumps(result, indent=2))
