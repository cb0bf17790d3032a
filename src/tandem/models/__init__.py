"""The seed model families and how the pipeline builds, loads and trains them.

- `hotelmatch`: HotelMatch-LLM, a small query tower and a large multi-image item tower.
- `notellm2`: NoteLLM-2, item-to-item embeddings from a decoder LLM with mICL and late fusion.

Modules are imported on first use, so `import tandem.models` stays light.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from tandem.core.config import ModelConfig, TrainConfig

_MODULES = {"hotelmatch": "tandem.models.hotelmatch", "notellm2": "tandem.models.notellm2"}


def _module(family: str):
    if family not in _MODULES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[family])


def build_model(cfg: ModelConfig, catalog=None):
    """A new model of `cfg.family` (pretrained parts loaded, new parts initialised).

    `catalog` lets a family size its label heads (HotelMatch facilities) from the data.
    """
    return _module(cfg.family).build(cfg, catalog)


def build_loss(cfg: ModelConfig, train: TrainConfig):
    """The loss module of `cfg.family` (it owns the learnable logit scale)."""
    return _module(cfg.family).build_loss(cfg, train)


def load_model(directory: str | Path, device: str = "cpu"):
    """Any saved tandem model; the family is read from its config.json."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory} holds no saved tandem model (no config.json); train one first")
    family = json.loads(path.read_text()).get("model", {}).get("family", "hotelmatch")
    return _module(family).load(directory, device)
