"""Verified control: sample several candidates, measure each with the relabelling rules, keep the ones
that landed where they were asked to.

The generator alone is conditioned on the outcome wanted but does not always reach it (a sampled
prompt may drift across a bucket edge). Measuring each candidate with the *same* length rule and
relevance scorer that labelled the training data, and keeping the best `n` of `candidates`, turns a
per-sample hit rate p into about 1 - (1 - p)^candidates per intent, at the cost of generating
`candidates` samples in one batch and scoring them. Candidates that miss are kept only to make up
`n`, nearest to the requested bucket first, so the caller always gets `n` prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tandem.promptgen import LENGTHS, RELEVANCE
from tandem.promptgen.relabel import Scorer, Thresholds, cuts_for, length_bucket

STEER_SIGN = {"low": -1.0, "medium": 0.0, "high": 1.0}


def steer_bias(relevance: str, steer: float) -> float:
    """The copy bias for `steer` >= 0: +steer for relevance "high", -steer for "low", 0 for "medium"."""
    if steer < 0:
        raise ValueError(f"steer={steer}; use steer >= 0 (its sign follows the requested relevance)")
    return STEER_SIGN[relevance] * steer


def band_distance(score: float, relevance: str, cuts: tuple[float, float]) -> float:
    """How far `score` lies outside the requested relevance band (0 inside), minus how deep inside it
    lies (capped at the band's half-width), so lower = safer: deep inside beats near an edge."""
    lo, hi = cuts
    edges = {"low": (-np.inf, lo), "medium": (lo, hi), "high": (hi, np.inf)}[relevance]
    below, above = edges[0] - score, score - edges[1]
    if below > 0 or above >= 0:
        return max(below, above, 0.0)
    half = (hi - lo) / 2 if hi > lo else 0.0
    return -min(-below, -above, half)


def pick(
    candidates: Sequence[str],
    scores: Sequence[float],
    length: str,
    relevance: str,
    thresholds: Thresholds,
    n: int,
    task: str | None = None,
) -> list[str]:
    """The best `n` distinct candidates: both buckets right first, then one right, by band distance
    (measured with the cut points of `task` and the candidate's own length, as `relabel` buckets it)."""
    ranked = []
    for order, (text, score) in enumerate(zip(candidates, scores, strict=True)):
        achieved = length_bucket(len(text.split()))
        misses = int(achieved != length)
        distance = band_distance(float(score), relevance, cuts_for(thresholds, achieved, task))
        misses += int(distance > 0)
        ranked.append((misses, distance, order, text))
    out: list[str] = []
    for *_, text in sorted(ranked):
        if text not in out:
            out.append(text)
        if len(out) == n:
            break
    distinct = len(out)
    while len(out) < n:  # fewer distinct candidates than asked: repeat the best ones
        out.append(out[len(out) % distinct])
    return out


def generate_verified(
    generator,
    scorer: Scorer,
    thresholds: Thresholds,
    intents: Sequence[str],
    task: str,
    length: str = "medium",
    relevance: str = "high",
    n: int = 1,
    candidates: int = 8,
    steer: float = 0.0,
    **sampling,
) -> list[list[str]]:
    """`n` prompts per intent, each the best of `candidates` samples measured by `scorer` (the one used
    to relabel the training data, with its `thresholds`). `sampling` goes to `PromptGenerator.generate`
    (temperature, top_p, seed, batch_size, ...); sampling must be on for candidates to differ.
    steer > 0 draws the candidates with copy_bias = +steer for relevance "high" and -steer for "low"
    (none for "medium"): a small generator that paraphrases names it never saw reaches "high" more
    often when nudged to reuse the intent's words."""
    if length not in LENGTHS or relevance not in RELEVANCE:
        raise ValueError(f"length must be one of {LENGTHS} and relevance one of {RELEVANCE}")
    if candidates < n:
        raise ValueError(f"candidates ({candidates}) must be >= n ({n}): the best n are kept of them")
    if sampling.get("do_sample") is False and candidates > 1:
        raise ValueError("candidates > 1 needs sampling (do_sample=True): greedy decoding repeats one prompt")
    if steer:  # a negative steer is an error raised by steer_bias
        sampling = {**sampling, "copy_bias": steer_bias(relevance, steer)}
    drawn = generator.generate(intents, task, length, relevance, n=candidates, **sampling)
    table = pd.DataFrame(
        [(intent, task, p) for intent, group in zip(intents, drawn, strict=True) for p in group],
        columns=["intent", "task", "prompt"],
    )
    scores = np.asarray(scorer.score(table), dtype=float).reshape(len(intents), candidates)
    return [pick(group, scores[i], length, relevance, thresholds, n, task) for i, group in enumerate(drawn)]
