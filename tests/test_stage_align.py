"""The align stage (issue 17 item 3): a vision tower trained on the catalogue's photos before train, cached by the
catalogue's content, which train then starts from; a no-op without images; NoteLLM-2 never runs on a random
frozen tower."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import TINY_VISION
from PIL import Image
from safetensors.torch import load_file

from tandem.core.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from tandem.core.config_vision import VisionConfig
from tandem.data.synth import make_dataset
from tandem.models import load_model
from tandem.models.vision import build_vision
from tandem.pipeline import registry, stages
from tandem.pipeline.align import training_rows
from tandem.pipeline.vision_tower import with_vision

BEFORE = ("load", "mine", "validate", "features")


def _cfg(encoder: str, **model) -> RunConfig:
    return RunConfig(
        model=ModelConfig(item_encoder=encoder, llm=encoder, query_layers=1, **TINY_VISION, **model),
        vision=VisionConfig(epochs=2, batch_size=16, min_pairs=8),
        train=TrainConfig(epochs=1, max_steps=1, batch_size=16, tensorboard=False),
        eval=EvalConfig(batch_size=32),
    )


def _prepare(workdir, data, run_id: str, cfg: RunConfig, **dataset) -> stages.RunPaths:
    logs, catalog = make_dataset(data, n_items=24, n_kinds=4, n_users=40, sessions_per_user=5, days=20, **dataset)
    run = stages.RunPaths.of(workdir, run_id)
    for name in BEFORE:
        inputs = {"logs_path": logs, "catalog_path": catalog} if name == "load" else {}
        registry.run_stage(name, run, cfg, progress=False, **inputs)
    return run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_encoder_dir):
    """A run up to features over 24 items, 16 of them with photos (synth: item i has i % 3 images)."""
    torch.set_num_threads(1)
    cfg = _cfg(tiny_encoder_dir, freeze_vision=True)  # frozen: the trained model keeps the aligned weights
    root = tmp_path_factory.mktemp("align")
    return _prepare(root / "work", root / "data", "r1", cfg), cfg


def _tensors(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_aligns_once_reuses_the_cache_and_train_starts_from_it(prepared):
    run, cfg = prepared
    first = registry.run_stage("align", run, cfg, progress=False)
    folder = run.workdir / "vision" / first["digest"]
    assert first["cached"] is False and first["vision_encoder"] == str(folder)
    assert first["items_with_images"] == 16 and first["pairs_from_text"] == 16 and first["pairs_used"] == 16
    assert first["training"]["steps"] == 2 and (folder / "_DONE").is_file() and (folder / "config.json").is_file()
    assert json.loads((run / "align.json").read_text()) == first

    again = registry.run_stage("align", run, cfg, progress=False)
    assert again["cached"] is True and again["digest"] == first["digest"]

    (folder / "_DONE").unlink()  # a half-written tower is never used: aligned again
    redone = registry.run_stage("align", run, cfg, progress=False)
    assert redone["cached"] is False and redone["digest"] == first["digest"] and (folder / "_DONE").is_file()

    other = registry.run_stage("align", run, replace(cfg, vision=replace(cfg.vision, epochs=3)), progress=False)
    assert other["digest"] != first["digest"]  # the settings are part of the key
    registry.run_stage("align", run, cfg, progress=False)  # back to the first tower (cached)

    aligned = _tensors(folder)
    registry.run_stage("train", run, cfg, progress=False)
    assert json.loads((run / "training" / "recipe.json").read_text())["model"]["vision_encoder"] == str(folder)
    trained = load_model(run / "model").vision.state_dict()
    assert aligned.keys() == {k for k in trained if k in aligned} and len(aligned) > 4
    for name, value in aligned.items():
        assert torch.equal(trained[name], value), name
    fresh = build_vision(cfg.model).state_dict()
    (patch,) = [k for k in aligned if k.endswith("patch_embedding.weight")]
    assert not torch.equal(fresh[patch], aligned[patch])  # not a random tower

    shutil.rmtree(folder)
    with pytest.raises(ValueError, match="rerun the align stage"):
        with_vision(run, cfg)


def test_off_or_named_weights_skip_and_notellm2_refuses_a_random_frozen_tower(prepared, tmp_path):
    run, cfg = prepared
    copy = stages.RunPaths.of(run.workdir, "r1-off")
    shutil.copytree(run.dir, copy.dir, dirs_exist_ok=True)
    (copy / "align.json").unlink(missing_ok=True)
    off = replace(cfg, model=replace(cfg.model, freeze_vision=False), vision=replace(cfg.vision, align="off"))
    summary = registry.run_stage("align", copy, off)
    assert "vision.align is off" in summary["skipped"] and with_vision(copy, off) == off
    notellm2 = replace(off, model=replace(off.model, family="notellm2"))
    with pytest.raises(ValueError, match=r"NoteLLM-2 keeps its vision tower frozen.*vision.align: auto"):
        registry.run_stage("align", copy, notellm2)
    frozen = replace(off, model=replace(off.model, freeze_vision=True))
    with pytest.raises(ValueError, match="model.vision_encoder"):
        registry.run_stage("align", copy, frozen)
    too_few = replace(notellm2, vision=replace(cfg.vision, min_pairs=100))
    with pytest.raises(ValueError, match="fewer than vision.min_pairs"):
        registry.run_stage("align", copy, too_few)
    named = replace(off, model=replace(off.model, vision_encoder="/some/clip"))
    assert "names a vision encoder" in registry.run_stage("align", copy, named)["skipped"]


def test_catalogue_without_images_is_a_quick_no_op(tmp_path, tiny_encoder_dir, monkeypatch):
    cfg = _cfg(tiny_encoder_dir, family="notellm2")
    run = stages.RunPaths.of(tmp_path / "work", "plain")
    run.dir.mkdir(parents=True)
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["x", "y"], "images": [[], []]})
    monkeypatch.setattr(stages, "catalog", lambda r: items)  # what the load stage wrote
    monkeypatch.setattr(stages, "items", lambda r: pytest.fail("a catalogue without images needs no Feast read"))
    summary = registry.run_stage("align", run, cfg)
    assert summary["skipped"] == "no item has an image" and not (tmp_path / "work" / "vision").exists()
    assert with_vision(run, cfg) == cfg


def test_text_free_items_pair_their_photo_with_search_queries(tmp_path):
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(photo)
    catalog = pd.DataFrame(
        {
            "item_id": ["t", "q", "n", "x"],
            "title": ["red shoe", "", "", "no photo"],
            "images": [[str(photo)], [str(photo)], [str(photo)], []],
        }
    )
    queries = pd.DataFrame(
        {
            "item_id": ["q", "q", "q", "t", "x"],
            "query": ["red", "crimson", "scarlet", "shoe", "other"],
            "score": [3.0, 2.0, 1.0, 1.0, 1.0],
        }
    )
    rows, counts = training_rows(catalog, queries, VisionConfig(queries_per_item=2, queries="textless"))
    assert rows[["item_id", "title"]].values.tolist() == [["t", "red shoe"], ["q", "red"], ["q", "crimson"]]
    assert counts["pairs_from_text"] == 1 and counts["pairs_from_queries"] == 2
    # the default: an item with text also learns from what users typed before clicking its photo
    rows, counts = training_rows(catalog, queries, VisionConfig(queries_per_item=2))
    assert rows[["item_id", "title"]].values.tolist() == [
        ["t", "red shoe"], ["q", "red"], ["q", "crimson"], ["t", "shoe"]
    ]  # fmt: skip
    assert counts["pairs_from_text"] == 1 and counts["pairs_from_queries"] == 3
    assert counts["items_with_images"] == 3 and counts["items_with_image_but_no_text_or_query"] == 1  # "n"
    capped, _ = training_rows(catalog, queries, VisionConfig(max_pairs=2))
    assert len(capped) == 2
