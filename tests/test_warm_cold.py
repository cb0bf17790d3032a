"""Issue 16 items 4-5: warm / cold subsets, the pool without training items, baselines that cannot run
(n/a with the reason), the gate against the strongest baseline, and the report's first table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tandem.core.config import EvalConfig
from tandem.core.config_release import GateConfig
from tandem.evaluation.baselines import NotApplicable, bm25_scorer, score_baselines
from tandem.evaluation.compare import comparison
from tandem.evaluation.evaluate import EvalSet
from tandem.evaluation.gate import baseline_check, decide, markdown
from tandem.evaluation.results import summarize

CFG = EvalConfig(ks=(1, 2, 5), mrr_k=3, n_boot=200)


def catalogue(n: int = 8, title: str = "item number {i}") -> pd.DataFrame:
    return pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(n)], "title": [title.format(i=i) for i in range(n)],
         "topics": [[]] * n, "content": [""] * n}
    )  # fmt: skip


def pairs_of(*edges: str) -> pd.DataFrame:
    left, right = zip(*(e.split(">") for e in edges))
    return pd.DataFrame({"item_id": list(left), "related_item_id": list(right), "score": 1.0})


TRAIN = pairs_of("i0>i1", "i2>i0")  # training items: i0, i1, i2


def test_warm_and_cold_subsets_follow_the_training_items():
    ev = EvalSet.from_pairs(pairs_of("i3>i1", "i3>i4", "i5>i0", "i6>i7"), catalogue(), CFG, train_pairs=TRAIN)
    assert ev.subsets["warm"].tolist() == [True, False, True, False]
    assert ev.subsets["cold"].tolist() == [False, True, False, True]
    assert ev.counts["warm"] == ev.counts["cold"] == 2
    names = ev.metric_names()
    assert "warm/recall@5" in names and "cold/mrr@3" in names and "cold/ndcg@3" in names
    per_pair = ev.evaluate(lambda batch: np.zeros((len(batch), len(ev.pool))))
    assert np.isnan(per_pair["cold/recall@1"]).tolist() == [True, False, True, False]
    # without training pairs there is no warm / cold split
    assert "warm" not in EvalSet.from_pairs(pairs_of("i3>i1"), catalogue(), CFG).subsets


@pytest.mark.parametrize("protocol", ["hotelmatch", "notellm2"])
def test_pool_without_training_items_keeps_only_cold_targets(protocol):
    cfg = replace(CFG, pool_without_train=True, query_fraction=1.0)
    ev = EvalSet.from_pairs(pairs_of("i3>i1", "i3>i4", "i5>i0", "i6>i7"), catalogue(), cfg, protocol, train_pairs=TRAIN)
    assert not np.isin(ev.pool, [0, 1, 2]).any()  # catalogue rows of i0, i1, i2
    assert ev.counts["dropped"]["target in a training pair (pool without training items)"] == 2
    assert ev.counts["pairs_evaluated"] == 2 and ev.subsets["cold"].all()
    assert "training items" in ev.description
    plain = EvalSet.from_pairs(pairs_of("i3>i1"), catalogue(), replace(CFG, pool_without_train=True))
    assert plain.counts["pairs_evaluated"] == 1  # no training pairs given: the option has nothing to remove


def test_bm25_without_text_is_not_applicable_and_the_others_still_score():
    cat = catalogue(title="")  # images-only items: no words at all
    cat["images"] = [["x.png"]] * len(cat)
    ev = EvalSet.from_pairs(pairs_of("i3>i1", "i5>i4"), cat, CFG, subsets=False, train_pairs=TRAIN)
    with pytest.raises(NotApplicable, match="BM25 needs words"):
        bm25_scorer(ev, cat)
    pop = pd.DataFrame({"item_id": ["i1"], "users": [3]})
    scored, unavailable = score_baselines(ev, ("popularity", "bm25", "cooccurrence", "untrained"), cat, TRAIN, pop)
    assert set(scored) == {"popularity", "cooccurrence"}
    assert "BM25 needs words" in unavailable["bm25"] and "untrained" in unavailable
    assert scored["popularity"]["recall@1"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="eval.baselines"):
        score_baselines(ev, ("bm24",), cat, TRAIN, pop)


def _arrays(values):
    values = np.asarray(values, dtype=float)
    return {"recall@100": values, "mrr@10": values / 2}


def test_gate_rejects_a_challenger_that_loses_to_the_strongest_baseline():
    model = _arrays([1, 0, 0, 0, 1, 0, 0, 0])  # 0.25
    baselines = {"popularity": _arrays([1, 1, 1, 0, 1, 1, 0, 0]), "bm25": _arrays([0] * 8)}  # 0.625, 0
    first = decide("recall@100", model, None, None, GateConfig(n_boot=200), baselines=baselines)
    assert first.decision == "reject" and "popularity baseline" in first.reason
    assert first.evidence["baselines"]["baseline"] == "popularity" and first.evidence["baselines"]["ok"] is False
    assert first.evidence["baselines"]["diff"] == pytest.approx(-0.375)
    off = decide("recall@100", model, None, None, GateConfig(n_boot=200, beat_baselines=False), baselines=baselines)
    assert off.decision == "promote"
    lenient = GateConfig(n_boot=200, baseline_tolerance=0.5)
    assert decide("recall@100", model, None, None, lenient, baselines=baselines).decision == "promote"
    # over a champion: it beats the champion, but the baseline check still refuses it
    champion = _arrays([0] * 8)
    cfg = GateConfig(n_boot=200, max_latency_ratio=0.0, guards=())
    beaten = decide("recall@100", model, champion, "tandem_old", cfg, baselines=baselines)
    assert beaten.decision == "reject" and "popularity baseline" in beaten.reason
    assert (
        decide("recall@100", model, champion, "tandem_old", cfg, baselines={}).decision == "reject"
    )  # not significant
    assert any("strongest baseline (popularity)" in line for line in markdown(beaten.to_dict()))


def test_baseline_check_within_tolerance_and_without_baselines():
    model = _arrays([1, 1, 0, 0])
    check = baseline_check(
        "recall@100", model, {"popularity": _arrays([1, 1, 1, 0])}, GateConfig(baseline_tolerance=0.3)
    )
    assert check["ok"] is True and check["status"] == "ok" and check["baseline_value"] == 0.75
    assert baseline_check("recall@100", model, {}, GateConfig())["status"] == "no baseline scored"
    assert baseline_check("recall@100", model, {"p": model}, GateConfig(beat_baselines=False))["status"] == "off"


def test_comparison_puts_model_beside_baselines_all_warm_cold():
    ev = EvalSet.from_pairs(pairs_of("i3>i1", "i3>i4", "i5>i0", "i6>i7"), catalogue(), CFG, train_pairs=TRAIN)
    per_pair = {name: ev.evaluate(lambda b, s=s: np.tile(s, (len(b), 1))) for name, s in
                {"model": np.arange(8.0)[ev.pool], "popularity": -np.arange(8.0)[ev.pool]}.items()}  # fmt: skip
    metrics, ci = summarize(per_pair, CFG)
    table = comparison(metrics, ci, "recall@2", {"bm25": "no text"})
    assert table.header[:3] == ["recall@2 all", "recall@2 warm", "recall@2 cold"]
    assert "mrr@3 cold" in table.header and "ndcg@3 warm" in table.header
    assert [name for name, _ in table.rows] == ["model", "popularity", "bm25"]
    assert table.rows[-1][1] == "n/a: no text" and table.strongest == "popularity"
    mean, interval = table.rows[0][1][0]
    assert mean == metrics["model"]["recall@2"] and interval == ci["model"]["recall@2"]


def _reference_ranks(ev: EvalSet, scores: np.ndarray, partners: dict[int, set[int]]) -> list[int]:
    """Per pair, by hand: candidates (not the query item, not a training partner of it unless a target of the
    same query) scoring above the target, or tied at a lower pool position."""
    targets = {(q, t) for q, t in zip(ev.query_of_pair.tolist(), ev.target_pos.tolist())}
    out = []
    for q, t in zip(ev.query_of_pair.tolist(), ev.target_pos.tolist()):
        item = ev.query_item[q]
        left_out = {
            j for j, row in enumerate(ev.pool) if row == item or (row in partners[item] and (q, j) not in targets)
        }
        s = scores[q]
        out.append(
            sum(1 for j in range(len(ev.pool)) if j not in left_out and (s[j] > s[t] or (s[j] == s[t] and j < t)))
        )
    return out


@pytest.mark.parametrize("protocol", ["hotelmatch", "notellm2"])
def test_an_items_training_partners_are_left_out_of_its_ranking(protocol):
    """eval.hide_trained_clicks for item queries: a query item's partners in the training pairs (either direction:
    the test drops a pair whose reverse trained) are neither targets nor misses, for every ranker alike."""
    cfg = replace(CFG, query_fraction=1.0, ks=(1, 2, 3))
    test = pairs_of("i0>i3", "i0>i4", "i1>i5", "i6>i2", "i6>i7", "i0>i2")
    train = pairs_of("i0>i1", "i2>i0", "i1>i7", "i5>i6", "i0>i3")  # i0>i3 trained and also a test target here
    ev = EvalSet.from_pairs(test, catalogue(), cfg, protocol, train_pairs=train)
    partners = {row: set() for row in range(8)}
    for a, b in zip(train["item_id"], train["related_item_id"]):
        partners[int(a[1:])].add(int(b[1:]))
        partners[int(b[1:])].add(int(a[1:]))
    scores = np.random.default_rng(3).random((len(ev.query_item), len(ev.pool)))
    scores[:, ::3] = 0.5  # ties
    scores[ev.hidden[:, 0], ev.hidden[:, 1]] = 2.0  # the partners top every ranking unless left out
    ranks = ev.ranks(lambda batch: scores[batch])
    assert ranks.tolist() == _reference_ranks(ev, scores, partners)
    assert len(ev.hidden) and ev.counts["hidden_trained"] == len(ev.hidden) and "training partners" in ev.description
    plain = EvalSet.from_pairs(test, catalogue(), replace(cfg, hide_trained_clicks=False), protocol, train_pairs=train)
    assert plain.hidden is None and (plain.ranks(lambda batch: scores[batch]) >= ranks).all()
    assert (plain.ranks(lambda batch: scores[batch]) > ranks).any()  # the switch changes something here
    # the query pairs of a training mix (a query text) are no item partners
    mix = pd.concat([train, pairs_of("i0>i5").assign(query="red dress")], ignore_index=True)
    assert EvalSet.from_pairs(test, catalogue(), cfg, protocol, train_pairs=mix).hidden.tolist() == ev.hidden.tolist()
