"""Offline evaluation on held-out pairs: query = the first item's title, target = the second item.

The candidate pool is the whole catalogue minus the query item itself. Ranking is exact
(brute-force cosine), so the numbers measure the model, not the ANN index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tandem.config import EvalConfig
from tandem.metrics import retrieval_metrics, target_ranks
from tandem.text import query_text


def exact_top_k(
    queries: np.ndarray, items: np.ndarray, k: int, exclude: np.ndarray | None = None, batch: int = 1024
) -> np.ndarray:
    """Indices of the k items with the highest dot product per query (ties: lower index first);
    `exclude[i]` (an item index, or -1) is never returned for query i."""
    k = min(k, items.shape[0])
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], batch):
        scores = queries[start : start + batch] @ items.T
        if exclude is not None:
            rows = np.arange(scores.shape[0])
            ex = exclude[start : start + batch]
            scores[rows[ex >= 0], ex[ex >= 0]] = -np.inf
        top = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < items.shape[0]
            else np.tile(np.arange(k), (len(scores), 1))
        )
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # by score desc, then index asc
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


@dataclass(frozen=True)
class RetrievalEvaluator:
    """Binds the test pairs to catalogue positions; scores any way of ranking the catalogue."""

    query_texts: list[str]  # one per distinct query item
    query_of_pair: np.ndarray  # pair -> index into query_texts
    query_item: np.ndarray  # distinct query -> catalogue index (excluded from its pool)
    target: np.ndarray  # pair -> catalogue index of the related item
    cfg: EvalConfig

    @classmethod
    def from_pairs(
        cls, pairs: pd.DataFrame, catalog: pd.DataFrame, cfg: EvalConfig = EvalConfig()
    ) -> RetrievalEvaluator:
        pos = pd.Series(np.arange(len(catalog)), index=catalog["item_id"].to_numpy())
        missing = set(pairs["item_id"]).union(pairs["related_item_id"]) - set(pos.index)
        if missing:
            raise ValueError(f"{len(missing)} pair items are not in the catalogue, e.g. {sorted(missing)[:3]}")
        distinct = pd.unique(pairs["item_id"])
        titles = catalog.set_index("item_id").loc[distinct, "title"]
        return cls(
            query_texts=[query_text(t) for t in titles],
            query_of_pair=pd.Series(np.arange(len(distinct)), index=distinct).loc[pairs["item_id"]].to_numpy(),
            query_item=pos.loc[distinct].to_numpy(),
            target=pos.loc[pairs["related_item_id"]].to_numpy(),
            cfg=cfg,
        )

    @property
    def depth(self) -> int:
        return max(max(self.cfg.ks), self.cfg.mrr_k)

    def _score(self, ranked_per_query: np.ndarray) -> dict[str, float]:
        ranks = target_ranks(ranked_per_query[self.query_of_pair], self.target)
        return retrieval_metrics(ranks, self.cfg.ks, self.cfg.mrr_k)

    def score_vectors(self, query_vecs: np.ndarray, item_vecs: np.ndarray) -> dict[str, float]:
        """Metrics of an embedding model given its query and catalogue vectors (L2-normalised)."""
        return self._score(exact_top_k(query_vecs, item_vecs, self.depth, exclude=self.query_item))

    def score_encoder(
        self, model, catalog: pd.DataFrame, item_vecs: np.ndarray | None = None, progress: bool = True
    ) -> tuple[dict[str, float], np.ndarray]:
        """Embed with any encoder that has `embed_items` / `embed_queries` (unless item vectors
        are given; a `symmetric` encoder's queries are its query items' vectors) and score it;
        returns (metrics, item vectors) so the vectors can be indexed."""
        if item_vecs is None:
            item_vecs = model.embed_items(catalog, batch_size=self.cfg.batch_size, progress=progress)
        if getattr(model, "symmetric", False):  # item-to-item models: the query is the query item's vector
            query_vecs = item_vecs[self.query_item]
        else:
            query_vecs = model.embed_queries(self.query_texts, batch_size=self.cfg.batch_size, progress=progress)
        return self.score_vectors(query_vecs, item_vecs), item_vecs

    def score_static(self, item_scores: np.ndarray) -> dict[str, float]:
        """Metrics of one global ranking (e.g. popularity) shown to every query."""
        order = np.lexsort((np.arange(len(item_scores)), -item_scores))
        ranked = np.tile(order[: self.depth + 1], (len(self.query_texts), 1))
        # drop each query's own item, keep `depth` columns
        keep = ranked != self.query_item[:, None]
        ranked = np.array([row[m][: self.depth] for row, m in zip(ranked, keep)])
        return self._score(ranked)
