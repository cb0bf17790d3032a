"""Milvus index: top-k against numpy, filters, the alias lifecycle (promote, rollback, retention),
idempotent re-indexing. Lifecycle tests run on Milvus Lite, on a `milvus-lite server` and on a real Milvus
standalone server (skipped where the PyPI package `milvus` is not installed)."""

import numpy as np
import pandas as pd
import pytest

from tandem.core.atomic import mark_done
from tandem.core.config_release import IndexConfig
from tandem.evaluation.evaluate import exact_top_k
from tandem.release.index import META, ItemIndex, collection_name, hit_id
from tandem.release.scalars import catalog_scalars, filter_expression


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(400, 16)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=["lite", "lite-server", "milvus-server"])
def backend(request, tmp_path_factory):
    """None for Milvus Lite (a fresh file per test), or the URI of one server for the module: `milvus-lite
    server` (Lite's engine behind gRPC), or the session's Milvus 2.3 standalone server (tests/milvus_server.py)."""
    if request.param == "lite":
        yield None
        return
    if request.param == "milvus-server":
        yield request.getfixturevalue("milvus_server")
        return
    from test_index_server import milvus_lite_server

    with milvus_lite_server(tmp_path_factory.mktemp("milvus_server") / "data") as uri:
        yield uri


@pytest.fixture
def make_index(backend, tmp_path):
    """ItemIndex factory on an empty database (the server is wiped before each test)."""
    opened = []

    def make(**settings) -> ItemIndex:
        idx = ItemIndex(IndexConfig(milvus_uri=backend or "", **settings), tmp_path / "milvus")
        opened.append(idx)
        return idx

    if backend:
        with ItemIndex(IndexConfig(milvus_uri=backend)) as idx:
            for alias in idx.aliases():
                idx.drop_alias(alias)
            for name in idx.client.list_collections():
                idx.client.drop_collection(name)
    yield make
    for idx in opened:
        idx.close()


def _ids(n: int, start: int = 0) -> list[str]:
    return [str(i) for i in range(start, start + n)]


# ----------------------------------------------------------------------------- search
def test_flat_search_equals_numpy(make_index, vectors):
    index = make_index(index_type="FLAT")
    ids = [f"i{n}" for n in range(len(vectors))]
    assert index.write("flat", ids, vectors) == len(vectors)
    queries = vectors[:20] + 0.1
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    hits = index.search("flat", queries, k=10)
    expected = exact_top_k(queries, vectors, 10)
    for query, row, exp in zip(queries, hits, expected):
        assert [item for item, _ in row] == [ids[j] for j in exp]
        assert [score for _, score in row] == pytest.approx((vectors[exp] @ query).tolist(), abs=1e-5)


def test_hnsw_recall_against_numpy(make_index, vectors):
    index = make_index()  # HNSW is the default
    index.write("hnsw", _ids(len(vectors)), vectors)
    hits = index.search("hnsw", vectors[:50], k=10)
    expected = exact_top_k(vectors[:50], vectors, 10)
    overlap = np.mean([len({int(i) for i, _ in row} & set(exp.tolist())) / 10 for row, exp in zip(hits, expected)])
    assert overlap >= 0.95


def test_hnsw_index_is_used_and_search_ef_buys_recall(tmp_path):
    """Freshly written rows are searched through the graph, not brute force: a tiny ef loses recall."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(3000, 64)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[:200] + rng.normal(size=(200, 64)).astype(np.float32) / 8
    expected = exact_top_k(queries / np.linalg.norm(queries, axis=1, keepdims=True), items, 10)
    recalls = []
    for ef in (1, 128):
        with ItemIndex(IndexConfig(hnsw_m=4, hnsw_ef_construction=8, search_ef=ef), tmp_path) as index:
            if ef == 1:
                index.write("graph", _ids(len(items)), items)
            hits = index.search("graph", queries, k=10)
        recalls.append(np.mean([len({int(i) for i, _ in h} & set(e.tolist())) / 10 for h, e in zip(hits, expected)]))
    assert recalls[0] < 0.9 and recalls[1] >= 0.98, recalls  # measured: 0.71 and 0.998


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "HNSW_SQ", "AUTOINDEX"])
def test_other_index_types_still_search(tmp_path, vectors, index_type):
    with ItemIndex(IndexConfig(index_type=index_type, ivf_nlist=8, ivf_nprobe=8), tmp_path) as index:
        index.write("other", _ids(len(vectors)), vectors)
        hits = index.search("other", vectors[:20], k=5)
    assert [row[0][0] for row in hits] == _ids(20)  # each vector finds itself first


def test_filters_return_the_exact_top_k_of_the_matching_items(make_index, vectors):
    index = make_index(index_type="FLAT")
    cities = np.array(["Paris", "Rome", "Oslo", "Lima"])[np.arange(len(vectors)) % 4]
    categories = np.array(["shoes", "bags", "hats"])[np.arange(len(vectors)) % 3]
    index.write("f", _ids(len(vectors)), vectors, {"city": cities.tolist(), "category": categories.tolist()})
    expr = filter_expression({"city": ["Paris", "Oslo"], "category": "shoes"}, index.cfg.scalar_fields)
    rows = index.search_rows("f", vectors[:5], k=8, filter=expr)
    match = np.flatnonzero(np.isin(cities, ["Paris", "Oslo"]) & (categories == "shoes"))
    expected = match[exact_top_k(vectors[:5], vectors[match], 8)]
    for row, exp in zip(rows, expected):
        assert [r["item_id"] for r in row] == [str(j) for j in exp]
        assert all(r["city"] in ("Paris", "Oslo") and r["category"] == "shoes" and r["title"] == "" for r in row)


def test_filter_values_are_quoted(make_index, vectors):
    index = make_index(index_type="FLAT")
    tricky = ['Pa"ris', "O'Hare", "back\\slash", 'x" or city != "', "line\nbreak"]
    cities = tricky + ["plain"] * 5
    index.write("q", _ids(10), vectors[:10], {"city": cities})
    for n, value in enumerate(tricky):
        rows = index.search_rows("q", vectors[:1], k=10, filter=filter_expression({"city": value}, ("city",)))
        assert [(r["item_id"], r["city"]) for r in rows[0]] == [(str(n), value)]
    both = filter_expression({"city": tricky[:2]}, ("city",))
    assert sorted(r["item_id"] for r in index.search_rows("q", vectors[:1], k=10, filter=both)[0]) == ["0", "1"]


def test_filter_expression_refuses_bad_input():
    assert filter_expression({}, ("city",)) == ""
    assert filter_expression({"city": ["a", "b"]}, ("city",)) == 'city in ["a", "b"]'
    with pytest.raises(ValueError, match="'colour' is unknown; filter on one of: city, country"):
        filter_expression({"colour": "red"}, ("city", "country"))
    for bad in ([], 3, ["a", 3]):
        with pytest.raises(ValueError, match="filter 'city'"):
            filter_expression({"city": bad}, ("city",))


def test_search_rows_and_vectors_of_return_what_was_written(make_index, vectors):
    index = make_index(index_type="FLAT")
    titles = [f"title {i}" for i in range(20)]
    index.write("rows", _ids(20), vectors[:20], {"title": titles, "country": ["FR"] * 20})
    (row,) = index.search_rows("rows", vectors[3:4], k=2)
    assert row[0] == {
        "item_id": "3",
        "score": pytest.approx(1.0, abs=1e-5),
        "title": "title 3",
        "category": "",
        "city": "",
        "country": "FR",
    }
    got = index.vectors_of("rows", ["5", "missing", "7", "5"])
    assert set(got) == {"5", "7"}
    np.testing.assert_allclose(got["7"], vectors[7], atol=1e-6)


# ----------------------------------------------------------------------------- lifecycle
def test_promote_and_rollback_walk_the_champion_history(make_index, vectors):
    index = make_index(index_type="FLAT")
    for n, name in enumerate(("run_a", "run_b", "run_c")):
        index.write(name, _ids(20), vectors[20 * n : 20 * (n + 1)])
    with pytest.raises(ValueError, match="no previous champion"):
        index.rollback()
    assert index.promote("run_a") is None
    assert index.promote("run_b") == "run_a"
    assert index.promote("run_b") == "run_b"  # already live: nothing to record
    index.set_alias(index.cfg.challenger_alias, "run_c")
    assert index.promote(index.cfg.challenger_alias) == "run_b"  # an alias names its collection
    assert index.live() == "run_c" and index.rollback_target() == "run_b"
    assert index.rollback() == "run_b" and index.live() == "run_b"
    assert index.search("live", vectors[20:21], k=1)[0][0][0] == "0"  # run_b's first vector
    assert index.rollback() == "run_a" and index.live() == "run_a"
    with pytest.raises(ValueError, match="no previous champion"):
        index.rollback()
    assert [(e["action"], e["collection"], e["previous"]) for e in index.history()] == [
        ("promote", "run_a", None),
        ("promote", "run_b", "run_a"),
        ("promote", "run_c", "run_b"),
        ("rollback", "run_b", "run_c"),
        ("rollback", "run_a", "run_b"),
    ]
    with pytest.raises(ValueError, match="no collection 'nope'"):
        index.promote("nope")


def test_history_survives_reopening_the_client(make_index, vectors):
    index = make_index(index_type="FLAT")
    index.write("run_a", _ids(10), vectors[:10])
    index.write("run_b", _ids(10), vectors[10:20])
    index.promote("run_a")
    index.promote("run_b")
    index.close()
    again = make_index(index_type="FLAT")
    assert again.live() == "run_b" and again.rollback_target() == "run_a"
    assert [e["collection"] for e in again.history()] == ["run_a", "run_b"]
    other = make_index(index_type="FLAT", alias="staging")  # another alias has its own history
    assert other.history() == [] and other.live() is None


def test_retention_keeps_newest_aliased_and_rollback_target(make_index, vectors):
    index = make_index(index_type="FLAT")
    runs = [collection_name(f"r{n}") for n in range(1, 7)]
    for name in runs:
        index.write(name, _ids(5), vectors[:5])
    index.write("not_a_run", _ids(5), vectors[:5])
    index.promote(runs[0])
    index.promote(runs[1])  # live = r2, rollback target = r1
    index.set_alias(index.cfg.challenger_alias, runs[2])
    assert index.run_collections() == runs
    assert index.retain(2) == [runs[3]]  # r5, r6 newest; r1 rollback target; r2 live; r3 challenger
    assert index.retain(2) == []
    index.drop_alias(index.cfg.challenger_alias)
    assert index.retain(2) == [runs[2]]
    existing = set(index.client.list_collections())
    assert existing == {runs[0], runs[1], runs[4], runs[5], "not_a_run", META}
    assert set(index.aliases().values()) <= existing  # no alias left dangling
    assert index.rollback() == runs[0]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        index.retain(0)


def test_a_served_collection_is_never_rewritten_and_an_unserved_one_is_written_afresh(make_index, vectors):
    index = make_index(index_type="FLAT")
    ids = _ids(50)
    index.write("run_b", ids, vectors[50:100])
    index.promote("run_b")
    with pytest.raises(ValueError, match="run_b is served \\(alias live\\) and is never written in place"):
        index.write("run_b", ids, vectors[100:150])  # was: upserted into the live collection
    assert index.vectors_of("live", ["0"])["0"] == pytest.approx(vectors[50])
    index.write("run_c", ids, vectors[100:150])
    assert index.write("run_c", _ids(20, 10), vectors[10:30]) == 20  # not served: dropped and written afresh
    assert set(index.vectors_of("run_c", ids)) == set(_ids(20, 10))
    assert index.write("run_c", ["a"], vectors[:1, :8]) == 1  # a new schema too


def test_hit_id_reads_the_hit_shape_of_lite_and_of_servers():
    assert hit_id({"item_id": "a", "distance": 0.5, "entity": {"item_id": "a"}}) == "a"  # Milvus Lite
    assert hit_id({"id": "b", "distance": 0.5, "entity": {"item_id": "b", "city": "x"}}) == "b"  # Milvus 2.3 server
    assert hit_id({"id": "c", "distance": 0.5, "entity": {"city": "x"}}) == "c"  # the documented shape, id not asked
    assert hit_id({"id": 7, "distance": 0.5}) == "7"
    with pytest.raises(KeyError):
        hit_id({"distance": 0.5, "entity": {}})


# ----------------------------------------------------------------------------- input checks
def test_collection_names_are_valid():
    assert collection_name("20240101T000000-ab12cd") == "tandem_20240101T000000_ab12cd"
    assert not META.startswith("tandem_")  # never taken for a run's collection


def test_write_refuses_inconsistent_input(tmp_path, vectors):
    with ItemIndex(IndexConfig(index_type="FLAT"), tmp_path) as index:
        with pytest.raises(ValueError, match="3 item ids but 2 vectors"):
            index.write("bad", ["a", "b", "c"], vectors[:2])
        with pytest.raises(ValueError, match=r"\['colour'\] are not in index.scalar_fields"):
            index.write("bad", ["a"], vectors[:1], {"colour": ["red"]})
        with pytest.raises(ValueError, match="'city' has 2 values for 1 items"):
            index.write("bad", ["a"], vectors[:1], {"city": ["x", "y"]})
        with pytest.raises(ValueError, match="longer than 512 bytes"):
            index.write("bad", ["x" * 513], vectors[:1])
        with pytest.raises(ValueError, match="2-d array"):
            index.write("bad", ["a"], vectors[0, :1])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"index_type": "HNSWX"}, "index.index_type"),
        ({"metric": "cos"}, "index.metric"),
        ({"search_ef": 0}, "index.search_ef: 0 is out of range: must be >= 1"),
        ({"keep_collections": 0}, "index.keep_collections"),
        ({"challenger_alias": "live"}, "two different"),
        ({"scalar_fields": ("title", "vector")}, "index.scalar_fields"),
    ],
)
def test_index_config_refuses_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        IndexConfig(**settings)


def test_catalog_scalars_take_the_first_topic_as_category():
    catalog = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Red shoe", "", None],
            "topics": [["shoes", "red"], [], np.array(["bags"])],
            "country": ["FR", None, "é" * 600],
        }
    )
    out = catalog_scalars(catalog, ("title", "category", "city", "country"))
    assert out["title"] == ["Red shoe", "", ""]
    assert out["category"] == ["shoes", "", "bags"]
    assert out["city"] == ["", "", ""]
    assert out["country"][:2] == ["FR", ""] and out["country"][2] == "é" * 512  # 1024 bytes of UTF-8


def test_index_stage_stores_the_catalogue_fields(tmp_path, monkeypatch, vectors):
    from tandem.core.config import RunConfig
    from tandem.pipeline import stages

    catalog = pd.DataFrame(
        {"item_id": ["a", "b"], "title": ["Red shoe", "Bag"], "topics": [["shoes", "red"], []], "city": ["Oslo", ""]}
    )
    run = stages.RunPaths.of(tmp_path, "run1")
    for folder in ("vectors", "model", "data"):
        (run / folder).mkdir(parents=True)
    np.save(run / "vectors" / "items.npy", vectors[:2])
    (run / "model" / "config.json").write_text("{}")
    mark_done(run / "model")
    catalog.to_parquet(run / "data" / "catalog.parquet")
    monkeypatch.setattr(stages, "items", lambda _: catalog)  # the Feast read is tested elsewhere
    summary = stages.index(run, RunConfig(index=IndexConfig(index_type="FLAT")))
    assert summary["vectors"] == 2 and summary["collection"] == "tandem_run1" and summary["retention_dropped"] == []
    with ItemIndex(IndexConfig(index_type="FLAT"), tmp_path) as index:
        (row,) = index.search_rows("tandem_run1", vectors[:1], k=1)
    assert row[0] | {"score": 0} == {
        "item_id": "a",
        "score": 0,
        "title": "Red shoe",
        "category": "shoes",
        "city": "Oslo",
        "country": "",
    }
