"""`tandem train` and a NoteLLM-2 run of the whole loop: the pipeline trains the recipe's family."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_VISION
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core.config import EvalConfig, ModelConfig, RunConfig, SplitConfig, TrainConfig
from tandem.data.synth import make_dataset
from tandem.models import load_model
from tandem.pipeline.run import run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_items=32, n_users=60)


def test_train_command_trains_saves_and_resumes(dataset, tiny_encoder_dir, tmp_path):
    _, catalog = dataset
    ids = pd.read_csv(catalog)["item_id"].tolist()
    pairs = pd.DataFrame({"item_id": ids, "related_item_id": ids[1:] + ids[:1]})
    pairs.to_parquet(tmp_path / "pairs.parquet")
    recipe = {
        "model": {"family": "notellm2", "llm": tiny_encoder_dir, "num_queries": 4, "qformer_layers": 1,
                  "qformer_heads": 2, "max_prompt_tokens": 96, **TINY_VISION},
        "train": {"epochs": 2, "batch_size": 8, "tensorboard": True},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    args = ["train", "--pairs", str(tmp_path / "pairs.parquet"), "--catalog", str(catalog)]
    args += ["--out", str(tmp_path / "out"), "--config", str(tmp_path / "recipe.yaml")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "8 steps" in first.output  # 32 pairs / 8 per batch x 2 epochs
    model = load_model(tmp_path / "out" / "model")
    assert model.family == "notellm2" and model.symmetric
    vectors = model.embed_items(pd.read_csv(catalog), progress=False)
    assert vectors.shape == (32, model.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert list((tmp_path / "out" / "checkpoints").glob("step-*/model.safetensors"))
    assert list((tmp_path / "out" / "tandem").rglob("events.out.tfevents*"))

    again = CliRunner().invoke(app, args)  # a finished run resumes at its end: same weights
    assert again.exit_code == 0, again.output
    reloaded = load_model(tmp_path / "out" / "model").embed_items(pd.read_csv(catalog), progress=False)
    assert np.allclose(reloaded, vectors, atol=1e-6)


def test_train_command_names_bad_input(tmp_path, dataset):
    _, catalog = dataset
    result = CliRunner().invoke(
        app, ["train", "--pairs", str(tmp_path / "none.parquet"), "--catalog", str(catalog), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "none.parquet does not exist" in result.output


def test_notellm2_runs_the_whole_loop(dataset, tiny_encoder_dir, tmp_path):
    cfg = RunConfig(
        model=replace(
            ModelConfig(), family="notellm2", llm=tiny_encoder_dir, num_queries=4, qformer_layers=1, qformer_heads=2,
            max_prompt_tokens=96, **TINY_VISION,
        ),
        train=replace(TrainConfig(), epochs=1, batch_size=8, tensorboard=False),
        eval=replace(EvalConfig(), batch_size=32),
        split=replace(SplitConfig(), drop_reverse=False),  # 32 items: every test pair's reverse trained
    )  # fmt: skip
    cfg = replace(cfg, model=replace(cfg.model, popularity_factors=4, popularity_factor_weight=0.5))
    report = run(*dataset, tmp_path, cfg, run_id="nl", progress=False)
    assert report["training"]["family"] == "notellm2"
    assert set(report["metrics"]) == {"model", "untrained", "popularity", "bm25", "cooccurrence"}
    evaluation = json.loads((tmp_path / "runs" / "nl" / "evaluate.json").read_text())
    assert evaluation["protocol"] == "notellm2"  # 'auto' picks item-to-item for a symmetric model
    assert 0.0 <= report["metrics"]["model"]["recall@10"] <= 1.0
    model = load_model(tmp_path / "runs" / "nl" / "model")
    assert model.family == "notellm2"
    # the log co-occurrence coordinates: in train.json, in the model's term and closing every stored vector
    factors = json.loads((tmp_path / "runs" / "nl" / "train.json").read_text())["popularity"]["factors"]
    assert factors["weight"] == 0.5 and 0 < factors["rank"] <= 4 and model.popularity.factor_dims == factors["rank"]
    vectors = np.load(tmp_path / "runs" / "nl" / "vectors" / "items.npy")
    ids = pd.read_parquet(tmp_path / "runs" / "nl" / "data" / "catalog.parquet")["item_id"].astype(str)
    own = [n for n, i in enumerate(ids) if i in model.popularity.factors]
    expected = np.sqrt(0.5) * np.array([model.popularity.factors[ids[n]] for n in own])
    assert own and np.allclose(vectors[own, -factors["rank"] :], expected, atol=1e-5)
