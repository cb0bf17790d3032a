"""What the trainer adds to the in-batch negatives: the logQ table, uniformly drawn catalogue items and
hard negatives from the live champion's results.

- `set_logq`: each candidate item's frequency in the training pairs (the side(s) the loss ranks:
  `loss.candidates`), exact counts over the pairs of this fit, handed to the loss's `CandidateLogQ`.
- `ExtraNegatives`: per batch, `train.uniform_negatives` catalogue rows drawn uniformly, then
  `train.hard_negatives` rows from the hard-negative table (query text -> catalogue rows the champion
  ranked high for it; mined by tandem.pipeline.hard_negatives), taken round-robin over the batch's
  queries in a seeded order; a batch whose queries have too few fills up uniformly. Seeded by the
  batch's items, so a resumed run draws the same; prepared by the model's own item collation.
  `encode_negatives` embeds them with gradients in the training step, as extra candidates only.
  The loss masks an extra item that is an anchor's own positive, and looks its log q up like any
  candidate's (hard negatives are not a uniform draw: they get no correction of their own).
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


class ExtraNegatives:
    """Collation of the extra candidates of a batch: {"items": model batch, "keys": (uniform + hard,)}."""

    def __init__(
        self,
        model: Encoder,
        data: PairDataset,
        uniform: int,
        seed: int,
        hard: int = 0,
        table: Mapping[str, Sequence[int]] | None = None,
    ):
        self.model, self.rows, self.keys, self.seed = model, data.rows, data.keys, seed
        self.uniform, self.table = uniform, table or {}
        self.hard = hard if self.table else 0  # nothing mined (no champion yet): no hard negatives
        self.drawn = 0  # hard negatives taken from the table (not uniform fill-ups), in this process

    def __len__(self) -> int:
        return self.uniform + self.hard

    def _hard(self, examples: Sequence[PairExample], rng: np.random.Generator, taken: set[int]) -> list[int]:
        lists = [list(self.table.get(examples[i].query_text, ())) for i in rng.permutation(len(examples))]
        picks: list[int] = []
        for depth in range(max(map(len, lists), default=0)):
            for found in lists:
                if depth < len(found) and found[depth] not in taken:
                    taken.add(found[depth])
                    picks.append(int(found[depth]))
                    if len(picks) == self.hard:
                        return picks
        return picks

    def __call__(self, examples: Sequence[PairExample]) -> dict[str, Any]:
        salt = hash(tuple(e.item_key for e in examples)) & 0xFFFFFFFF  # ints hash the same in every process
        rng = np.random.default_rng([self.seed, salt])
        picks = rng.choice(len(self.rows), self.uniform, replace=False).tolist() if self.uniform else []
        if self.hard:
            hard = self._hard(examples, rng, set(picks))
            self.drawn += len(hard)
            picks += hard
            if len(picks) < len(self):  # the batch's queries had too few: fill up uniformly
                rest = np.setdiff1d(np.arange(len(self.rows)), picks)
                picks += rng.choice(rest, len(self) - len(picks), replace=False).tolist()
        return {
            "items": _prepare(self.model)([self.rows[i] for i in picks]),
            "keys": torch.tensor([self.keys[i] for i in picks], dtype=torch.int64),
        }


def encode_negatives(model: Encoder, negatives: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The drawn items' embeddings as the loss reads them: neg_item (HotelMatch) or neg_n_m / neg_n_v."""
    keys = negatives["keys"].to(model.device)
    if model.family == "hotelmatch":
        return {"neg_item": model._items(negatives["items"], mask_geography=False)["item"], "neg_keys": keys}
    encoded = model.encode(negatives["items"])
    return {f"neg_{k}": v for k, v in encoded.items()} | {"neg_keys": keys}
