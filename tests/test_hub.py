"""Models by Hugging Face id or path: a model that is neither a local folder, nor cached, nor reachable is one
clear error naming the recipe key, the model and the fix; no test touches the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tandem.core.config import load_config
from tandem.models.hub import hub_error, load_pretrained

ROOT = Path(__file__).parent.parent
MADE_UP = "tandem-tests/no-such-model-0b7e"


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it, and any attempt to open a connection recorded."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    attempts = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("tests must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


def test_conftest_keeps_tests_offline():
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_local_path_is_named(tmp_path, offline):
    from transformers import AutoModel

    missing = r"^model\.item_encoder: cannot load '.*no_such_encoder': no such local folder"
    with pytest.raises(ValueError, match=missing):
        load_pretrained(AutoModel, tmp_path / "no_such_encoder", "model.item_encoder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"model\.llm: cannot load the local folder '.*empty' \((OS|Value)Error"):
        load_pretrained(AutoModel, tmp_path / "empty", "model.llm")
    assert offline == []


def test_uncached_hub_id_offline_names_key_model_and_fix(offline):
    from transformers import AutoTokenizer

    with pytest.raises(ValueError) as caught:
        load_pretrained(AutoTokenizer, MADE_UP, "model.query_encoder")
    message = str(caught.value)
    assert message.startswith(f"model.query_encoder: cannot load '{MADE_UP}': HF_HUB_OFFLINE=1 is set and it is not")
    assert f"`hf download {MADE_UP}`" in message and "HF_HUB_OFFLINE=0" in message
    assert "local path" in message and "\n" not in message
    assert offline == []


def test_gpu_recipe_models_fail_clearly_when_not_cached(offline):
    """The GPU recipes name Hub models; offline and uncached, the loaders say which key and how to fix it."""
    from tandem.models import hotelmatch, notellm2
    from tandem.models.vision import build_vision

    hm = load_config(ROOT / "training" / "hotelmatch_gpu.yaml").model
    with pytest.raises(ValueError, match=r"^model\.item_encoder: cannot load 'BAAI/bge-large-en-v1\.5': HF_HUB_OFF"):
        hotelmatch.build(hm)
    with pytest.raises(ValueError, match=r"^model\.vision_encoder: .*hf download openai/clip-vit-base"):
        build_vision(hm)
    nl = load_config(ROOT / "training" / "notellm2_gpu.yaml").model
    with pytest.raises(ValueError, match=r"^model\.llm: cannot load 'Qwen/Qwen2\.5-1\.5B'.*pre-download it"):
        notellm2.build(nl)
    assert offline == []


def test_reasons_when_online(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    err = OSError("We couldn't connect")
    err.__cause__ = LocalEntryNotFoundError("no connection and not cached")
    message = hub_error("org/m", "model.llm", err)
    assert "not in the Hugging Face cache" in message and "the Hub cannot be reached" in message
    assert "hf download org/m" in message
    other = hub_error("org/m", "model.llm", ValueError("Unrecognized model in org/m"))
    assert other.startswith("model.llm: cannot load 'org/m' (ValueError: Unrecognized model")
    assert "download" not in other


def test_local_and_bundled_models_load():
    from transformers import AutoTokenizer

    from tandem.models.base import bundled_minilm

    assert load_pretrained(AutoTokenizer, bundled_minilm(), "model.item_encoder").vocab_size > 1000


def test_readme_gpu_section_matches_the_recipes():
    """docs/models.md's "On a GPU machine" commands name recipes that load and pre-download exactly their models."""
    import re

    text = (ROOT / "docs" / "models.md").read_text()
    section = text.split("\n## On a GPU machine\n", 1)[1].split("\n## ", 1)[0]
    recipes = set(re.findall(r"--config (training/\S+\.yaml)", section))
    assert recipes == {"training/hotelmatch_gpu.yaml", "training/notellm2_gpu.yaml"}
    wanted = set()
    for recipe in recipes:
        model = load_config(ROOT / recipe).model
        wanted |= {model.item_encoder, model.query_encoder, model.vision_encoder, model.llm} - {""}
    loop = re.search(r"for m in (.*?); do \.venv/bin/hf download", section, re.S)
    assert loop and set(loop.group(1).replace("\\", " ").split()) == wanted
