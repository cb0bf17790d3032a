"""Item images -> a normalised pixel tensor, with Pillow and numpy only."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# CLIP's channel statistics: the image path is trained from scratch, any fixed choice works.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def load_image(path: str, size: int) -> np.ndarray:
    """One image as a (3, size, size) float32 array, resized (no crop) and normalised."""
    with Image.open(path) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


def load_images(paths: list[str], size: int, max_images: int) -> torch.Tensor:
    """The first `max_images` readable images of `paths` as an (n, 3, size, size) tensor.

    Missing or unreadable files are skipped with a warning (the loader quarantines them
    upstream; this is a safety net), so n can be 0.
    """
    arrays: list[np.ndarray] = []
    for path in paths or ():
        if len(arrays) >= max_images:
            break
        try:
            arrays.append(load_image(path, size))
        except (OSError, ValueError) as err:  # PIL raises OSError subclasses for bad files
            log.warning("skipping unreadable image %s: %s", path, err)
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.float32)
    return torch.from_numpy(np.stack(arrays))
