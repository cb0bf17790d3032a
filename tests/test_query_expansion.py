"""Query expansion: the expander's prompts (de-duplicated, the original kept, seeded), RRF fusion
against a simple reference, and /search?expand=... in the service checked against plain searches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from test_serve import cfg, dataset, workdir  # noqa: F401  (the tiny served workdir of the service tests)
from typer.testing import CliRunner

from tandem.cli import app as cli
from tandem.promptgen.expand import MAX_K, QueryExpander, fuse, normalise, parse_expand
from tandem.promptgen.model import GeneratorTrainConfig
from tandem.promptgen.teacher import catalogue_teacher
from tandem.promptgen.train import train_generator
from tandem.serve import create_app, read_events


class ScriptedGenerator:
    """Stands in for PromptGenerator: returns scripted samples per length and records the calls."""

    def __init__(self, samples: dict[str, list[str]]):
        self.samples, self.calls = samples, []

    def generate(self, intents, task, length, relevance, n, seed, temperature, top_p):
        self.calls.append({"task": task, "length": length, "relevance": relevance, "n": n, "seed": seed})
        return [(self.samples[length] * n)[:n] for _ in intents]


class OverlapScorer:
    """Relevance = word overlap of intent and prompt: a cheap, deterministic stand-in for MiniLM."""

    def score(self, df: pd.DataFrame) -> np.ndarray:
        def jaccard(a: str, b: str) -> float:
            x, y = set(a.lower().split()), set(b.lower().split())
            return len(x & y) / max(1, len(x | y))

        return np.array([jaccard(i, p) for i, p in zip(df["intent"], df["prompt"], strict=True)])


@pytest.fixture(scope="module")
def promptgen_dir(dataset, tmp_path_factory):  # noqa: F811
    catalog = pd.read_csv(dataset[1])
    examples = catalogue_teacher(catalog, n=48, seed=0)
    out = tmp_path_factory.mktemp("promptgen")
    train_generator(examples, out, "tiny", GeneratorTrainConfig(epochs=1, batch_size=16), OverlapScorer())
    return out


@pytest.fixture(scope="module")
def expanding(workdir, cfg, promptgen_dir):  # noqa: F811
    with TestClient(create_app(workdir, cfg, promptgen=promptgen_dir, expand_k=3)) as client:
        yield client


# ------------------------------------------------------------------------------------------ library
def test_parse_expand():
    assert [parse_expand(v, 4) for v in (None, "false", "off", "0", " No ")] == [0] * 5
    assert [parse_expand(v, 4) for v in ("true", "TRUE", "on", "yes")] == [4] * 4
    assert [parse_expand(str(n), 4) for n in range(MAX_K + 1)] == list(range(MAX_K + 1))
    for bad in ("", "maybe", "-1", "1.5", "+2", str(MAX_K + 1), "1e3"):
        with pytest.raises(ValueError, match="expand="):
            parse_expand(bad, 4)


def test_prompts_dedupe_keep_the_original_first_and_cap_at_k():
    gen = ScriptedGenerator({"medium": ["Red Shoes", "red  shoes", "", "running shoes", "RED shoes", "trail shoes"]})
    expander = QueryExpander(gen, k=2, seed=7, oversample=3)
    assert expander.prompts(["running shoes", "blue hat"]) == [
        ["running shoes", "Red Shoes", "trail shoes"],  # the original's copy and case/space variants dropped
        ["blue hat", "Red Shoes", "running shoes"],
    ]
    assert gen.calls == [{"task": "search", "length": "medium", "relevance": "high", "n": 6, "seed": 7}]
    alone = QueryExpander(gen, k=3, include_original=False).prompts(["running shoes"], k=1)
    assert alone == [["Red Shoes"]]
    few = QueryExpander(ScriptedGenerator({"medium": ["same", "Same"]}), k=4).prompts(["q"])
    assert few == [["q", "same"]]  # fewer than k when the generator repeats itself


def test_prompts_with_length_none_take_the_lengths_in_turn():
    gen = ScriptedGenerator({"short": ["s1", "s2"], "medium": ["m1", "m2"], "long": ["l1", "l2"]})
    got = QueryExpander(gen, k=4, length=None, oversample=1).prompts(["q"])
    assert got == [["q", "s1", "m1", "l1", "s2"]]
    assert [c["length"] for c in gen.calls] == ["short", "medium", "long"] and {c["n"] for c in gen.calls} == {2}


def test_expander_rejects_bad_settings():
    gen = ScriptedGenerator({"medium": ["x"]})
    for bad in ({"k": 0}, {"k": MAX_K + 1}, {"length": "huge"}, {"relevance": "top"}, {"depth": 0}, {"top_p": 0}):
        with pytest.raises(ValueError):
            QueryExpander(gen, **bad)
    with pytest.raises(ValueError, match="non-empty"):
        QueryExpander(gen).prompts("one string")
    with pytest.raises(ValueError, match="holds no"):
        QueryExpander.load("/nonexistent/promptgen")


def test_trained_generator_expands_deterministically(promptgen_dir):
    expander = QueryExpander.load(promptgen_dir, k=4, seed=1)
    intents = ["looking for a red lamp", "I need something for shoes like a blue shoe", "mug"]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    got = expander.prompts(intents)
    assert torch.rand(1) == before  # the seeded sampling ran in a forked RNG: the global one is untouched
    assert len(got) == len(intents)
    for intent, queries in zip(intents, got, strict=True):
        assert queries[0] == intent and 1 <= len(queries) <= 5
        assert len({normalise(q) for q in queries}) == len(queries) and all(q.strip() for q in queries)
    assert expander.prompts(intents) == got  # same seed, same prompts
    other = QueryExpander.load(promptgen_dir, k=4, seed=2).prompts(intents)
    assert other != got  # sampling: another seed writes other prompts (a 1-epoch tiny model is near random)


def test_fuse_equals_a_simple_reference():
    rng = np.random.default_rng(0)
    items = [f"i{n}" for n in range(30)]
    for _ in range(20):
        rankings = [list(rng.choice(items, size=int(rng.integers(0, 15)), replace=False)) for _ in range(4)]
        scores: dict[str, float] = {}
        order: list[str] = []
        for ranking in rankings:
            for rank, item in enumerate(ranking):
                scores[item] = scores.get(item, 0.0) + 1.0 / (60 + rank + 1)
                order += [item] if item not in order else []
        reference = sorted(order, key=lambda i: (-scores[i], order.index(i)))[:10]
        got = fuse(rankings, limit=10)
        assert [i for i, _ in got] == reference
        assert [s for _, s in got] == pytest.approx([scores[i] for i in reference])
    assert fuse([["a", "b"], ["b"]], rrf_k=0) == [("b", 1.5), ("a", 1.0)]


def test_fusion_weights_favour_the_original_query():
    expander = QueryExpander(object(), k=4)
    assert expander.weights(5) == [4.0, 1.0, 1.0, 1.0, 1.0] and expander.weights(1) == [1.0]
    assert QueryExpander(object(), original_weight=1).weights(3) == [1.0, 1.0, 1.0]  # plain RRF
    assert QueryExpander(object(), include_original=False).weights(3) == [1.0, 1.0, 1.0]
    # four prompts agreeing on "x", which the original does not find, at most tie with the original's
    # first item (and ties go to the original, read first); with plain RRF they outvote it
    rankings = [["own"]] + [["x"]] * 4
    assert expander.fuse(rankings)[0][0] == "own"
    assert QueryExpander(object(), original_weight=1).fuse(rankings)[0][0] == "x"
    with pytest.raises(ValueError, match="original_weight"):
        QueryExpander(object(), original_weight=-1)


# ------------------------------------------------------------------------------------------ service
def test_expanded_search_is_the_rrf_of_plain_searches(expanding):
    params = {"q": "red lamp", "k": 5, "user_id": "dora"}
    got = expanding.get("/search", params=params | {"expand": "true"})
    assert got.status_code == 200, got.text
    body = got.json()
    queries = body["expansion"]
    assert queries[0] == "red lamp" and 2 <= len(queries) <= 1 + 3  # q + up to --expand-k generated prompts
    assert "generate;dur=" in got.headers["Server-Timing"] and "embed;dur=" in got.headers["Server-Timing"]
    # the same queries through plain /search (depth 100 >= the 48 items), fused by the reference RRF
    plain = [expanding.get("/search", params={"q": text, "k": 100}).json()["items"] for text in queries]
    # the user's own query weighs as much as all generated prompts together (QueryExpander default)
    weights = [len(queries) - 1] + [1] * (len(queries) - 1)
    expected = fuse([[h["item_id"] for h in items] for items in plain], limit=5, weights=weights)
    assert [h["item_id"] for h in body["items"]] == [i for i, _ in expected]
    assert [h["rrf"] for h in body["items"]] == pytest.approx([s for _, s in expected])
    best = {}
    for items in plain:
        for h in items:
            best[h["item_id"]] = max(best.get(h["item_id"], -2.0), h["score"])
    assert [h["score"] for h in body["items"]] == pytest.approx([best[h["item_id"]] for h in body["items"]], abs=1e-5)
    assert expanding.get("/search", params=params | {"expand": "true"}).json()["expansion"] == queries  # seeded
    two = expanding.get("/search", params=params | {"expand": 1}).json()
    assert len(two["expansion"]) <= 2 and len(two["items"]) == 5
    expanding.app.state.events.flush()
    mine = read_events(expanding.app.state.router.workdir).query("request_id == @body['request_id']")
    assert mine["event"].tolist() == ["impression"] * 5 and set(mine["query"]) == {"red lamp"}
    assert mine["item_id"].tolist() == [h["item_id"] for h in body["items"]]


def test_expand_off_is_plain_search_and_bad_values_are_422(expanding):
    plain = expanding.get("/search", params={"q": "shoe", "k": 4}).json()
    for off in ("false", "0"):
        same = expanding.get("/search", params={"q": "shoe", "k": 4, "expand": off}).json()
        assert same["expansion"] is None and [h["item_id"] for h in same["items"]] == [
            h["item_id"] for h in plain["items"]
        ]
    for bad in ("maybe", "-1", "1.5", str(MAX_K + 1), "9" * 30):
        response = expanding.get("/search", params={"q": "shoe", "expand": bad})
        assert response.status_code == 422, (bad, response.text)
        assert "expand" in response.text
    filtered = expanding.get("/search", params={"q": "shoe", "k": 48, "expand": 2, "city": "Paris"}).json()
    assert filtered["items"] and {h["city"] for h in filtered["items"]} == {"Paris"}


def test_expand_without_promptgen_says_how_to_enable_it(workdir, cfg):  # noqa: F811
    with TestClient(create_app(workdir, cfg)) as client:
        response = client.get("/search", params={"q": "shoe", "expand": "true"})
        assert response.status_code == 400 and "--promptgen DIR" in response.json()["detail"]
        assert client.get("/search", params={"q": "shoe", "expand": "false"}).status_code == 200


def test_cli_serve_checks_the_promptgen_options(workdir, promptgen_dir, tmp_path):  # noqa: F811
    runner = CliRunner()
    assert "--promptgen" in runner.invoke(cli, ["serve", "--help"]).output
    result = runner.invoke(cli, ["serve", "--workdir", str(workdir), "--promptgen", str(tmp_path)])
    assert result.exit_code == 2 and "promptgen.json" in result.output
    result = runner.invoke(
        cli, ["serve", "--workdir", str(workdir), "--promptgen", str(promptgen_dir), "--expand-k", str(MAX_K + 1)]
    )
    assert result.exit_code == 2 and "--expand-k" in result.output


# ------------------------------------------------------------------------------ relevance via the index
def test_index_relevance_scorer_on_the_live_collection(workdir, cfg, dataset):  # noqa: F811
    from tandem.promptgen.relabel import IndexRetrievalScorer

    catalog = pd.read_csv(dataset[1])
    ids, titles = catalog["item_id"].astype(str).tolist(), catalog["title"].tolist()
    df = pd.DataFrame({"intent": titles, "task": "search", "prompt": titles, "target_items": [[i] for i in ids]})
    scorer = IndexRetrievalScorer.live(workdir, cfg, k=10)
    try:
        own = scorer.score(df)
        shifted = scorer.score(df.assign(target_items=[[i] for i in np.roll(ids, 7)]))
        hits = scorer.index.search(scorer.collection, scorer.embed_fn(titles[:3]), k=10)
    finally:
        scorer.close()
    allowed = {0.0} | {1 / r for r in range(1, 11)}
    assert all(min(abs(s - a) for a in allowed) < 1e-12 for s in own)
    # a title finds its own item more often than another item's (the searched collection is the live one)
    assert own.mean() > shifted.mean()
    for r, row in enumerate(hits):  # the score is the reciprocal rank in that very search
        ranked = [item for item, _ in row]
        assert own[r] == (1 / (ranked.index(ids[r]) + 1) if ids[r] in ranked else 0.0)


def test_promptgen_train_with_index_relevance(workdir, dataset, tmp_path):  # noqa: F811
    out = tmp_path / "pg"
    base = ["promptgen", "train", "--catalog", str(dataset[1]), "-n", "30", "--out", str(out), "--epochs", "1"]
    runner = CliRunner()
    result = runner.invoke(cli, base + ["--relevance", "index", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "promptgen.json").read_text())
    assert meta["scorer"] == {"kind": "IndexRetrievalScorer"} and meta["examples"] == 30
    # verified generation needs the scorer again, which needs target items: a clear refusal
    refused = runner.invoke(cli, ["generate", "--model", str(out), "--intent", "a lamp", "--candidates", "4"])
    assert refused.exit_code == 2 and "candidates" in refused.output
    alone = runner.invoke(cli, ["generate", "--model", str(out), "--intent", "a lamp", "--candidates", "1"])
    assert alone.exit_code == 0, alone.output
    missing = runner.invoke(cli, base + ["--relevance", "index"])
    assert missing.exit_code == 2 and "--workdir" in missing.output
