"""Hindsight relabelling (upside-down RL): label each teacher example with the outcome it actually
achieved, so the generator can later be asked for an outcome (task, length, relevance).

Relevance comes from a scorer, an object with `score(df) -> np.ndarray` (one float per row,
higher = more relevant):
- `SimilarityScorer`: cosine(intent, prompt) under a sentence encoder (bundled all-MiniLM-L6-v2);
- `RetrievalScorer`: reciprocal rank of the intent's target items when the prompt is the query,
  over item vectors in memory (exact search);
- `IndexRetrievalScorer`: the same through the project's own Milvus index (a collection written by
  `tandem run`, e.g. the live alias), so relevance means "this prompt finds the item in our search".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
        from tandem.models.hub import load_pretrained

        if self._model is None:
            path = self.encoder_path or bundled_minilm()
            self._tok = load_pretrained(AutoTokenizer, path, "relabelling encoder")
            self._model = load_pretrained(AutoModel, path, "relabelling encoder").eval()
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
        return _reciprocal_ranks(self.item_ids[top].tolist(), df["target_items"].tolist())


def _reciprocal_ranks(ranked: Sequence[Sequence[str]], targets: Sequence) -> np.ndarray:
    """1/rank of the first target found in each ranked id list (0 when none is)."""
    scores = np.zeros(len(ranked))
    for r, (ids, wanted) in enumerate(zip(ranked, targets, strict=True)):
        wanted = {str(t) for t in (wanted if wanted is not None else [])}
        rank = next((n for n, item in enumerate(ids, start=1) if str(item) in wanted), None)
        scores[r] = 1.0 / rank if rank else 0.0
    return scores


class IndexRetrievalScorer:
    """Relevance = reciprocal rank (0 beyond k) of the first of the row's target_items when the prompt
    is searched in `collection` (name or alias, e.g. "live") of a `tandem.release.index.ItemIndex`; `embed_fn`
    must be the query encoder of the model that wrote the collection."""

    def __init__(self, index, collection: str, embed_fn: Callable[[list[str]], np.ndarray], k: int = 10):
        if k < 1:
            raise ValueError(f"k={k}; use k >= 1")
        self.index, self.collection, self.embed_fn, self.k = index, collection, embed_fn, k

    @classmethod
    def live(cls, workdir, cfg=None, k: int = 10) -> IndexRetrievalScorer:
        """The scorer over WORKDIR's live collection, embedding prompts with the query tower of the run
        that built it (what `tandem serve` answers with). Call `close()` when done."""
        from tandem.core.config import RunConfig
        from tandem.models import load_model
        from tandem.release.index import ItemIndex, model_dir_of

        cfg = cfg or RunConfig()
        index = ItemIndex(cfg.index, workdir)
        try:
            live = index.live()
            if live is None:
                raise ValueError(f"no live collection in {index.uri}: run `tandem run --workdir {workdir}` first")
            model = load_model(model_dir_of(workdir, live))
        except BaseException:
            index.close()
            raise
        return cls(index, live, lambda texts: model.embed_queries(texts, progress=False), k)

    def close(self) -> None:
        self.index.close()

    def score(self, df: pd.DataFrame) -> np.ndarray:
        if not len(df):
            return np.zeros(0)
        queries = np.asarray(self.embed_fn(df["prompt"].tolist()), dtype=np.float32)
        hits = self.index.search(self.collection, queries, k=self.k)
        return _reciprocal_ranks([[item for item, _ in row] for row in hits], df["target_items"].tolist())


Cuts = tuple[float, float]
Thresholds = Mapping[str, Sequence[float]] | Sequence[float]
# a (task, length) group with fewer training examples than this takes its length bucket's terciles:
# a tercile of a handful of scores is noise
MIN_GROUP = 30


def group_key(task: str, length: str) -> str:
    """The thresholds key of one (task, length) group, e.g. "search/short"."""
    return f"{task}/{length}"


def cuts_for(thresholds: Thresholds, length: str, task: str | None = None) -> Cuts:
    """The (low/medium, medium/high) cut points that apply to a prompt of `length` written for `task`:
    the pair of its (task, length) group when `thresholds` holds one (what `relabel` computes), else
    its length bucket's pair (models trained before per-task cuts), else one pair for all."""
    if isinstance(thresholds, Mapping):
        pair = thresholds.get(group_key(task, length)) if task is not None else None
        pair = pair if pair is not None else thresholds.get(length)
    else:
        pair = thresholds
    if pair is None:
        raise ValueError(
            f"thresholds hold no cut points for task {task!r}, length {length!r}: give one pair per "
            f"'task/length' group or per length bucket {LENGTHS}"
        )
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"thresholds={pair} for {length!r}: give two increasing cut points (low/medium, medium/high)")
    return float(pair[0]), float(pair[1])


def relabel(
    df: pd.DataFrame, scorer: Scorer, thresholds: Thresholds | None = None
) -> tuple[pd.DataFrame, dict[str, Cuts]]:
    """Add length, relevance_score and relevance to a copy of the example table.

    Relevance buckets: low < lo <= medium < hi <= high, with (lo, hi) the terciles of the scores *of
    the same task and length bucket* by default: how close a prompt can get to its intent depends on
    both (a 3-word query shares less with a sentence-long intent than a 12-word one; an image prompt
    adds style words a search query does not), so "high" means among the most relevant prompts of
    that kind, and every (task, length, relevance) command is reachable. Returns (table, thresholds):
    keys "task/length" plus one per length bucket (the fallback for groups under MIN_GROUP examples
    and for unknown tasks); keep them so evaluation buckets generated prompts alike."""
    missing = [c for c in ("intent", "task", "prompt") if c not in df.columns]
    if missing:
        raise ValueError(f"example table lacks columns {missing}; build it with tandem.promptgen.teacher")
    if not len(df):
        raise ValueError("example table is empty; nothing to relabel")
    scores = np.asarray(scorer.score(df), dtype=float)
    if scores.shape != (len(df),):
        raise ValueError(f"scorer returned shape {scores.shape}; it must give one score per row ({len(df)})")
    lengths = np.asarray([length_bucket(len(str(p).split())) for p in df["prompt"]])
    tasks = df["task"].astype(str).to_numpy()
    if thresholds is None:

        def terciles(values: np.ndarray) -> Cuts:
            lo, hi = np.quantile(values, [1 / 3, 2 / 3])
            return float(lo), float(hi)

        overall = terciles(scores)
        thresholds = {b: terciles(scores[lengths == b]) if (lengths == b).any() else overall for b in LENGTHS}
        for task in sorted(set(tasks)):
            for b in LENGTHS:
                group = (tasks == task) & (lengths == b)
                if group.sum() >= MIN_GROUP:
                    thresholds[group_key(task, b)] = terciles(scores[group])
    if isinstance(thresholds, Mapping):
        table = {k: cuts_for(thresholds, k) for k in thresholds}  # validates every pair
    else:
        table = {b: cuts_for(thresholds, b) for b in LENGTHS}
    groups = {(t, b): cuts_for(table, b, t) for t, b in set(zip(tasks, lengths, strict=True))}
    lo = np.array([groups[t, b][0] for t, b in zip(tasks, lengths, strict=True)])
    hi = np.array([groups[t, b][1] for t, b in zip(tasks, lengths, strict=True)])
    out = df.copy()
    out["length"] = lengths
    out["relevance_score"] = scores
    idx = (scores >= lo).astype(int) + (scores >= hi).astype(int)
    out["relevance"] = [RELEVANCE[i] for i in idx]
    return out, table
