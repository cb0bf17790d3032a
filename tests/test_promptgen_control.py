"""Verified control (best of N): band distances, the pick order, and generate_verified on a tiny generator."""

import pandas as pd
import pytest

pytest.importorskip("tokenizers")

from tandem.promptgen.control import band_distance, generate_verified, pick  # noqa: E402
from tandem.promptgen.model import GeneratorConfig, GeneratorTrainConfig, PromptGenerator  # noqa: E402
from tandem.promptgen.relabel import length_bucket  # noqa: E402
from tandem.promptgen.train import verifier  # noqa: E402

CUTS = (0.3, 0.7)


def test_band_distance_outside_is_positive_inside_deeper_is_lower():
    assert band_distance(0.2, "medium", CUTS) == pytest.approx(0.1)
    assert band_distance(0.9, "medium", CUTS) == pytest.approx(0.2)
    assert band_distance(0.7, "medium", CUTS) == pytest.approx(0.0)  # the upper edge belongs to high
    assert band_distance(0.5, "medium", CUTS) < band_distance(0.35, "medium", CUTS) < 0
    assert band_distance(0.95, "high", CUTS) == band_distance(0.99, "high", CUTS) == pytest.approx(-0.2)  # capped
    assert band_distance(0.5, "high", CUTS) == pytest.approx(0.2)
    assert band_distance(0.3, "low", CUTS) == pytest.approx(0.0) and band_distance(0.1, "low", CUTS) < 0


def test_pick_prefers_both_buckets_right_then_distance_and_fills_n():
    texts = ["one two three four five six", "one two", "a b c", "x y", "one two"]
    scores = [0.9, 0.9, 0.5, 0.35, 0.9]
    # medium relevance, short length: "a b c" (both right, deep) before "x y" (both right, near an edge)
    assert pick(texts, scores, "short", "medium", CUTS, 2) == ["a b c", "x y"]
    # high relevance, short: "one two" is both right; the 6-word text has the length wrong; duplicates collapse
    assert pick(texts, scores, "short", "high", CUTS, 2) == ["one two", "one two three four five six"]
    # fewer distinct candidates than n: the best repeat
    assert pick(["p", "p"], [0.5, 0.5], "short", "medium", CUTS, 3) == ["p", "p", "p"]


class OverlapScorer:
    """A real, simple scorer: share of the prompt's words that occur in the intent."""

    def score(self, df: pd.DataFrame):
        out = []
        for intent, prompt in zip(df["intent"], df["prompt"], strict=True):
            words = prompt.split()
            out.append(sum(w in intent.split() for w in words) / max(len(words), 1))
        return out


@pytest.fixture(scope="module")
def generator():
    words = "red blue green shoe bag lamp chair table soft warm".split()
    rows = []
    for i in range(24):
        intent = " ".join(words[(i + j) % len(words)] for j in range(3))
        for prompt, rel in (
            (intent, "high"),
            (intent.split()[0] + " free delivery", "medium"),
            ("free fast delivery", "low"),
        ):
            rows.append({"intent": intent, "task": "search", "prompt": prompt, "length": "short", "relevance": rel})
    gen = PromptGenerator(GeneratorConfig.tiny())
    gen.fit(pd.DataFrame(rows), GeneratorTrainConfig(epochs=4, lr=3e-3, batch_size=16, seed=0))
    return gen


def test_generate_verified_keeps_the_best_of_the_same_samples(generator):
    intents = ["red blue green", "lamp chair table", "soft warm red"]
    scorer = OverlapScorer()
    drawn = generator.generate(intents, "search", "short", "high", n=6, seed=5)
    got = generate_verified(generator, scorer, CUTS, intents, "search", "short", "high", n=2, candidates=6, seed=5)
    assert [len(g) for g in got] == [2, 2, 2]
    for intent, group, chosen in zip(intents, drawn, got, strict=True):
        scores = scorer.score(pd.DataFrame({"intent": [intent] * len(group), "prompt": group}))
        # reference: a candidate that lands in both requested buckets is never passed over for one that misses
        hits = [
            p for p, s in zip(group, scores, strict=True) if s >= CUTS[1] and length_bucket(len(p.split())) == "short"
        ]
        assert set(chosen) <= set(group)
        if hits:
            assert chosen[0] in hits
        assert chosen == pick(group, scores, "short", "high", CUTS, 2)


def test_verifier_needs_the_similarity_scorer():
    assert verifier({"thresholds": [0.1, 0.2]}).encoder_path is None  # folders from before the field
    assert verifier({"scorer": {"kind": "similarity", "encoder_path": "/m"}}).encoder_path == "/m"
    with pytest.raises(ValueError, match="candidates=1"):
        verifier({"scorer": {"kind": "RetrievalScorer"}})


def test_generate_verified_rejects_bad_requests(generator):
    with pytest.raises(ValueError, match="candidates"):
        generate_verified(generator, OverlapScorer(), CUTS, ["red"], "search", n=3, candidates=2)
    with pytest.raises(ValueError, match="sampling"):
        generate_verified(generator, OverlapScorer(), CUTS, ["red"], "search", candidates=4, do_sample=False)
    with pytest.raises(ValueError, match="relevance"):
        generate_verified(generator, OverlapScorer(), CUTS, ["red"], "search", relevance="top")


def test_steer_sets_the_copy_bias_by_the_requested_relevance(generator, monkeypatch):
    seen = []
    real = generator.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("copy_bias", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(generator, "generate", spy)
    for rel in ("high", "medium", "low"):
        generate_verified(generator, OverlapScorer(), CUTS, ["red"], "search", "short", rel, candidates=2, steer=3.0)
    generate_verified(generator, OverlapScorer(), CUTS, ["red"], "search", "short", "high", candidates=2)
    assert seen == [3.0, 0.0, -3.0, 0.0]
    with pytest.raises(ValueError, match="steer"):
        generate_verified(generator, OverlapScorer(), CUTS, ["red"], "search", candidates=2, steer=-1.0)


def test_pick_uses_the_cut_points_of_the_task():
    thresholds = {"short": (0.3, 0.7), "search/short": (0.1, 0.2)}
    # 0.5 is "medium" for lengths in general but "high" for a short search prompt
    assert pick(["a b", "c d"], [0.5, 0.15], "short", "high", thresholds, 1, task="search") == ["a b"]
    assert pick(["a b", "c d"], [0.5, 0.15], "short", "medium", thresholds, 1) == ["a b"]
    assert pick(["a b", "c d"], [0.5, 0.15], "short", "medium", thresholds, 1, task="search") == ["c d"]
