"""`tandem rollout status | start | advance | abort | rollback`: the staged A/B rollout of a challenger."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer

from tandem.cli.common import CONFIG, MILVUS, WORKDIR, build_config, option, user_errors

rollout_app = typer.Typer(
    help="Staged A/B rollout of a promoted challenger (5 -> 25 -> 50 -> 100 % -> live): status, advance, abort, "
    "rollback. A refused action exits with 1 and says why.",
    no_args_is_help=True,
)


@contextmanager
def _rollout_errors():
    """A refused action (stop rule, missing evidence, wrong state) exits 1; bad input exits 2."""
    from tandem.release.rollout import RolloutRefused

    with user_errors():
        try:
            yield
        except RolloutRefused as e:  # a ValueError too: caught before user_errors sees it
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
    if report.get("pending"):
        action = report["pending"].get("action")
        typer.echo(f"interrupted: {action} was decided but not confirmed; the next rollout command finishes it")


@rollout_app.command("status")
def rollout_status(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    enforce: bool = option(False, "--enforce", help="abort the rollout if its stop rule fired (for a cron)"),
    as_json: bool = option(False, "--json", help="the full status (with history) as JSON"),
    milvus_uri: str | None = MILVUS,
) -> None:
    """Stage, per-arm impressions / clicks / CTR from served events, and the stop-rule verdict."""
    import json

    from tandem.release import rollout

    with _rollout_errors():
        cfg = build_config(config, milvus_uri=milvus_uri)
        report = rollout.enforce(workdir, None, cfg) if enforce else rollout.status(workdir, None, cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        _show_rollout(report)


@rollout_app.command("start")
def rollout_start(
    challenger: str = option(
        ..., "--challenger", help="a collection, or a run id: its newest complete collection becomes the challenger"
    ),
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    milvus_uri: str | None = MILVUS,
) -> None:
    """Start a rollout by hand against the live champion (the pipeline starts one after a gate 'promote')."""
    from tandem.release import rollout
    from tandem.release.attempts import latest
    from tandem.release.index import ItemIndex

    with _rollout_errors():
        cfg = build_config(config, milvus_uri=milvus_uri)
        with ItemIndex(cfg.index, workdir) as idx:
            if idx.live() is None:
                raise ValueError(f"nothing is live in {idx.uri}: promote a first run before rolling one out")
            name = challenger if idx.client.has_collection(challenger) else latest(idx, challenger)
            rollout.start(workdir, idx.live(), name, cfg, index=idx)
        _show_rollout(rollout.status(workdir, None, cfg))


@rollout_app.command("advance")
def rollout_advance(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    force: bool = option(
        False, "--force", help="advance without enough evidence ('hold'); never overrides a fired stop rule"
    ),
    milvus_uri: str | None = MILVUS,
) -> None:
    """Next stage if the stop rule allows it; after 100 % the challenger goes live."""
    from tandem.release import rollout

    with _rollout_errors():
        cfg = build_config(config, milvus_uri=milvus_uri)
        state = rollout.advance(workdir, None, cfg, force=force)
    if state.status == "completed":
        typer.echo(f"rollout {state.experiment}: completed; {state.challenger} is live")
    else:
        typer.echo(f"rollout {state.experiment}: challenger at {state.share:g} %")


@rollout_app.command("abort")
def rollout_abort(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    reason: str = option("", "--reason", help="recorded in the rollout's history"),
    milvus_uri: str | None = MILVUS,
) -> None:
    """Stop a running rollout: every user back on the champion, live unchanged."""
    from tandem.release import rollout

    with _rollout_errors():
        state = rollout.abort(workdir, build_config(config, milvus_uri=milvus_uri), reason)
    typer.echo(f"rollout {state.experiment}: aborted; {state.champion} stays live")


@rollout_app.command("rollback")
def rollout_rollback(
    workdir: Path = WORKDIR,
    config: Path | None = CONFIG,
    milvus_uri: str | None = MILVUS,
) -> None:
    """After a completed rollout: the live alias back to the previous champion."""
    from tandem.release import rollout

    with _rollout_errors():
        state = rollout.rollback(workdir, build_config(config, milvus_uri=milvus_uri))
    typer.echo(f"rollout {state.experiment}: rolled back; {state.history[-1]['restored']} is live")
