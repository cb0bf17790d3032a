"""What the train stage adds around `fit`: the training-signal counts and the popularity term.

- `pair_counts`: how many training pairs the run mined and used, and pairs per item (the item side
  of a pair and either side), for the stage summary and the report.
- `attach_popularity`: b_item from the run's Feast item features (`model.popularity_feature`), the
  weight chosen on the validation pairs (or the recipe's), attached to the trained model so that
  everything it embeds from then on (embed stage, evaluate, serving) carries the same coordinate.
"""

from __future__ import annotations

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
    model,
    cfg: RunConfig,
    workdir: Path,
    as_of,
    catalog: pd.DataFrame,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    run_id: str | None = None,
) -> dict | None:
    """Build the popularity term, choose its weight unless the recipe fixes it, attach it to `model`
    (None when the weight is 0 or the term is off); returns its summary for train.json."""
    from tandem.data.features import read_items
    from tandem.training.popularity import choose_weight

    mcfg = cfg.model
    model.popularity = None
    if mcfg.popularity_feature == "off":
        return None
    feature = mcfg.popularity_feature
    counts = read_items(workdir, catalog["item_id"], as_of=as_of, columns=[feature], run_id=run_id)[feature]
    counts = counts.to_numpy()
    term = PopularityTerm(mcfg.popularity_weight, feature, item_biases(catalog["item_id"], counts))
    if not mcfg.popularity_weight:
        if valid.empty:
            return {"feature": feature, "weight": 0.0, "why": "no validation pairs to choose the weight on"}
        tolerance = mcfg.popularity_cold_tolerance
        term = choose_weight(model, catalog, valid, train, term, cfg.eval, cold_tolerance=tolerance)
    model.popularity = term if term.weight else None
    return {
        "feature": feature,
        "weight": term.weight,
        "cold_prior": term.cold_bias,
        "items_with_bias": len(term.bias),
        "items_without": int(np.sum(counts <= 0)),
        "chosen": term.chosen or "recipe",
    }
