"""Generation metrics (diversity, control) and reciprocal rank fusion for query expansion.

Pure functions on lists of strings; texts are tokenised on whitespace, case kept, so the
figures match what the generator wrote.
"""

from __future__ import annotations

from collections.abc import Sequence


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over the whole set of texts (0..1; 0.0 when no text has n tokens).

    Higher is more diverse; a set of copies of one text scores 1 / copies."""
    _check_n(n)
    total, seen = 0, set()
    for text in texts:
        tokens = text.split()
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (sacrebleu, **0..100**) of each text against all the others as references.

    Higher means the texts repeat each other (less diverse): identical texts give 100, texts
    sharing no word give ~0. Needs at least two texts."""
    if len(texts) < 2:
        raise ValueError(f"texts: self-BLEU needs at least 2 texts, got {len(texts)}")
    from sacrebleu.metrics import BLEU

    # effective_order: short prompts rarely have 4-grams; without it every score would be 0
    bleu = BLEU(effective_order=True)
    scores = [
        bleu.sentence_score(text, [other for j, other in enumerate(texts) if j != i]).score
        for i, text in enumerate(texts)
    ]
    return float(sum(scores) / len(scores))


def control_accuracy(requested: Sequence[str], achieved: Sequence[str]) -> float:
    """Share of generations whose achieved attribute (task, length or relevance bucket) equals the requested one."""
    if len(requested) != len(achieved):
        raise ValueError(f"requested and achieved must have the same length, got {len(requested)} and {len(achieved)}")
    if not requested:
        raise ValueError("requested: control accuracy needs at least one generation")
    return sum(r == a for r, a in zip(requested, achieved, strict=True)) / len(requested)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = 60, limit: int | None = None, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Fuse ranked item lists (best first) into one: score(item) = sum over rankings of w / (k + rank),
    rank 1-based, w = the ranking's weight (default 1 each: plain RRF).

    An item repeated within one ranking counts once, at its best rank. Ties keep the order of
    first appearance, reading the rankings one after the other. Returns (item, score) pairs,
    best first, cut to `limit` when given."""
    if k < 0:
        raise ValueError(f"k must be >= 0 (60 is the usual value), got {k}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    weights = [1.0] * len(rankings) if weights is None else [float(w) for w in weights]
    if len(weights) != len(rankings) or any(w < 0 for w in weights):
        raise ValueError(f"weights must be one number >= 0 per ranking ({len(rankings)}), got {weights}")
    scores: dict[str, float] = {}  # insertion order = first appearance
    for ranking, weight in zip(rankings, weights, strict=True):
        seen = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    fused = sorted(scores.items(), key=lambda kv: -kv[1])  # stable sort keeps first-appearance order on ties
    return fused if limit is None else fused[:limit]
