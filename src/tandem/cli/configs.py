"""`tandem config show | validate`: the effective configuration, and a recipe check for CI."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tandem.cli.common import Recipe, recipe_options, user_errors

config_app = typer.Typer(
    help="The configuration: `show` prints what a command would run with, `validate` checks recipes.",
    no_args_is_help=True,
)
ENVIRONMENT = ("TANDEM_MILVUS_URI", "TANDEM_MILVUS_TOKEN")


def as_dict(cfg) -> dict:
    """Plain YAML-able values with the Milvus token masked."""
    from tandem.core import config

    return config.config_to_dict(cfg, redact=True)


@config_app.command("show")
@recipe_options
def config_show(ctx: typer.Context, recipe: Recipe = None) -> None:
    """Print the effective configuration as YAML: the built-in defaults, then the recipe (--config), then
    the flags of `tandem run`, then the environment (TANDEM_MILVUS_URI, TANDEM_MILVUS_TOKEN; the token
    is shown as ***). The output is a recipe `--config` reads."""
    import yaml

    with user_errors():
        cfg = recipe.build()
    typed = [k for k in recipe.flags if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"]
    given = [f"--{k.replace('_', '-')} {recipe.flags[k]}" for k in typed]
    env = [name for name in ENVIRONMENT if os.environ.get(name)]
    typer.echo(f"# recipe: {recipe.config or 'none (built-in defaults)'}")
    typer.echo(f"# flags: {', '.join(given) or 'none'}")
    typer.echo(f"# environment: {', '.join(env) or 'none'}")
    typer.echo(yaml.safe_dump(as_dict(cfg), sort_keys=False, default_flow_style=False).rstrip())


@config_app.command("validate")
def config_validate(
    files: list[Path] = typer.Argument(..., help="YAML recipes to check (e.g. training/*.yaml params.yaml)"),
) -> None:
    """Check recipes against the schema: each valid file prints `FILE: ok`; the first bad one prints the key,
    the value and what is allowed, and exits with 2."""
    from tandem.core.config import load_config

    for path in files:
        with user_errors():
            load_config(path)
        typer.echo(f"{path}: ok")


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
