"""`tandem --help` and `tandem COMMAND --help` for every command: each option's text shown whole, its
default visible, enumerated choices listed and refused by the parser with the allowed values; --version;
the old `tandem generate` name hidden but working; no forced offline mode."""

from __future__ import annotations

import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tandem.cli import app, setup_logging
from tandem.core.config_schema import FAMILIES, FOLLOWS, PAIR_MODES, PROTOCOLS, QUERY_ENCODERS
from tandem.core.engines import ENGINES
from tandem.orchestration.kubeflow import PIPELINES
from tandem.promptgen import LENGTHS, PRESETS, RELEVANCE, TASKS

runner = CliRunner(env={"COLUMNS": "250"})  # wide: no column wraps into another
BOX = re.compile(r"[\s│╭╮╰╯─]+")


def flat(text: str) -> str:
    """Help output without the panel's borders and line breaks, so wrapped text can be searched."""
    return BOX.sub("", text)


def commands(command=None, path=()):
    """(argv path, click command) of every visible command, groups included."""
    command = command or get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            yield from commands(sub, (*path, name))


ALL = list(commands())


def test_every_command_has_help():
    names = {" ".join(path) for path, _ in ALL}
    for expected in ("run", "demo", "pairs", "train", "serve", "export-onnx", "kfp compile", "kfp run-local"):
        assert expected in names
    assert {"kfp submit", "rollout status", "promptgen train", "promptgen generate", "config show"} <= names
    assert "config validate" in names and "generate" not in names  # the old name is hidden


@pytest.mark.parametrize("path, command", ALL, ids=[" ".join(p) or "tandem" for p, _ in ALL])
def test_help_shows_every_option_with_its_default_and_choices(path, command):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    shown = flat(result.output)
    for param in command.params:
        if param.name == "help" or not getattr(param, "help", None):
            continue
        # the text as written: nothing in [...] swallowed as rich markup
        assert flat(param.help.replace("\\[", "[")) in shown, (path, param.name)
        if isinstance(param.show_default, str):  # None on the command line = the recipe's (or this) value
            assert flat(f"[default: ({param.show_default})]") in shown, (path, param.name)
        elif param.default not in (None, "", (), False) and not param.required and not param.is_flag:
            assert flat(f"[default: {param.default}]") in shown, (path, param.name)
        for value in param.type_descriptor.choices or ():
            assert flat(str(value)) in shown, (path, param.name, value)


def test_defaults_that_markup_used_to_swallow():
    shown = {
        name: flat(runner.invoke(app, [*name.split(), "--help"]).output)
        for name in ("run", "pairs", "serve", "kfp submit")
    }
    assert flat("--batch-size <int> pairs per batch, the in-batch negatives [default: (64)]") in shown["run"]
    assert flat("[default: (72.0)]") in shown["pairs"] and flat("[default: (window)]") in shown["pairs"]
    assert flat("[default: (8000)]") in shown["serve"] and flat("<torch|onnx-int8|onnx-fp32>") in shown["serve"]
    assert flat('{"search": [[intent, prompt], ...], ...} as JSON or a file') in shown["kfp submit"]


BASE = {
    "run": ["run", "--logs", "l.csv", "--catalog", "c.csv"],
    "pairs": ["pairs", "--logs", "l.csv", "--out", "p.parquet"],
    "generate": ["promptgen", "generate", "--model", "m", "--intent", "a scarf"],
}


@pytest.mark.parametrize(
    "argv, allowed",
    [
        (BASE["run"] + ["--family", "bert"], FAMILIES),
        (BASE["run"] + ["--protocol", "bert"], PROTOCOLS),
        (["demo", "--family", "bert"], FAMILIES),
        (["train", "--pairs", "p", "--catalog", "c", "--out", "o", "--family", "bert"], FAMILIES),
        (BASE["pairs"] + ["--engine", "pandas"], ENGINES),
        (BASE["pairs"] + ["--mode", "pandas"], PAIR_MODES),
        (BASE["pairs"] + ["--follow", "pandas"], FOLLOWS),
        (["serve", "--query-encoder", "tflite"], QUERY_ENCODERS),
        (["kfp", "compile", "--pipeline", "nope"], tuple(PIPELINES)),
        (["kfp", "submit", "--host", "h", "--pipeline", "promptgen", "--preset", "xl"], PRESETS),
        (["promptgen", "train", "--out", "o", "--preset", "xl"], PRESETS),
        (["promptgen", "train", "--out", "o", "--relevance", "bleu"], ("similarity", "index")),
        (BASE["generate"] + ["--task", "poem"], ("auto", *TASKS)),
        (BASE["generate"] + ["--length", "huge"], LENGTHS),
        (BASE["generate"] + ["--relevance", "max"], RELEVANCE),
        (["config", "show", "--family", "bert"], FAMILIES),
    ],
    ids=lambda v: " ".join(v[:3]) if isinstance(v, list) else None,
)
def test_choices_are_refused_with_the_allowed_values(argv, allowed):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert "Invalid value" in result.output
    shown = flat(result.output)
    assert all(flat(f"'{value}'") in shown for value in allowed), result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"tandem {version('tandem-mlops')}"


def test_old_generate_name_is_hidden_and_deprecated():
    top = runner.invoke(app, ["--help"])
    assert "promptgen" in top.output and not re.search(r"│ generate ", top.output)
    old = runner.invoke(app, ["generate", "--help"])
    assert old.exit_code == 0 and "deprecated" in old.output.lower() and "promptgen generate" in old.output


def test_the_cli_does_not_force_offline_mode(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    setup_logging(False)
    assert "HF_HUB_OFFLINE" not in os.environ  # offline only when the environment says so


DOCS = ("README.md", "dags/README.md", "components/README.md") + tuple(
    f"docs/{p.name}" for p in sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
)


def documented_commands(path):
    """(command, subcommand or '') of every `tandem ...` in the code of a Markdown file."""
    text = path.read_text()
    fenced = re.findall(r"```.*?```", text, flags=re.S)
    inline = re.findall(r"`[^`]+`", re.sub(r"```.*?```", "", text, flags=re.S))  # may span a line break
    pattern = re.compile(r"(?:^|[\s`/(])tandem ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", re.M)
    return {(m.group(1), m.group(2) or "") for code in fenced + inline for m in pattern.finditer(code)}


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_the_docs_name_exists(doc):
    root = get_command(app)
    named = documented_commands(Path(__file__).resolve().parents[1] / doc)
    assert named, doc
    for command, sub in sorted(named):
        assert command in root.commands, f"{doc} names `tandem {command}`, which does not exist"
        group = root.commands[command]
        if hasattr(group, "commands") and sub:
            assert sub in group.commands, f"{doc} names `tandem {command} {sub}`, which does not exist"
