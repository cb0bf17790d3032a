"""`tandem pairs`, `tandem train` and `tandem export-onnx`: the loop's steps one at a time."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tandem.cli.common import (
    BATCH,
    CONFIG,
    ENCODER,
    EPOCHS,
    FAMILY,
    MAX_STEPS,
    VERBOSE,
    WINDOW,
    Family,
    build_config,
    choice,
    option,
    setup_logging,
    user_errors,
)
from tandem.core.config import PairsConfig
from tandem.core.config_schema import FOLLOWS, PAIR_MODES
from tandem.core.engines import ENGINES

Engine, Mode, Follow = choice(ENGINES), choice(PAIR_MODES), choice(FOLLOWS)


def register(app: typer.Typer) -> None:
    app.command("pairs")(pairs_command)
    app.command("train")(train_command)
    app.command("export-onnx")(export_onnx_command)


def train_command(
    pairs: Path = option(..., "--pairs", help="training pairs Parquet/CSV (item_id, related_item_id[, query])"),
    catalog: Path = option(..., "--catalog", help="catalogue: CSV, Parquet or JSONL (loaded through the contract)"),
    out: Path = option(..., "--out", help="folder for the model/, checkpoints/ and TensorBoard logs"),
    valid_pairs: Path | None = option(None, "--valid-pairs", help="validation pairs for early stopping"),
    config: Path | None = CONFIG,
    family: Family | None = FAMILY,
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

    from tandem.data.contract import ContractError, load_catalog
    from tandem.models import build_loss, build_model
    from tandem.training.trainer import fit

    def read(path: Path) -> pd.DataFrame:
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)

    with user_errors(ContractError):
        flags = {"epochs": epochs, "max_steps": max_steps, "batch_size": batch_size, "item_encoder": item_encoder}
        cfg = build_config(config, family=family, **flags)
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


def pairs_command(
    logs: Path = option(..., "--logs", help="behaviour log: CSV or Parquet file, or a folder of them"),
    out: Path = option(..., "--out", help="pairs Parquet to write (item_id, related_item_id, score, support)"),
    engine: Engine = option(ENGINES[0], "--engine", help="duckdb (embedded, spills to disk) or spark (pyspark, Java)"),
    config: Path | None = CONFIG,
    mode: Mode | None = option(
        None, help="sequential (view, then click) or basket (co-purchase)", shown=PairsConfig.mode
    ),
    follow: Follow | None = option(None, help="what 'subsequently' means in sequential mode", shown=PairsConfig.follow),
    window_hours: float | None = WINDOW,
    session_gap_minutes: float | None = option(
        None, help="follow=session: gap that ends a session", shown=PairsConfig.session_gap_minutes
    ),
    next_k: int | None = option(None, help="follow=next_k: events after the view", shown=PairsConfig.next_k),
    min_support: int | None = option(None, help="min distinct users per pair", shown=PairsConfig.min_support),
    verbose: bool = VERBOSE,
) -> None:
    """Mine NoteLLM-2 co-occurrence pairs from a log (loaded through the data contract) into Parquet."""
    setup_logging(verbose)
    from tandem.data.contract import ContractError, load_logs
    from tandem.pairs.mine import mine_pairs

    with user_errors(ContractError):
        cfg = build_config(
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
        loaded.require_kept("logs", quarantine)
        pairs = mine_pairs(loaded.kept, cfg.pairs, cfg.contract, engine=engine, out=out)
    p = cfg.pairs
    how = "basket" if p.mode == "basket" else f"sequential, follow={p.follow}"
    typer.echo(
        f"pairs: {len(pairs)} pairs for {pairs['item_id'].nunique()} items ({engine}; {how}; "
        f"min_support={p.min_support}, low={p.low}, up={p.up}, top_t={p.top_t})"
    )
    typer.echo(f"out: {out}")
    typer.echo(f"quarantine: {quarantine}")


def export_onnx_command(
    model: Path = option(..., "--model", help="saved HotelMatch model folder, e.g. WORKDIR/runs/<run_id>/model"),
    opset: int | None = option(None, help="ONNX opset", shown="the exporter's"),
    int8: bool = option(True, "--int8/--no-int8", help="also write the dynamic int8 (QInt8 weights) graph"),
    verbose: bool = VERBOSE,
) -> None:
    """Export a HotelMatch query tower (+ projection, L2 norm) to MODEL/onnx/ in fp32 and int8, for
    tandem.models.onnx_export.OnnxQueryEncoder; tokenising stays in Python with the model's tokenizer."""
    setup_logging(verbose)
    from tandem.models.onnx_export import export_onnx

    with user_errors():
        out = export_onnx(model, opset=opset, int8=int8)
    meta = json.loads((out / "export.json").read_text())
    for precision, name in meta["files"].items():
        check = meta["check_on_samples"][precision]
        typer.echo(
            f"{precision}: {out / name} ({(out / name).stat().st_size / 2**20:.1f} MiB; on sample queries vs torch "
            f"max abs diff {check['max_abs_diff']:.1e}, min cosine {check['min_cosine']:.4f})"
        )
    typer.echo(f"opset {meta['opset']}, dim {meta['dim']}; metadata: {out / 'export.json'}")
