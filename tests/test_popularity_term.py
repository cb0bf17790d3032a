"""The popularity coordinate: inner products rank cosine + w b_item, saved with the model, weight chosen
on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet
from tandem.models.popularity import PopularityTerm, fit_content_bias, item_biases, predict_bias
from tandem.training.popularity import choose_weight, pick, ranks_with_term


def test_biases_are_log_scaled_capped_and_cold_items_left_out():
    b = item_biases(["a", "b", "c", "d"], [0, 1, 9, 99])
    assert "a" not in b and b["d"] == 1.0 and 0 < b["b"] < b["c"] < 1
    capped = item_biases(["a", "b", "c"], [1, 9, 99], cap_quantile=0.5)
    assert capped["c"] == capped["b"] == 1.0


def test_inner_product_is_cosine_plus_weighted_bias(tmp_path):
    rng = np.random.default_rng(0)
    items = rng.normal(size=(5, 4)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    query = items[:1]
    term = PopularityTerm(0.3, "popularity", {"i1": 0.5, "i2": 1.0}, cold_bias=0.0)
    ids = [f"i{n}" for n in range(5)]
    scores = term.augment_queries(query) @ term.augment_items(items, ids).T
    bias = np.array([0, 0.5, 1.0, 0, 0])
    assert np.allclose(scores[0], items @ query[0] + 0.3 * (1 + bias), atol=1e-6)
    # an item-to-item query (its own stored vector): cosine + w (1 + b_q)(1 + b_i), same order as cosine + w'(b_i)
    stored = term.augment_items(items, ids)
    sym = stored[1] @ stored.T
    assert np.allclose(sym, items @ items[1] + 0.3 * 1.5 * (1 + bias), atol=1e-6)
    term.save(tmp_path)
    assert PopularityTerm.load(tmp_path) == term
    assert PopularityTerm.load(tmp_path / "none") is None


class Fixed:
    """An encoder whose item vectors are given and whose text queries are its items' vectors by title."""

    symmetric = False

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors

    def embed_items(self, catalog, batch_size=128, progress=True):
        return np.stack([self.vectors[i] for i in catalog["item_id"]])

    def embed_queries(self, texts, batch_size=256, progress=True):
        return np.stack([self.vectors[t] for t in texts])


def _world(n_items=40, seed=0):
    """Targets are the popular items; cosine alone points at a random other item."""
    rng = np.random.default_rng(seed)
    ids = [f"i{n}" for n in range(n_items)]
    vecs = rng.normal(size=(n_items, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    catalog = pd.DataFrame({"item_id": ids, "title": ids})
    popular = ids[:3]
    valid = pd.DataFrame({"item_id": ids[5:35], "related_item_id": [popular[n % 3] for n in range(30)]})
    counts = [100, 90, 80] + [1] * (n_items - 3)
    return Fixed(dict(zip(ids, vecs.astype(np.float32)))), catalog, valid, counts, ids


def test_choose_weight_picks_a_positive_weight_when_popular_targets_win():
    model, catalog, valid, counts, ids = _world()
    term = PopularityTerm(0.0, "popularity", item_biases(ids, counts))
    cfg = EvalConfig(ks=(1, 5), primary_metric="recall@5", n_boot=10)
    chosen = choose_weight(model, catalog, valid, valid, term, cfg)
    grid = {r["weight"]: r["all"] for r in chosen.chosen["grid"]}
    assert chosen.weight > 0 and grid[chosen.weight] == max(grid.values()) > grid[0.0]


def test_choose_weight_respects_cold_targets():
    """Cold validation targets (in no training pair) that cosine finds: a weight that loses them is refused."""
    model, catalog, _, counts, ids = _world()
    for n in range(10, 35):  # make each query's nearest item its target
        model.vectors[ids[n]] = model.vectors[ids[n - 5]]
    valid = pd.DataFrame({"item_id": ids[10:35], "related_item_id": ids[5:30]})
    train = pd.DataFrame({"item_id": ["i0"], "related_item_id": ["i1"]})  # every valid target is cold
    term = PopularityTerm(0.0, "popularity", item_biases(ids, [10**6] * 5 + [1] * 35))
    cfg = EvalConfig(ks=(1, 5), primary_metric="recall@1", n_boot=10)
    chosen = choose_weight(model, catalog, valid, train, term, cfg, min_cold_pairs=5)
    assert chosen.chosen["cold_checked"] and chosen.weight == 0.0


def test_ranks_with_the_term_match_the_evaluators_ranks_of_the_augmented_vectors():
    model, catalog, valid, counts, ids = _world(seed=3)
    term = PopularityTerm(0.7, "popularity", item_biases(ids[:30], counts[:30]), cold_bias=0.4)  # 10 new items
    ev = EvalSet.from_pairs(valid, catalog, EvalConfig(ks=(1, 5)), "hotelmatch", False)
    queries, pool = ev.encode(model, catalog, progress=False)
    pool_ids = np.array(ids)[ev.pool]
    reference = ev.ranks(ev.vector_scorer(term.augment_queries(queries), term.augment_items(pool, pool_ids)))
    got = ranks_with_term(queries @ pool.T, ev, np.ones(len(ev.query_item)), term.biases(pool_ids), 0.7, None)
    assert np.array_equal(got, reference)
    # as new: the same ranks once each target's bias is the prior (a reference by re-ranking per pair)
    as_new = ranks_with_term(queries @ pool.T, ev, np.ones(len(ev.query_item)), term.biases(pool_ids), 0.7, 0.4)
    for pair in range(len(ev.target)):
        bias = term.biases(pool_ids)
        bias[ev.target_pos[pair]] = 0.4
        scores = queries[ev.query_of_pair[pair]] @ pool.T + 0.7 * (1 + bias)
        scores[ev.exclude[ev.query_of_pair[pair]]] = -np.inf
        assert as_new[pair] == int((scores > scores[ev.target_pos[pair]]).sum())


def test_a_weight_that_buries_new_items_needs_a_cold_prior():
    """Popular targets whose cosine is strong too: the term helps, but made new (b = prior) a target would
    fall behind the popular items at prior 0, so the chosen term carries a prior that keeps it."""
    model, catalog, _, counts, ids = _world()
    for n in range(5, 35):  # each query's nearest item is its target, and the targets are the popular items
        model.vectors[ids[n]] = model.vectors[ids[n % 3]] + 0.05 * model.vectors[ids[n]]
        model.vectors[ids[n]] /= np.linalg.norm(model.vectors[ids[n]])
    valid = pd.DataFrame({"item_id": ids[5:35], "related_item_id": [ids[n % 3] for n in range(5, 35)]})
    term = PopularityTerm(0.0, "popularity", item_biases(ids, counts))
    cfg = EvalConfig(ks=(1, 5), primary_metric="recall@1", n_boot=10)
    chosen = choose_weight(model, catalog, valid, valid, term, cfg)
    rows = chosen.chosen["grid"]
    plain = rows[0]["as_new"]
    buried = [r for r in rows if r["cold_prior"] == 0.0 and r["weight"] >= 2.0]
    assert any(r["as_new"] < plain for r in buried)  # the check can refuse: prior 0 and a big weight bury new items
    best = next(r for r in rows if r["weight"] == chosen.weight and r["cold_prior"] == chosen.cold_bias)
    assert best["as_new"] >= plain and best["all"] == max(r["all"] for r in rows if r["as_new"] >= plain)


def test_content_prediction_fits_a_linear_b_and_gives_cold_items_theirs(tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(60, 6))
    b = np.clip(0.4 + 0.1 * vecs[:, 0] - 0.05 * vecs[:, 1], 0, 1)
    fitted = fit_content_bias(vecs[:50], b[:50], alpha=1e-6)
    assert np.allclose(predict_bias(fitted, vecs[50:]), b[50:], atol=1e-3)  # a linear b is recovered
    assert predict_bias(fitted | {"scale": 10.0}, vecs).max() == 1.0  # scaled, then clipped to [0, 1]
    ids = [f"i{n}" for n in range(60)]
    term = PopularityTerm(0.5, "popularity", dict(zip(ids[:50], b[:50].tolist())), 0.2, {}, fitted | {"scale": 1.0})
    got = term.biases(ids, vecs)
    assert np.allclose(got[:50], b[:50], atol=1e-6) and np.allclose(got[50:], b[50:], atol=1e-3)
    assert np.allclose(term.biases(ids)[50:], 0.2)  # without vectors: the constant prior
    extra = term.augment_items(vecs.astype(np.float32), ids)[:, -1]
    assert np.allclose(extra, np.sqrt(0.5) * (1 + got), atol=1e-5)
    term.save(tmp_path)
    assert PopularityTerm.load(tmp_path) == term


def test_cold_validation_pairs_guard_the_choice_and_the_grid_matches_the_served_vectors():
    """With enough cold validation targets they, not the "as new" proxy, bound the choice; every grid row's
    score (content-predicted cold b included) equals the evaluator's on the augmented vectors the index serves."""
    model, catalog, valid, counts, ids = _world(seed=5)
    valid = pd.concat([valid, pd.DataFrame({"item_id": ids[5:15], "related_item_id": ids[30:40]})], ignore_index=True)
    train = pd.DataFrame({"item_id": ids[:15], "related_item_id": ids[15:30]})  # i30..i39 are cold
    term = PopularityTerm(0.0, "popularity", item_biases(ids[:30], counts[:30]))
    cfg = EvalConfig(ks=(1, 5), primary_metric="recall@5", n_boot=10)
    chosen = choose_weight(model, catalog, valid, train, term, cfg, min_cold_pairs=5)
    rows = chosen.chosen["grid"]
    assert chosen.chosen["cold_checked"] and chosen.chosen["cold_pairs"] == 10
    scale = chosen.content.get("scale")
    best = [r for r in rows if r["weight"] == chosen.weight and r["content_scale"] == scale]
    best = [r for r in best if scale or r["cold_prior"] == chosen.cold_bias]
    assert len(best) == 1 and best[0]["cold"] >= rows[0]["cold"]  # the cold validation targets lose nothing
    assert best[0]["all"] == max(r["all"] for r in rows if r["cold"] >= rows[0]["cold"])
    content_rows = [r for r in rows if r["content_scale"] == 1.25 and r["weight"] == 0.5]
    assert len(content_rows) == 1
    ev = EvalSet.from_pairs(valid, catalog, cfg, "hotelmatch", False, train)  # ranked as the chooser ranks
    vecs = model.embed_items(catalog)
    fitted = fit_content_bias(vecs[:30], np.array([term.bias[i] for i in ids[:30]]))
    served = PopularityTerm(0.5, "popularity", term.bias, 0.0, {}, fitted | {"scale": 1.25})
    queries, pool = ev.encode(model, catalog, vecs, progress=False)
    ranks = ev.ranks(ev.vector_scorer(served.augment_queries(queries), served.augment_items(pool, np.array(ids))))
    assert np.isclose((ranks < 5).mean(), content_rows[0]["all"])


def test_a_gain_inside_the_noise_of_the_best_does_not_buy_the_cold_pairs():
    """One standard error: rows within it of the best on all pairs compete on the cold pairs; beyond it, all
    pairs decide (the Complete Journey case: 0.3211 with 1 of 51 cold found, 0.3158 with 11, se 0.0057)."""

    def row(option, weight, every, cold, se=0.0057):
        return {"option": option, "weight": weight, "all": every, "cold": cold, "se": se}

    level = [0.75, 0.6]
    plain_best, content = row(0, 2.0, 0.3211, 0.0196), row(1, 2.0, 0.3158, 0.2157)
    assert pick([plain_best, content], "cold", level) is content
    assert pick([plain_best, row(1, 2.0, 0.3100, 0.2157)], "cold", level) is plain_best  # 0.0111 > se: a real gain
    same = row(1, 1.2, 0.3211, 0.0196)  # equal on both: the smaller weight, as before
    assert pick([plain_best, same], "cold", level) is same
    proxy_best = {**row(1, 2.0, 0.3158, None), "as_new": 1.0}  # the proxy saturates: it never decides
    plain_proxy = {**plain_best, "as_new": 0.7}
    assert pick([plain_proxy, proxy_best], "as_new", level) is plain_proxy
