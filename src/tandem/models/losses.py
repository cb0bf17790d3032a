"""Contrastive losses as pure functions of embeddings, the learnable logit scale, and each family's loss
module (`HotelMatchLoss`, `NoteLLM2Loss`).

Negatives can come from every device: `gather` concatenates a tensor across processes
keeping the local part differentiable, and returns where the local rows start.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from tandem.core.config import ModelConfig, TrainConfig


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all processes' rows concatenated, offset of this process's rows). Gradients flow to
    the local rows; single-process runs return `x` unchanged. Every process must pass the
    same number of rows (the trainer keeps batches even)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts), dist.get_rank() * x.shape[0]


class LogitScale(nn.Module):
    """exp(tau) with tau learnable; stored as a log, capped at `max_scale`."""

    def __init__(self, init_scale: float = math.exp(3.0), max_scale: float = 100.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)


def contrastive(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive: torch.Tensor,
    anchor_keys: torch.Tensor,
    candidate_keys: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Mean over anchors of -log softmax(scale * cos) at the anchor's positive candidate.

    anchors (A, d), candidates (C, d): unit vectors. positive (A,): index of each anchor's
    positive among the candidates. Keys (item ids as ints) find what must not count as a
    negative: the anchor's own item and other copies of its positive item.
    """
    logits = scale * anchors @ candidates.T
    pos_keys = candidate_keys[positive]
    excluded = (candidate_keys[None, :] == pos_keys[:, None]) | (candidate_keys[None, :] == anchor_keys[:, None])
    excluded[torch.arange(len(positive), device=logits.device), positive] = False
    logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, positive)


class HotelMatchLoss(nn.Module):
    """L = weighted retrieval + masked-LM + facility losses (0.7 / 0.2 / 0.1 in the paper).

    The weights are renormalised over the terms present in a batch: a batch without masked
    geography tokens or listed facilities (a catalogue without those columns, or an eval
    pass) trains retrieval alone at full weight, and the total stays on the same scale.
    """

    def __init__(self, cfg: ModelConfig, train: TrainConfig):
        super().__init__()
        if cfg.retrieval_weight <= 0 or cfg.mlm_weight < 0 or cfg.facility_weight < 0:
            raise ValueError(
                "model.retrieval_weight must be positive and model.mlm_weight / model.facility_weight "
                f"not negative (got {cfg.retrieval_weight}, {cfg.mlm_weight}, {cfg.facility_weight})"
            )
        self.weights = {"retrieval": cfg.retrieval_weight, "mlm": cfg.mlm_weight, "facility": cfg.facility_weight}
        self.scale = LogitScale(train.init_scale)

    def forward(self, out: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        items, offset = gather(out["item"])
        item_keys, _ = gather(out["item_keys"])
        queries = out["query"]
        positive = offset + torch.arange(len(queries), device=queries.device)
        parts = {
            "retrieval": contrastive(
                queries.float(), items.float(), positive, out["query_keys"], item_keys, self.scale()
            )
        }
        if "mlm_logits" in out and out["mlm_logits"].numel():
            parts["mlm"] = F.cross_entropy(out["mlm_logits"].float(), out["mlm_labels"])
        if "facility_logits" in out and out["facility_logits"].numel():
            parts["facility"] = F.binary_cross_entropy_with_logits(
                out["facility_logits"].float(), out["facility_labels"].float()
            )
        total = sum(self.weights[k] * v for k, v in parts.items()) / sum(self.weights[k] for k in parts)
        return total, parts


class NoteLLM2Loss(nn.Module):
    """In-batch contrastive loss over the 2B items, for n_m and n_v: (L_v + α L_m) / (1 + α).

    Every item's positive is its pair partner; every other item of the batch, on every
    device, is a negative (copies of the item or of its partner excepted). With the basic
    prompt (no n_v) the loss is L_m.
    """

    def __init__(self, alpha: float = 9.0, init_scale: float = math.exp(3.0)):
        super().__init__()
        self.alpha = alpha
        self.scale = LogitScale(init_scale)

    def forward(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keys = outputs["keys"]
        n = keys.shape[0]
        all_keys, _ = gather(keys)
        partner = (torch.arange(n, device=keys.device) + n // 2) % n
        scale = self.scale()
        parts = {}
        for part in ("m", "v"):
            if f"n_{part}" in outputs:
                local = outputs[f"n_{part}"]
                candidates, offset = gather(local)
                parts[f"L_{part}"] = contrastive(local, candidates, partner + offset, keys, all_keys, scale)
        if "L_v" in parts:
            total = (parts["L_v"] + self.alpha * parts["L_m"]) / (1 + self.alpha)
        else:
            total = parts["L_m"]
        return total, parts
