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

    def augment_items(self, vectors: np.ndarray, item_ids) -> np.ndarray:
        """(n, d + 1): the item vectors with `a (1 + b_i)` appended."""
        extra = self.scale * (1.0 + self.biases(item_ids, vectors))
        return np.hstack([vectors, extra[:, None].astype(vectors.dtype)])

    def augment_queries(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d + 1): text query vectors with `a` appended."""
        return np.hstack([vectors, np.full((len(vectors), 1), self.scale, dtype=vectors.dtype)])

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
    """Ridge regression of b on the item vectors (the warm items): {"coef", "intercept"} for `predict_bias`.
    Closed form on centred data; alpha keeps it stable where the items are fewer than the dimensions."""
    x, y = np.asarray(vectors, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return {"coef": coef.round(6).tolist(), "intercept": round(float(my - mx @ coef), 6)}


def predict_bias(content: dict, vectors: np.ndarray) -> np.ndarray:
    """Predicted b of items from their vectors, times the chosen scale, clipped to [0, 1]."""
    raw = np.asarray(vectors, dtype=np.float64) @ np.asarray(content["coef"]) + content["intercept"]
    return np.clip(raw * content.get("scale", 1.0), 0.0, 1.0).astype(np.float32)
