"""align_vision trains a fresh vision tower that recipes can then name as their vision_encoder."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import torch
from conftest import TINY_VISION
from PIL import Image

from tandem.core.config import ModelConfig
from tandem.models.vision import build_vision
from tandem.models.vision_align import align_vision

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (20, 40, 220), "yellow": (240, 230, 30)}


def test_aligned_tower_learns_saves_and_loads(tmp_path, tiny_encoder_dir):
    torch.set_num_threads(1)
    rows = []
    for i in range(16):
        colour = list(COLOURS)[i % 4]
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (20, 20), COLOURS[colour]).save(path)
        rows.append({"item_id": str(i), "title": f"{colour} thing", "topics": [], "content": "", "images": [str(path)]})
    rows.append({"item_id": "none", "title": "no image", "topics": [], "content": "", "images": []})  # skipped
    cfg = ModelConfig(**TINY_VISION)
    stats = align_vision(
        pd.DataFrame(rows), cfg, tmp_path / "vision", epochs=15, batch_size=8, lr=3e-3, text_encoder=tiny_encoder_dir,
        progress=False,
    )  # fmt: skip
    assert stats["images"] == 16 and stats["steps"] == 30
    assert stats["last_loss"] < stats["first_loss"]
    tower = build_vision(replace(cfg, vision_encoder=str(tmp_path / "vision")))
    assert tower.config.hidden_size == TINY_VISION["vision_width"]
    fresh = build_vision(cfg)
    assert not torch.equal(tower.embeddings.patch_embedding.weight, fresh.embeddings.patch_embedding.weight)
