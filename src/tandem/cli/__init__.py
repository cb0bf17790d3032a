"""`tandem` command line: the only place where flags become typed configs.

One module per command group; each registers its commands on `app`. Importing this package
loads no model, data or service library: commands import what they need when they run.
"""

from __future__ import annotations

import typer

from tandem.cli import configs, deploy, kubeflow, loop, milvus, models, prompts, retention, rollouts, serving
from tandem.cli.common import build_config, setup_logging

__all__ = ["app", "build_config", "main", "setup_logging"]

app = typer.Typer(
    help="tandem: behaviour logs -> pairs -> validate -> train -> index -> evaluate -> gate.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from tandem import __version__

        typer.echo(f"tandem {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print tandem's version and exit"
    ),
) -> None:
    """Options before the command (only --version)."""


loop.register(app)
models.register(app)
serving.register(app)
app.add_typer(kubeflow.kfp_app, name="kfp")
app.add_typer(rollouts.rollout_app, name="rollout")
app.add_typer(milvus.milvus_app, name="milvus")
prompts.register(app)
configs.register(app)
deploy.register(app)
retention.register(app)
