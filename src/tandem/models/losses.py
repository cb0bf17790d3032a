"""Contrastive losses as pure functions of embeddings, the learnable logit scale, and each family's loss
module (`HotelMatchLoss`, `NoteLLM2Loss`).

Negatives can come from every device: `gather` concatenates a tensor across processes
keeping the local part differentiable, and returns where the local rows start. Two remedies for
the popularity bias of in-batch negatives (../shared/QUALITY.md), both recipe settings:
- logQ correction (`train.logq`, Yi et al., RecSys 2019): `CandidateLogQ` holds log q(item), the
  item's frequency as a candidate in the training pairs (set by the trainer), and every logit
  has its candidate's log q subtracted, in training only;
- mixed negatives (`train.uniform_negatives`, Yang et al., WWW 2020): catalogue items drawn
  uniformly join the candidates as negatives only (`out["neg_*"]`, encoded by the trainer); with
  logQ, q(item) is the expected share of the mixture, in-batch rate plus uniform rate.
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


class CandidateLogQ(nn.Module):
    """log q(item) by item key: q = the item's share of the candidate slots of the training pairs, mixed
    with `uniform` draws over `catalog_size` items. Empty (no correction) until `set` is called."""

    def __init__(self):
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("logq", torch.zeros(0), persistent=False)
        self.floor = 0.0

    def set(self, keys, counts, in_batch: int, uniform: int = 0, catalog_size: int = 1) -> None:
        """keys / counts: every candidate item and how often it is a candidate in the training pairs;
        in_batch: candidate slots per batch drawn from the pairs; uniform: draws from the catalogue."""
        keys, counts = torch.as_tensor(keys, dtype=torch.int64), torch.as_tensor(counts, dtype=torch.float64)
        order = torch.argsort(keys)
        rate = in_batch * counts[order] / counts.sum() + uniform / max(catalog_size, 1)
        self.keys, self.logq = keys[order], rate.log().float()
        self.floor = math.log(uniform / max(catalog_size, 1)) if uniform else float(self.logq.min())

    def forward(self, keys: torch.Tensor) -> torch.Tensor | None:
        if not len(self.keys):
            return None
        where = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        found = self.keys[where] == keys
        return torch.where(found, self.logq[where], torch.full_like(self.logq[where], self.floor))


def contrastive(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positive: torch.Tensor,
    anchor_keys: torch.Tensor,
    candidate_keys: torch.Tensor,
    scale: torch.Tensor,
    logq: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over anchors of -log softmax(scale * cos - log q) at the anchor's positive candidate.

    anchors (A, d), candidates (C, d): unit vectors. positive (A,): index of each anchor's
    positive among the candidates. Keys (item ids as ints) find what must not count as a
    negative: the anchor's own item and other copies of its positive item. logq (C,): each
    candidate's log sampling probability (logQ correction), or None.
    """
    logits = scale * anchors @ candidates.T
    if logq is not None:
        logits = logits - logq[None, :].to(logits.dtype)
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
        self.logq = CandidateLogQ()
        self.candidates = "item"  # which side of a pair is a candidate (the trainer counts them for logQ)

    def forward(self, out: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        items, offset = gather(out["item"])
        item_keys, _ = gather(out["item_keys"])
        if "neg_item" in out:
            items, item_keys = torch.cat([items, out["neg_item"]]), torch.cat([item_keys, out["neg_keys"]])
        queries = out["query"]
        positive = offset + torch.arange(len(queries), device=queries.device)
        logq = self.logq(item_keys) if self.training else None
        parts = {
            "retrieval": contrastive(
                queries.float(), items.float(), positive, out["query_keys"], item_keys, self.scale(), logq
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
        self.logq = CandidateLogQ()
        self.candidates = "both"  # both sides of a pair are candidates

    def forward(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keys = outputs["keys"]
        n = keys.shape[0]
        all_keys, _ = gather(keys)
        if "neg_keys" in outputs:
            all_keys = torch.cat([all_keys, outputs["neg_keys"]])
        partner = (torch.arange(n, device=keys.device) + n // 2) % n
        scale = self.scale()
        logq = self.logq(all_keys) if self.training else None
        parts = {}
        for part in ("m", "v"):
            if f"n_{part}" in outputs:
                local = outputs[f"n_{part}"]
                candidates, offset = gather(local)
                if "neg_keys" in outputs:
                    candidates = torch.cat([candidates, outputs[f"neg_n_{part}"].to(candidates.dtype)])
                parts[f"L_{part}"] = contrastive(local, candidates, partner + offset, keys, all_keys, scale, logq)
        if "L_v" in parts:
            total = (parts["L_v"] + self.alpha * parts["L_m"]) / (1 + self.alpha)
        else:
            total = parts["L_m"]
        return total, parts
