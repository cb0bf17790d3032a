"""HotelMatch-LLM (SEEDS.md §2): a small query tower and a large multi-image item tower.

- item tower: any Hugging Face encoder (mean pooling) or decoder LLM (last-token pooling).
  Every image of an item goes through the CLIP vision tower; its patch tokens (49 for
  224 px / 32 px patches) are averaged position by position over the item's images,
  projected to the item width and wrapped in learned image_start / image_end embeddings,
  then put in front of the item's text token embeddings. Embeddings are L2-normalised.
- query tower: `model.query_encoder` (own tokenizer), or a copy of the item tower's first
  `query_layers` layers; mean pooling, a linear projection to the item width (identity at
  start when the widths match), L2-normalised.
- auxiliary heads: in training, a masked-LM head (decoder tied to the item tower's input
  embeddings) predicts the masked city and country tokens of the item text; a multi-label
  facility head classifies the pooled item embedding (sigmoid + BCE) of every item whose
  facilities are listed. `HotelMatchLoss` weighs the three terms (0.7 / 0.2 / 0.1).

Position ids: text tokens keep the positions the encoder was pre-trained with (0..T-1),
visual tokens take the positions right after the longest possible text. An item without
images therefore gets the same embedding whether or not its batch carries visual tokens
(its visual tokens are masked out), and a text-only batch runs the plain pre-trained
encoder. Decoders see the visual tokens first in the sequence, so the last (pooled) text
token attends to them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tandem.core.config import ModelConfig, TrainConfig
from tandem.models.base import (
    Encoder,
    PairExample,
    bundled_minilm,
    drop_pooler,
    embed_in_batches,
    from_pretrained,
    mean_pool,
    position_offset,
    read_meta,
)
from tandem.models.hotelmatch_inputs import facility_vocabulary, item_batch
from tandem.models.losses import HotelMatchLoss
from tandem.models.text import query_text
from tandem.models.towers import item_pooling, last_attended, prepare_tokenizer, truncated_copy
from tandem.models.vision import build_vision, freeze, pool_images, vision_from_config

FORMAT = "tandem.HotelMatch"
FORMAT_VERSION = 2
# Our choice (the paper does not say): each item that has a city or country gets all of its
# city and country tokens masked with this probability in a training forward pass.
MASK_PROBABILITY = 0.5
_DECODER_FAMILIES_HINT = "gpt2, llama, qwen2, mistral, ..."


class Parts(NamedTuple):
    """What `HotelMatch` is assembled from (pretrained in `build`, empty shapes in `load`)."""

    item_encoder: nn.Module
    item_tokenizer: Any
    query_encoder: nn.Module
    query_tokenizer: Any
    vision: nn.Module


class HotelMatch(Encoder):
    """Query tower + multimodal item tower; embeddings are unit vectors compared by cosine."""

    family = "hotelmatch"
    symmetric = False

    def __init__(self, cfg: ModelConfig, parts: Parts, facilities: Sequence[str] = ()):
        super().__init__()
        self.cfg = cfg
        self.item_encoder, self.item_tokenizer, self.query_encoder, self.query_tokenizer, self.vision = parts
        prepare_tokenizer(self.item_tokenizer, "item_encoder")
        prepare_tokenizer(self.query_tokenizer, "query_encoder")
        self.pooling = item_pooling(cfg, self.item_encoder.config)
        self.facilities = list(facilities)
        item_width = self.item_encoder.config.hidden_size
        query_width = self.query_encoder.config.hidden_size

        self.query_proj = nn.Linear(query_width, item_width)
        if query_width == item_width:
            nn.init.eye_(self.query_proj.weight)
            nn.init.zeros_(self.query_proj.bias)

        if cfg.freeze_vision:
            freeze(self.vision)
        vision_config = self.vision.config
        self.num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
        self.image_proj = nn.Linear(vision_config.hidden_size, item_width)
        nn.init.normal_(self.image_proj.weight, std=0.02)
        nn.init.zeros_(self.image_proj.bias)
        # new special embeddings start at the mean word embedding (as NoteLLM-2 does)
        word_embeddings = self.item_encoder.get_input_embeddings().weight
        mean_word = word_embeddings.detach().float().mean(0)
        self.image_start = nn.Parameter(mean_word.clone())
        self.image_end = nn.Parameter(mean_word.clone())

        # masked-LM head: transform, then a decoder tied to the input embeddings (+ own bias)
        self.mlm_transform: nn.Module | None = None
        self.mlm_bias: nn.Parameter | None = None
        if cfg.mlm_weight > 0:
            self.mlm_transform = nn.Sequential(
                nn.Linear(item_width, item_width), nn.GELU(), nn.LayerNorm(item_width, eps=1e-12)
            )
            self.mlm_bias = nn.Parameter(torch.zeros(word_embeddings.shape[0]))
        tok = self.item_tokenizer
        self.mask_token_id = next(i for i in (tok.mask_token_id, tok.unk_token_id, tok.pad_token_id) if i is not None)
        self.facility_head = (
            nn.Linear(item_width, len(self.facilities)) if self.facilities and cfg.facility_weight > 0 else None
        )
        self._facility_index = {label: i for i, label in enumerate(self.facilities)}
        self._check_encoder()

    def _check_encoder(self) -> None:
        accepted = inspect.signature(self.item_encoder.forward).parameters
        if not {"inputs_embeds", "position_ids", "attention_mask"} <= set(accepted):
            raise ValueError(
                "model.item_encoder must accept inputs_embeds, attention_mask and position_ids "
                f"(an encoder such as BERT or a decoder LLM such as {_DECODER_FAMILIES_HINT})"
            )
        self.position_offset = position_offset(self.item_encoder)
        needed = self.position_offset + self.cfg.max_item_tokens + self.num_visual_tokens
        available = getattr(self.item_encoder.config, "max_position_embeddings", None)
        if available is not None and needed > available:
            raise ValueError(
                f"model.max_item_tokens + visual tokens need {needed} positions but the item encoder has {available}; "
                "lower max_item_tokens or use a larger patch_size"
            )

    @property
    def dim(self) -> int:
        """Embedding width (the item encoder's hidden size)."""
        return self.query_proj.out_features

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens per item with images: the patch positions plus image_start / image_end."""
        return self.num_patches + 2

    # ------------------------------------------------------------------------ batches (CPU)
    def tokenize_queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = self.query_tokenizer(
            [query_text(t) for t in texts],
            padding=True,
            truncation=True,
            max_length=self.cfg.max_query_tokens,
            return_tensors="pt",
        )
        return {"query_input_ids": tokens["input_ids"], "query_attention_mask": tokens["attention_mask"]}

    def prepare_items(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Tokens, images, geography token mask and facility labels of catalogue rows."""
        facilities = self._facility_index if self.facility_head is not None else None
        return item_batch(rows, self.item_tokenizer, self.cfg, self.mlm_transform is not None, facilities)

    def collate(self, examples: Sequence[PairExample]) -> dict[str, torch.Tensor]:
        """CPU tensors for `forward`: query tokens, the positive items' batch and both keys."""
        return {
            **self.tokenize_queries([e.query_text for e in examples]),
            **self.prepare_items([e.item for e in examples]),
            "query_keys": torch.tensor([e.query_key for e in examples], dtype=torch.int64),
            "item_keys": torch.tensor([e.item_key for e in examples], dtype=torch.int64),
        }

    # ------------------------------------------------------------------------------ towers
    def _queries(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["query_input_ids"].to(self.device)
        mask = batch["query_attention_mask"].to(self.device)
        hidden = self.query_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return F.normalize(self.query_proj(mean_pool(hidden, mask)), dim=-1)

    def visual_tokens(self, pixels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(B, num_patches + 2, H): image_start, per-position mean of patch tokens, image_end.

        The patch tokens go through the tower's final LayerNorm (as the CLS token does), so
        that every vision weight is used."""
        tokens = pool_images(self.patch_tokens(pixels), counts)
        tokens = self.image_proj(tokens.to(self.image_proj.weight.dtype))
        start = self.image_start.to(tokens.dtype).expand(len(counts), 1, -1)
        end = self.image_end.to(tokens.dtype).expand(len(counts), 1, -1)
        return torch.cat([start, tokens, end], dim=1)

    def patch_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(M, num_patches, vision width): the patch tokens of M images (CLS dropped)."""
        vision_dtype = next(self.vision.parameters()).dtype
        if not len(pixels):
            return pixels.new_zeros((0, self.num_patches, self.vision.config.hidden_size), dtype=vision_dtype)
        hidden = self.vision(pixel_values=pixels.to(vision_dtype)).last_hidden_state[:, 1:]
        tower = getattr(self.vision, "vision_model", self.vision)  # transformers < 5 nests the tower
        return tower.post_layernorm(hidden)

    def _items(self, batch: Mapping[str, torch.Tensor], mask_geography: bool) -> dict[str, torch.Tensor]:
        """Item embeddings (unit) and, when asked and present, the MLM and facility outputs."""
        device = self.device
        ids = batch["item_input_ids"].to(device)
        mask = batch["item_attention_mask"].to(device)
        counts = batch["image_counts"].to(device)
        out: dict[str, torch.Tensor] = {}
        masked = None
        if mask_geography and self.mlm_transform is not None and bool(batch["geo_mask"].any()):
            chosen = torch.rand(len(ids)) < MASK_PROBABILITY  # torch's CPU RNG: seeded runs repeat
            masked = batch["geo_mask"] & chosen.to(batch["geo_mask"].device)[:, None]
            masked = masked.to(device) if bool(masked.any()) else None
        inputs = ids.masked_fill(masked, self.mask_token_id) if masked is not None else ids
        embeds = self.item_encoder.get_input_embeddings()(inputs)
        n_text = ids.shape[1]
        positions = torch.arange(n_text, device=device) + self.position_offset
        full_mask, n_visual = mask, 0
        if bool(counts.any()):  # text-only batches run the plain pre-trained encoder
            visual = self.visual_tokens(batch["pixels"].to(device), counts).to(embeds.dtype)
            n_visual = visual.shape[1]
            embeds = torch.cat([visual, embeds], dim=1)
            visual_mask = (counts > 0).to(mask.dtype)[:, None].expand(-1, n_visual)
            full_mask = torch.cat([visual_mask, mask], dim=1)
            visual_positions = torch.arange(n_visual, device=device) + self.position_offset + self.cfg.max_item_tokens
            positions = torch.cat([visual_positions, positions])
        hidden = self.item_encoder(
            inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions.expand(len(ids), -1)
        ).last_hidden_state
        if self.pooling == "last":
            pooled = hidden[torch.arange(len(ids), device=device), last_attended(full_mask)]
        else:
            pooled = mean_pool(hidden, full_mask)
        out["item"] = F.normalize(pooled, dim=-1)
        if masked is not None:
            out["mlm_logits"] = self.mlm_logits(hidden[:, n_visual:][masked])
            out["mlm_labels"] = ids[masked]
        if self.facility_head is not None and "has_facilities" in batch and bool(batch["has_facilities"].any()):
            known = batch["has_facilities"].to(device)
            out["facility_logits"] = self.facility_head(pooled[known].to(self.facility_head.weight.dtype))
            out["facility_labels"] = batch["facility_labels"].to(device)[known]
        return out

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, vocab) logits of the masked-LM head; its decoder is the item tower's input embeddings."""
        assert self.mlm_transform is not None and self.mlm_bias is not None
        decoder = self.item_encoder.get_input_embeddings().weight
        return F.linear(self.mlm_transform(hidden.to(self.mlm_bias.dtype)).to(decoder.dtype), decoder, self.mlm_bias)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """query / item (B, d) unit vectors, their keys and the auxiliary outputs: in training
        mode mlm_logits (N, V) / mlm_labels (N,) when geography tokens were masked; in both modes
        facility_logits / facility_labels (n, L) over the n items whose facilities are listed."""
        out = {"query": self._queries(batch)}
        out |= self._items(batch, mask_geography=self.training)
        out["query_keys"] = batch["query_keys"].to(self.device)
        out["item_keys"] = batch["item_keys"].to(self.device)
        return out

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, dim) unit query embeddings, differentiable (use `embed_queries` for inference)."""
        return self._queries(self.tokenize_queries(texts))

    def encode_items(self, rows: Sequence[Mapping]) -> torch.Tensor:
        """(n, dim) unit item embeddings of catalogue rows (nothing masked), differentiable."""
        return self._items(self.prepare_items(rows), mask_geography=False)["item"]

    # --------------------------------------------------------------------------- training
    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """AdamW groups: query (tower), item (tower, incl. the tied MLM decoder), vision (when
        trainable), new (the newly initialised parts: query projection, image projection and
        markers, MLM transform and bias, facility head). The logit scale belongs to the loss."""
        new: list[nn.Module | nn.Parameter | None] = [
            self.query_proj,
            self.image_proj,
            self.image_start,
            self.image_end,
            self.mlm_transform,
            self.mlm_bias,
            self.facility_head,
        ]
        spec = [
            ("query", [self.query_encoder], cfg.lr_query),
            ("item", [self.item_encoder], cfg.lr_item),
            ("vision", [self.vision], cfg.lr_vision),
            ("new", new, cfg.lr_new),
        ]
        groups, seen = [], set()
        for name, parts, lr in spec:
            params = []
            for part in parts:
                for p in [part] if isinstance(part, nn.Parameter) else part.parameters() if part is not None else []:
                    if p.requires_grad and id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
            if params:
                groups.append({"name": name, "params": params, "lr": lr, "weight_decay": cfg.weight_decay})
        assert seen == {id(p) for p in self.parameters() if p.requires_grad}, "a trainable parameter has no group"
        return groups

    # -------------------------------------------------------------------------- inference
    def embed_queries(self, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
        """float32 (n, dim) unit query embeddings, in input order."""
        texts = list(texts)
        lengths = [len(t) for t in texts]
        vecs = embed_in_batches(self, texts, lengths, self.encode_queries, self.dim, batch_size, progress, "queries")
        return self.with_query_term(vecs)

    def embed_items(self, catalog: pd.DataFrame, batch_size: int = 128, progress: bool = True) -> np.ndarray:
        """float32 (n, dim) unit item embeddings, one per catalogue row, in row order."""
        rows = catalog.to_dict("records")
        lengths = [len(str(r.get("title", ""))) + len(str(r.get("content", ""))) for r in rows]
        vecs = embed_in_batches(self, rows, lengths, self.encode_items, self.dim, batch_size, progress, "items")
        return self.with_item_term(vecs, catalog)

    # ------------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """config.json, the towers' configs, both tokenizers and one model.safetensors."""
        pretrained = {
            "item_encoder": self.item_encoder.config,
            "query_encoder": self.query_encoder.config,
            "vision": self.vision.config,
            "item_tokenizer": self.item_tokenizer,
            "query_tokenizer": self.query_tokenizer,
        }
        return self.save_files(
            directory,
            FORMAT,
            FORMAT_VERSION,
            pretrained,
            facilities=self.facilities,
            dim=self.dim,
            item_pooling=self.pooling,
            num_visual_tokens=self.num_visual_tokens,
        )

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> HotelMatch:
        """A saved model, in eval mode; needs nothing but `directory` (no original encoders)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPVisionConfig

        directory = Path(directory)
        meta, cfg = read_meta(directory, FORMAT, FORMAT_VERSION, "HotelMatch")
        parts = Parts(
            item_encoder=drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(directory / "item_encoder"))),
            item_tokenizer=AutoTokenizer.from_pretrained(directory / "item_tokenizer"),
            query_encoder=drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(directory / "query_encoder"))),
            query_tokenizer=AutoTokenizer.from_pretrained(directory / "query_tokenizer"),
            vision=vision_from_config(CLIPVisionConfig.from_pretrained(directory / "vision")),
        )
        return cls(cfg, parts, facilities=meta.get("facilities", [])).load_weights(directory, device)


def build(cfg: ModelConfig, catalog: pd.DataFrame | None = None) -> HotelMatch:
    """A new model: pretrained towers from the recipe, new parts initialised, facility labels
    from `catalog` (the `max_facilities` most frequent)."""
    from transformers import AutoModel, AutoTokenizer

    source = cfg.item_encoder or bundled_minilm()
    item = drop_pooler(from_pretrained(AutoModel, source, "item_encoder", dtype=torch.float32))
    item_tokenizer = from_pretrained(AutoTokenizer, source, "item_encoder")
    if cfg.query_encoder:
        query = drop_pooler(from_pretrained(AutoModel, cfg.query_encoder, "query_encoder", dtype=torch.float32))
        query_tokenizer = from_pretrained(AutoTokenizer, cfg.query_encoder, "query_encoder")
    else:
        query, query_tokenizer = truncated_copy(item, cfg.query_layers), item_tokenizer
    parts = Parts(item, item_tokenizer, query, query_tokenizer, build_vision(cfg))
    return HotelMatch(cfg, parts, facility_vocabulary(catalog, cfg.max_facilities))


def build_loss(cfg: ModelConfig, train: TrainConfig) -> HotelMatchLoss:
    return HotelMatchLoss(cfg, train)


load = HotelMatch.load
