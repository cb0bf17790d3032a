"""Query expansion: an intent -> k search prompts from the prompt generator -> one retrieval per
query -> the ranked lists fused by reciprocal rank fusion (RRF).

`QueryExpander.prompts` writes the queries (the user's own text first when `include_original`);
`fuse` is the pure fusion step. The search service (`tandem serve --promptgen DIR`) and
`benchmarks/query_expansion.py` both use them, so the benchmark measures what is served.

k distinct prompts need sampling (greedy decoding writes one prompt), so generation is seeded:
the same intents, seed and settings give the same prompts. The seed is applied inside a forked
torch RNG under a lock, so concurrent requests neither race on nor disturb the global RNG.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

from tandem.promptgen import LENGTHS, RELEVANCE
from tandem.promptgen.metrics import reciprocal_rank_fusion

MAX_K = 8  # generated prompts per query the service allows: generation time grows with k
TASK = "search"
_OFF = ("false", "off", "no", "0")
_ON = ("true", "on", "yes")


def normalise(text: str) -> str:
    """The form prompts are compared in for de-duplication: case-folded, whitespace collapsed."""
    return " ".join(str(text).split()).casefold()


def fuse(
    rankings_per_query: Sequence[Sequence[str]],
    limit: int | None = None,
    rrf_k: int = 60,
    weights: Sequence[float] | None = None,
):
    """One ranking from the per-query rankings (item ids, best first): reciprocal rank fusion,
    score = sum over queries of w / (rrf_k + rank) (w = 1 by default). Returns (item_id, score) pairs,
    best first, at most `limit`; ties keep first appearance, reading the queries in order (the original first)."""
    return reciprocal_rank_fusion(rankings_per_query, k=rrf_k, limit=limit, weights=weights)


def parse_expand(value: str | None, default_k: int, max_k: int = MAX_K) -> int:
    """The number of prompts a request's `expand` parameter asks for: absent/false/off/0 -> 0,
    true/on/yes -> `default_k`, an integer 0..max_k -> itself. ValueError names the fix otherwise."""
    if value is None:
        return 0
    text = value.strip().casefold()
    if text in _OFF:
        return 0
    if text in _ON:
        return default_k
    if not text.isdigit() or int(text) > max_k:  # isdigit: no sign, no decimal point
        raise ValueError(f"expand={value[:20]!r}: use true, false or a number of prompts from 0 to {max_k}")
    return int(text)


class QueryExpander:
    """Writes `k` search prompts per intent with a trained `PromptGenerator` (see the module doc).

    length: the length bucket asked for, or None to ask for short, medium and long prompts in turn
    (more varied queries). `depth` is how many items each query retrieves before fusion (at least
    the k items asked for). `oversample` samples that many times k prompts, so that k distinct ones
    usually remain after de-duplication; fewer are returned when the generator keeps repeating itself.
    `original_weight`: the user's own query's weight in the fusion (each prompt weighs 1); None = as
    much as all generated prompts together, so the prompts add recall and reorder what the original
    finds but cannot push its first item down on their own (plain RRF, weight 1, lets them: see
    benchmarks/results/query_expansion.md).
    """

    def __init__(
        self,
        generator,
        k: int = 4,
        length: str | None = "medium",
        relevance: str = "high",
        include_original: bool = True,
        rrf_k: int = 60,
        depth: int = 100,
        seed: int = 0,
        temperature: float = 1.0,
        top_p: float = 0.95,
        oversample: int = 2,
        original_weight: float | None = None,
    ):
        if not 1 <= k <= MAX_K:
            raise ValueError(f"expansion k={k}: ask for 1 to {MAX_K} prompts per query")
        if length is not None and length not in LENGTHS:
            raise ValueError(f"expansion length {length!r} is not one of {LENGTHS} (or None for all in turn)")
        if relevance not in RELEVANCE:
            raise ValueError(f"expansion relevance {relevance!r} is not one of {RELEVANCE}")
        if rrf_k < 0 or depth < 1 or oversample < 1:
            raise ValueError(f"rrf_k ({rrf_k}) must be >= 0, depth ({depth}) and oversample ({oversample}) >= 1")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.generator = generator
        self.k, self.length, self.relevance = k, length, relevance
        self.include_original, self.rrf_k, self.depth, self.seed = include_original, rrf_k, depth, seed
        if original_weight is not None and original_weight < 0:
            raise ValueError(f"original_weight={original_weight}: use a weight >= 0, or None (= all prompts together)")
        self.temperature, self.top_p, self.oversample = temperature, top_p, oversample
        self.original_weight = original_weight
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: str | Path, **options) -> QueryExpander:
        """An expander over the generator in a folder written by `train_generator` (`tandem promptgen train`)."""
        from tandem.promptgen.train import load

        generator, _, _ = load(directory)
        return cls(generator, **options)

    def _sample(self, intents: list[str], n: int) -> list[list[str]]:
        """`n` sampled prompts per intent; with length None, the lengths take turns."""
        lengths = LENGTHS if self.length is None else (self.length,)
        each = math.ceil(n / len(lengths))
        options = {"n": each, "seed": self.seed, "temperature": self.temperature, "top_p": self.top_p}
        per_length = [self.generator.generate(intents, TASK, length, self.relevance, **options) for length in lengths]
        # interleave (short 1, medium 1, long 1, short 2, ...) so that any prefix mixes the lengths
        return [[p for j in range(each) for got in per_length for p in got[i][j : j + 1]] for i in range(len(intents))]

    def prompts(self, intents: Sequence[str], k: int | None = None) -> list[list[str]]:
        """The queries to search for each intent: the intent itself first (when `include_original`),
        then up to `k` (default: self.k) distinct generated prompts. Prompts that are empty or equal
        to an earlier query (case and spacing aside) are dropped."""
        import torch

        if isinstance(intents, str) or not intents:
            raise ValueError("intents must be a non-empty list of strings")
        k = self.k if k is None else k
        if not 1 <= k <= MAX_K:
            raise ValueError(f"expansion k={k}: ask for 1 to {MAX_K} prompts per query")
        intents = [str(i) for i in intents]
        with self._lock, torch.random.fork_rng(devices=[]):
            sampled = self._sample(intents, k * self.oversample)
        out = []
        for intent, candidates in zip(intents, sampled, strict=True):
            seen = {normalise(intent)} if self.include_original else set()
            chosen = [intent] if self.include_original else []
            for prompt in candidates:
                key = normalise(prompt)
                if key and key not in seen and len(chosen) < k + self.include_original:
                    seen.add(key)
                    chosen.append(" ".join(prompt.split()))
            out.append(chosen)
        return out

    def weights(self, n_queries: int) -> list[float]:
        """Fusion weights of the queries `prompts` wrote (the original first when included)."""
        if not self.include_original or n_queries < 2:
            return [1.0] * n_queries
        first = n_queries - 1 if self.original_weight is None else self.original_weight
        return [float(first)] + [1.0] * (n_queries - 1)

    def fuse(self, rankings_per_query: Sequence[Sequence[str]], limit: int | None = None):
        """`fuse` with this expander's rrf_k and weights."""
        return fuse(rankings_per_query, limit, self.rrf_k, self.weights(len(rankings_per_query)))
