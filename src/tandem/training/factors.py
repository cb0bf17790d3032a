"""The log co-occurrence coordinates of the popularity term (tandem.models.popularity): factors and weight.

Factors: C is the training window's users-in-common matrix over the catalogue (C_ij = users who clicked both i
and j, the co-occurrence baseline's count; diagonal 0), its counts scaled as log(1 + c) / log(1 + max c).
With C ~ U diag(lambda) U^T over its largest positive eigenvalues, f_i = U_i sqrt(lambda): two items' factors
score f_q . f_i ~ C_qi, so a stored vector carrying sqrt(w_f) f adds w_f C_qi to an item-to-item inner product.
The leading eigenpair is left out: C is non-negative, so its leading eigenvector has one sign throughout and
grows with how much an item is clicked (popularity, which the popularity coordinate already carries); kept, it
lifts every clicked item over every new one for every query (MovieLens-100k, NoteLLM-2: the validation's cold
targets fell from 0.50 to 0.29 at w_f 0.2 with it, stayed at 0.50 without it). The next k carry what is specific
to the pair. Item-to-item queries use them: a symmetric model's stored item vector, an asymmetric model's item
title through its query tower with the item's coordinates (PopularityTerm.item_queries); a typed text has none.

The weight w_f, and what an item without clicks gets (zeros, or factors predicted from its vector), are chosen
on the validation pairs after the popularity term's weight, by the same rule (`popularity.pick`): factors
counted on the clicks before the validation window (as the test's are on the whole training window), each
candidate scored on all validation pairs and on the cold ones, refused when it lowers the cold targets' metric
below cosine alone's (the recipe without its popularity-aware parts), or, with too few cold pairs, when targets
made new (no clicks) rank worse than under cosine alone.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.baselines import click_matrix
from tandem.models.popularity import PopularityTerm, fit_content_factors, predict_factors
from tandem.training.popularity import grid_row, pick, validation_pairs

log = logging.getLogger(__name__)
# up to the popularity weight's range (WEIGHTS): the two terms compete for the same share of the score
FACTOR_WEIGHTS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
COLD_FACTORS = ("zeros", "content")


def log_factors(item_ids, clicks: pd.DataFrame, rank: int, seed: int = 0) -> np.ndarray:
    """(items, k <= rank) factors of the users-in-common matrix of `clicks` (user_id, item_id), `item_ids`
    order, its leading eigenpair left out; an item without clicks gets a zero row. k is smaller where fewer
    positive eigenvalues exist."""
    from scipy.sparse.linalg import eigsh

    n = len(item_ids)
    both = cooccurrence_matrix(item_ids, clicks)
    k = min(rank + 1, n - 2)  # + the leading pair, left out below
    if both.nnz == 0 or k < 2 or rank < 1:
        return np.zeros((n, 0), dtype=np.float32)
    start = np.random.default_rng(seed).random(n)  # eigsh's start vector: the same factors on every run
    values, vectors = eigsh(both, k=k, which="LA", v0=start)
    order = np.argsort(-values)[1:]  # the leading pair out: popularity
    order = order[values[order] > 1e-9 * values.max()]
    return (vectors[:, order] * np.sqrt(values[order])).astype(np.float32)


def cooccurrence_matrix(item_ids, clicks: pd.DataFrame):
    """C (items x items, csr, `item_ids` order): users who clicked both items, log(1 + c) / log(1 + max c);
    diagonal 0."""
    x = click_matrix(item_ids, clicks)
    both = (x.T @ x).tocsr()
    both.setdiag(0)
    both.eliminate_zeros()
    if both.nnz:
        both.data = np.log1p(both.data) / np.log1p(both.data.max())
    return both


def with_cold(factors: np.ndarray, item_vecs: np.ndarray, cold: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(factors with the rows of items without clicks filled, every item's factors as if it had none, the
    content regression or {}) for `cold` 'zeros' or 'content'."""
    clicked = np.abs(factors).sum(1) > 0
    if cold == "zeros" or clicked.sum() < 10:
        return factors, np.zeros_like(factors), {}
    content = fit_content_factors(item_vecs[clicked], factors[clicked])
    predicted = predict_factors(content, item_vecs)
    return np.where(clicked[:, None], factors, predicted), predicted, content


def choose_factors(
    model,
    catalog: pd.DataFrame,
    valid: pd.DataFrame,
    train: pd.DataFrame,
    term: PopularityTerm,
    factors: np.ndarray,
    item_vecs: np.ndarray,
    eval_cfg: EvalConfig,
    weights=FACTOR_WEIGHTS,
    cold_tolerance: float = 0.0,
    min_cold_pairs: int = 20,
) -> tuple[float, str, dict]:
    """(w_f, cold factors 'zeros' | 'content', the validation figures) for `term` (the chosen popularity part,
    b as the validation pairs found it) and `factors` counted before the validation window (catalogue order)."""
    ev, cold = validation_pairs(model, catalog, valid, train, eval_cfg)
    ids = catalog["item_id"].astype(str).to_numpy()
    q_rows, pairs = ev.query_of_pair, np.arange(len(ev.target))
    queries, _ = ev.encode(model, catalog, item_vecs, progress=False)  # the stored or the query tower's vectors
    aug, aug_new = term.augment_items(item_vecs, ids), replace(term, bias={}).augment_items(item_vecs, ids)
    aug_q = aug[ev.query_item] if ev.item_queries(model) else term.augment_queries(queries)
    base = aug_q @ aug[ev.pool].T  # the popularity term as chosen, targets with their own b
    base_new = np.einsum("pd,pd->p", aug_q[q_rows], aug_new[ev.target])  # targets made new

    def ranks(scores: np.ndarray, new_hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = scores[q_rows]
        scores[ev.never_ranked(q_rows)] = -np.inf
        hit = scores[pairs, ev.target_pos]
        return (scores > hit[:, None]).sum(1), (scores > new_hit[:, None]).sum(1) - (hit > new_hit)

    plain = queries @ item_vecs[ev.pool].T  # cosine alone: the floor of the cold targets
    floor = grid_row(*ranks(plain, plain[q_rows, ev.target_pos]), cold, eval_cfg)
    rows = []
    for option, cold_rule in enumerate(COLD_FACTORS):
        filled, as_new, _ = with_cold(factors, item_vecs, cold_rule)
        collab = filled[ev.query_item] @ filled[ev.pool].T
        collab_new = np.einsum("pk,pk->p", filled[ev.query_item][q_rows], as_new[ev.target])
        for w in weights:
            real, new = ranks(base + w * collab, base_new + w * collab_new)
            rows.append(grid_row(real, new, cold, eval_cfg, weight=w, cold_factors=cold_rule, option=option))
    check_cold = int(cold.sum()) >= min_cold_pairs
    check = "cold" if check_cold else "as_new"
    limit = floor[check]
    allowed = [r for r in rows if r[check] >= limit - cold_tolerance] or [rows[0]]  # w_f 0 keeps the term's own
    best = pick(allowed, check, [0.0, 1.0])
    log.info("co-occurrence coordinates: weight %.3g, cold factors %s, on %d validation pairs (%s %.4f vs %.4f "
             "without; %s %.4f vs %.4f with cosine alone; %d cold pairs)", best["weight"], best["cold_factors"],
             len(cold), eval_cfg.primary_metric, best["all"], rows[0]["all"], check, best[check], limit,
             int(cold.sum()))  # fmt: skip
    chosen = {"metric": eval_cfg.primary_metric, "pairs": len(cold), "cold_pairs": int(cold.sum()),
              "cold_checked": check_cold, "cold_limit": limit, "grid": rows}  # fmt: skip
    return best["weight"], best["cold_factors"], chosen
