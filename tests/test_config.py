"""Recipes load into one typed schema; every mistake is one error naming the file, the key and what is allowed."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tandem.core.config import ModelConfig, RunConfig, config_from_dict, config_to_dict, load_config
from tandem.core.config_release import GateConfig, IndexConfig
from tandem.core.config_schema import FAMILIES, INDEX_TYPES, QUERY_ENCODERS, choices

ROOT = Path(__file__).parent.parent
RECIPES = [*sorted((ROOT / "training").glob("*.yaml")), ROOT / "params.yaml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert config_from_dict(config_to_dict(cfg, redact=False)) == cfg


def test_values_and_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    # YAML reads 1e-5 (no dot) as a string; a lone event is the one-element list it means; `eval:` alone = defaults
    text = "train:\n  lr_item: 1e-5\n  epochs: 3\ncontract:\n  click_events: buy\n  check_images: false\neval:\n"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.train.lr_item == 1e-5 and cfg.train.epochs == 3 and cfg.contract.click_events == ("buy",)
    assert cfg.contract.check_images is False and cfg.eval == RunConfig().eval
    assert cfg.train.batch_size == RunConfig().train.batch_size and cfg.pairs == RunConfig().pairs


@pytest.mark.parametrize(
    "text, message",
    [
        ("trian:\n  epochs: 1\n", r"^\S*r\.yaml: trian: unknown setting; did you mean train\? known: contract, "),
        ("train:\n  epoch: 1\n", r"r\.yaml: train\.epoch: unknown setting; did you mean epochs\?"),
        ("train:\n  epochs: many\n", r"r\.yaml: train\.epochs: 'many' is not an integer$"),
        ("train:\n  epochs: true\n", r"train\.epochs: True is a boolean, not a number"),
        ("train:\n  lr_item: fast\n", r"train\.lr_item: 'fast' is not a number"),
        ("train: 3\n", r"r\.yaml: train: expected a mapping of settings, got 3"),
        ("- train\n", r"r\.yaml: expected a mapping of sections"),
        ("contract:\n  check_images: 'false'\n", r"check_images: 'false' is not a boolean; write true or false"),
        ("contract:\n  check_images: maybe\n", r"contract\.check_images: 'maybe' is not a boolean"),
        ("model:\n  family: hotelmatc\n", r"r\.yaml: model\.family: 'hotelmatc' is not one of hotelmatch, notellm2$"),
        ("index:\n  metric: cosine\n", r"index\.metric: 'cosine' is not one of COSINE, IP, L2"),
        ("serve:\n  query_encoder: onnx\n", r"serve\.query_encoder: 'onnx' is not one of torch, onnx-int8, onnx-fp32"),
        ("eval:\n  baselines: [bm25, bm26]\n", r"eval\.baselines\[1\]: 'bm26' is not one of untrained, popularity"),
        ("eval:\n  ks: [10, 0]\n", r"eval\.ks\[1\]: 0 is out of range: must be >= 1"),
        ("train:\n  batch_size: 1\n", r"train\.batch_size: 1 is out of range: must be >= 2"),
        ("split:\n  test_fraction: 1.5\n", r"split\.test_fraction: 1\.5 is out of range: must be < 1"),
        ("gate:\n  alpha: 0.7\n", r"gate\.alpha: 0\.7 is out of range: must be < 0\.5"),
        ("gate:\n  guards: {mrr@10: -0.1}\n", r"gate\.guards: allowed drop of 'mrr@10' must be >= 0, got -0.1"),
        ("index:\n  token: 1234\n", r"index\.token: 1234 is not a string \(quote it in YAML\)"),
        ("model:\n  image_size: 100\n", r"r\.yaml: model\.image_size \(100\) must be a multiple of patch_size \(32\)"),
        ("pairs:\n  low: 40\n", r"pairs\.low \(40\.0\) must be below pairs\.up \(30\.0\)"),
        ("train: [\n", r"r\.yaml: not valid YAML"),
    ],
)
def test_mistakes_are_named(tmp_path, text, message):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_config(tmp_path / "r.yaml")
    assert str(caught.value).startswith(str(tmp_path / "r.yaml")) and "pydantic" not in str(caught.value)


def test_every_mistake_is_listed_in_one_error(tmp_path):
    (tmp_path / "r.yaml").write_text("train:\n  epoch: 1\n  batch_size: 0\nmodel:\n  prompt: long\n")
    with pytest.raises(ValueError) as caught:
        load_config(tmp_path / "r.yaml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{tmp_path / 'r.yaml'}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"train.epoch", "train.batch_size", "model.prompt"}


def test_replace_and_construction_validate():
    cfg = RunConfig()
    with pytest.raises(ValueError, match=r"^model\.family: 'x' is not one of hotelmatch, notellm2$"):
        replace(cfg.model, family="x")
    with pytest.raises(ValueError, match=r"^train\.batch_size: 1 is out of range"):
        replace(cfg, train=replace(cfg.train, batch_size=1))
    with pytest.raises(ValueError, match=r"^index\.index_type: 'hnsw' is not one of HNSW, HNSW_SQ"):
        IndexConfig(index_type="hnsw")
    with pytest.raises(ValueError, match=r"^model\.image_size \(64\) must be a multiple of patch_size \(48\)"):
        ModelConfig(image_size=64, patch_size=48)
    assert replace(cfg.train, epochs=2).epochs == 2 and hash(cfg) == hash(RunConfig())


def test_guards_forms():
    want = (("short_query/recall@{k}", 0.02), ("mrr@10", 0.01))
    assert GateConfig(guards=dict(want)).guards == want
    assert GateConfig(guards=[list(p) for p in want]).guards == want
    assert config_from_dict({"gate": {"guards": [{"mrr@10": "1e-2"}]}}).gate.guards == (("mrr@10", 0.01),)
    with pytest.raises(ValueError, match=r"gate\.guards: \['a', 'a'\] names a metric twice"):
        GateConfig(guards=[("a", 0.1), ("a", 0.2)])


def test_enumerations_come_from_the_schema():
    # the constants the CLI offers as choices are the Literal values the schema checks
    assert FAMILIES == ("hotelmatch", "notellm2") and "FLAT" in INDEX_TYPES and "onnx-int8" in QUERY_ENCODERS
    import typing

    assert choices(typing.get_type_hints(ModelConfig, include_extras=True)["family"]) == FAMILIES


def test_config_to_dict_is_plain_and_round_trips():
    cfg = replace(RunConfig(), index=IndexConfig(milvus_uri="http://m:19530", token="user:secret"))
    shown = config_to_dict(cfg)
    assert shown["index"]["token"] == "***" and "secret" not in yaml.safe_dump(shown)
    assert shown["eval"]["ks"] == [10, 100, 1000] and shown["gate"]["guards"] == {"short_query/recall@{k}": 0.02}
    full = config_to_dict(cfg, redact=False)
    assert full["index"]["token"] == "user:secret"
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(full))) == cfg
    assert config_to_dict(RunConfig())["index"]["token"] == ""  # nothing to hide: shown as it is
    assert config_from_dict(None) == RunConfig()


def test_json_of_asdict_round_trips():
    """The Kubeflow components pass the config as JSON of `dataclasses.asdict` (tuples become lists)."""
    import json
    from dataclasses import asdict

    cfg = replace(RunConfig(), gate=GateConfig(guards={"mrr@10": 0.01, "short_query/recall@{k}": 0.02}))
    assert config_from_dict(json.loads(json.dumps(asdict(cfg))), "config parameter") == cfg
