"""Retrieval metrics as pure numpy functions of the target's rank, and bootstrap confidence intervals.

`ranks[i]` is the 0-based position of pair i's target in its ranked list, or -1 when the
target is not in the list at all (beyond the deepest K retrieved). Every pair has one
relevant item, so recall@k is 0/1, MRR@k the reciprocal rank inside k and nDCG@k
1 / log2(rank + 2) inside k (the ideal DCG is 1).

Per-pair arrays use NaN for "not in this subset" (e.g. `short_query/recall@100` for a pair
whose query text is long); means and bootstrap intervals ignore NaN.
"""

from __future__ import annotations

import numpy as np


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its row of `ranked` (n_queries, K), -1 where absent."""
    hits = ranked == np.asarray(targets)[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), -1)


def _inside(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks)
    return (ranks >= 0) & (ranks < k)


def recall_per_pair(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the target is in the top k, else 0.0."""
    return _inside(ranks, k).astype(np.float64)


def reciprocal_rank_per_pair(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 / (rank + 1) inside the top k, 0 below it."""
    ranks = np.asarray(ranks)
    return np.where(_inside(ranks, k), 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)


def ndcg_per_pair(ranks: np.ndarray, k: int) -> np.ndarray:
    """1 / log2(rank + 2) inside the top k, 0 below it (one relevant item: the ideal DCG is 1)."""
    ranks = np.asarray(ranks)
    return np.where(_inside(ranks, k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def per_pair_metrics(ranks: np.ndarray, ks=(10, 100, 1000), mrr_k: int = 10) -> dict[str, np.ndarray]:
    """recall@k for each k, mrr@mrr_k and ndcg@mrr_k, one value per pair."""
    out = {f"recall@{k}": recall_per_pair(ranks, k) for k in ks}
    out[f"mrr@{mrr_k}"] = reciprocal_rank_per_pair(ranks, mrr_k)
    out[f"ndcg@{mrr_k}"] = ndcg_per_pair(ranks, mrr_k)
    return out


def with_subsets(per_pair: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add f"{subset}/{metric}" arrays: the metric where the mask is True, NaN elsewhere."""
    out = dict(per_pair)
    for subset, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        out |= {f"{subset}/{name}": np.where(mask, values, np.nan) for name, values in per_pair.items()}
    return out


def mean_metrics(per_pair: dict[str, np.ndarray]) -> dict[str, float]:
    """NaN-aware mean of each per-pair array (NaN when no pair is in its subset)."""
    return {name: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for name, v in per_pair.items()}


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose single relevant item is in the top k."""
    return float(recall_per_pair(ranks, k).mean()) if np.size(ranks) else 0.0


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean reciprocal rank, counting 0 when the target is below position k."""
    return float(reciprocal_rank_per_pair(ranks, k).mean()) if np.size(ranks) else 0.0


def retrieval_metrics(ranks: np.ndarray, ks=(10, 100, 1000), mrr_k: int = 10) -> dict[str, float]:
    """recall@k for each k and mrr@mrr_k (0.0 for no pairs): what training validation reports."""
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out[f"mrr@{mrr_k}"] = mrr_at_k(ranks, mrr_k)
    return out


# ------------------------------------------------------------------------------ bootstrap
def bootstrap_means(columns: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_columns) means of `columns` (n_pairs, n_columns) over pairs resampled with
    replacement; every column sees the same resamples (paired), NaN entries are left out of
    their column's mean (a resample with none of a subset's pairs gives NaN)."""
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim == 1:
        columns = columns[:, None]
    n, width = columns.shape
    out = np.full((n_boot, width), np.nan)
    if n == 0:
        return out
    present = np.isfinite(columns)
    values, weights = np.where(present, columns, 0.0), present.astype(np.float64)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2**22 // n))  # resamples per step: bounded memory for many pairs
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        draws = rng.integers(0, n, size=(rows, n)) + np.arange(rows)[:, None] * n
        counts = np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + rows] = (counts @ values) / (counts @ weights)
    return out


def _percentiles(means: np.ndarray, level: float) -> np.ndarray:
    tail = (1.0 - level) / 2.0 * 100.0
    out = np.full((2, means.shape[1]), np.nan)
    some = np.isfinite(means).any(axis=0)
    if some.any():
        out[:, some] = np.nanpercentile(means[:, some], [tail, 100.0 - tail], axis=0)
    return out


def bootstrap_cis(
    per_pair: dict[str, np.ndarray], n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of the mean of each per-pair array, all on the same resamples."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"eval.level: {level} is not strictly between 0 and 1 (e.g. 0.95)")
    if n_boot < 1:
        raise ValueError(f"eval.n_boot: {n_boot} resamples; use at least 1 (e.g. 1000)")
    if not per_pair:
        return {}
    names = list(per_pair)
    lengths = {len(per_pair[name]) for name in names}
    if len(lengths) != 1:
        raise ValueError(f"per-pair arrays of different lengths {sorted(lengths)}: they must cover the same pairs")
    bounds = _percentiles(bootstrap_means(np.column_stack([per_pair[n] for n in names]), n_boot, seed), level)
    return {name: (float(bounds[0, i]), float(bounds[1, i])) for i, name in enumerate(names)}


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of the NaN-aware mean of `values`; (nan, nan) if none."""
    return bootstrap_cis({"v": np.asarray(values, dtype=np.float64)}, n_boot, level, seed)["v"]
