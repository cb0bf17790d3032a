"""The vision tower both families share: a CLIP ViT (transformers' `CLIPVisionModel`).

`model.vision_encoder` names a pretrained one (HF id or path, e.g. a full CLIP checkpoint);
empty builds a fresh ViT from the `vision_*` fields, which is what runs offline here (no
pretrained vision weights ship in any package) and is trained in-house.
"""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from tandem.core.config import ModelConfig
from tandem.models.base import from_pretrained


def vision_config(cfg: ModelConfig) -> CLIPVisionConfig:
    """The config of a fresh vision tower from the recipe's `vision_*` fields."""
    return CLIPVisionConfig(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.vision_width,
        intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        projection_dim=cfg.vision_width,
    )


def build_vision(cfg: ModelConfig) -> CLIPVisionModel:
    """The pretrained vision tower named by the recipe, or a fresh one."""
    if cfg.vision_encoder:
        model = from_pretrained(CLIPVisionModel, cfg.vision_encoder, "vision_encoder")
        if model.config.image_size != cfg.image_size:
            raise ValueError(
                f"model.image_size is {cfg.image_size} but {cfg.vision_encoder} expects {model.config.image_size}; "
                "set model.image_size (and patch_size) to the vision encoder's"
            )
        return model
    return CLIPVisionModel(vision_config(cfg))


def vision_from_config(config: CLIPVisionConfig) -> CLIPVisionModel:
    """An empty tower of a saved model's shape (its weights come from the model's safetensors)."""
    return CLIPVisionModel(config)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """No gradients and eval mode (no dropout) for good; `train()` on a parent keeps it in eval."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    module.train = lambda mode=True: module  # type: ignore[method-assign]
    return module


def pool_images(tokens: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-position mean over each item's images (HotelMatch-LLM).

    tokens (M, P, D): tokens of all images stacked, counts (B,): images per item in order.
    Returns (B, P, D); an item with no image gets zeros. Invariant to image order.
    """
    owner = torch.repeat_interleave(torch.arange(len(counts), device=tokens.device), counts.to(tokens.device))
    summed = tokens.new_zeros((len(counts), *tokens.shape[1:])).index_add_(0, owner, tokens)
    return summed / counts.clamp(min=1).to(tokens.device, tokens.dtype)[:, None, None]
