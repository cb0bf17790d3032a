"""Train a fresh vision tower here, CLIP-style, when no pretrained one is at hand.

No pretrained vision weights ship offline, and NoteLLM-2 keeps its vision encoder frozen, so a
random ViT would give it nothing to read. `align_vision` teaches a fresh CLIP ViT to put an image
where the frozen text encoder puts that item's text (symmetric image<->text InfoNCE over the
catalogue's own image-text pairs), then saves it as a plain `CLIPVisionModel` folder that any
recipe can name in `model.vision_encoder`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tandem.core.config import ModelConfig
from tandem.models.base import as_list, bundled_minilm, from_pretrained, mean_pool
from tandem.models.images import load_images
from tandem.models.losses import LogitScale
from tandem.models.text import item_text
from tandem.models.vision import build_vision

log = logging.getLogger(__name__)


@torch.inference_mode()
def text_targets(texts: list[str], encoder: str = "", batch_size: int = 128) -> torch.Tensor:
    """(n, d) unit text embeddings from a frozen sentence encoder (default: bundled MiniLM)."""
    from transformers import AutoModel, AutoTokenizer

    encoder = encoder or bundled_minilm()
    model = from_pretrained(AutoModel, encoder, "text encoder").eval()
    tokenizer = from_pretrained(AutoTokenizer, encoder, "text encoder")
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
        hidden = model(**tokens).last_hidden_state
        out.append(F.normalize(mean_pool(hidden, tokens["attention_mask"]), dim=-1))
    return torch.cat(out)


def align_vision(
    catalog: pd.DataFrame,
    cfg: ModelConfig,
    out_dir: str | Path,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 5e-4,
    seed: int = 0,
    text_encoder: str = "",
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Train `build_vision(cfg)` on the catalogue's (first image, item text) pairs on `device`; save it to
    `out_dir` (a `CLIPVisionModel` folder). Items without a readable image are skipped. The pixels are held
    in RAM as float16 (half of float32's 600 kB per 224 px image)."""
    torch.manual_seed(seed)
    rows = catalog.to_dict("records")
    images, texts = [], []
    for r in tqdm(rows, desc="images", disable=not progress, unit="item"):
        pixels = load_images(as_list(r.get("images")), cfg.image_size, 1)
        if len(pixels):
            images.append(pixels[0].to(torch.float16))  # float16 as read: float32 copies of all would double the peak
            texts.append(item_text(r.get("title", ""), as_list(r.get("topics")), r.get("content", "")))
    if len(images) < 2:
        raise ValueError(f"align_vision needs at least 2 items with a readable image, got {len(images)}")
    pixels = torch.stack(images)
    del images
    targets = text_targets(texts, text_encoder).to(device)

    vision = build_vision(cfg).to(device)
    head = nn.Linear(vision.config.hidden_size, targets.shape[1]).to(device)  # discarded after training
    scale = LogitScale(math.exp(3.0)).to(device)
    params = [*vision.parameters(), *head.parameters(), *scale.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(pixels) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    vision.train()
    losses = []
    bar = tqdm(total=steps, desc="align vision", disable=not progress, unit="step")
    for _ in range(epochs):
        for idx in torch.randperm(len(pixels), generator=generator).split(batch_size):
            if len(idx) < 2:
                bar.update()
                continue
            batch = pixels[idx].to(device, torch.float32)
            image = F.normalize(head(vision(pixel_values=batch).pooler_output), dim=-1)
            logits = scale() * image @ targets[idx.to(device)].T
            labels = torch.arange(len(idx), device=device)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    out_dir = Path(out_dir)
    vision.eval().to("cpu").save_pretrained(out_dir)
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    log.info("vision tower aligned on %d images: loss %.3f -> %.3f, saved to %s", len(pixels), first, last, out_dir)
    return {"images": len(pixels), "steps": len(losses), "first_loss": first, "last_loss": last, "path": str(out_dir)}
