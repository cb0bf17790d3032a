"""Hindsight relabelling (upside-down RL): label each teacher example with the outcome it actually
achieved, so the generator can later be asked for an outcome (task, length, relevance).

Relevance comes from a scorer, an object with `score(df) -> np.ndarray` (one float per row,
higher = more relevant):
- `SimilarityScorer`: cosine(intent, prompt) under a sentence encoder (bundled all-MiniLM-L6-v2);
- `RetrievalScorer`: reciprocal rank of the intent's target items when the prompt is the query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from tandem.promptgen import LENGTHS, RELEVANCE

# Word-count cut points: a keyword query is <= 4 words, a sentence-like request <= 12, a
# descriptive (e.g. text-to-image) prompt is longer.
SHORT_MAX_WORDS = 4
MEDIUM_MAX_WORDS = 12


def length_bucket(n_words: int) -> str:
    """short (<= 4 words), medium (<= 12) or long (> 12)."""
    if n_words < 0:
        raise ValueError(f"n_words={n_words}; a word count is >= 0")
    if n_words <= SHORT_MAX_WORDS:
        return LENGTHS[0]
    return LENGTHS[1] if n_words <= MEDIUM_MAX_WORDS else LENGTHS[2]


class Scorer(Protocol):
    def score(self, df: pd.DataFrame) -> np.ndarray: ...


class SimilarityScorer:
    """Relevance = cosine(intent, prompt) with a mean-pooled sentence encoder (default: the bundled
    all-MiniLM-L6-v2). The model loads on first use."""

    def __init__(self, encoder_path: str | None = None, batch_size: int = 64, max_length: int = 128):
        self.encoder_path = encoder_path
        self.batch_size = batch_size
        self.max_length = max_length
        self._model = None
        self._tok = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 (n, dim) sentence vectors."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        from tandem.models.base import bundled_minilm, mean_pool

        if self._model is None:
            path = self.encoder_path or bundled_minilm()
            self._tok = AutoTokenizer.from_pretrained(path)
            self._model = AutoModel.from_pretrained(path).eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [str(t) for t in texts[start : start + self.batch_size]]
                enc = self._tok(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state
                out.append(torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1))
        return torch.cat(out).float().numpy() if out else np.zeros((0, 0), np.float32)

    def score(self, df: pd.DataFrame) -> np.ndarray:
        intents = self.embed(df["intent"].tolist())
        prompts = self.embed(df["prompt"].tolist())
        return (intents * prompts).sum(1) if len(df) else np.zeros(0)


class RetrievalScorer:
    """Relevance = reciprocal rank (1/rank, 0 beyond k) of the first of the row's target_items when
    the prompt is used as the query against `item_vectors` (exact inner-product search; pass
    normalised vectors for cosine). `embed_fn(list[str]) -> (n, dim)` embeds the prompts."""

    def __init__(
        self,
        item_ids: Sequence[str],
        item_vectors: np.ndarray,
        embed_fn: Callable[[list[str]], np.ndarray],
        k: int = 10,
    ):
        vectors = np.asarray(item_vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(item_ids):
            raise ValueError(f"item_vectors must be (n_items, dim) with n_items={len(item_ids)}; got {vectors.shape}")
        if k < 1:
            raise ValueError(f"k={k}; use k >= 1")
        self.item_ids = np.asarray([str(i) for i in item_ids])
        self.item_vectors = vectors
        self.embed_fn = embed_fn
        self.k = k

    def score(self, df: pd.DataFrame) -> np.ndarray:
        if not len(df):
            return np.zeros(0)
        queries = np.asarray(self.embed_fn(df["prompt"].tolist()), dtype=np.float32)
        sims = queries @ self.item_vectors.T
        # stable sort on -sim: ties keep catalogue order, so scores are reproducible
        top = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        scores = np.zeros(len(df))
        for r, targets in enumerate(df["target_items"]):
            wanted = {str(t) for t in (targets if targets is not None else [])}
            hits = [rank for rank, j in enumerate(top[r], start=1) if self.item_ids[j] in wanted]
            scores[r] = 1.0 / hits[0] if hits else 0.0
        return scores


def relabel(
    df: pd.DataFrame, scorer: Scorer, thresholds: tuple[float, float] | None = None
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """Add length, relevance_score and relevance to a copy of the example table. Relevance buckets:
    low < thresholds[0] <= medium < thresholds[1] <= high; by default the terciles of the scores.
    Returns (table, thresholds): keep the thresholds so evaluation buckets generated prompts alike."""
    missing = [c for c in ("intent", "task", "prompt") if c not in df.columns]
    if missing:
        raise ValueError(f"example table lacks columns {missing}; build it with tandem.promptgen.teacher")
    if not len(df):
        raise ValueError("example table is empty; nothing to relabel")
    scores = np.asarray(scorer.score(df), dtype=float)
    if scores.shape != (len(df),):
        raise ValueError(f"scorer returned shape {scores.shape}; it must give one score per row ({len(df)})")
    if thresholds is None:
        lo, hi = np.quantile(scores, [1 / 3, 2 / 3])
        thresholds = (float(lo), float(hi))
    if len(thresholds) != 2 or thresholds[0] > thresholds[1]:
        raise ValueError(f"thresholds={thresholds}; give two increasing cut points (low/medium, medium/high)")
    out = df.copy()
    out["length"] = [length_bucket(len(str(p).split())) for p in out["prompt"]]
    out["relevance_score"] = scores
    idx = (scores >= thresholds[0]).astype(int) + (scores >= thresholds[1]).astype(int)
    out["relevance"] = [RELEVANCE[i] for i in idx]
    return out, (float(thresholds[0]), float(thresholds[1]))
