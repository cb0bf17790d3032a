"""Choosing the popularity term's weight on the validation pairs (the term: tandem.models.popularity)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet, resolve_protocol
from tandem.models.popularity import PopularityTerm

log = logging.getLogger(__name__)
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2)


def choose_weight(
    model,
    catalog: pd.DataFrame,
    valid: pd.DataFrame,
    train: pd.DataFrame,
    term: PopularityTerm,
    eval_cfg: EvalConfig,
    weights=WEIGHTS,
    cold_tolerance: float = 0.0,
    min_cold_pairs: int = 20,
) -> PopularityTerm:
    """`term` with the weight that ranks the validation pairs best on eval_cfg.primary_metric (under the
    evaluation's protocol, pool and queries), among the weights whose mean on cold validation targets
    (items in no training pair) is at least the weight 0's minus `cold_tolerance` (checked when there
    are `min_cold_pairs` such pairs). Ties go to the smaller weight."""
    primary = eval_cfg.primary_metric
    ev = EvalSet.from_pairs(valid, catalog, eval_cfg, resolve_protocol(eval_cfg.protocol, model.symmetric), False)
    queries, pool = ev.encode(model, catalog, progress=False)
    ids = catalog["item_id"].astype(str).to_numpy()
    trained = set(train["item_id"].astype(str)) | set(train["related_item_id"].astype(str))
    cold = ~np.isin(ids[ev.target], list(trained))
    check_cold = int(cold.sum()) >= min_cold_pairs
    rows = []
    for w in weights:
        trial = PopularityTerm(w, term.feature, term.bias, term.cold_bias)
        pool_w = trial.augment_items(pool, ids[ev.pool])
        if ev.item_queries(model):
            query_w = trial.augment_items(queries, ids[ev.query_item])
        else:
            query_w = trial.augment_queries(queries)
        values = ev.evaluate(ev.vector_scorer(query_w, pool_w))[primary]
        rows.append(
            {"weight": w, "all": float(values.mean()), "cold": float(values[cold].mean()) if cold.any() else None}
        )
    floor = rows[0]["cold"] - cold_tolerance if check_cold and rows[0]["cold"] is not None else -np.inf
    allowed = [r for r in rows if not check_cold or r["cold"] >= floor]
    best = max(allowed, key=lambda r: (r["all"], -r["weight"]))
    log.info(
        "popularity term: weight %.3g chosen on %d validation pairs (%s %.4f vs %.4f without; %d cold pairs)",
        best["weight"], len(cold), primary, best["all"], rows[0]["all"], int(cold.sum()),
    )  # fmt: skip
    chosen = {"metric": primary, "pairs": len(cold), "cold_pairs": int(cold.sum()), "cold_checked": check_cold}
    return PopularityTerm(best["weight"], term.feature, term.bias, term.cold_bias, chosen | {"grid": rows})
