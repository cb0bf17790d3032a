"""YAML recipes load into typed configs; mistakes are named."""

from pathlib import Path

import pytest

from tandem.config import RunConfig, load_config

RECIPES = sorted((Path(__file__).parent.parent / "training").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    assert isinstance(load_config(path), RunConfig)


def test_values_and_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr_item: 1e-5\n  epochs: 3\ncontract:\n  click_events: [buy]\n")
    cfg = load_config(path)
    assert cfg.train.lr_item == 1e-5 and cfg.train.epochs == 3 and cfg.contract.click_events == ("buy",)
    assert cfg.train.batch_size == RunConfig().train.batch_size and cfg.pairs == RunConfig().pairs


@pytest.mark.parametrize(
    "text, message",
    [
        ("trian:\n  epochs: 1\n", "unknown setting.*trian"),
        ("train:\n  epoch: 1\n", r"r\.yaml\.train: unknown setting.*epoch"),
        ("train:\n  epochs: many\n", r"train\.epochs: 'many' is not of type int"),
        ("train: 3\n", "expected a mapping"),
    ],
)
def test_mistakes_are_named(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path / "r.yaml")


def test_round_trip_through_plain_values():
    from dataclasses import asdict

    from tandem.config import config_from_dict

    cfg = RunConfig()
    assert config_from_dict(asdict(cfg)) == cfg
    assert config_from_dict(None) == cfg
