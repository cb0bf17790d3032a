"""The trainer validates as the test evaluates (issue 17 item 1): on held-out real search queries when there are
at least eval.min_query_pairs of them (a query-tower model under the hotelmatch protocol), else on the item pairs."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from test_trainer import ToyEncoder, ToyLoss, base_cfg, make_catalog, make_pairs, toy

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet
from tandem.training.data import choose_validation, query_validation_set
from tandem.training.trainer import fit

EVAL = EvalConfig(ks=(1, 5), mrr_k=5, primary_metric="recall@5", min_query_pairs=10)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one torch thread (conftest)


def query_pairs(groups=range(6)) -> pd.DataFrame:
    """A typed text per group ("w<g>b lamp"), each clicking the group's 4 items: 4 pairs per query."""
    rows = [(f"i{g * 4 + j}", f"w{g}b lamp") for g in groups for j in range(4)]
    ids, texts = zip(*rows)
    return pd.DataFrame({"item_id": ids, "related_item_id": ids, "score": 1.0, "support": 1, "query": texts})


class Spy(ToyEncoder):
    """Records the texts the query tower embeds outside training (validation)."""

    def __init__(self):
        super().__init__()
        self.embedded: list[list[str]] = []

    def embed_queries(self, texts, batch_size=256, progress=True):
        self.embedded.append(list(texts))
        return super().embed_queries(texts, batch_size, progress)


def spy() -> Spy:
    torch.manual_seed(0)
    return Spy()


def test_the_trainer_validates_on_real_queries_when_there_are_enough():
    catalog, pairs = make_catalog(), make_pairs()
    valid, queries = pairs.iloc[:24], query_pairs()  # item pairs of groups 0-1; 24 query pairs >= 10
    model = spy()
    stats = fit(model, ToyLoss(), pairs, catalog, base_cfg(), valid, EVAL, progress=False, query_valid=queries)
    assert stats["validated_on"] == "queries"
    # the pool: every validation item (clicked ones, both sides of the item pairs), as cheap as before
    assert stats["validation"] == {"pairs": 24, "queries": 6, "pool": 24}
    typed = sorted(set(queries["query"]))
    assert len(stats["history"]) == 2 and model.embedded == [typed, typed]  # one validation per epoch
    evaluator, pool = query_validation_set(queries, catalog, EVAL, valid)
    assert isinstance(evaluator.eval_set, EvalSet) and (evaluator.eval_set.query_item == -1).all()
    assert sorted(pool["item_id"]) == sorted(set(queries["item_id"]) | set(valid["item_id"]))
    # the best weights were chosen on the real queries: scoring them again gives the recorded best
    again, _ = evaluator.score_encoder(model, pool, progress=False)
    best = next(h for h in stats["history"] if h["step"] == stats["best_step"])
    assert best["metrics"] == pytest.approx({k: float(v) for k, v in again.items()})


def test_validation_hides_a_querys_trained_clicks_as_the_test_does():
    catalog, pairs, queries = make_catalog(), make_pairs(), query_pairs()
    valid, held, trained = pairs.iloc[:24], queries.iloc[::2], queries.iloc[1::2]  # 2 clicks per query each
    mix = pd.concat([pairs.assign(query=None), trained], ignore_index=True)  # as the trainer gets the training mix
    evaluator, pool = choose_validation(valid, held, catalog, EVAL, False, mix)[:2]
    ev, ids = evaluator.eval_set, pool["item_id"].to_numpy()
    expected = {(q, i) for q, i in zip(trained["query"], trained["item_id"]) if i in set(ids)}
    assert expected and {(ev.query_texts[q], ids[c]) for q, c in ev.hidden} == expected
    assert (
        choose_validation(valid, held, catalog, replace(EVAL, hide_trained_clicks=False), False, mix)[0].eval_set.hidden
        is None
    )


def test_the_trainer_validates_on_item_pairs_with_too_few_queries():
    catalog, pairs = make_catalog(), make_pairs()
    valid, few = pairs.iloc[:24], query_pairs(groups=[3, 4])  # 8 < eval.min_query_pairs 10
    model = spy()
    stats = fit(model, ToyLoss(), pairs, catalog, base_cfg(), valid, EVAL, progress=False, query_valid=few)
    assert stats["validated_on"] == "item pairs" and stats["validation"]["pairs"] == 24
    titles = sorted(catalog.set_index("item_id").loc[sorted(set(valid["item_id"])), "title"])
    assert len(model.embedded) == 2 and sorted(model.embedded[0]) == titles  # the query items' titles
    none = fit(toy(), ToyLoss(), pairs, catalog, base_cfg(epochs=1), progress=False)
    assert none["validated_on"] is None and none["history"] == []


def test_the_choice_follows_the_test_protocol():
    catalog, pairs = make_catalog(), make_pairs()
    valid, queries = pairs.iloc[:24], query_pairs()
    on = lambda *a, **kw: choose_validation(*a, **kw)[2]["validated_on"]  # noqa: E731
    assert on(valid, queries, catalog, EVAL, symmetric=False) == "queries"
    assert on(valid, queries.iloc[:9], catalog, EVAL, symmetric=False) == "item pairs"  # 9 < 10
    assert on(valid, queries.iloc[:10], catalog, EVAL, symmetric=False) == "queries"
    assert on(valid, queries, catalog, EVAL, symmetric=True) == "item pairs"  # no query tower
    assert on(valid, queries, catalog, replace(EVAL, protocol="notellm2"), symmetric=False) == "item pairs"
    assert on(valid.iloc[:0], queries.iloc[:4], catalog, EVAL, symmetric=False) == "queries"  # search logs alone
    assert on(None, None, catalog, EVAL, symmetric=False) is None
