"""`tandem init DIR`: a deployment folder (DAG files, feature repo, DVC pipeline, recipes) from the package."""

from __future__ import annotations

from pathlib import Path

import typer

from tandem.cli.common import option, user_errors


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)


def init_command(
    folder: Path = typer.Argument(..., help="the folder to write into (created if needed)"),
    force: bool = option(False, "--force", help="overwrite files that exist (default: write nothing then)"),
) -> None:
    """Write a deployment folder: the Airflow DAG files (dags/, importing their DAGs from the installed tandem),
    the Feast feature repo (features/), dvc.yaml with params.yaml and its plot template, and the recipes
    (training/). Prints each file written."""
    from tandem.orchestration import deploy

    with user_errors():
        written = deploy.write(folder, force=force)
    for line in written:
        typer.echo(line)
    typer.echo(f"{len(written)} entries in {folder}; next: cd {folder} && tandem kfp compile; Airflow: its dags/")
