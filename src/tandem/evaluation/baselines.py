"""Baselines that rank the same pool as the model, as scorers for `tandem.evaluation.evaluate.EvalSet.evaluate`:

- popularity: one global ranking by the training window's distinct users per item;
- bm25: BM25 (bm25s) over the pool items' full text, queried by the query text (the title);
- cooccurrence: the query item's training-pair partners by pair score, then every other item by the users
  who clicked both it and the query item in the training window (item-to-item collaborative filtering: "who
  bought this also bought"), then by popularity.

(The untrained encoder is a model like any other: `EvalSet.score_encoder` on a fresh one.)

`score_baselines` scores the configured ones on one EvalSet; a baseline that cannot run on the data
(BM25 where no pool item or no query has a word of text, co-occurrence for typed queries) is reported
"n/a" with the reason instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tandem.evaluation.evaluate import EvalSet, Scorer, catalog_texts

BASELINES = ("untrained", "popularity", "bm25", "cooccurrence")


class NotApplicable(ValueError):
    """A baseline that cannot rank this data; the message is the reason the report shows."""


def popularity_scores(item_ids, popularity: pd.DataFrame) -> np.ndarray:
    """Distinct users per item (pairs/popularity.parquet: item_id, users), in `item_ids` order; 0 if unseen."""
    pop = popularity.set_index("item_id")["users"]
    return pop.reindex(pd.Index(item_ids)).fillna(0).to_numpy(dtype=np.float64)


def static_scorer(ev: EvalSet, item_scores: np.ndarray) -> Scorer:
    """Every query gets the same ranking by `item_scores` (catalogue order)."""
    pool_scores = np.asarray(item_scores, dtype=np.float64)[ev.pool]
    return lambda batch: np.broadcast_to(pool_scores, (len(batch), len(pool_scores)))


def bm25_scorer(ev: EvalSet, catalog: pd.DataFrame) -> Scorer:
    """BM25 scores of each query text against the pool items' `item_text` (English stop words removed)."""
    import bm25s

    retriever = bm25s.BM25()
    corpus = bm25s.tokenize(catalog_texts(catalog, ev.pool), stopwords="en", show_progress=False)
    if not corpus.vocab:
        raise NotApplicable("no pool item has text (title, topics or content) beyond stop words: BM25 needs words")
    retriever.index(corpus, show_progress=False)
    queries = bm25s.tokenize(ev.query_texts, stopwords="en", return_ids=False, show_progress=False)
    if not any(queries):
        raise NotApplicable("no query has text beyond stop words (empty titles): BM25 needs words")
    empty = np.zeros(len(ev.pool), dtype=np.float64)  # a query of stop words only matches nothing

    def score(batch: np.ndarray) -> np.ndarray:
        return np.stack([retriever.get_scores(queries[q]) if queries[q] else empty for q in batch])

    return score


def cooccurrence_scorer(
    ev: EvalSet, item_ids, train_pairs: pd.DataFrame, item_popularity: np.ndarray, clicks: pd.DataFrame | None = None
) -> Scorer:
    """Partners of the query item in the training pairs first, by pair score (then popularity,
    then catalogue order), then every other pool item by the users who clicked both it and the query
    item (`clicks`: the training window's click events, user_id and item_id), then by popularity.

    A pair counts in both directions (A->B makes B a partner of A and A of B; the higher score
    wins): co-occurrence is evidence either way. The partners are the mined pairs' top-t cut; the users
    in common rank the rest, which matters where the evaluation leaves each query's partners out of its
    ranking (`eval.hide_trained_clicks`): without them this baseline would be the popularity list again.
    A query item nobody clicked falls back to popularity alone.
    """
    if (ev.query_item < 0).any():
        raise NotApplicable("the queries are typed search texts, not items: co-occurrence needs a query item")
    ids = np.asarray(item_ids)
    pop = np.asarray(item_popularity, dtype=np.float64)[ev.pool]
    base = pop / (pop.max() + 1.0)  # popularity in [0, 1): below every partner's score
    query_of = pd.Series(np.arange(len(ev.query_item)), index=ids[ev.query_item])
    pool_of = pd.Series(np.arange(len(ev.pool)), index=ids[ev.pool])
    both = pd.concat(
        [
            train_pairs[["item_id", "related_item_id", "score"]].set_axis(["src", "dst", "score"], axis=1),
            train_pairs[["related_item_id", "item_id", "score"]].set_axis(["src", "dst", "score"], axis=1),
        ]
    )
    edges = both[both["src"].isin(query_of.index) & both["dst"].isin(pool_of.index)]
    edges = edges.groupby(["src", "dst"], as_index=False)["score"].max()
    cols = pool_of.loc[edges["dst"]].to_numpy(dtype=np.int64)
    edges = edges.assign(query=query_of.loc[edges["src"]].to_numpy(dtype=np.int64), col=cols, pop=base[cols])
    edges = edges.sort_values(["query", "score", "pop", "col"], ascending=[True, False, False, True])
    order = edges.groupby("query").cumcount().to_numpy()  # 0 = best partner
    size = edges.groupby("query")["col"].transform("size").to_numpy()
    bonus = 2.0 + (size - order) / (size + 1.0)  # in (2, 3), decreasing along each query's partner list
    queries, cols = edges["query"].to_numpy(), edges["col"].to_numpy()
    common = None if clicks is None else users_in_common(ev, item_ids, clicks)

    def score(batch: np.ndarray) -> np.ndarray:
        out = np.tile(base, (len(batch), 1))
        if common is not None:
            out += common(batch)  # whole users; popularity (below 1) orders the equal counts
        row = np.full(len(ev.query_item), -1)
        row[batch] = np.arange(len(batch))
        mine = row[queries] >= 0
        out[row[queries[mine]], cols[mine]] = out.max() + bonus[mine]  # partners above every other item
        return out

    return score


def training_clicks(logs: pd.DataFrame, cutoff, click_events) -> pd.DataFrame:
    """The click events of the training window (before the test window's start `cutoff`): co-occurrence's users."""
    return logs[(logs["ts"] < pd.Timestamp(cutoff)) & logs["event"].isin(click_events)]


def click_matrix(item_ids, clicks: pd.DataFrame):
    """(users, items in `item_ids` order) sparse 0/1 (csc): a user counts once per item however often they clicked
    it; clicks on items outside `item_ids` are left out."""
    import scipy.sparse as sp

    pos = pd.Series(np.arange(len(item_ids)), index=np.asarray(item_ids).astype(str))
    rows = pos.reindex(clicks["item_id"].astype(str).to_numpy()).to_numpy()
    known = ~np.isnan(rows)
    users = pd.factorize(clicks["user_id"].to_numpy()[known])[0]
    shape = (int(users.max()) + 1 if len(users) else 0, len(item_ids))
    x = sp.csc_matrix((np.ones(len(users)), (users, rows[known].astype(np.int64))), shape=shape)
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def users_in_common(ev: EvalSet, item_ids, clicks: pd.DataFrame) -> Scorer:
    """(queries in batch, pool) counts of the distinct users who clicked both the query item and the pool item."""
    x = click_matrix(item_ids, clicks)
    queries, pool = x[:, ev.query_item].T.tocsr(), x[:, ev.pool]
    return lambda batch: (queries[batch] @ pool).toarray()


def score_baselines(
    ev: EvalSet,
    names,
    catalog: pd.DataFrame,
    train_pairs: pd.DataFrame,
    popularity: pd.DataFrame,
    new_model=None,
    progress: bool = False,
    clicks: pd.DataFrame | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """(per-pair metrics per baseline, {baseline: why it is n/a}) on `ev`'s pairs and pool.

    `names` from eval.baselines; `popularity` is pairs/popularity.parquet (item_id, users);
    `new_model()` returns a fresh (untrained) encoder, needed for "untrained" only; `clicks` (the training
    window's click events) give co-occurrence its users in common."""
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"eval.baselines: unknown {unknown}; choose from {list(BASELINES)}")
    pop = popularity_scores(catalog["item_id"], popularity)
    makers = {
        "untrained": lambda: ev.score_encoder(new_model(), catalog, progress=progress),
        "popularity": lambda: ev.evaluate(static_scorer(ev, pop)),
        "bm25": lambda: ev.evaluate(bm25_scorer(ev, catalog)),
        "cooccurrence": lambda: ev.evaluate(cooccurrence_scorer(ev, catalog["item_id"], train_pairs, pop, clicks)),
    }
    scored, unavailable = {}, {}
    for name in names:
        if name == "untrained" and new_model is None:
            unavailable[name] = "no fresh encoder given to score"
            continue
        try:
            scored[name] = makers[name]()
        except NotApplicable as why:
            unavailable[name] = str(why)
    return scored, unavailable
