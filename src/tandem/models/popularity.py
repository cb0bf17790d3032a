"""A popularity term that survives inner-product search: one extra coordinate per vector.

An item vector `[v_i, a (1 + b_i)]` and a text query's `[q, a]` score `q . v_i + w (1 + b_i)` with
`w = a^2`: cosine plus a per-item bias, ranked exactly by an inner-product index (Milvus metric IP).
`b_i` in [0, 1] is the item's log popularity (a Feast feature: distinct users in the training window,
or its co-occurrence degree in the training pairs), divided by the largest. An item-to-item query
(a symmetric model, /similar) is the query item's own stored vector, so it scores
`q . v_i + w (1 + b_q)(1 + b_i)`: for one query that is still cosine plus a bias growing with b_i,
weighted by `w (1 + b_q)`. No query-side transform exists anywhere, so the vectors the evaluate
stage ranks are exactly the vectors Milvus serves.

Only the warm items (those in a training pair) carry their own b. A cold item (in no training pair: a
new item, or one seen too rarely to pair) gets either a constant cold prior or, with `content`, its
popularity as predicted from its own vector (a ridge regression fitted on the warm items' vectors and b,
times a scale): what the item looks like stands in for the interactions it has not had yet, so a new item
that resembles popular ones is not buried under them. The weight and the cold treatment are chosen
together on the validation pairs (`tandem.training.popularity.choose_weight`); the term with weight 0 is
not attached at all (the vectors stay the plain unit vectors).

Log co-occurrence coordinates (item-to-item queries): k more coordinates `sqrt(w_f) f_i`, where `f_i` is the
item's row of a rank-k factorisation of the training window's users-in-common matrix (`tandem.training.factors`),
so two stored vectors score `... + w_f f_q . f_i`: the "also clicked" signal of the co-occurrence list, inside
the same inner product. A symmetric model's item query is the item's stored vector, so it carries them; an
asymmetric model's item query (the item's title through its query tower, as the hotelmatch protocol and /similar
embed it) takes them from the item's stored vector (`item_queries`). A typed text query appends zeros there (it
has no clicks). An item without clicks gets zeros or, with `factor_content`, factors predicted from its vector.

Saved as `popularity.json` beside the model's weights; `load` returns None when there is none.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FILE = "popularity.json"


@dataclass
class PopularityTerm:
    weight: float  # w = a^2 >= 0
    feature: str  # the Feast feature b comes from
    bias: dict[str, float] = field(default_factory=dict)  # warm item id -> b in [0, 1]
    cold_bias: float = 0.0  # b of an item not in `bias` (without `content`, or without its vector)
    chosen: dict = field(default_factory=dict)  # how the weight was chosen (validation figures)
    content: dict = field(default_factory=dict)  # cold b from the item vector: {"coef", "intercept", "scale"}
    factor_weight: float = 0.0  # w_f of the log co-occurrence coordinates; 0 = none
    factors: dict[str, list[float]] = field(default_factory=dict)  # item id -> its k coordinates f_i
    factor_content: dict = field(default_factory=dict)  # f of an item without clicks from its vector

    @property
    def active(self) -> bool:
        """Whether the term changes any score (else it is not attached)."""
        return self.weight > 0 or self.factor_dims > 0

    @property
    def factor_dims(self) -> int:
        """k: the co-occurrence coordinates appended after the popularity one (0 when their weight is 0)."""
        return len(next(iter(self.factors.values()))) if self.factor_weight > 0 and self.factors else 0

    @property
    def extra_dims(self) -> int:
        """Coordinates appended to the model's own vector: the popularity one, then the factors."""
        return 1 + self.factor_dims

    @property
    def scale(self) -> float:
        return math.sqrt(max(self.weight, 0.0))

    def biases(self, item_ids, vectors: np.ndarray | None = None) -> np.ndarray:
        """b per item: its own when warm, else the content prediction (given `vectors`) or the cold prior."""
        own = np.array([self.bias.get(str(i), np.nan) for i in item_ids], dtype=np.float32)
        cold = np.isnan(own)
        if self.content and vectors is not None and cold.any():
            own[cold] = predict_bias(self.content, np.asarray(vectors)[cold])
        return np.where(np.isnan(own), np.float32(self.cold_bias), own)

    def item_factors(self, item_ids, vectors: np.ndarray | None = None) -> np.ndarray:
        """(n, k) f per item: its own, else predicted from its vector (with `factor_content`), else zeros."""
        out = np.zeros((len(item_ids), self.factor_dims), dtype=np.float32)
        own = [self.factors.get(str(i)) for i in item_ids]
        missing = np.array([f is None for f in own], dtype=bool)
        if not missing.all():
            out[~missing] = [f for f in own if f is not None]
        if self.factor_content and vectors is not None and missing.any():
            out[missing] = predict_factors(self.factor_content, np.asarray(vectors)[missing])
        return out

    def augment_items(self, vectors: np.ndarray, item_ids) -> np.ndarray:
        """(n, d + 1 + k): the item vectors with `a (1 + b_i)` and `sqrt(w_f) f_i` appended."""
        extra = self.scale * (1.0 + self.biases(item_ids, vectors))
        parts = [vectors, extra[:, None].astype(vectors.dtype)]
        if self.factor_dims:
            parts.append((math.sqrt(self.factor_weight) * self.item_factors(item_ids, vectors)).astype(vectors.dtype))
        return np.hstack(parts)

    def augment_queries(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d + 1 + k): text query vectors with `a` appended, then zeros (a text has no clicks)."""
        tail = np.zeros((len(vectors), self.extra_dims), dtype=vectors.dtype)
        tail[:, 0] = self.scale
        return np.hstack([vectors, tail])

    def item_queries(self, queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Augmented text query vectors that stand for items (their titles: an asymmetric model's item-to-item
        query) with those items' co-occurrence coordinates, copied from the items' `stored` vectors (same rows):
        the query knows what its item's clickers also clicked, as the item's own stored vector does."""
        if not self.factor_dims:
            return queries
        out = np.array(queries, copy=True)
        out[:, -self.factor_dims :] = np.asarray(stored)[:, -self.factor_dims :]
        return out

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PopularityTerm | None:
        path = Path(directory) / FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def item_biases(item_ids, counts, cap_quantile: float = 1.0) -> dict[str, float]:
    """b = log(1 + count) / log(1 + cap), capped at 1, for every item with a positive count; `cap` is the
    `cap_quantile` quantile of the positive counts (1.0: the largest)."""
    counts = np.asarray(counts, dtype=np.float64)
    ids = np.asarray([str(i) for i in item_ids], dtype=object)
    seen = counts > 0
    if not seen.any():
        return {}
    cap = max(float(np.quantile(counts[seen], cap_quantile)), 1.0)
    b = np.minimum(np.log1p(counts[seen]) / math.log1p(cap), 1.0)
    return dict(zip(ids[seen].tolist(), b.round(6).tolist()))


def fit_content_bias(vectors: np.ndarray, b: np.ndarray, alpha: float = 1.0) -> dict:
    """Ridge regression of b on the item vectors (the warm items): {"coef", "intercept"} for `predict_bias`."""
    coef, intercept = _ridge(vectors, b, alpha)
    return {"coef": coef.round(6).tolist(), "intercept": round(float(intercept), 6)}


def predict_bias(content: dict, vectors: np.ndarray) -> np.ndarray:
    """Predicted b of items from their vectors, times the chosen scale, clipped to [0, 1]."""
    raw = np.asarray(vectors, dtype=np.float64) @ np.asarray(content["coef"]) + content["intercept"]
    return np.clip(raw * content.get("scale", 1.0), 0.0, 1.0).astype(np.float32)


def fit_content_factors(vectors: np.ndarray, factors: np.ndarray, alpha: float = 1.0) -> dict:
    """Ridge regression of the factors (n, k) on the item vectors: {"coef" (d, k), "intercept" (k)}."""
    coef, intercept = _ridge(vectors, factors, alpha)
    return {"coef": coef.round(6).tolist(), "intercept": intercept.round(6).tolist()}


def predict_factors(content: dict, vectors: np.ndarray) -> np.ndarray:
    """Predicted factors (n, k) of items from their vectors."""
    raw = np.asarray(vectors, dtype=np.float64) @ np.asarray(content["coef"]) + np.asarray(content["intercept"])
    return raw.astype(np.float32)


def _ridge(vectors: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(coef, intercept) of y on the vectors, closed form on centred data; alpha keeps it stable where the
    items are fewer than the dimensions."""
    x, y = np.asarray(vectors, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return coef, my - mx @ coef
