"""Generation metrics on hand-computed examples; reciprocal rank fusion against a plain reference."""

import random

import pytest

from tandem.promptgen.metrics import control_accuracy, distinct_n, reciprocal_rank_fusion, self_bleu


def test_distinct_n_by_hand():
    texts = ["red shoes", "red running shoes", "blue shoes"]
    # unigrams: red shoes red running shoes blue shoes -> 7 total, {red, shoes, running, blue} = 4 unique
    assert distinct_n(texts, 1) == pytest.approx(4 / 7)
    # bigrams: (red shoes) (red running) (running shoes) (blue shoes) -> 4 total, all unique
    assert distinct_n(texts, 2) == pytest.approx(1.0)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["a", "b"], 3) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(texts, 0)


def test_self_bleu_identical_is_max_and_disjoint_is_near_zero():
    same = ["find red running shoes for the trail"] * 3
    assert self_bleu(same) == pytest.approx(100.0)
    disjoint = ["find red running shoes", "what goes with sofas", "draw a cat in space"]
    assert self_bleu(disjoint) < 1.0
    partial = ["find red running shoes", "find red walking shoes", "draw a cat in space"]
    assert self_bleu(disjoint) < self_bleu(partial) < self_bleu(same)
    with pytest.raises(ValueError, match="at least 2"):
        self_bleu(["only one"])


def test_control_accuracy():
    assert control_accuracy(["short", "long", "medium", "long"], ["short", "long", "long", "short"]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        control_accuracy(["short"], ["short", "long"])
    with pytest.raises(ValueError, match="at least one"):
        control_accuracy([], [])


def test_rrf_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=1)
    got = dict(fused)
    assert got["a"] == pytest.approx(1 / 2)
    assert got["b"] == pytest.approx(1 / 3 + 1 / 2)
    assert got["c"] == pytest.approx(1 / 4 + 1 / 3)
    assert got["d"] == pytest.approx(1 / 4)
    assert [item for item, _ in fused] == ["b", "c", "a", "d"]
    assert [item for item, _ in reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=1, limit=2)] == ["b", "c"]


def test_rrf_consensus_beats_single_top_with_usual_k():
    # "x" tops one list only; "y" is 3rd in all three: with k=60, agreement wins
    rankings = [["x", "p", "y"], ["q", "r", "y"], ["s", "t", "y"]]
    assert reciprocal_rank_fusion(rankings)[0][0] == "y"
    # with k=0 one first place (1/1) ties three third places (3 * 1/3): the tie keeps first appearance
    fused = reciprocal_rank_fusion(rankings, k=0)
    assert fused[0][1] == pytest.approx(fused[1][1]) and [fused[0][0], fused[1][0]] == ["x", "y"]


def test_rrf_ties_keep_first_appearance_and_duplicates_count_once():
    assert [i for i, _ in reciprocal_rank_fusion([["b", "a"], ["a", "b"]])] == ["b", "a"]
    assert dict(reciprocal_rank_fusion([["a", "a", "b"]], k=0)) == pytest.approx({"a": 1.0, "b": 1 / 3})
    with pytest.raises(ValueError, match="k must be"):
        reciprocal_rank_fusion([["a"]], k=-1)


def test_weighted_rrf_scales_each_list():
    fused = dict(reciprocal_rank_fusion([["a", "b"], ["b", "c"]], k=1, weights=[3, 1]))
    assert fused == pytest.approx({"a": 3 / 2, "b": 3 / 3 + 1 / 2, "c": 1 / 3})
    # weight 1 everywhere = plain RRF
    plain = reciprocal_rank_fusion([["a", "b"], ["b", "c"]])
    assert reciprocal_rank_fusion([["a", "b"], ["b", "c"]], weights=[1, 1]) == plain
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([["a"], ["b"]], weights=[1])
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([["a"]], weights=[-1])


def _reference_rrf(rankings, k):
    items = []
    for ranking in rankings:
        for item in ranking:
            if item not in items:
                items.append(item)
    score = {item: sum(1 / (k + r.index(item) + 1) for r in rankings if item in r) for item in items}
    return sorted(((i, score[i]) for i in items), key=lambda t: (-t[1], items.index(t[0])))


def test_rrf_matches_reference_on_random_rankings():
    rng = random.Random(0)
    pool = [f"item{i}" for i in range(30)]
    for _ in range(50):
        rankings = [rng.sample(pool, rng.randint(0, 12)) for _ in range(rng.randint(1, 5))]
        k = rng.choice([0, 1, 10, 60])
        got, want = reciprocal_rank_fusion(rankings, k=k), _reference_rrf(rankings, k)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want])
