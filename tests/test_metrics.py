"""Metrics on hand-computed examples, against pytrec_eval (trec_eval), and bootstrap intervals."""

import math

import numpy as np
import pytest

from tandem.evaluation.evaluate import exact_top_k
from tandem.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_cis,
    mean_metrics,
    mrr_at_k,
    ndcg_per_pair,
    per_pair_metrics,
    recall_at_k,
    retrieval_metrics,
    target_ranks,
    with_subsets,
)


def test_ranks_recall_mrr_ndcg_by_hand():
    ranked = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 4], [4, 5, 6]])
    ranks = target_ranks(ranked, np.array([3, 1, 4, 0]))
    assert ranks.tolist() == [1, 0, 2, -1]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 4)
    assert recall_at_k(ranks, 3) == pytest.approx(3 / 4)
    assert mrr_at_k(ranks, 3) == pytest.approx((1 / 2 + 1 + 1 / 3) / 4)
    assert mrr_at_k(ranks, 2) == pytest.approx((1 / 2 + 1) / 4)
    assert ndcg_per_pair(ranks, 2).tolist() == pytest.approx([1 / math.log2(3), 1.0, 0.0, 0.0])
    assert retrieval_metrics(ranks, ks=(1, 3), mrr_k=2) == pytest.approx(
        {"recall@1": 0.25, "recall@3": 0.75, "mrr@2": 0.375}
    )
    assert mean_metrics(per_pair_metrics(ranks, ks=(1, 3), mrr_k=2)) == pytest.approx(
        {"recall@1": 0.25, "recall@3": 0.75, "mrr@2": 0.375, "ndcg@2": (1 / math.log2(3) + 1) / 4}
    )


def test_empty_is_zero():
    assert recall_at_k(np.array([]), 10) == 0.0 and mrr_at_k(np.array([]), 10) == 0.0
    assert retrieval_metrics(np.array([]), ks=(5,), mrr_k=5) == {"recall@5": 0.0, "mrr@5": 0.0}


def test_metrics_equal_pytrec_eval_on_random_rankings():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(7)
    n_queries, n_docs = 300, 40
    qrel, full_run, cut_run, ranks = {}, {}, {}, []
    for q in range(n_queries):
        order = rng.permutation(n_docs)  # the ranked list of doc ids, best first
        shown = order[: rng.integers(5, n_docs + 1)]  # a run may stop before the relevant doc
        target = int(rng.integers(n_docs))
        qrel[f"q{q}"] = {f"d{target}": 1}
        scores = {f"d{d}": float(len(shown) - i) for i, d in enumerate(shown)}  # distinct: no tie rules
        full_run[f"q{q}"] = scores
        cut_run[f"q{q}"] = {f"d{d}": scores[f"d{d}"] for d in shown[:10]}  # MRR@10 = RR of the run cut at 10
        ranks.append(target_ranks(shown[None, :], np.array([target]))[0])
    ranks = np.array(ranks)
    assert (ranks == -1).any() and (ranks >= 10).any() and (ranks < 10).any()  # every case is exercised
    full = pytrec_eval.RelevanceEvaluator(qrel, {"recall_10", "ndcg_cut_10"}).evaluate(full_run)
    cut = pytrec_eval.RelevanceEvaluator(qrel, {"recip_rank"}).evaluate(cut_run)
    ours = per_pair_metrics(ranks, ks=(10,), mrr_k=10)
    queries = [f"q{q}" for q in range(n_queries)]
    np.testing.assert_allclose(ours["recall@10"], [full[q]["recall_10"] for q in queries], atol=1e-9)
    np.testing.assert_allclose(ours["ndcg@10"], [full[q]["ndcg_cut_10"] for q in queries], atol=1e-9)
    np.testing.assert_allclose(ours["mrr@10"], [cut[q]["recip_rank"] for q in queries], atol=1e-9)


def test_subsets_are_nan_outside_and_means_ignore_nan():
    per_pair = per_pair_metrics(np.array([0, 3, -1, 1]), ks=(2,), mrr_k=2)
    out = with_subsets(per_pair, {"short_query": np.array([True, False, True, False]), "none": np.zeros(4, bool)})
    assert out["recall@2"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert np.isnan(out["short_query/recall@2"]).tolist() == [False, True, False, True]
    means = mean_metrics(out)
    assert means["recall@2"] == 0.5 and means["short_query/recall@2"] == 0.5
    assert means["short_query/mrr@2"] == pytest.approx(0.5) and math.isnan(means["none/recall@2"])


def test_bootstrap_ci_by_hand_and_properties():
    # All values equal: every resample has the same mean.
    assert bootstrap_ci(np.full(50, 0.25)) == pytest.approx((0.25, 0.25))
    assert all(math.isnan(b) for b in bootstrap_ci(np.full(5, np.nan)))
    rng = np.random.default_rng(1)
    small, large = rng.random(50) < 0.3, rng.random(5000) < 0.3
    lo_s, hi_s = bootstrap_ci(small.astype(float), n_boot=500, seed=3)
    lo_l, hi_l = bootstrap_ci(large.astype(float), n_boot=500, seed=3)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4  # sqrt(100) = 10x narrower in theory
    # ~ normal approximation for a proportion: p +- 1.96 sqrt(p (1 - p) / n)
    half = 1.96 * math.sqrt(large.mean() * (1 - large.mean()) / len(large))
    assert (hi_l - lo_l) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_ci(large.astype(float), n_boot=500, seed=3) == (lo_l, hi_l)  # seeded: repeatable


def test_bootstrap_with_nan_matches_resampling_the_subset_rows():
    rng = np.random.default_rng(2)
    values = rng.random(200)
    values[rng.random(200) < 0.5] = np.nan
    lo, hi = bootstrap_ci(values, n_boot=2000, seed=0)
    subset = values[~np.isnan(values)]
    assert lo <= subset.mean() <= hi
    reference = np.array([rng.choice(subset, len(subset)).mean() for _ in range(2000)])
    ref_lo, ref_hi = np.percentile(reference, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.02) and hi == pytest.approx(ref_hi, abs=0.02)


def test_bootstrap_cis_share_resamples_and_check_input():
    a = np.random.default_rng(4).random(100)
    together = bootstrap_cis({"a": a, "b": a + 1.0}, n_boot=200)
    assert together["b"] == pytest.approx((together["a"][0] + 1.0, together["a"][1] + 1.0))
    assert together["a"] == pytest.approx(bootstrap_ci(a, n_boot=200))
    with pytest.raises(ValueError, match="same pairs"):
        bootstrap_cis({"a": a, "b": a[:5]})
    with pytest.raises(ValueError, match="eval.level"):
        bootstrap_ci(a, level=1.5)


def test_exact_top_k_matches_full_sort_and_excludes():
    rng = np.random.default_rng(0)
    q, items = rng.normal(size=(7, 8)), rng.normal(size=(50, 8))
    exclude = np.array([0, -1, 3, 49, 10, -1, 2])
    got = exact_top_k(q, items, 5, exclude=exclude, batch=3)
    scores = q @ items.T
    for i in range(len(q)):
        if exclude[i] >= 0:
            scores[i, exclude[i]] = -np.inf
        assert got[i].tolist() == np.argsort(-scores[i], kind="stable")[:5].tolist()
        assert exclude[i] not in got[i]


def test_exact_top_k_ties_prefer_lower_index():
    items = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    assert exact_top_k(np.array([[1.0, 0.0]]), items, 3).tolist() == [[0, 1, 2]]
    assert exact_top_k(np.array([[1.0, 0.0]]), items, 5).tolist() == [[0, 1, 2, 3, 4]]


def test_exact_top_k_resolves_ties_at_the_cut_to_lower_indices():
    rng = np.random.default_rng(5)
    items = np.eye(4)[rng.integers(0, 4, size=300)]  # 300 items, 4 distinct vectors: ties everywhere
    queries = rng.normal(size=(20, 4))
    exclude = rng.integers(-1, 300, size=20)
    got = exact_top_k(queries, items, 110, exclude=exclude, batch=7)
    scores = queries @ items.T
    scores[np.flatnonzero(exclude >= 0), exclude[exclude >= 0]] = -np.inf
    for i in range(len(queries)):
        assert got[i].tolist() == np.argsort(-scores[i], kind="stable")[:110].tolist()
