"""What the train stage adds around `fit`: the training-signal counts and the popularity term.

- `pair_counts`: how many training pairs the run mined and used, and pairs per item (the item side
  of a pair and either side), for the stage summary and the report.
- `attach_popularity`: b_item from the run's Feast item features (`model.popularity_feature`), the
  weight chosen on the validation pairs (or the recipe's), and for item-to-item queries the log co-occurrence
  coordinates (tandem.training.factors), attached to the trained model so that everything it embeds from
  then on (embed stage, evaluate, serving) carries the same coordinates.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.core.config import RunConfig
from tandem.models.popularity import PopularityTerm, item_biases


def pair_counts(train: pd.DataFrame, valid: pd.DataFrame) -> dict:
    """Training-signal counts: pairs used, distinct items, pairs per query item and per item (either side)."""
    per_query = train.groupby("item_id").size() if len(train) else pd.Series(dtype=int)
    either = pd.concat([train["item_id"], train["related_item_id"]]).value_counts() if len(train) else per_query
    return {
        "pairs_used": len(train),
        "pairs_valid": len(valid),
        "query_items": int(len(per_query)),
        "items_in_pairs": int(len(either)),
        "pairs_per_query_item": round(float(per_query.mean()), 3) if len(per_query) else 0.0,
        "pairs_per_item": round(float(either.mean()), 3) if len(either) else 0.0,
    }


def attach_popularity(
    model, cfg: RunConfig, run, catalog: pd.DataFrame, train: pd.DataFrame, valid: pd.DataFrame
) -> dict | None:
    """Build the popularity term, choose its weight unless the recipe fixes it, add the co-occurrence
    coordinates, attach it to `model` (None when it changes no score or is off); returns
    its summary for train.json.

    The weight is chosen with b as the validation pairs found it: 'popularity' counted on the logs before
    the validation window (pairs/popularity_valid.parquet, written by mine), as the test's b is counted on
    the logs before the test window; 'degree' comes from the training pairs, which precede both."""
    from tandem.data.features import read_items
    from tandem.training.popularity import choose_weight

    mcfg = cfg.model
    model.popularity = None
    if mcfg.popularity_feature == "off":
        return None
    feature = mcfg.popularity_feature
    feats = run.summary("features")  # its run_id: read the run's own snapshot (absent in older summaries)
    counts = read_items(run.workdir, catalog["item_id"], as_of=feats["as_of"], columns=[feature],
                        run_id=feats.get("run_id"))[feature].to_numpy()  # fmt: skip
    # warm = in a training pair (as the evaluation counts it): only those carry their own b; the cold get the
    # chosen prior or content prediction, even where seen in the logs (a rarely seen item is not a known flop)
    warm = catalog["item_id"].isin(pd.concat([train["item_id"], train["related_item_id"]])).to_numpy()
    counts = np.where(warm, counts, 0)
    term = PopularityTerm(mcfg.popularity_weight, feature, item_biases(catalog["item_id"], counts))
    before = _valid_counts(run / "pairs", catalog) if feature == "popularity" else None
    trial = term if before is None else replace(term, bias=item_biases(catalog["item_id"], before * warm))
    choose = not valid.empty and (
        not mcfg.popularity_weight or (mcfg.popularity_factors and not mcfg.popularity_factor_weight)
    )
    item_vecs = model.embed_items(catalog, batch_size=cfg.eval.batch_size, progress=False) if choose else None
    why = None
    if not mcfg.popularity_weight:
        if valid.empty:
            why = "no validation pairs to choose the weight on"
        else:
            tolerance = mcfg.popularity_cold_tolerance
            trial = choose_weight(model, catalog, valid, train, trial, cfg.eval, cold_tolerance=tolerance,
                                  item_vecs=item_vecs)  # fmt: skip
            term = replace(trial, bias=term.bias)  # served: b of the whole training window
    term, factors = _with_factors(model, cfg, run, catalog, train, valid, term, trial, item_vecs)
    model.popularity = term if term.active else None
    return {
        "feature": feature,
        "weight": term.weight,
        **({"why": why} if why else {}),
        "cold_prior": term.cold_bias,
        "cold_content_scale": term.content.get("scale"),  # set when cold items get their content prediction
        "items_with_bias": len(term.bias),
        "items_without": int(np.sum(counts <= 0)),
        "chosen": term.chosen or "recipe",
        "factors": factors,
    }


def _with_factors(model, cfg: RunConfig, run, catalog, train, valid, term, trial, item_vecs) -> tuple:
    """(`term` with the co-occurrence coordinates when they are on and their weight is
    positive, their summary). Chosen with `trial` (b as the validation pairs found it) on factors counted before
    the validation window; served: factors of the whole training window."""
    from tandem.evaluation.baselines import training_clicks
    from tandem.training.factors import choose_factors, log_factors, with_cold

    mcfg, pairs = cfg.model, run.summary("pairs")
    if not mcfg.popularity_factors:
        return term, {"rank": 0, "why": "off"}
    if "valid_cutoff" not in pairs:
        return term, {"rank": 0, "why": "mined before the validation window was recorded: rerun mine"}
    if not mcfg.popularity_factor_weight and valid.empty:
        return term, {"rank": 0, "why": "no validation pairs to choose the weight on"}
    logs, ids = pd.read_parquet(run / "data" / "logs.parquet"), catalog["item_id"].astype(str).to_numpy()

    def factors(cutoff) -> np.ndarray:
        clicks = training_clicks(logs, cutoff, cfg.contract.click_events)
        return log_factors(ids, clicks, mcfg.popularity_factors, cfg.train.seed)

    weight, cold, chosen = mcfg.popularity_factor_weight, "zeros", "recipe"
    if not weight:
        earlier = factors(pairs["valid_cutoff"] or pairs["cutoff"])
        weight, cold, chosen = choose_factors(model, catalog, valid, train, trial, earlier, item_vecs, cfg.eval,
                                              cold_tolerance=mcfg.popularity_cold_tolerance)  # fmt: skip
    served = factors(pairs["cutoff"]) if weight else np.zeros((len(ids), 0), np.float32)
    summary = {"rank": int(served.shape[1]), "weight": weight, "cold_factors": cold, "chosen": chosen}
    if not served.shape[1]:
        return term, summary
    clicked = np.abs(served).sum(1) > 0
    content = with_cold(served, item_vecs, cold)[2] if cold == "content" else {}
    own = {i: row.round(6).tolist() for i, row in zip(ids[clicked], served[clicked], strict=True)}
    return replace(term, factor_weight=weight, factors=own, factor_content=content), summary


def _valid_counts(folder: Path, catalog: pd.DataFrame) -> np.ndarray | None:
    """Distinct users per item on the logs before the validation window, catalogue order; None for older runs."""
    from tandem.evaluation.baselines import popularity_scores

    path = folder / "popularity_valid.parquet"
    return popularity_scores(catalog["item_id"], pd.read_parquet(path)) if path.is_file() else None
