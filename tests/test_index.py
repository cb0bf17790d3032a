"""Milvus Lite index: exact top-k against numpy, the alias lifecycle, idempotent re-indexing."""

from dataclasses import replace

import numpy as np
import pytest

from tandem.config import IndexConfig
from tandem.evaluate import exact_top_k
from tandem.index import ItemIndex, collection_name


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(400, 16)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    with ItemIndex(replace(IndexConfig(), index_type="FLAT"), tmp_path_factory.mktemp("milvus")) as idx:
        yield idx


def test_flat_search_equals_numpy(index, vectors):
    ids = [f"i{n}" for n in range(len(vectors))]
    assert index.write("flat", ids, vectors) == len(vectors)
    queries = vectors[:20] + 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = index.search("flat", queries, k=10)
    expected = exact_top_k(queries, vectors, 10)
    for query, row, exp in zip(queries, hits, expected):
        assert [item for item, _ in row] == [ids[j] for j in exp]
        assert [score for _, score in row] == pytest.approx((vectors[exp] @ query).tolist(), abs=1e-5)


def test_hnsw_recall_against_numpy(tmp_path, vectors):
    with ItemIndex(IndexConfig(), tmp_path) as idx:  # HNSW is the default
        idx.write("hnsw", [str(n) for n in range(len(vectors))], vectors)
        hits = idx.search("hnsw", vectors[:50], k=10)
    expected = exact_top_k(vectors[:50], vectors, 10)
    overlap = np.mean([len({int(i) for i, _ in row} & set(exp.tolist())) / 10 for row, exp in zip(hits, expected)])
    assert overlap >= 0.95


def test_alias_moves_and_reindexing_replaces(index, vectors):
    assert index.live() is None
    ids = [str(n) for n in range(50)]
    index.write("run_a", ids, vectors[:50])
    index.write("run_b", ids, vectors[50:100])
    assert index.promote("run_a") is None and index.live() == "run_a"
    assert index.promote("run_b") == "run_a" and index.live() == "run_b"
    assert index.write("run_b", ids, vectors[100:150]) == 50  # same run again: replaced, not doubled
    assert index.search("live", vectors[100:101], k=1)[0][0][0] == "0"


def test_collection_names_are_valid():
    assert collection_name("20240101T000000-ab12cd") == "tandem_20240101T000000_ab12cd"


def test_length_mismatch_is_an_error(index, vectors):
    with pytest.raises(ValueError, match="3 item ids but 2 vectors"):
        index.write("bad", ["a", "b", "c"], vectors[:2])


def test_reindexing_drops_items_no_longer_given(index, vectors):
    index.write("shrink", [str(n) for n in range(30)], vectors[:30])
    assert index.write("shrink", [str(n) for n in range(10, 30)], vectors[10:30]) == 20
    assert {row["item_id"] for row in index._all_ids("shrink")} == {str(n) for n in range(10, 30)}
    with pytest.raises(ValueError, match="16-d vectors, got 8-d"):
        index.write("shrink", ["a"], vectors[:1, :8])
