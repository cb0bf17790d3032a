"""What every command shares: logging, the recipe + flags -> RunConfig step, option helpers, errors."""

from __future__ import annotations

import functools
import inspect
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import typer
from typer.core import HAS_RICH

from tandem.core.config import EvalConfig, ModelConfig, PairsConfig, RunConfig, SplitConfig, TrainConfig, load_config
from tandem.core.config_release import GateConfig
from tandem.core.config_schema import FAMILIES, PROTOCOLS
from tandem.core.setup import setup_process, with_secrets


def setup_logging(verbose: bool) -> None:
    """Log lines go to stderr (stdout stays for results, e.g. `tandem run --json`); see `tandem.core.setup`.
    No HF_HUB_OFFLINE here: Hub ids download where the machine can reach the Hub; set HF_HUB_OFFLINE=1
    yourself to use the local cache only."""
    setup_process(logging.DEBUG if verbose else logging.INFO)


def text(help_text: str) -> str:
    """A help text shown as written: Typer's rich markup would read `[...]` (JSON, `[default: x]`) as tags."""
    if not HAS_RICH:
        return help_text
    from rich.markup import escape

    return escape(help_text)


def option(default, *decls: str, help: str, shown: object = None, **kwargs):  # noqa: A002 (typer's name)
    """typer.Option with an escaped help text; `shown` is the default --help prints when the option's own
    default is None (None = keep the recipe's value, whose built-in default is `shown`)."""
    if shown is not None:
        kwargs["show_default"] = str(shown)
    return typer.Option(default, *decls, help=text(help), **kwargs)


def choice(values: tuple[str, ...]):
    """A Literal of `values`: --help lists them and the parser refuses others, naming the allowed ones."""
    return Literal[tuple(values)]


Family = choice(FAMILIES)
Protocol = choice(PROTOCOLS)

# Which recipe section each flag overrides.
SECTIONS = {
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
    "protocol": "eval",
    "milvus_uri": "index",
    "item_encoder": "model",
    "family": "model",
    "min_improvement": "gate",
}


def build_config(config: Path | None, **flags) -> RunConfig:
    """The recipe (or the defaults), then every flag that was given on top of it, then the environment's
    secrets. Every value passes the schema's checks; a bad one is a ValueError naming it."""
    cfg = load_config(config) if config else RunConfig()
    for name, value in flags.items():
        if value is not None:
            section = SECTIONS[name]
            try:
                cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
            except ValueError as e:
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: {e}") from None
    return with_secrets(cfg)  # secrets come from the environment, never from files


# Options shared by several commands; None = keep the recipe's (or the built-in) value.
CONFIG = option(None, "--config", help="YAML recipe (see training/); flags override it")
EPOCHS = option(None, help="training epochs over the train pairs", shown=TrainConfig.epochs)
MAX_STEPS = option(None, help="cap on optimiser steps (0 = no cap)", shown=TrainConfig.max_steps)
BATCH = option(None, help="pairs per batch, the in-batch negatives", shown=TrainConfig.batch_size)
WINDOW = option(None, help="'subsequently' = within this many hours", shown=PairsConfig.window_hours)
TEST_FRACTION = option(
    None, help="latest share of the log's time span used for test pairs", shown=SplitConfig.test_fraction
)
PRIMARY = option(None, help="metric the gate compares, e.g. mrr@10", shown=EvalConfig.primary_metric)
PROTOCOL = option(None, help="evaluation protocol (auto: by model family)", shown=EvalConfig.protocol)
MILVUS = option(None, envvar="TANDEM_MILVUS_URI", help="Milvus server URI", shown="Milvus Lite file WORKDIR/milvus.db")
ENCODER = option(
    None, help="item tower: HF id or local path", shown=ModelConfig.item_encoder or "bundled all-MiniLM-L6-v2"
)
FAMILY = option(None, help="seed model family", shown=ModelConfig.family)
MARGIN = option(None, help="required improvement over the champion", shown=GateConfig.min_improvement)
WORKDIR = option(Path("work"), "--workdir", help="where runs, reports and the Milvus Lite file go")
VERBOSE = option(False, "--verbose", "-v", help="debug logging")

# The recipe options of `tandem run`, `tandem demo` and `tandem config show`, in --help order:
# name -> (type, option). Every name but `config` is a flag of SECTIONS.
RECIPE_OPTIONS = {
    "config": (Path | None, CONFIG),
    "epochs": (int | None, EPOCHS),
    "max_steps": (int | None, MAX_STEPS),
    "batch_size": (int | None, BATCH),
    "window_hours": (float | None, WINDOW),
    "test_fraction": (float | None, TEST_FRACTION),
    "primary_metric": (str | None, PRIMARY),
    "protocol": (Protocol | None, PROTOCOL),
    "milvus_uri": (str | None, MILVUS),
    "item_encoder": (str | None, ENCODER),
    "family": (Family | None, FAMILY),
    "min_improvement": (float | None, MARGIN),
}


@dataclass(frozen=True)
class Recipe:
    """What a command got of the recipe options: the --config file and each flag (None = not given)."""

    config: Path | None
    flags: dict

    def build(self) -> RunConfig:
        return build_config(self.config, **self.flags)


def recipe_options(command=None, *, only: tuple[str, ...] = ()):
    """Give a Typer command the recipe options in place of its parameter `recipe: Recipe`, which then
    receives them as one Recipe: the options are declared once, here, for every command that has them.
    `@recipe_options(only=(...))`: --config and just the flags named, in RECIPE_OPTIONS order."""
    if command is None:
        return functools.partial(recipe_options, only=only)
    unknown = set(only) - set(RECIPE_OPTIONS)
    if unknown:
        raise TypeError(f"recipe_options(only=...): {sorted(unknown)} are not recipe options")
    declared = {name: o for name, o in RECIPE_OPTIONS.items() if not only or name == "config" or name in only}
    signature = inspect.signature(command, eval_str=True)
    if "recipe" not in signature.parameters:
        raise TypeError(f"{command.__name__} has no parameter `recipe` for the recipe options")
    params = []
    for param in signature.parameters.values():
        if param.name == "recipe":
            params += [
                inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
                for name, (kind, opt) in declared.items()
            ]
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def with_recipe(**kwargs):
        given = {name: kwargs.pop(name) for name in declared}
        return command(recipe=Recipe(given.pop("config"), given), **kwargs)

    with_recipe.__signature__ = signature.replace(parameters=params)
    with_recipe.__annotations__ = {p.name: p.annotation for p in params}  # Typer reads these as type hints
    return with_recipe


@contextmanager
def user_errors(*kinds: type[Exception]):
    """Bad input or config (ContractError, DataValidationError, ...) ends with a message, not a traceback."""
    try:
        yield
    except (ValueError, *kinds) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
