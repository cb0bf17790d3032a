"""What /similar searches with (tandem.serve.answering): a symmetric model's stored item vector; an asymmetric
model's stored title through its query encoder, with the click coordinates of the item's stored vector (what
the hotelmatch protocol evaluates); the stored vector again where no title is stored. Checked against numpy on
a Milvus Lite collection (FLAT: exact)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_factors import Titled

from tandem.core.config_release import IndexConfig
from tandem.evaluation.evaluate import exact_top_k
from tandem.models.popularity import PopularityTerm
from tandem.release.index import ItemIndex
from tandem.serve.answering import Ask, answer
from tandem.serve.routing import Arm

N, K = 12, 4


@pytest.fixture
def world(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"i{n}" for n in range(N)]
    titles = [f"title {n}" for n in range(N)]
    vecs = rng.normal(size=(2 * N, 6)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    factors = {i: rng.normal(size=3).round(3).tolist() for i in ids[: N - 2]}  # the last two: no clicks
    model = Titled(dict(zip(ids + titles, vecs, strict=True)))  # the query tower reads a title its own way
    model.popularity = PopularityTerm(0.5, "popularity", {i: 0.1 * n for n, i in enumerate(ids[:8])},
                                      factor_weight=2.0, factors=factors)  # fmt: skip
    catalog = pd.DataFrame({"item_id": ids, "title": titles})
    return model, catalog, model.embed_items(catalog), tmp_path


def _similar(world, fields: tuple[str, ...], symmetric: bool = False) -> tuple[list[list[str]], np.ndarray]:
    """/similar's answers for every item, and the stored vectors."""
    model, catalog, stored, tmp_path = world
    model.symmetric = symmetric
    with ItemIndex(IndexConfig(index_type="FLAT", metric="IP", scalar_fields=fields), tmp_path / "milvus") as index:
        scalars = {f: catalog[f].tolist() for f in fields}
        index.write("c", catalog["item_id"].tolist(), stored, scalars)
        arm = Arm("c", "run", model, "test", N, model)
        got = answer(index, ("similar", arm), [Ask(i, K) for i in catalog["item_id"]])
    return [[r["item_id"] for r in a.rows] for a in got], stored


def _expected(queries: np.ndarray, stored: np.ndarray) -> list[list[str]]:
    top = exact_top_k(queries, stored, K + 1, exclude=np.arange(N))
    return [[f"i{j}" for j in row[:K]] for row in top]


def test_an_asymmetric_model_searches_with_its_title_and_the_items_click_coordinates(world):
    model, catalog = world[0], world[1]
    got, stored = _similar(world, ("title",))
    queries = model.with_item_query_term(model.embed_queries(catalog["title"].tolist()), stored)
    assert not np.allclose(queries, stored, atol=1e-3)  # a different query from the stored vector
    assert np.allclose(queries[:, -3:], stored[:, -3:]) and not queries[:, -3:].any(axis=1)[-2:].any()
    assert got == _expected(queries, stored)


def test_a_symmetric_model_or_a_collection_without_titles_searches_with_the_stored_vector(world):
    got, stored = _similar(world, ("title",), symmetric=True)
    assert got == _expected(stored, stored)
    got, stored = _similar(world, (), symmetric=False)
    assert got == _expected(stored, stored)
