"""What the trainer adds to the in-batch negatives: the logQ table and uniformly drawn catalogue items.

- `set_logq`: each candidate item's frequency in the training pairs (the side(s) the loss ranks:
  `loss.candidates`), exact counts over the pairs of this fit, handed to the loss's `CandidateLogQ`.
- `UniformNegatives`: `train.uniform_negatives` catalogue rows per batch, drawn uniformly (seeded by
  the batch's items, so a resumed run draws the same), prepared by the model's own item collation;
  `encode_negatives` embeds them with gradients in the training step, as extra candidates only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tandem.core.config import TrainConfig
from tandem.models.base import Encoder, PairExample
from tandem.training.data import PairDataset


def set_logq(loss: nn.Module, data: PairDataset, cfg: TrainConfig) -> dict | None:
    """Give the loss its log q table when `cfg.logq` and the loss has one; returns what was counted."""
    table = getattr(loss, "logq", None)
    if not cfg.logq or table is None:
        return None
    both = getattr(loss, "candidates", "item") == "both"
    rows = np.concatenate([data.left, data.right]) if both else data.right
    counts = np.bincount(rows, minlength=len(data.keys))
    seen = counts > 0
    keys = np.asarray(data.keys, dtype=np.int64)[seen]
    in_batch = cfg.batch_size * (2 if both else 1)
    table.set(keys, counts[seen], in_batch, cfg.uniform_negatives, len(data.keys))
    return {"candidate_items": int(seen.sum()), "top_share": float(counts.max() / counts.sum())}


def _prepare(model: Encoder):
    return getattr(model, "prepare_items", None) or model.prepare


class UniformNegatives:
    """Collation of `n` catalogue rows drawn uniformly per batch: {"items": model batch, "keys": (n,)}."""

    def __init__(self, model: Encoder, data: PairDataset, n: int, seed: int):
        self.prepare, self.rows, self.keys, self.n, self.seed = _prepare(model), data.rows, data.keys, n, seed

    def __call__(self, examples: Sequence[PairExample]) -> dict[str, Any]:
        salt = hash(tuple(e.item_key for e in examples)) & 0xFFFFFFFF  # ints hash the same in every process
        picks = np.random.default_rng([self.seed, salt]).choice(len(self.rows), self.n, replace=False)
        return {
            "items": self.prepare([self.rows[i] for i in picks]),
            "keys": torch.tensor([self.keys[i] for i in picks], dtype=torch.int64),
        }


def encode_negatives(model: Encoder, negatives: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The drawn items' embeddings as the loss reads them: neg_item (HotelMatch) or neg_n_m / neg_n_v."""
    keys = negatives["keys"].to(model.device)
    if model.family == "hotelmatch":
        return {"neg_item": model._items(negatives["items"], mask_geography=False)["item"], "neg_keys": keys}
    encoded = model.encode(negatives["items"])
    return {f"neg_{k}": v for k, v in encoded.items()} | {"neg_keys": keys}
