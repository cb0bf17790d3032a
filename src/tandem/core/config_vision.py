"""The vision stage's section of the configuration (`vision` of a RunConfig; see `tandem.core.config`): aligning a
fresh vision tower on the catalogue's own photos before training (owner: tandem.pipeline.align)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field

from tandem.core.config_schema import Float, Int, NonNegative, Positive, section


@section("vision")
class VisionConfig:
    """The align stage (tandem.pipeline.align): a CLIP-style vision tower trained on the catalogue's (photo, text)
    pairs, which train then starts from, when the recipe names no pretrained vision weights."""

    align: Literal["auto", "off"] = field(
        default="auto",
        metadata={
            "help": "'auto': when items have images and model.vision_encoder is empty, align a fresh tower on the "
            "catalogue's photo/text pairs (search query/click pairs for items without text) before training; "
            "'off': never (NoteLLM-2, whose tower is frozen, then refuses to run on images)"
        },
    )
    epochs: Positive = field(default=8, metadata={"help": "passes over the (photo, text) pairs"})
    batch_size: Annotated[Int, Field(ge=2)] = field(default=64, metadata={"help": "pairs per step: in-batch negatives"})
    lr: Annotated[Float, Field(gt=0)] = field(default=5e-4, metadata={"help": "peak learning rate (one-cycle)"})
    max_pairs: Positive = field(
        default=2000,
        metadata={"help": "(photo, text) pairs used at most, a seeded sample: bounds time and memory (pixels in RAM)"},
    )
    min_pairs: Annotated[Int, Field(ge=2)] = field(
        default=16, metadata={"help": "fewer pairs than this: no alignment (the summary says why)"}
    )
    queries_per_item: Positive = field(
        default=3, metadata={"help": "search queries (highest score first) paired with the photo of an item"}
    )
    queries: Literal["all", "textless"] = field(
        default="all",
        metadata={
            "help": "whose photos are also paired with the search queries that led to a click on them: 'all' items "
            "(users type what they saw, e.g. a colour the item's own text leaves out) or only 'textless' ones"
        },
    )
    text_encoder: str = field(
        default="",
        metadata={
            "help": "frozen text encoder whose space the photos are aligned to (HF id / path); empty = the recipe's "
            "text model (model.item_encoder for HotelMatch, model.llm for NoteLLM-2; empty: all-MiniLM-L6-v2)"
        },
    )
    keep: Positive = field(default=3, metadata={"help": "aligned towers kept in WORKDIR/vision/ (newest first)"})
    seed: NonNegative = 0
