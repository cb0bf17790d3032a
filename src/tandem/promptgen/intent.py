"""Intent detector: which task (search, recommendation, image) an intent asks for.

Features = the MiniLM sentence embedding of the intent text (mean pooling, unit norm),
followed, when the detector was fitted with images, by the intent's image embedding and a
"has image" flag (zeros and 0 when an intent comes without an image). The classifier is a
multinomial scikit-learn LogisticRegression.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tandem.promptgen import TASKS

LAYOUT_FILE = "intent.json"
CLASSIFIER_FILE = "intent_classifier.joblib"


@dataclass(frozen=True)
class IntentConfig:
    encoder: str = field(
        default="", metadata={"help": "sentence encoder (HF id or local folder); '' = the bundled all-MiniLM-L6-v2"}
    )
    c: float = field(default=10.0, metadata={"help": "inverse L2 regularisation strength of the logistic regression"})
    max_iter: int = field(default=2000, metadata={"help": "iterations of the lbfgs solver"})
    batch_size: int = field(default=64, metadata={"help": "texts per encoder forward pass"})

    def __post_init__(self):
        if self.c <= 0:
            raise ValueError(f"intent.c must be > 0, got {self.c}")
        if self.max_iter < 1 or self.batch_size < 1:
            raise ValueError("intent.max_iter and intent.batch_size must be >= 1")


class IntentDetector:
    """Text (+ optional image embedding) -> task. `fit`, then `predict` / `predict_proba`; `save` / `load`."""

    def __init__(self, config: IntentConfig | None = None):
        self.config = config or IntentConfig()
        self.image_dim = 0  # 0: fitted on text only
        self._classifier = None
        self._encoder = None  # (tokenizer, model), loaded on first use

    # -- features -----------------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 unit sentence embeddings."""
        import torch
        import torch.nn.functional as F
        from transformers import AutoModel, AutoTokenizer

        from tandem.models.base import bundled_minilm, from_pretrained, mean_pool

        if self._encoder is None:
            spec = self.config.encoder or bundled_minilm()
            self._encoder = (
                from_pretrained(AutoTokenizer, spec, "intent encoder"),
                from_pretrained(AutoModel, spec, "intent encoder").eval(),
            )
        tokenizer, model = self._encoder
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.config.batch_size):
                batch = list(texts[start : start + self.config.batch_size])
                tokens = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
                hidden = model(**tokens).last_hidden_state
                out.append(F.normalize(mean_pool(hidden, tokens["attention_mask"]), dim=-1))
        return torch.cat(out).numpy().astype(np.float32)

    def _image_block(self, n: int, image_vectors) -> np.ndarray:
        """(n, image_dim + 1): the image embedding (zeros when absent) and a has-image flag."""
        block = np.zeros((n, self.image_dim + 1), dtype=np.float32)
        if image_vectors is None:
            return block
        if len(image_vectors) != n:
            raise ValueError(f"image_vectors: got {len(image_vectors)} for {n} texts; give one per text (None = none)")
        for i, vector in enumerate(image_vectors):
            if vector is None:
                continue
            vector = np.asarray(vector, dtype=np.float32).reshape(-1)
            if vector.shape[0] != self.image_dim:
                raise ValueError(
                    f"image_vectors[{i}]: has {vector.shape[0]} values, the detector expects {self.image_dim} "
                    "(the image dimension it was fitted with)"
                )
            block[i, :-1] = vector
            block[i, -1] = 1.0
        return block

    def features(self, texts: Sequence[str], image_vectors=None) -> np.ndarray:
        """Classifier input: text embedding, then (if fitted with images) image embedding and has-image flag."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        if not len(texts):
            raise ValueError("texts: give at least one intent")
        text = self.embed_texts(texts)
        if not self.image_dim:
            if image_vectors is not None and any(v is not None for v in image_vectors):
                raise ValueError("image_vectors: this detector was fitted without images; refit with image_vectors")
            return text
        return np.hstack([text, self._image_block(len(texts), image_vectors)])

    # -- fit / predict ------------------------------------------------------------------------

    def fit(self, texts: Sequence[str], tasks: Sequence[str], image_vectors=None) -> IntentDetector:
        """Learn text (+ image) -> task. `image_vectors`: None, an (n, d) array, or a list of d-vectors / None."""
        from sklearn.linear_model import LogisticRegression

        if len(texts) != len(tasks):
            raise ValueError(f"texts and tasks must have the same length, got {len(texts)} and {len(tasks)}")
        unknown = sorted({t for t in tasks} - set(TASKS))
        if unknown:
            raise ValueError(f"tasks: unknown task labels {unknown}; use {TASKS}")
        if len(set(tasks)) < 2:
            raise ValueError("tasks: need examples of at least two tasks to fit the detector")
        self.image_dim = 0
        if image_vectors is not None:
            dims = {np.asarray(v).size for v in image_vectors if v is not None}
            if len(dims) > 1:
                raise ValueError(f"image_vectors: all vectors must have the same size, got sizes {sorted(dims)}")
            self.image_dim = dims.pop() if dims else 0
        x = self.features(texts, image_vectors if self.image_dim else None)
        self._classifier = LogisticRegression(C=self.config.c, max_iter=self.config.max_iter)
        self._classifier.fit(x, list(tasks))
        return self

    def _fitted(self):
        if self._classifier is None:
            raise ValueError("IntentDetector is not fitted: call fit() or IntentDetector.load(dir)")
        return self._classifier

    def predict_proba(self, texts: Sequence[str], image_vectors=None) -> np.ndarray:
        """(n, len(self.classes)) probabilities; columns in the order of `self.classes`."""
        return self._fitted().predict_proba(self.features(texts, image_vectors))

    def predict(self, texts: Sequence[str], image_vectors=None) -> list[str]:
        return [str(t) for t in self._fitted().predict(self.features(texts, image_vectors))]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self._fitted().classes_]

    # -- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the classifier (joblib) and the feature layout + config (json) to `directory`."""
        import joblib

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(self._fitted(), directory / CLASSIFIER_FILE)
        layout = {"config": asdict(self.config), "image_dim": self.image_dim, "classes": self.classes}
        layout["features"] = ["text"] + (["image", "has_image"] if self.image_dim else [])
        (directory / LAYOUT_FILE).write_text(json.dumps(layout, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> IntentDetector:
        import joblib

        directory = Path(directory)
        if not (directory / LAYOUT_FILE).exists():
            raise ValueError(f"{directory}: no {LAYOUT_FILE}; give a folder written by IntentDetector.save")
        layout = json.loads((directory / LAYOUT_FILE).read_text())
        detector = cls(IntentConfig(**layout["config"]))
        detector.image_dim = int(layout["image_dim"])
        detector._classifier = joblib.load(directory / CLASSIFIER_FILE)
        return detector
