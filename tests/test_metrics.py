"""Metrics and exact search on hand-computed examples."""

import numpy as np
import pytest

from tandem.evaluate import exact_top_k
from tandem.metrics import mrr_at_k, recall_at_k, retrieval_metrics, target_ranks


def test_ranks_recall_mrr_by_hand():
    ranked = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 4], [4, 5, 6]])
    ranks = target_ranks(ranked, np.array([3, 1, 4, 0]))
    assert ranks.tolist() == [1, 0, 2, -1]
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 4)
    assert recall_at_k(ranks, 2) == pytest.approx(2 / 4)
    assert recall_at_k(ranks, 3) == pytest.approx(3 / 4)
    assert mrr_at_k(ranks, 3) == pytest.approx((1 / 2 + 1 + 1 / 3) / 4)
    assert mrr_at_k(ranks, 2) == pytest.approx((1 / 2 + 1) / 4)
    assert retrieval_metrics(ranks, ks=(1, 3), mrr_k=2) == pytest.approx(
        {"recall@1": 0.25, "recall@3": 0.75, "mrr@2": 0.375}
    )


def test_empty_is_zero():
    assert recall_at_k(np.array([]), 10) == 0.0 and mrr_at_k(np.array([]), 10) == 0.0


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
