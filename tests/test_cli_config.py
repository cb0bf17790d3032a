"""`tandem config validate FILE...` and `tandem config show [--config FILE] [flags]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core.config import config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "training").glob("*.yaml")) + [ROOT / "params.yaml"]
runner = CliRunner()


def test_validate_accepts_every_shipped_recipe():
    result = runner.invoke(app, ["config", "validate", *map(str, RECIPES)])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stdout.splitlines()] == [f"{path}: ok" for path in RECIPES]


@pytest.mark.parametrize(
    "values, named",
    [
        ({"train": {"epoch": 2}}, ["train.epoch", "epochs"]),  # a mistyped key: refused, the right one named
        ({"contract": {"check_images": "maybe"}}, ["contract.check_images", "maybe"]),  # not a YAML boolean
        ({"contract": {"check_images": "false"}}, ["contract.check_images"]),  # a string, not false
        ({"model": {"family": "bert"}}, ["model.family", "hotelmatch", "notellm2"]),
        ({"split": {"test_fraction": 1.5}}, ["split.test_fraction"]),  # out of range
        ({"serving": {"port": 1}}, ["serving"]),  # an unknown section
    ],
)
def test_validate_refuses_a_bad_recipe_naming_file_key_and_allowed_values(tmp_path, values, named):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    result = runner.invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 2
    assert "error:" in result.stderr and str(path) in result.stderr
    for word in named:
        assert word in result.stderr, (word, result.stderr)


def test_validate_a_missing_file(tmp_path):
    result = runner.invoke(app, ["config", "validate", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_show_merges_recipe_flags_and_environment_with_the_token_masked(tmp_path, monkeypatch):
    recipe = ROOT / "training" / "hotelmatch_cpu.yaml"
    monkeypatch.setenv("TANDEM_MILVUS_URI", "http://milvus.local:19530")
    monkeypatch.setenv("TANDEM_MILVUS_TOKEN", "root:s3cret")
    result = runner.invoke(app, ["config", "show", "--config", str(recipe), "--epochs", "3", "--family", "notellm2"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["epochs"] == 3 and shown["model"]["family"] == "notellm2"  # flags
    assert shown["index"]["milvus_uri"] == "http://milvus.local:19530" and shown["index"]["token"] == "***"
    from_recipe = config_to_dict(load_config(recipe))
    assert shown["train"]["batch_size"] == from_recipe["train"]["batch_size"]  # the recipe under the flags
    header = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert header == [
        f"# recipe: {recipe}",
        "# flags: --epochs 3, --family notellm2",
        "# environment: TANDEM_MILVUS_URI, TANDEM_MILVUS_TOKEN",
    ]


def test_show_is_a_recipe_that_reads_back(tmp_path, monkeypatch):
    monkeypatch.delenv("TANDEM_MILVUS_URI", raising=False)
    monkeypatch.delenv("TANDEM_MILVUS_TOKEN", raising=False)
    result = runner.invoke(app, ["config", "show", "--batch-size", "8", "--window-hours", "24"])
    assert result.exit_code == 0, result.output
    (tmp_path / "shown.yaml").write_text(result.stdout)
    again = load_config(tmp_path / "shown.yaml")
    assert again.train.batch_size == 8 and again.pairs.window_hours == 24.0
    assert json.dumps(config_to_dict(again)) == json.dumps(yaml.safe_load(result.stdout))
    assert "# recipe: none (built-in defaults)" in result.stdout


def test_show_refuses_a_bad_flag_value():
    result = runner.invoke(app, ["config", "show", "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output and "batch_size" in result.output
