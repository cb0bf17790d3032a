"""Retrieval metrics as pure numpy functions of the target's rank.

`ranks[i]` is the 0-based position of query i's target in its ranked list, or -1 when the
target is not in the list at all (beyond the deepest K retrieved).
"""

from __future__ import annotations

import numpy as np


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its row of `ranked` (n_queries, K), -1 where absent."""
    hits = ranked == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), -1)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose single relevant item is in the top k."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, counting 0 when the target is below position k."""
    ranks = np.asarray(ranks)
    if not ranks.size:
        return 0.0
    inside = (ranks >= 0) & (ranks < k)
    return float(np.mean(np.where(inside, 1.0 / (np.where(inside, ranks, 0) + 1.0), 0.0)))


def retrieval_metrics(ranks: np.ndarray, ks=(10, 100, 1000), mrr_k: int = 10) -> dict[str, float]:
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out[f"mrr@{mrr_k}"] = mrr_at_k(ranks, mrr_k)
    return out
