"""Choosing the popularity term's weight and cold prior on the validation pairs (the term:
tandem.models.popularity).

Two numbers are chosen together: the weight w and the cold prior, the b given to an item without the
feature (a new item). A large w ranks popular items first, which buys warm pairs with cold ones: a new
item (b = prior) falls behind every popular item its cosine does not beat by w (b_i - prior). So each
candidate (w, prior) is also scored with every validation target made new (its b replaced by the prior,
everything else unchanged), and a candidate is allowed only if that "as new" score is at least the
plain cosine's minus `cold_tolerance`: the term may not lower what a new item would have reached
without it. Among the allowed candidates the best on the primary metric over all validation pairs wins
(ties: the smaller w, then the smaller prior). A prior of 1 always passes (no item outranks a new one
by the term), so the check never leaves the term off; it prices the crowding instead: with a high
prior every new item in the pool rises for every query, which the all-pairs score sees.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet, resolve_protocol
from tandem.evaluation.metrics import per_pair_metrics
from tandem.models.popularity import PopularityTerm

log = logging.getLogger(__name__)
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0, 5.0, 8.0)
COLD_PRIORS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_CELLS = 30_000_000  # validation pairs x pool scored at once (float32: 120 MB); beyond, queries are sampled


def ranks_with_term(
    cos: np.ndarray, ev: EvalSet, q_factor: np.ndarray, pool_b: np.ndarray, weight: float, prior: float | None
) -> np.ndarray:
    """0-based rank of each validation pair's target under cosine + w q_factor (1 + b): with `prior`
    None the target keeps its own b, else its b is the prior (as if the target were new). Ties rank
    the target first (the term's candidates are compared on the same footing)."""
    real, as_new = _term_ranks(cos, ev, q_factor, pool_b, weight, 0.0 if prior is None else prior)
    return real if prior is None else as_new


def _term_ranks(
    cos: np.ndarray, ev: EvalSet, q_factor: np.ndarray, pool_b: np.ndarray, weight: float, prior: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ranks with the targets' own b, ranks with the targets made new), from one pair x pool score matrix."""
    q, rows = ev.query_of_pair, np.arange(len(ev.query_of_pair))
    scores = cos[q] + weight * q_factor[q, None] * (1.0 + pool_b[None, :])
    own = ev.exclude[q]
    scores[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf
    hit = scores[rows, ev.target_pos]
    real = (scores > hit[:, None]).sum(1)
    new_hit = cos[q, ev.target_pos] + weight * q_factor[q] * (1.0 + prior)
    as_new = (scores > new_hit[:, None]).sum(1) - (hit > new_hit)  # the target's own column never counts
    return real, as_new


def choose_weight(
    model,
    catalog: pd.DataFrame,
    valid: pd.DataFrame,
    train: pd.DataFrame,
    term: PopularityTerm,
    eval_cfg: EvalConfig,
    weights=WEIGHTS,
    cold_priors=COLD_PRIORS,
    cold_tolerance: float = 0.0,
    min_cold_pairs: int = 20,
) -> PopularityTerm:
    """`term` with the (weight, cold prior) chosen as the module says; real cold validation targets (in no
    training pair), when there are `min_cold_pairs`, must also stay within `cold_tolerance` of weight 0."""
    primary = eval_cfg.primary_metric
    protocol = resolve_protocol(eval_cfg.protocol, model.symmetric)
    ev = EvalSet.from_pairs(valid, catalog, eval_cfg, protocol, False)
    ev = _subsample(ev, valid, catalog, eval_cfg, protocol)
    queries, pool = ev.encode(model, catalog, progress=False)
    cos = (queries @ pool.T).astype(np.float32)
    ids = catalog["item_id"].astype(str).to_numpy()
    trained = set(train["item_id"].astype(str)) | set(train["related_item_id"].astype(str))
    cold = ~np.isin(ids[ev.target], list(trained))
    check_cold = int(cold.sum()) >= min_cold_pairs

    def score(ranks: np.ndarray) -> np.ndarray:
        return per_pair_metrics(ranks, eval_cfg.ks, eval_cfg.mrr_k)[primary]

    rows = []
    for prior in cold_priors:
        trial = PopularityTerm(1.0, term.feature, term.bias, prior)
        pool_b = trial.biases(ids[ev.pool])
        q_factor = 1.0 + trial.biases(ids[ev.query_item]) if ev.item_queries(model) else np.ones(len(ev.query_item))
        for w in weights:
            real, as_new = (score(r) for r in _term_ranks(cos, ev, q_factor, pool_b, w, prior))
            rows.append({"weight": w, "cold_prior": prior, "all": float(real.mean()), "as_new": float(as_new.mean()),
                         "cold": float(real[cold].mean()) if cold.any() else None})  # fmt: skip
    plain = rows[0]  # weight 0: cosine alone, whatever the prior
    allowed = [
        r
        for r in rows
        if r["as_new"] >= plain["as_new"] - cold_tolerance
        and (not check_cold or r["cold"] >= plain["cold"] - cold_tolerance)
    ]
    best = max(allowed, key=lambda r: (r["all"], -r["weight"], -r["cold_prior"]))
    log.info(
        "popularity term: weight %.3g, cold prior %.2f chosen on %d validation pairs (%s %.4f vs %.4f without; "
        "as new %.4f vs %.4f; %d cold pairs)",
        best["weight"], best["cold_prior"], len(cold), primary, best["all"], plain["all"], best["as_new"],
        plain["as_new"], int(cold.sum()),
    )  # fmt: skip
    chosen = {"metric": primary, "pairs": len(cold), "cold_pairs": int(cold.sum()), "cold_checked": check_cold}
    return PopularityTerm(best["weight"], term.feature, term.bias, best["cold_prior"], chosen | {"grid": rows})


def _subsample(ev: EvalSet, valid: pd.DataFrame, catalog: pd.DataFrame, cfg: EvalConfig, protocol: str) -> EvalSet:
    """At most about MAX_CELLS pair x pool scores: the pairs of a seeded sample of the query items beyond that."""
    pairs_per_query = len(ev.target) / max(len(ev.query_item), 1)
    limit = max(1, int(MAX_CELLS / max(len(ev.pool), 1) / pairs_per_query))
    if len(ev.query_item) <= limit:
        return ev
    query_ids = catalog["item_id"].to_numpy()[ev.query_item]
    keep = np.random.default_rng(cfg.seed).choice(query_ids, limit, replace=False)
    return EvalSet.from_pairs(valid[valid["item_id"].isin(keep)], catalog, cfg, protocol, False)
