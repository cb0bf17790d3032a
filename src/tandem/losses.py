"""Contrastive losses as pure functions of embeddings, plus the learnable logit scale.

Negatives can come from every device: `gather` concatenates a tensor across processes
keeping the local part differentiable, and returns where the local rows start.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
