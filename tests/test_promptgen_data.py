"""Teacher data and hindsight relabelling for the prompt generator."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tandem.promptgen import LENGTHS, RELEVANCE, TASKS
from tandem.promptgen.relabel import (
    MIN_GROUP,
    RetrievalScorer,
    SimilarityScorer,
    cuts_for,
    length_bucket,
    relabel,
)
from tandem.promptgen.teacher import COLUMNS, catalogue_teacher, hf_teacher, read_teacher_jsonl

ITEMS = [
    ("red wool scarf", "winter|accessories", "a warm knitted scarf"),
    ("espresso coffee machine", "kitchen|coffee", "brews strong espresso at home"),
    ("mountain bike", "cycling|outdoor", "full suspension bike for trails"),
    ("children's picture book", "books|kids", "a bedtime story about a bear"),
    ("electric guitar", "music|instruments", "six-string guitar with humbuckers"),
    ("garden hose", "garden|tools", "thirty metre flexible hose"),
    ("yoga mat", "fitness|sport", "non-slip mat for yoga and pilates"),
    ("ceramic teapot", "kitchen|tea", "a blue glazed teapot"),
    ("leather hiking boots", "outdoor|shoes", "waterproof boots for long walks"),
    ("desk lamp", "office|lighting", "adjustable LED lamp for reading"),
]


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    rows = [{"item_id": f"it{i}", "title": t, "topics": tp, "content": c} for i, (t, tp, c) in enumerate(ITEMS)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def scorer() -> SimilarityScorer:
    return SimilarityScorer()


def test_catalogue_teacher_rows(catalog):
    df = catalogue_teacher(catalog, n=60, seed=1)
    assert list(df.columns) == COLUMNS and len(df) == 60
    assert set(df["task"]) == set(TASKS)
    assert (df["source"] == "catalogue-teacher").all()
    assert all(isinstance(p, str) and p for p in df["prompt"])
    assert all(t and t[0] in set(catalog["item_id"]) for t in df["target_items"])
    lengths = {length_bucket(len(p.split())) for p in df["prompt"]}
    assert lengths == set(LENGTHS)
    assert catalogue_teacher(catalog, n=60, seed=1).equals(df)  # seeded


def test_off_target_prompts_score_lower(catalog, scorer):
    on = catalogue_teacher(catalog, n=45, seed=2, off_target=0.0, partial=0.0)
    off = catalogue_teacher(catalog, n=45, seed=2, off_target=1.0, partial=0.0)
    assert scorer.score(off).mean() < scorer.score(on).mean() - 0.1
    sibling = catalogue_teacher(catalog, n=45, seed=2, off_target=0.0, partial=1.0)
    # never the item itself; where another item shares its first topic (the two kitchen items), that one
    titles = dict(zip(catalog["item_id"], catalog["title"], strict=True))
    kitchen = {"it1": "ceramic", "it7": "espresso"}  # item -> first title word of its sibling
    for prompt, (target,) in zip(sibling["prompt"], sibling["target_items"], strict=True):
        assert titles[target] not in prompt
        if target in kitchen:
            assert kitchen[target] in prompt.split()
    assert set(kitchen) & {t[0] for t in sibling["target_items"]}
    with pytest.raises(ValueError, match="partial"):
        catalogue_teacher(catalog, n=5, off_target=0.6, partial=0.6)


def test_relabel_terciles_per_length_and_reuse(catalog, scorer):
    df = catalogue_teacher(catalog, n=90, seed=3)
    out, thresholds = relabel(df, scorer)
    assert {"length", "relevance_score", "relevance"} <= set(out.columns)
    assert set(thresholds) == set(LENGTHS)  # ~10 examples per (task, length): under MIN_GROUP, no group cuts
    for length, (lo, hi) in thresholds.items():
        part = out[out["length"] == length]
        # the cut points are the terciles of that length's own scores
        assert (lo, hi) == pytest.approx(tuple(np.quantile(part["relevance_score"], [1 / 3, 2 / 3])))
        assert (part.loc[part["relevance"] == "low", "relevance_score"] < lo).all()
        assert (part.loc[part["relevance"] == "high", "relevance_score"] >= hi).all()
        assert set(part["relevance"]) == set(RELEVANCE)
    # the stored thresholds bucket new rows the same way; one pair for all lengths works too
    again, same = relabel(df.iloc[:7], scorer, thresholds=thresholds)
    assert same == thresholds and again["relevance"].tolist() == out["relevance"].iloc[:7].tolist()
    flat, table = relabel(df, scorer, thresholds=(0.2, 0.6))
    assert set(table.values()) == {(0.2, 0.6)}
    assert (flat["relevance"] == "high").tolist() == (flat["relevance_score"] >= 0.6).tolist()
    with pytest.raises(ValueError, match="thresholds"):
        relabel(df, scorer, thresholds=(0.9, 0.1))
    with pytest.raises(ValueError, match="long"):
        relabel(df, scorer, thresholds={"short": (0.1, 0.2), "medium": (0.1, 0.2)})


def test_relabel_terciles_per_task_and_length(catalog):
    df = catalogue_teacher(catalog, n=600, seed=4)
    # a scorer whose scale depends on the task: one cut pair per length would put nearly every image
    # prompt in "high" and every search prompt in "low"
    offset = {"search": 0.0, "recommendation": 1.0, "image": 2.0}
    noise = np.random.default_rng(0).random(len(df))

    class TaskScaled:
        def score(self, table):
            return np.array([offset[t] for t in table["task"]]) + noise[: len(table)]

    out, thresholds = relabel(df, TaskScaled())
    groups = out.groupby(["task", "length"])
    assert set(LENGTHS) <= set(thresholds)
    for (task, length), part in groups:
        key = f"{task}/{length}"
        if len(part) < MIN_GROUP:
            assert key not in thresholds
            continue
        lo, hi = thresholds[key]
        assert (lo, hi) == pytest.approx(tuple(np.quantile(part["relevance_score"], [1 / 3, 2 / 3])))
        shares = part["relevance"].value_counts(normalize=True)
        assert all(shares.get(r, 0) > 0.25 for r in RELEVANCE), (key, shares.to_dict())
        assert cuts_for(thresholds, length, task) == (lo, hi)
    assert sum(len(p) >= MIN_GROUP for _, p in groups) >= 6
    # an unknown task falls back to its length's pair
    assert cuts_for(thresholds, "short", "podcast") == tuple(thresholds["short"])
    again, _ = relabel(df.iloc[:20], TaskScaled(), thresholds=thresholds)
    assert again["relevance"].tolist() == out["relevance"].iloc[:20].tolist()


def test_length_bucket():
    assert [length_bucket(n) for n in (0, 4, 5, 12, 13)] == ["short", "short", "medium", "medium", "long"]
    with pytest.raises(ValueError, match="n_words"):
        length_bucket(-1)


def _bag_of_words(vocab: list[str]):
    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(vocab)), np.float32)
        for r, t in enumerate(texts):
            for w in t.lower().split():
                if w in vocab:
                    out[r, vocab.index(w)] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)

    return embed


def test_retrieval_scorer_reciprocal_rank(catalog):
    vocab = sorted({w for t in catalog["title"] for w in t.lower().split()})
    embed = _bag_of_words(vocab)
    scorer = RetrievalScorer(catalog["item_id"].tolist(), embed(catalog["title"].tolist()), embed, k=3)
    df = pd.DataFrame(
        {
            "intent": ["x"] * 3,
            "task": ["search"] * 3,
            "prompt": ["espresso coffee machine", "coffee machine lamp", "espresso coffee machine"],
            "target_items": [["it1", "it9"], ["it9"], ["it9"]],
        }
    )
    assert scorer.score(df).tolist() == [1.0, 0.5, 0.0]  # it9 ranks 10th > k: 0
    # a reference: rank of the target by brute-force sorting of all items
    sims = embed(catalog["title"].tolist()) @ embed(["leather hiking lamp"])[0]
    rank = 1 + int((sims > sims[9]).sum())  # it9 = desk lamp, behind the leather hiking boots
    assert rank == 2
    one = df.iloc[:1].assign(prompt="leather hiking lamp", target_items=[["it9"]])
    assert scorer.score(one)[0] == pytest.approx(1.0 / rank)


def test_index_retrieval_scorer_matches_the_exact_one(catalog, tmp_path):
    """Through the project's own Milvus index (FLAT = exact) the reciprocal ranks equal the in-memory scorer's."""
    from tandem.promptgen.relabel import IndexRetrievalScorer
    from tandem.release.index import IndexConfig, ItemIndex

    vocab = sorted({w for t in catalog["title"] for w in t.lower().split()})
    embed = _bag_of_words(vocab)
    ids, vectors = catalog["item_id"].tolist(), embed(catalog["title"].tolist())
    df = pd.DataFrame(
        {
            "intent": ["x"] * 3,
            "task": ["search"] * 3,
            "prompt": ["espresso coffee machine", "coffee machine lamp", "leather hiking lamp"],
            "target_items": [["it1"], ["it9"], ["it9"]],
        }
    )  # no ties among the top 3 (tied items may come back in any order)
    with ItemIndex(IndexConfig(index_type="FLAT"), tmp_path / "milvus") as index:
        index.write("items", ids, vectors)
        got = IndexRetrievalScorer(index, "items", embed, k=3).score(df)
        top1 = IndexRetrievalScorer(index, "items", embed, k=1).score(df)
    want = RetrievalScorer(ids, vectors, embed, k=3).score(df)
    assert got.tolist() == pytest.approx(want.tolist())
    assert got.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert top1.tolist() == pytest.approx([1.0, 0.0, 0.0])  # beyond k: 0


def test_read_teacher_jsonl_quarantine(tmp_path):
    lines = [
        json.dumps({"intent": "find a lamp", "task": "search", "prompt": "desk lamp", "target_items": ["it9"]}),
        json.dumps({"intent": "draw a cat", "task": "image", "prompt": "a cat on a sofa, oil painting"}),
        json.dumps({"intent": "a", "task": "poetry", "prompt": "b"}),
        json.dumps({"intent": "a", "task": "search", "prompt": "  "}),
        json.dumps({"intent": "a", "task": "search"}),
        "{not json",
        json.dumps({"intent": "a", "task": "search", "prompt": "b", "target_items": "it1"}),
    ]
    path = tmp_path / "teacher.jsonl"
    path.write_text("\n".join(lines) + "\n")
    kept, bad = read_teacher_jsonl(path)
    assert list(kept.columns) == COLUMNS and len(kept) == 2
    assert kept["target_items"].tolist() == [["it9"], []]
    assert len(kept) + len(bad) == len(lines)
    reasons = bad["reason"].tolist()
    assert reasons[0].startswith("unknown task") and reasons[1] == "empty prompt"
    assert reasons[2] == "missing key 'prompt'" and reasons[3].startswith("bad JSON")
    assert reasons[4] == "target_items is not a list"


def test_hf_teacher_tiny_random_gpt2(tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tandem.models.base import bundled_minilm

    tok = AutoTokenizer.from_pretrained(bundled_minilm())
    cfg = GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    intents = ["find a lamp", "more like the red scarf", "draw a teapot"]
    df = hf_teacher(str(tmp_path), intents, list(TASKS), target_items=[["it9"], ["it0"], []], max_new_tokens=6)
    assert list(df.columns) == COLUMNS and len(df) == 3
    assert df["task"].tolist() == list(TASKS) and df["target_items"].tolist() == [["it9"], ["it0"], []]
    assert all(isinstance(p, str) and "\n" not in p for p in df["prompt"])
    with pytest.raises(ValueError, match="tasks"):
        hf_teacher(str(tmp_path), ["x"], ["poetry"])
    with pytest.raises(ValueError, match="dtype"):
        hf_teacher(str(tmp_path), ["x"], ["search"], dtype="int3")
    # bf16 weights on CPU still decode (the GPU default; here only checked to load and run)
    half = hf_teacher(str(tmp_path), intents[:1], ["search"], max_new_tokens=3, dtype="bfloat16", temperature=0)
    assert len(half) == 1 and isinstance(half["prompt"].iloc[0], str)
