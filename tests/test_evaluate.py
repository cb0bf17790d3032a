"""The evaluation harness: protocols and pools, exact ranks, baselines, subsets, per-pair files."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tandem.core.config import EvalConfig
from tandem.evaluation.baselines import bm25_scorer, cooccurrence_scorer, popularity_scores, static_scorer
from tandem.evaluation.evaluate import (
    EvalSet,
    RetrievalEvaluator,
    exact_top_k,
    query_latency_ms,
    resolve_protocol,
)
from tandem.evaluation.metrics import retrieval_metrics, target_ranks
from tandem.evaluation.results import load_per_pair, save_per_pair, summarize

CFG = EvalConfig(ks=(1, 2, 5), mrr_k=3, n_boot=200)


def catalogue(n: int = 8) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n)],
            "title": [f"item number {i}" for i in range(n)],
            "topics": [["tag"]] * n,
            "content": ["short"] * n,
        }
    )


def pairs_of(*edges: str) -> pd.DataFrame:
    left, right = zip(*(e.split(">") for e in edges))
    return pd.DataFrame({"item_id": list(left), "related_item_id": list(right), "score": 1.0})


class FakeEncoder:
    """Fixed vectors per catalogue row; queries are looked up by title; records its calls."""

    def __init__(self, vectors: np.ndarray, titles: list[str], symmetric: bool = False):
        self.vectors, self.titles, self.symmetric, self.calls = vectors, titles, symmetric, []

    def embed_items(self, catalog, batch_size=128, progress=True):
        self.calls.append(("items", len(catalog)))
        return self.vectors[[self.titles.index(t) for t in catalog["title"]]]

    def embed_queries(self, texts, batch_size=256, progress=True):
        self.calls.append(("queries", len(texts)))
        return -self.vectors[[self.titles.index(t) for t in texts]]  # deliberately unlike the item vector


def test_protocol_resolution():
    assert resolve_protocol("auto", symmetric=True) == "notellm2"
    assert resolve_protocol("auto", symmetric=False) == "hotelmatch"
    assert resolve_protocol("hotelmatch", symmetric=True) == "hotelmatch"
    with pytest.raises(ValueError, match="eval.protocol"):
        resolve_protocol("trec", symmetric=False)
    with pytest.raises(ValueError, match="eval.protocol"):
        EvalConfig(protocol="trec")
    with pytest.raises(ValueError, match="eval.query_fraction"):
        EvalConfig(query_fraction=0.0)


def test_hotelmatch_pool_is_catalogue_minus_the_query_item():
    cat = catalogue(6)
    ev = EvalSet.from_pairs(pairs_of("i0>i1", "i0>i2", "i3>i4", "i5>i5"), cat, CFG, "hotelmatch")
    assert ev.pool.tolist() == list(range(6))
    assert ev.query_item.tolist() == [0, 3] and ev.query_texts == ["item number 0", "item number 3"]
    assert ev.exclude.tolist() == [0, 3]  # each query's own item is never ranked
    assert ev.target.tolist() == [1, 2, 4]
    assert ev.counts["pairs_evaluated"] == 3 and ev.counts["dropped"] == {"target is the query item": 1}
    assert ev.counts["ks_above_pool"] == [5] and "5 candidates" in ev.description  # recall@5 is 1: flagged
    # A scorer that loves the query item itself: it is skipped, the ranks count the others only.
    loves_self = lambda batch: np.stack([np.eye(6)[ev.query_item[q]] * 9 + np.arange(6) / 10 for q in batch])  # noqa: E731
    assert ev.ranks(loves_self).tolist() == [4, 3, 1]  # i1 below i5, i4, i3, i2 / i2 below 3 / i4 below i5


def test_notellm2_pool_by_hand_with_every_left_item_a_query():
    cat = catalogue(8)
    pairs = pairs_of("i0>i1", "i0>i2", "i1>i2", "i3>i4", "i3>i0", "i6>i7")
    ev = EvalSet.from_pairs(pairs, cat, replace(CFG, query_fraction=1.0), "notellm2")
    assert ev.counts["query_items_drawn"] == 4  # i0, i1, i3, i6
    assert ev.pool.tolist() == [2, 4, 7]  # test items minus the query items; i5 is in no test pair
    assert ev.exclude.tolist() == [-1, -1, -1, -1]
    kept = list(zip(ev.query_item[ev.query_of_pair], ev.target))
    assert kept == [(0, 2), (1, 2), (3, 4), (6, 7)]
    assert ev.counts["dropped"] == {"query item not drawn": 0, "target is a query item": 2}
    assert ev.counts["pairs_in"] == 6 == ev.counts["pairs_evaluated"] + ev.counts["pairs_dropped"]
    assert ev.counts["ks_above_pool"] == [5]  # recall@5 over 3 candidates is flagged


def test_notellm2_draw_is_seeded_and_keeps_queries_out_of_the_pool():
    cat = catalogue(60)
    rng = np.random.default_rng(0)
    edges = [f"i{a}>i{b}" for a, b in rng.integers(0, 60, size=(120, 2)) if a != b]
    pairs = pairs_of(*edges)
    ev = EvalSet.from_pairs(pairs, cat, CFG, "notellm2")
    again = EvalSet.from_pairs(pairs, cat, CFG, "notellm2")
    other = EvalSet.from_pairs(pairs, cat, replace(CFG, seed=1), "notellm2")
    lefts = np.unique([int(e.split(">")[0][1:]) for e in edges])
    assert ev.counts["query_items_drawn"] == round(0.5 * len(lefts))
    assert np.array_equal(ev.query_item, again.query_item) and not np.array_equal(ev.query_item, other.query_item)
    assert not set(ev.query_item) & set(ev.pool)
    assert set(ev.target) <= set(ev.pool) and np.array_equal(ev.pool[ev.target_pos], ev.target)
    dropped = ev.counts["dropped"]
    assert ev.counts["pairs_evaluated"] + sum(dropped.values()) == len(pairs) and dropped["target is a query item"]


def test_no_pair_left_is_a_readable_error():
    with pytest.raises(ValueError, match="eval.query_fraction"):
        EvalSet.from_pairs(pairs_of("i0>i1", "i1>i0"), catalogue(2), replace(CFG, query_fraction=1.0), "notellm2")


@pytest.mark.parametrize("protocol", ["hotelmatch", "notellm2"])
def test_ranks_match_exact_top_k(protocol):
    rng = np.random.default_rng(3)
    cat = catalogue(80)
    edges = [f"i{a}>i{b}" for a, b in rng.integers(0, 80, size=(150, 2)) if a != b]
    ev = EvalSet.from_pairs(pairs_of(*edges), cat, CFG, protocol, subsets=False)
    queries, items = rng.normal(size=(len(ev.query_item), 16)), rng.normal(size=(80, 16))
    ranks = ev.ranks(ev.vector_scorer(queries, items[ev.pool]))
    top = exact_top_k(queries, items[ev.pool], len(ev.pool), exclude=ev.exclude)  # the simple reference
    assert ranks.tolist() == target_ranks(top[ev.query_of_pair], ev.target_pos).tolist()


def test_ties_rank_lower_pool_positions_first():
    ev = EvalSet.from_pairs(pairs_of("i2>i5", "i2>i0"), catalogue(6), CFG, "hotelmatch", subsets=False)
    flat = lambda batch: np.zeros((len(batch), 6))  # noqa: E731
    assert ev.ranks(flat).tolist() == [4, 0]  # i5 after i0, i1, i3, i4 (i2 is the query); i0 first


def test_popularity_and_static_scorer():
    cat = catalogue(5)
    pop = popularity_scores(cat["item_id"], pd.DataFrame({"item_id": ["i3", "i1", "zz"], "users": [9, 4, 7]}))
    assert pop.tolist() == [0, 4, 0, 9, 0]
    ev = EvalSet.from_pairs(pairs_of("i3>i1", "i0>i4"), cat, CFG, "hotelmatch", subsets=False)
    assert ev.ranks(static_scorer(ev, pop)).tolist() == [0, 3]  # i3 (query) skipped: i1 first; i4 after i3, i1, i2


def test_bm25_ranks_an_exact_title_match_first():
    cat = pd.DataFrame(
        {
            "item_id": ["q", "match", "half", "other"],
            "title": ["red running shoes", "red running shoes", "red wine", "blue denim jeans"],
            "topics": [["sport"], ["sport"], ["drinks"], ["clothes"]],
            "content": ["", "", "", ""],
        }
    )
    ev = EvalSet.from_pairs(pairs_of("q>match", "q>half", "q>other"), cat, CFG, "hotelmatch", subsets=False)
    scorer = bm25_scorer(ev, cat)
    assert ev.ranks(scorer).tolist() == [0, 1, 2]
    assert scorer(np.array([0]))[0, 1] > scorer(np.array([0]))[0, 2] > scorer(np.array([0]))[0, 3] == 0


def test_cooccurrence_ranks_train_partners_first_then_popularity():
    cat = catalogue(7)
    train = pd.DataFrame(
        {
            "item_id": ["i0", "i0", "i5", "i6"],
            "related_item_id": ["i4", "i3", "i0", "i0"],
            "score": [0.5, 0.9, 0.7, 0.1],
        }
    )
    pop = np.array([0, 5, 9, 0, 0, 0, 1], dtype=float)  # i2 > i1 > i6
    # i0 has partners (i3 0.9, i5 0.7 reversed, i4 0.5, i6 0.1 reversed); i1 has none: popularity only.
    ev = EvalSet.from_pairs(pairs_of("i0>i3", "i0>i5", "i0>i4", "i0>i2", "i1>i2", "i1>i6"), cat, CFG, "hotelmatch")
    ranks = ev.ranks(cooccurrence_scorer(ev, cat["item_id"], train, pop))
    # i0's list: i3, i5, i4, i6 (partners), then i2, i1 by popularity; i1's list: i2, i6, i0, i3, ...
    assert ranks.tolist() == [0, 1, 2, 4, 0, 1]


def test_cooccurrence_ranks_by_users_in_common_after_the_partners():
    """With the training window's clicks: partners first, then users in common with the query item, then
    popularity; checked against a per-query sort of (partner score, users in common, popularity)."""
    rng = np.random.default_rng(0)
    cat = catalogue(9)
    train = pd.DataFrame({"item_id": ["i0", "i7"], "related_item_id": ["i8", "i0"], "score": [0.9, 0.4]})
    clicks = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, 6, 40)],
                           "item_id": [f"i{i}" for i in rng.integers(0, 9, 40)]})  # fmt: skip
    clicks = pd.concat([clicks, clicks.head(5)])  # a repeated click counts its user once
    pop = rng.integers(0, 20, 9).astype(float)
    ev = EvalSet.from_pairs(pairs_of("i0>i1", "i0>i2", "i3>i4", "i3>i5", "i6>i1"), cat, CFG, "hotelmatch")
    ranks = ev.ranks(cooccurrence_scorer(ev, cat["item_id"], train, pop, clicks))
    users = clicks.groupby("item_id")["user_id"].agg(set).reindex(cat["item_id"]).apply(
        lambda s: s if isinstance(s, set) else set()
    )  # fmt: skip
    partners = {("i0", "i8"): 0.9, ("i0", "i7"): 0.4}

    def order(query: str) -> list[str]:
        key = lambda i: (-partners.get((query, i), -1.0), -len(users[query] & users[i]), -pop[int(i[1:])], int(i[1:]))  # noqa: E731
        return sorted((i for i in cat["item_id"] if i != query), key=key)

    pairs = [("i0", "i1"), ("i0", "i2"), ("i3", "i4"), ("i3", "i5"), ("i6", "i1")]
    expected = [order(query).index(target) for query, target in pairs]
    assert ranks.tolist() == expected
    assert ranks.tolist() != ev.ranks(cooccurrence_scorer(ev, cat["item_id"], train, pop)).tolist()


def test_per_pair_arrays_subsets_and_summary():
    cat = catalogue(6)
    cat.loc[[1, 3], "content"] = "a very long description " * 20  # ~80 tokens: not short
    ev = EvalSet.from_pairs(pairs_of("i0>i1", "i0>i2", "i3>i4", "i5>i0"), cat, CFG, "hotelmatch")
    assert ev.subsets["short_query"].tolist() == [True, True, False, True]
    assert ev.subsets["short_target"].tolist() == [False, True, True, True]
    assert ev.counts["short_query"] == 3 and "MiniLM" in ev.counts["short_means"]
    model = FakeEncoder(np.random.default_rng(0).normal(size=(6, 4)), cat["title"].tolist())
    per_pair = ev.score_encoder(model, cat, progress=False)
    assert model.calls == [("items", 6), ("queries", 3)]
    assert set(per_pair) == set(ev.metric_names())
    assert "short_query/mrr@3" in per_pair and "ndcg@3" in per_pair
    assert all(v.shape == (4,) for v in per_pair.values())
    assert np.isnan(per_pair["short_query/recall@5"]).tolist() == [False, False, True, False]
    assert not np.isnan(per_pair["recall@5"]).any()
    metrics, ci = summarize({"model": per_pair, "popularity": ev.evaluate(static_scorer(ev, np.arange(6.0)))}, CFG)
    assert set(metrics) == set(ci) == {"model", "popularity"} and set(ci["model"]) == set(per_pair)
    for name in metrics:
        for metric, mean in metrics[name].items():
            lo, hi = ci[name][metric]
            assert lo - 1e-12 <= mean <= hi + 1e-12
    assert metrics["model"]["short_query/recall@1"] == pytest.approx(np.nanmean(per_pair["short_query/recall@1"]))


def test_symmetric_model_queries_with_item_vectors_only_under_notellm2():
    cat = catalogue(6)
    pairs = pairs_of("i0>i1", "i2>i3", "i4>i5")
    model = FakeEncoder(np.eye(6), cat["title"].tolist(), symmetric=True)
    ev = EvalSet.from_pairs(pairs, cat, replace(CFG, query_fraction=1.0), "notellm2")
    ev.score_encoder(model, cat, progress=False)
    assert model.calls == [("items", 6)]
    hm = EvalSet.from_pairs(pairs, cat, CFG, "hotelmatch")
    model.calls.clear()
    hm.score_encoder(model, cat, progress=False)
    assert model.calls == [("items", 6), ("queries", 3)]
    asymmetric = FakeEncoder(np.random.default_rng(0).normal(size=(6, 3)), cat["title"].tolist())
    partial = ev.score_encoder(asymmetric, cat, progress=False)
    assert asymmetric.calls == [("items", 3), ("queries", 3)]  # only the pool is embedded
    given = ev.score_encoder(asymmetric, cat, item_vecs=asymmetric.vectors, progress=False)
    assert all(np.array_equal(partial[m], given[m]) for m in given)
    assert query_latency_ms(model, ev, cat, 2) >= 0.0 and model.calls[-1] == ("items", 1)
    assert query_latency_ms(model, hm, cat, 2) >= 0.0 and model.calls[-1] == ("queries", 1)


def test_retrieval_evaluator_for_training_matches_the_reference():
    rng = np.random.default_rng(5)
    cat = catalogue(40)
    pairs = pairs_of(*[f"i{a}>i{b}" for a, b in rng.integers(0, 40, size=(60, 2)) if a != b])
    model = FakeEncoder(rng.normal(size=(40, 8)), cat["title"].tolist())
    got, _ = RetrievalEvaluator.from_pairs(pairs, cat, CFG).score_encoder(model, cat, progress=False)
    # reference: the pre-harness evaluator (exact_top_k over the catalogue, query item excluded)
    ids = cat["item_id"].tolist()
    distinct = list(dict.fromkeys(pairs["item_id"]))
    q_vecs = -model.vectors[[ids.index(i) for i in distinct]]
    top = exact_top_k(q_vecs, model.vectors, 5, exclude=np.array([ids.index(i) for i in distinct]))
    ranks = target_ranks(
        top[[distinct.index(i) for i in pairs["item_id"]]], np.array([ids.index(i) for i in pairs["related_item_id"]])
    )
    assert got == pytest.approx(retrieval_metrics(ranks, CFG.ks, CFG.mrr_k))


def test_per_pair_npz_round_trip(tmp_path):
    per_pair = {
        "model": {"recall@100": np.array([1.0, 0.0]), "short_query/recall@100": np.array([np.nan, 0.0])},
        "bm25": {"mrr@10": np.array([0.5, 0.25])},
    }
    path = save_per_pair(tmp_path / "evaluate" / "per_pair.npz", per_pair)
    back = load_per_pair(path)
    assert set(back) == {"model", "bm25"} and set(back["model"]) == set(per_pair["model"])
    for name, values in per_pair.items():
        for metric, v in values.items():
            np.testing.assert_array_equal(back[name][metric], v)
    with pytest.raises(ValueError, match="evaluate stage"):
        load_per_pair(tmp_path / "missing.npz")
