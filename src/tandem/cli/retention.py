"""`tandem retain`: the retention policy over a work folder (old runs' checkpoints, served-event parts)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from tandem.cli.common import CONFIG, MILVUS, VERBOSE, WORKDIR, build_config, option, setup_logging, user_errors
from tandem.core.config_release import RetentionConfig


def register(app: typer.Typer) -> None:
    app.command("retain")(retain_command)


def retain_command(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    keep_runs: int | None = option(
        None, "--keep-runs", help="newest trained runs that keep their checkpoints", shown=RetentionConfig.keep_runs
    ),
    compact_after_hours: float | None = option(
        None,
        "--compact-after-hours",
        help="compact served-event parts older than this",
        shown=RetentionConfig.compact_after_hours,
    ),
    dry_run: bool = option(False, "--dry-run", help="say what would be removed and compacted; change nothing"),
    runs: bool = option(True, "--runs/--no-runs", help="prune old runs' checkpoints (needs the index readable)"),
    events: bool = option(True, "--events/--no-events", help="compact the served-event parts"),
    as_json: bool = option(False, "--json", help="the summary as JSON"),
    milvus_uri: str | None = MILVUS,
    verbose: bool = VERBOSE,
) -> None:
    """Apply the retention policy (the recipe's `retention` section) to WORKDIR: compact the served-event parts
    older than --compact-after-hours into one file per hour (or day), then remove the checkpoints (training/
    checkpoints, checkpoints.superseded, best) of trained runs older than the newest --keep-runs. Model folders
    are never removed, nor anything of the live, challenger or rollback-target run."""
    setup_logging(verbose)
    import json

    from tandem.release.retention import retain

    with user_errors():
        cfg = build_config(config, milvus_uri=milvus_uri)
        given = {"keep_runs": keep_runs, "compact_after_hours": compact_after_hours}
        cfg = replace(cfg, retention=replace(cfg.retention, **{k: v for k, v in given.items() if v is not None}))
        summary = retain(workdir, cfg, dry_run=dry_run, runs=runs, events=events)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    verb = "would" if dry_run else "did"
    if "events" in summary:
        e = summary["events"]
        typer.echo(
            f"events: {e['files_before']} file(s) -> {e['files_after']}; {verb} compact {e['parts_compacted']} part(s) "
            f"into {e['buckets']} file(s) (leftovers of a killed compaction removed: {e['leftovers_removed']})"
        )
    if "runs" in summary:
        r = summary["runs"]
        typer.echo(
            f"runs: {r['runs']} trained; kept newest {', '.join(r['kept_newest']) or '-'}; "
            f"kept serving {', '.join(r['kept_serving']) or '-'}"
        )
        for run, folders in r["pruned"].items():
            typer.echo(f"  {verb} remove {run}: {', '.join(folders)}")
        typer.echo(f"  {r['bytes'] / 1e6:.1f} MB {'to free' if dry_run else 'freed'}")
