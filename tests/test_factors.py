"""The log co-occurrence coordinates: factors of the users-in-common matrix, served in the stored vectors, their
weight chosen on validation under the cold guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_popularity_term import Fixed

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet
from tandem.models.base import Encoder
from tandem.models.popularity import PopularityTerm
from tandem.training.factors import choose_factors, log_factors, with_cold


def _clicks(baskets: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([{"user_id": u, "item_id": i} for u, items in baskets.items() for i in items])


def test_log_factors_reproduce_the_users_in_common_matrix_after_its_leading_pair():
    ids = [f"i{n}" for n in range(7)]
    baskets = {"u1": ["i0", "i1", "i2"], "u2": ["i0", "i1"], "u3": ["i1", "i2", "i3"], "u4": ["i3", "i4"],
               "u5": ["i0", "i4", "i5"], "u6": ["i0", "i1"], "u7": ["i5", "i2", "x-not-in-catalogue"]}  # fmt: skip
    clicks = _clicks(baskets)
    factors = log_factors(ids, clicks, rank=4)
    # reference: a plain loop over users, then a dense eigendecomposition
    both = np.zeros((7, 7))
    for items in baskets.values():
        for a in items:
            for b in items:
                if a != b and a in ids and b in ids:
                    both[ids.index(a), ids.index(b)] += 1
    scaled = np.where(both > 0, np.log1p(both) / np.log1p(both.max()), 0.0)
    values, vectors = np.linalg.eigh(scaled)
    top = np.argsort(-values)[1:5]  # the leading pair (one sign: popularity) left out
    top = top[values[top] > 0]
    lead = vectors[:6, np.argmax(values)]  # the clicked items: one sign throughout
    assert (lead > 0).all() or (lead < 0).all()
    expected = (vectors[:, top] * values[top]) @ vectors[:, top].T
    assert factors.shape == (7, len(top))
    assert np.allclose(factors @ factors.T, expected, atol=1e-4)
    assert not factors[6].any()  # i6: no clicks, a zero row
    assert np.array_equal(factors, log_factors(ids, clicks, rank=4))  # seeded: the same on every run
    assert log_factors(ids, _clicks({"u1": ["i0"]}), rank=4).shape == (7, 0)  # nobody clicked two items


def test_stored_vectors_add_the_weighted_cooccurrence_and_text_queries_do_not(tmp_path):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(4, 3)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    factors = {"i0": [0.5, 0.1], "i1": [0.4, -0.2], "i2": [0.0, 0.3]}  # i3: none
    term = PopularityTerm(0.2, "popularity", {"i0": 1.0, "i1": 0.5}, cold_bias=0.0, factor_weight=2.0, factors=factors)
    ids = ["i0", "i1", "i2", "i3"]
    stored = term.augment_items(items, ids)
    assert stored.shape == (4, 3 + 1 + 2) and term.extra_dims == 3
    own = np.array([factors["i0"], factors["i1"], factors["i2"], [0.0, 0.0]])
    bias = np.array([1.0, 0.5, 0.0, 0.0])
    assert np.allclose(stored[0] @ stored.T, items @ items[0] + 0.2 * 2.0 * (1 + bias) + 2.0 * own @ own[0], atol=1e-5)
    text = term.augment_queries(items[:1])
    assert np.allclose(text @ stored.T, items @ items[0] + 0.2 * (1 + bias), atol=1e-5)  # no clicks, no factors
    term.save(tmp_path)
    assert PopularityTerm.load(tmp_path) == term
    # an item without clicks: zeros, or its factors predicted from its vector (a ridge fitted on the clicked items)
    vecs = 10 * rng.normal(size=(24, 3))
    truth = vecs @ rng.normal(size=(3, 2))
    clicked = np.arange(24) < 20
    known = np.where(clicked[:, None], truth, 0.0)
    filled, as_new, content = with_cold(known, vecs, "content")
    assert np.array_equal(filled[clicked], known[clicked]) and np.allclose(filled[~clicked], as_new[~clicked])
    assert np.abs(as_new - truth).max() < 0.05 * np.abs(truth).max()
    assert not with_cold(known, vecs, "zeros")[1].any()
    served = PopularityTerm(0.0, "popularity", factor_weight=1.0, factors={"i0": [1.0, 0.0]}, factor_content=content)
    assert served.active and np.allclose(served.item_factors(["i0", "i9"], vecs[:2])[1], as_new[1], atol=1e-4)
    assert not PopularityTerm(0.0, "popularity", factor_weight=0.0, factors=factors).active


class Symmetric(Fixed):
    """A symmetric encoder with given item vectors (its queries are its items' vectors)."""

    symmetric = True


def _world(n_items=60, cold_targets=0, seed=0):
    """Items come in fixed partner pairs (2k, 2k+1) that the logs co-click and the validation pairs ask for;
    cosine alone knows nothing of them. `cold_targets`: that many extra pairs whose target has no clicks and no
    training pair, and whose vector is its query's (cosine finds them), while many users co-click their query
    with a warm item (the co-occurrence list points elsewhere)."""
    rng = np.random.default_rng(seed)
    ids = [f"i{n}" for n in range(n_items)]
    vecs = rng.normal(size=(n_items, 16))
    partners = [(ids[2 * k], ids[2 * k + 1]) for k in range(n_items // 2 - cold_targets)]
    baskets = {f"u{k}": [a, b] for k, (a, b) in enumerate(partners)}
    for r in range(40):  # background clicks: a few items every user likes
        baskets[f"bg{r}"] = list(rng.choice([a for a, _ in partners], 4, replace=False))
    valid = pd.DataFrame({"item_id": [a for a, _ in partners], "related_item_id": [b for _, b in partners]})
    shifted = [partners[(k + 1) % len(partners)][0] for k in range(len(partners))]  # warm, not the pairs asked for
    train = pd.DataFrame({"item_id": [b for _, b in partners], "related_item_id": shifted})
    cold = [(ids[2 * k], ids[2 * k + 1]) for k in range(n_items // 2 - cold_targets, n_items // 2)]
    for k, (a, b) in enumerate(cold):
        vecs[ids.index(b)] = vecs[ids.index(a)] + 0.05 * rng.normal(size=16)
        baskets |= {f"c{a}{r}": [a, partners[k][1]] for r in range(6)}  # its target has no clicks
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cold_valid = pd.DataFrame({"item_id": [a for a, _ in cold], "related_item_id": [b for _, b in cold]})
    valid = pd.concat([valid, cold_valid], ignore_index=True)
    model = Symmetric(dict(zip(ids, vecs.astype(np.float32))))
    catalog = pd.DataFrame({"item_id": ids, "title": ids})
    return model, catalog, valid, train, log_factors(ids, _clicks(baskets), rank=40), vecs.astype(np.float32)


def test_choose_factors_takes_a_positive_weight_when_cooccurrence_predicts_the_validation_targets():
    model, catalog, valid, train, factors, vecs = _world()
    cfg = EvalConfig(ks=(5,), primary_metric="recall@5", protocol="notellm2", query_fraction=1.0)
    term = PopularityTerm(0.0, "popularity")
    weight, cold, chosen = choose_factors(model, catalog, valid, train, term, factors, vecs, cfg)
    grid = {(r["weight"], r["cold_factors"]): r["all"] for r in chosen["grid"]}
    assert weight > 0 and grid[(weight, cold)] > grid[(0.0, "zeros")] + 0.3
    assert chosen["pairs"] == len(valid) and not chosen["cold_checked"]


def test_choose_factors_keeps_the_cold_targets_cosine_finds():
    model, catalog, valid, train, factors, vecs = _world(n_items=80, cold_targets=12)
    cfg = EvalConfig(ks=(1,), primary_metric="recall@1", protocol="notellm2", query_fraction=1.0)
    weight, cold, chosen = choose_factors(model, catalog, valid, train, PopularityTerm(0.0, "popularity"), factors,
                                          vecs, cfg, min_cold_pairs=5)  # fmt: skip
    assert chosen["cold_checked"] and chosen["cold_pairs"] == 12
    got = next(r for r in chosen["grid"] if r["weight"] == weight and r["cold_factors"] == cold)
    assert got["cold"] >= chosen["cold_limit"]  # never below cosine alone on the cold targets
    top = max(chosen["grid"], key=lambda r: r["all"])
    assert top["cold"] < chosen["cold_limit"] and top["all"] > got["all"]  # the best on all pairs was refused


class Titled(Fixed):
    """An asymmetric encoder (queries by title) carrying a popularity term as a trained model does."""

    popularity = None
    with_item_query_term = Encoder.with_item_query_term

    def embed_items(self, catalog, batch_size=128, progress=True):
        vecs = super().embed_items(catalog)
        return vecs if self.popularity is None else self.popularity.augment_items(vecs, catalog["item_id"])

    def embed_queries(self, texts, batch_size=256, progress=True):
        vecs = super().embed_queries(texts)
        return vecs if self.popularity is None else self.popularity.augment_queries(vecs)


def test_an_asymmetric_models_title_queries_carry_their_items_coordinates_as_chosen_and_evaluated():
    model, catalog, valid, train, factors, vecs = _world()
    titled = Titled(model.vectors)
    cfg = EvalConfig(ks=(5,), primary_metric="recall@5", protocol="hotelmatch")
    weight, cold, chosen = choose_factors(titled, catalog, valid, train, PopularityTerm(0.0, "popularity"), factors,
                                          vecs, cfg)  # fmt: skip
    grid = {(r["weight"], r["cold_factors"]): r["all"] for r in chosen["grid"]}
    assert weight > 0 and grid[(weight, cold)] > grid[(0.0, "zeros")] + 0.3
    # the evaluator ranks the served vectors: the title's query tower vector with its item's stored coordinates
    ids = catalog["item_id"].tolist()
    own = {i: f.tolist() for i, f in zip(ids, factors, strict=True) if f.any()}
    titled.popularity = PopularityTerm(0.0, "popularity", factor_weight=weight, factors=own)
    ev = EvalSet.from_pairs(valid, catalog, cfg, "hotelmatch", False, train)
    assert ev.score_encoder(titled, catalog, progress=False)["recall@5"].mean() == pytest.approx(
        grid[(weight, "zeros")]
    )
    stored = titled.embed_items(catalog)
    queries = titled.with_item_query_term(titled.embed_queries(ids[:3]), stored[:3])
    assert np.allclose(queries @ stored.T, vecs[:3] @ vecs.T + weight * factors[:3] @ factors.T, atol=1e-5)
    assert not titled.embed_queries(ids[:3])[:, -factors.shape[1] :].any()  # a typed text: no clicks
