"""Choosing the popularity term's weight and cold treatment on the validation pairs (the term:
tandem.models.popularity).

Two things are chosen together: the weight w and what a cold item (in no training pair) gets as b: a
constant prior, or its content prediction (a ridge regression of the warm items' b on their vectors) times
a scale. A large w ranks popular items first, which buys warm pairs with cold ones: a cold item falls
behind every popular item its cosine does not beat. So every candidate is also scored on the validation
pairs whose target is cold, and one that lowers their primary metric below the plain cosine's (minus
`cold_tolerance`) is refused. Validation drawn by time (`split.valid_by`) has such pairs: its window brings
new items as the test window does. Where it has fewer than `min_cold_pairs`, a proxy stands in: every
validation target made new (its b replaced by what a cold item would get, everything else unchanged) must
rank at least as well as under cosine alone. Among the allowed candidates, those within one standard error
of the best on the primary metric over all validation pairs (a gain the validation pairs cannot tell from
noise) compete on the cold pairs: the best there wins (ties: the higher figure on all pairs, the smaller w,
then the lower cold b). So the term never buys an all-pairs gain smaller than its own noise with the cold
pairs: on Complete Journey the plain best (w 2, cold prior 0.75) found 1 of 51 cold validation pairs, a
content prediction 0.0028 below it on all pairs (standard error 0.0057) found 11. The proxy only guards:
it saturates (a prior of 1 lifts each new target alone above nearly every item), so as an objective it
takes the largest prior in the noise band, and the test's new items then fill the head of every list
(Complete Journey, NoteLLM-2, 2 cold validation pairs: prior 1.0 chosen, MRR@10 0.054 against
popularity's 0.088). Without enough cold pairs the best on all pairs wins.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet, resolve_protocol
from tandem.evaluation.metrics import per_pair_metrics
from tandem.models.popularity import PopularityTerm, fit_content_bias, predict_bias

log = logging.getLogger(__name__)
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0, 3.0, 5.0, 8.0)
COLD_PRIORS = (0.0, 0.25, 0.5, 0.75, 1.0)
CONTENT_SCALES = (1.0, 1.25, 1.5)  # the content prediction regresses to the mean: a scale lets new items reach up
MAX_CELLS = 30_000_000  # validation pairs x pool scored at once (float32: 120 MB); beyond, queries are sampled


def ranks_with_term(
    cos: np.ndarray, ev: EvalSet, q_factor: np.ndarray, pool_b: np.ndarray, weight: float, prior: float | None
) -> np.ndarray:
    """0-based rank of each validation pair's target under cosine + w q_factor (1 + b): with `prior`
    None the target keeps its own b, else its b is the prior (as if the target were new). Ties rank
    the target first (the term's candidates are compared on the same footing)."""
    new_b = np.full(len(pool_b), 0.0 if prior is None else prior, dtype=np.float32)
    real, as_new = _term_ranks(cos, ev, q_factor, pool_b, weight, new_b)
    return real if prior is None else as_new


def _term_ranks(
    cos: np.ndarray, ev: EvalSet, q_factor: np.ndarray, pool_b: np.ndarray, weight: float, new_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(ranks with the targets' own b, ranks with each target's b replaced by `new_b`, its b as a new item),
    from one pair x pool score matrix."""
    q, rows = ev.query_of_pair, np.arange(len(ev.query_of_pair))
    scores = cos[q] + weight * q_factor[q, None] * (1.0 + pool_b[None, :])
    scores[ev.never_ranked(q)] = -np.inf
    hit = scores[rows, ev.target_pos]
    real = (scores > hit[:, None]).sum(1)
    new_hit = cos[q, ev.target_pos] + weight * q_factor[q] * (1.0 + new_b[ev.target_pos])
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
    content_scales=CONTENT_SCALES,
    item_vecs: np.ndarray | None = None,
) -> PopularityTerm:
    """`term` (b of the warm items) with the weight and cold treatment chosen as the module says; `item_vecs`:
    the model's plain item vectors (catalogue order) when already embedded."""
    primary = eval_cfg.primary_metric
    ev, cold = validation_pairs(model, catalog, valid, train, eval_cfg)
    if item_vecs is None:
        item_vecs = model.embed_items(catalog, batch_size=eval_cfg.batch_size, progress=False)
    queries, pool = ev.encode(model, catalog, item_vecs, progress=False)
    cos = (queries @ pool.T).astype(np.float32)
    ids = catalog["item_id"].astype(str).to_numpy()
    check_cold = int(cold.sum()) >= min_cold_pairs
    warm = np.isin(ids, list(term.bias))
    own_b = np.array([term.bias.get(i, 0.0) for i in ids], dtype=np.float32)
    options = [({"cold_prior": p, "content_scale": None}, np.full(len(ids), p, np.float32)) for p in cold_priors]
    fitted = fit_content_bias(item_vecs[warm], own_b[warm]) if warm.sum() >= 10 else None
    for scale in content_scales if fitted else ():
        predicted = predict_bias(fitted | {"scale": scale}, item_vecs)
        options.append(({"cold_prior": None, "content_scale": scale}, predicted))

    rows = []
    for index, (label, cold_b) in enumerate(options):
        b = np.where(warm, own_b, cold_b)
        q_factor = 1.0 + b[ev.query_item] if ev.item_queries(model) else np.ones(len(ev.query_item))
        for w in weights:
            real, as_new = _term_ranks(cos, ev, q_factor, b[ev.pool], w, cold_b[ev.pool])
            rows.append(grid_row(real, as_new, cold, eval_cfg, weight=w, **label, option=index))
    plain = rows[0]  # weight 0: cosine alone, whatever the cold b
    check, limit = ("cold", plain["cold"]) if check_cold else ("as_new", plain["as_new"])
    allowed = [r for r in rows if r[check] >= limit - cold_tolerance]
    level = [float(cold_b[~warm].mean()) if (~warm).any() else 0.0 for _, cold_b in options]
    best = pick(allowed, check, level)
    label, cold_b = options[best["option"]]
    content = fitted | {"scale": label["content_scale"]} if label["content_scale"] else {}
    log.info(
        "popularity term: weight %.3g, cold b %s chosen on %d validation pairs (%s %.4f vs %.4f without; "
        "%s %.4f vs %.4f; %d cold pairs)",
        best["weight"], f"prior {label['cold_prior']}" if not content else f"content x{label['content_scale']}",
        len(cold), primary, best["all"], plain["all"], check, best[check], limit, int(cold.sum()),
    )  # fmt: skip
    chosen = {"metric": primary, "pairs": len(cold), "cold_pairs": int(cold.sum()), "cold_checked": check_cold}
    prior = label["cold_prior"] if label["cold_prior"] is not None else round(level[best["option"]], 6)
    return PopularityTerm(best["weight"], term.feature, term.bias, prior, chosen | {"grid": rows}, content)


def validation_pairs(model, catalog: pd.DataFrame, valid: pd.DataFrame, train: pd.DataFrame, eval_cfg: EvalConfig):
    """(the validation pairs ranked as the test ranks them, sampled beyond MAX_CELLS; per pair, whether its
    target is cold: in no training pair)."""
    protocol = resolve_protocol(eval_cfg.protocol, model.symmetric)
    ev = subsample(EvalSet.from_pairs(valid, catalog, eval_cfg, protocol, False, train), valid, catalog, eval_cfg,
                   protocol, train)  # fmt: skip
    trained = set(train["item_id"].astype(str)) | set(train["related_item_id"].astype(str))
    return ev, ~np.isin(catalog["item_id"].astype(str).to_numpy()[ev.target], list(trained))


def grid_row(real: np.ndarray, as_new: np.ndarray, cold: np.ndarray, eval_cfg: EvalConfig, **label) -> dict:
    """One candidate's validation figures from its ranks (targets with their own term; targets made new): the
    primary metric on all pairs, its standard error, on the targets made new and on the cold ones."""
    real, as_new = (per_pair_metrics(r, eval_cfg.ks, eval_cfg.mrr_k)[eval_cfg.primary_metric] for r in (real, as_new))
    se = float(real.std(ddof=1) / np.sqrt(len(real))) if len(real) > 1 else 0.0
    return label | {"all": float(real.mean()), "se": se, "as_new": float(as_new.mean()),
                    "cold": float(real[cold].mean()) if cold.any() else None}  # fmt: skip


def pick(allowed: list[dict], check: str, level: list[float]) -> dict:
    """The chosen grid row: the best on all pairs (ties: the smaller weight, the lower cold b, `level`); with
    `check` "cold", among the rows within one standard error of it, the best on the cold pairs (ties alike)."""
    top = max(allowed, key=lambda r: (r["all"], -r["weight"], -level[r["option"]]))
    if check != "cold":  # the proxy is a guard, not evidence: see the module's note
        return top
    near = [r for r in allowed if r["all"] >= top["all"] - top["se"]]  # within the noise of the best
    return max(near, key=lambda r: (r["cold"], r["all"], -r["weight"], -level[r["option"]]))


def subsample(
    ev: EvalSet, valid: pd.DataFrame, catalog: pd.DataFrame, cfg: EvalConfig, protocol: str, train
) -> EvalSet:
    """At most about MAX_CELLS pair x pool scores: the pairs of a seeded sample of the query items beyond that."""
    pairs_per_query = len(ev.target) / max(len(ev.query_item), 1)
    limit = max(1, int(MAX_CELLS / max(len(ev.pool), 1) / pairs_per_query))
    if len(ev.query_item) <= limit:
        return ev
    query_ids = catalog["item_id"].to_numpy()[ev.query_item]
    keep = np.random.default_rng(cfg.seed).choice(query_ids, limit, replace=False)
    return EvalSet.from_pairs(valid[valid["item_id"].isin(keep)], catalog, cfg, protocol, False, train)
