"""Code tests of the dual encoder, its image path, the loss and the trainer (tiny random BERT)."""

from __future__ import annotations

import itertools
import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tandem.config import ModelConfig, TrainConfig
from tandem.images import load_images
from tandem.model import DualEncoder
from tandem.text import item_text, query_text
from tandem.train import ContrastiveLoss, pair_loss, param_groups, train, warmup_linear

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
RGB = {
    "red": (220, 20, 20),
    "green": (20, 200, 40),
    "blue": (20, 40, 220),
    "yellow": (240, 230, 30),
    "purple": (130, 30, 160),
    "orange": (250, 140, 10),
    "black": (5, 5, 5),
    "white": (250, 250, 250),
}
THINGS = ["shirt", "lamp", "chair"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, rgb in RGB.items():
        paths[name] = str(folder / f"{name}.png")
        Image.new("RGB", (40, 30), rgb).save(paths[name])  # not square, not 64 px: resized
    return paths


@pytest.fixture(scope="module")
def catalog(images) -> pd.DataFrame:
    rows = []
    for i in range(16):
        colour, thing = COLOURS[i % 8], THINGS[i % 3]
        rows.append(
            {
                "item_id": f"i{i}",
                "title": f"{colour} {thing} number {i}",
                "topics": [thing, colour] if i % 4 else [],
                "content": f"a {colour} {thing} made of wood and cotton, model {i}",
                "images": [images[colour], images[COLOURS[(i + 3) % 8]]] if i % 2 else [],
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pairs() -> pd.DataFrame:
    # item i relates to the next item of the same colour (i + 8), both ways
    left = [f"i{i}" for i in range(16)]
    right = [f"i{(i + 8) % 16}" for i in range(16)]
    return pd.DataFrame({"item_id": left, "related_item_id": right, "score": 1.0})


@pytest.fixture
def model_cfg(tiny_encoder_dir) -> ModelConfig:
    return ModelConfig(
        item_encoder=tiny_encoder_dir, query_layers=1, image_size=64, patch_size=16, image_dim=16, max_images=4
    )


@pytest.fixture
def model(model_cfg) -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(model_cfg).eval()


def test_item_text_and_query_text():
    assert item_text("Blue shirt", ["men", "tops"], "Soft cotton.") == "Blue shirt | men, tops | Soft cotton."
    assert item_text("Blue shirt", [], "") == "Blue shirt"
    assert item_text("", ["men", ""], "  two\n lines ") == "men | two lines"
    assert item_text(None, None, float("nan")) == ""
    assert query_text("  blue   shirt \n") == "blue shirt"


def test_load_images(images, tmp_path, caplog):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths = [images["red"], str(tmp_path / "missing.png"), str(broken), images["blue"], images["green"]]
    with caplog.at_level(logging.WARNING, logger="tandem.images"):
        pixels = load_images(paths, size=32, max_images=2)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    assert "missing.png" in caplog.text and "broken.jpg" in caplog.text
    # solid red: the red channel is above its mean, blue below
    assert pixels[0, 0].mean() > 0 > pixels[0, 2].mean()
    assert load_images([], size=32, max_images=2).shape == (0, 3, 32, 32)


def test_shapes_and_unit_norm(model, catalog):
    queries = model.embed_queries(catalog["title"].tolist(), batch_size=5, progress=False)
    items = model.embed_items(catalog, batch_size=5, progress=False)
    assert queries.shape == items.shape == (16, 32)
    assert queries.dtype == items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    # batching and length sorting do not change results: compare with one row at a time
    single = np.concatenate([model.embed_items(catalog.iloc[[i]], progress=False) for i in (0, 5, 11)])
    np.testing.assert_allclose(single, items[[0, 5, 11]], atol=1e-5)
    assert model.encode_queries(["red shirt"]).requires_grad  # differentiable path for training


def test_query_tower_is_smaller(model):
    n_query = sum(p.numel() for p in model.query_encoder.parameters())
    n_item = sum(p.numel() for p in model.item_encoder.parameters())
    assert n_query < n_item
    assert model.query_encoder.config.num_hidden_layers == 1 < model.item_encoder.config.num_hidden_layers
    # the copy starts from the item tower's weights and the projection from the identity
    torch.testing.assert_close(
        model.query_encoder.encoder.layer[0].state_dict(), model.item_encoder.encoder.layer[0].state_dict()
    )
    torch.testing.assert_close(model.query_proj.weight, torch.eye(32))


def test_image_order_invariance_and_zero_images(model, images):
    base = {"title": "red shirt", "topics": ["shirt"], "content": "cotton"}
    three = [images["red"], images["blue"], images["green"]]
    rows = [dict(base, images=three), dict(base, images=three[::-1]), dict(base, images=[three[1], three[2], three[0]])]
    with torch.inference_mode():
        emb = model.encode_items(rows)
        torch.testing.assert_close(emb[1], emb[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(emb[2], emb[0], atol=1e-5, rtol=0)
        # an item without images: works, differs from the same text with images, and gives
        # the same embedding alone as in a batch whose other items carry visual tokens
        none = dict(base, images=[])
        alone = model.encode_items([none])
        mixed = model.encode_items([dict(base, images=three), none])
        assert not torch.allclose(alone[0], emb[0], atol=1e-3)
        torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=0)
        # unreadable images are skipped: same as no images
        missing = model.encode_items([dict(base, images=["/does/not/exist.jpg"])])
        torch.testing.assert_close(missing[0], alone[0], atol=1e-5, rtol=0)


def test_save_load_round_trip(model, catalog, tmp_path):
    with torch.no_grad():  # make the new parts non-trivial so that the round trip means something
        for p in model.new_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["model"]["item_encoder"] = "/nowhere/gone"  # the saved dir needs no original encoder
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    loaded = DualEncoder.load(tmp_path / "m")
    titles = catalog["title"].tolist()
    np.testing.assert_array_equal(
        loaded.embed_queries(titles, progress=False), model.embed_queries(titles, progress=False)
    )
    np.testing.assert_array_equal(
        loaded.embed_items(catalog, progress=False), model.embed_items(catalog, progress=False)
    )
    assert loaded.cfg.image_dim == model.cfg.image_dim and loaded.cfg.query_layers == 1


def test_param_groups_carry_learning_rates(model):
    cfg = TrainConfig(lr_query=1e-3, lr_item=1e-5, lr_new=5e-2, weight_decay=0.01)
    loss_fn = ContrastiveLoss(cfg.init_scale)
    groups = param_groups(model, loss_fn, cfg)
    optimizer = torch.optim.AdamW(groups)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"query": 1e-3, "item": 1e-5, "new": 5e-2}
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    # every trainable parameter sits in exactly one group, the logit scale among the new ones
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in [*model.parameters(), *loss_fn.parameters()]}
    assert id(loss_fn.log_scale) in {id(p) for p in groups[2]["params"]}
    assert id(model.image_start) in {id(p) for p in groups[2]["params"]}


def test_warmup_then_linear_decay():
    factor = warmup_linear(warmup_steps=2, total_steps=10)
    values = [factor(s) for s in range(10)]
    assert values[:2] == [0.5, 1.0]
    assert all(a > b for a, b in itertools.pairwise(values[1:]))
    assert values[-1] > 0


def test_false_negative_mask_matches_hand_computation():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    d = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    ids = ["a", "a", "b"]  # rows 0 and 1 share their positive item: not each other's negatives
    loss_fn = ContrastiveLoss(init_scale=10.0)
    s = 10.0
    sim = (q @ d.T).tolist()

    def row_loss(i, allowed):
        return -(s * sim[i][i] - math.log(sum(math.exp(s * sim[i][j]) for j in allowed)))

    expected = (row_loss(0, [0, 2]) + row_loss(1, [1, 2]) + row_loss(2, [0, 1, 2])) / 3
    assert loss_fn(q, d, item_ids=ids).item() == pytest.approx(expected, rel=1e-5)
    mask = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    assert loss_fn(q, d, false_negatives=mask).item() == pytest.approx(expected, rel=1e-5)
    unmasked = sum(row_loss(i, [0, 1, 2]) for i in range(3)) / 3
    assert loss_fn(q, d).item() == pytest.approx(unmasked, rel=1e-5)
    assert loss_fn.scale.item() == pytest.approx(10.0)
    with torch.no_grad():
        loss_fn.log_scale.fill_(math.log(1000.0))
    assert loss_fn.scale.item() == pytest.approx(100.0)  # clamped


def test_loss_goes_down(model_cfg, catalog, pairs):
    torch.manual_seed(0)
    model = DualEncoder(model_cfg)
    cfg = TrainConfig(
        batch_size=8,
        epochs=30,
        max_steps=30,
        lr_query=2e-3,
        lr_item=2e-3,
        lr_new=1e-2,
        warmup_fraction=0.1,
        seed=0,
        device="cpu",
    )
    before = pair_loss(model, pairs, catalog, batch_size=8)
    stats = train(model, pairs, catalog, cfg, valid_pairs=pairs.iloc[:8], progress=False)
    after = pair_loss(model, pairs, catalog, batch_size=8)
    assert stats["steps"] == 30 and stats["pairs_seen"] == 240
    assert len(stats["epoch_losses"]) == 15 and stats["pairs_per_s"] > 0
    assert math.isfinite(stats["valid_loss"]) and stats["final_loss"] == stats["step_losses"][-1]
    assert after < 0.7 * before, (before, after)
    assert np.mean(stats["step_losses"][-3:]) < np.mean(stats["step_losses"][:3])
    assert not model.training


def test_train_is_seeded(model_cfg, catalog, pairs):
    cfg = TrainConfig(batch_size=8, max_steps=3, seed=1, device="cpu")
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # a different global state: train() must seed itself
        runs.append(train(DualEncoder(model_cfg), pairs, catalog, cfg, progress=False)["step_losses"])
    assert runs[0] == runs[1]


def test_train_rejects_pairs_outside_catalog(model, catalog):
    bad = pd.DataFrame({"item_id": ["i1", "ghost"], "related_item_id": ["phantom", "i2"], "score": [1.0, 1.0]})
    with pytest.raises(ValueError, match="ghost, phantom"):
        train(model, bad, catalog, TrainConfig(device="cpu"), progress=False)
