"""HotelMatch's item inputs: catalogue rows to the item tower's batch (text with its geography spans,
images, facility labels), and the facility vocabulary of a catalogue."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from tandem.core.config import ModelConfig
from tandem.models.base import as_list
from tandem.models.images import load_images
from tandem.models.text import item_text_with_geography


def facility_vocabulary(catalog: pd.DataFrame | None, max_facilities: int) -> list[str]:
    """The `max_facilities` facility labels found on most items (ties by name), most frequent first."""
    if catalog is None or "facilities" not in catalog.columns or max_facilities <= 0:
        return []
    counts = Counter(label for cell in catalog["facilities"] for label in set(_labels(cell)))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [label for label, _ in ranked[:max_facilities]]


def _labels(cell: object) -> list[str]:
    return [s for s in (str(v).strip() for v in as_list(_scalar(cell))) if s]


def _scalar(value: object) -> object:
    """None for missing catalogue cells (None, NaN, pd.NA, NaT); other values unchanged."""
    if value is None or isinstance(value, (list, tuple, np.ndarray)):
        return value
    try:
        return None if pd.isna(value) else value
    except (TypeError, ValueError):
        return value


def item_batch(
    rows: Sequence[Mapping], tokenizer, cfg: ModelConfig, mlm: bool, facility_index: Mapping[str, int] | None
) -> dict[str, torch.Tensor]:
    """Tokens, images, geography token mask (`mlm`: for the masked-LM task) and, with `facility_index`
    (label -> column), facility labels of catalogue rows."""
    texts, spans = [], []
    for r in rows:
        text, span = item_text_with_geography(
            _scalar(r.get("title")),
            as_list(_scalar(r.get("topics"))),
            _scalar(r.get("content")),
            _scalar(r.get("city")),
            _scalar(r.get("country")),
        )
        texts.append(text)
        spans.append(span)
    want_spans = mlm and any(spans)
    if want_spans and not tokenizer.is_fast:
        raise ValueError("the city/country masked-LM task needs a fast tokenizer (offsets); set model.mlm_weight: 0")
    tokens = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=cfg.max_item_tokens,
        return_tensors="pt",
        return_offsets_mapping=want_spans,
    )
    geo_mask = torch.zeros_like(tokens["input_ids"], dtype=torch.bool)
    if want_spans:
        starts, ends = tokens["offset_mapping"].unbind(-1)
        for i, item_spans in enumerate(spans):
            for lo, hi in item_spans:  # tokens overlapping the span; special tokens have empty offsets
                geo_mask[i] |= (starts[i] < hi) & (ends[i] > lo) & (ends[i] > starts[i])
        geo_mask &= tokens["attention_mask"].bool()
    size = cfg.image_size
    images = [load_images(as_list(_scalar(r.get("images"))), size, cfg.max_images) for r in rows]
    counts = torch.tensor([len(x) for x in images], dtype=torch.long)
    pixels = torch.cat(images) if counts.sum() else torch.zeros((0, 3, size, size))
    batch = {
        "item_input_ids": tokens["input_ids"],
        "item_attention_mask": tokens["attention_mask"],
        "pixels": pixels,
        "image_counts": counts,
        "geo_mask": geo_mask,
    }
    if facility_index is not None:
        labels = torch.zeros((len(rows), len(facility_index)), dtype=torch.float32)
        known = torch.zeros(len(rows), dtype=torch.bool)
        for i, r in enumerate(rows):
            names = _labels(r.get("facilities"))
            known[i] = bool(names)  # an empty cell means "not listed", not "has none"
            for name in names:
                if name in facility_index:
                    labels[i, facility_index[name]] = 1.0
        batch |= {"facility_labels": labels, "has_facilities": known}
    return batch
