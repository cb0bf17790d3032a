"""The hotelmatch protocol on held-out real search queries, when the logs have them.

`query_eval_set` binds the test query -> item pairs (`tandem.pairs.queries`) to the catalogue: each distinct
query text is one query, its pairs' clicked items the targets, the pool the whole catalogue (a typed query
has no item of its own to leave out). `query_item` is -1 for every query: scorers that need a query item
(the co-occurrence baseline) are not applicable there. Subsets: short_query = query text under
`EvalConfig.short_tokens` tokens, short_target / warm / cold as in `tandem.evaluation.evaluate`.

`eval_set` picks the protocol's query set for the evaluate stage: real queries for the hotelmatch protocol
when the run has at least `eval.min_query_pairs` test query pairs (or no test item pairs), else the test
item pairs with the query item's title standing in for a query (counts["queries_are"] says which and why;
the report labels it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet, catalog_texts, hidden_rows, resolve_protocol, token_counts
from tandem.models.text import query_text

TITLES = "titles of the query items, with their co-occurrence coordinates where the model has them"
REAL, PROXY = "real search queries (held out)", f"{TITLES} (proxy: the logs have no test queries)"
PROXY_FEW, ITEMS = f"{TITLES} (proxy: too few held-out real queries", "query items (item-to-item)"


def query_eval_set(
    query_pairs: pd.DataFrame,
    catalog: pd.DataFrame,
    cfg: EvalConfig = EvalConfig(),
    train_pairs: pd.DataFrame | None = None,
    trained_clicks: pd.DataFrame | None = None,
) -> EvalSet:
    """EvalSet of the hotelmatch protocol whose queries are the distinct query texts of `query_pairs`; with
    `eval.hide_trained_clicks`, the items a query has in `trained_clicks` (training pairs with a query) are left
    out of its ranking (`EvalSet.hidden`)."""
    pos = pd.Series(np.arange(len(catalog)), index=catalog["item_id"].astype(str).to_numpy())
    ids = query_pairs["related_item_id"].astype(str)
    known = ids.isin(pos.index).to_numpy()
    pairs = query_pairs[known]
    if pairs.empty:
        raise ValueError(f"none of the {len(query_pairs)} test query pairs has its clicked item in the catalogue")
    texts, query_of_pair = np.unique(pairs["query"].astype(str).to_numpy(), return_inverse=True)
    target = pos.loc[pairs["related_item_id"].astype(str)].to_numpy()
    pool = np.arange(len(catalog))
    out = EvalSet(
        protocol="hotelmatch",
        query_item=np.full(len(texts), -1, dtype=np.int64),
        query_texts=[query_text(t) for t in texts],
        query_of_pair=query_of_pair.astype(np.int64),
        target=target,
        pool=pool,
        target_pos=target,  # the pool is the catalogue in order
        exclude=np.full(len(texts), -1, dtype=np.int64),
        cfg=cfg,
        hidden=_hidden(trained_clicks, texts, pos, query_of_pair, target) if cfg.hide_trained_clicks else None,
    )
    dropped = {"clicked item not in the catalogue": int((~known).sum())}
    out.counts.update(
        pairs_in=len(query_pairs),
        pairs_evaluated=len(pairs),
        pairs_dropped=int((~known).sum()),
        dropped=dropped,
        queries=len(texts),
        query_items_drawn=0,
        pool_size=len(pool),
        pool_without_train=False,
        ks_above_pool=[k for k in cfg.ks if k >= len(pool)],
        queries_are=REAL,
        hidden_trained=0 if out.hidden is None else len(out.hidden),
    )
    n_query, unit = token_counts(out.query_texts)
    rows = np.unique(target)
    n_target, _ = token_counts(catalog_texts(catalog, rows))
    out.subsets["short_query"] = (n_query < cfg.short_tokens)[query_of_pair]
    out.subsets["short_target"] = (n_target < cfg.short_tokens)[np.searchsorted(rows, target)]
    if train_pairs is not None:
        trained = pd.unique(pd.concat([train_pairs["item_id"], train_pairs["related_item_id"]]).astype(str))
        out.subsets["cold"] = ~np.isin(target, pos.reindex(trained).dropna().to_numpy(dtype=np.int64))
        out.subsets["warm"] = ~out.subsets["cold"]
    out.counts.update({name: int(mask.sum()) for name, mask in out.subsets.items()})
    out.counts["short_means"] = f"under {cfg.short_tokens} {unit} of the query text / the target item text"
    return out


def _hidden(clicks: pd.DataFrame | None, texts: np.ndarray, pos: pd.Series, query_of_pair, target):
    """(query, pool position) rows, sorted, of the clicks whose query is one of `texts` (sorted) and whose item is
    in the catalogue (= the pool), less any that is a target of the same query; None without clicks (rows without
    a query, e.g. the item pairs of a training mix, are no clicks)."""
    if clicks is None or "query" not in clicks.columns:
        return None
    query, item = clicks["query"].fillna("").astype(str).to_numpy(), clicks["related_item_id"].astype(str)
    keep = (query != "") & np.isin(query, texts) & item.isin(pos.index).to_numpy()
    return hidden_rows(
        np.searchsorted(texts, query[keep]), pos.loc[item[keep]].to_numpy(), len(pos), query_of_pair, target
    )


def eval_set(
    test: pd.DataFrame,
    query_test: pd.DataFrame,
    catalog: pd.DataFrame,
    cfg: EvalConfig,
    symmetric: bool,
    train_pairs: pd.DataFrame | None = None,
    query_train: pd.DataFrame | None = None,
) -> EvalSet:
    """The evaluate stage's EvalSet: held-out real queries under the hotelmatch protocol when there are enough
    test query pairs (warm / cold: items of the training item and query pairs), else the test item pairs
    (titles as queries under hotelmatch; items under notellm2)."""
    protocol = resolve_protocol(cfg.protocol, symmetric)
    if protocol == "hotelmatch" and len(query_test) and (len(query_test) >= cfg.min_query_pairs or test.empty):
        given = [p for p in (train_pairs, query_train) if p is not None]
        return query_eval_set(
            query_test, catalog, cfg, pd.concat(given, ignore_index=True) if given else None, query_train
        )
    ev = EvalSet.from_pairs(test, catalog, cfg, protocol, train_pairs=train_pairs)
    few = f"{PROXY_FEW}: {len(query_test)} < eval.min_query_pairs {cfg.min_query_pairs})"
    ev.counts["queries_are"] = (few if len(query_test) else PROXY) if protocol == "hotelmatch" else ITEMS
    return ev
