"""The trainer's section of the configuration (`train` of a RunConfig; see `tandem.core.config`):
optimisation, validation, checkpoints and the negatives of the contrastive loss (owner: tandem.training)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import Field, StrictBool

from tandem.core.config_schema import Float, Fraction, Int, MixedPrecision, NonNegative, NonNegFloat, Positive, section


@section("train")
class TrainConfig:
    """The trainer (tandem.training.trainer, on accelerate): optimisation, validation, checkpoints."""

    epochs: Positive = 1
    batch_size: Annotated[Int, Field(ge=2)] = field(
        default=64, metadata={"help": "pairs per device per step: the in-batch negatives"}
    )
    grad_accum: Positive = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})
    lr_query: NonNegFloat = field(default=1e-4, metadata={"help": "HotelMatch query tower (5e-4 in the paper)"})
    lr_item: NonNegFloat = field(default=2e-5, metadata={"help": "item tower / LLM (5e-6 HotelMatch, 3e-6 NoteLLM-2)"})
    lr_new: NonNegFloat = field(
        default=1e-3, metadata={"help": "newly initialised parts: projections, connector, gate"}
    )
    lr_vision: NonNegFloat = field(default=1e-4, metadata={"help": "a trainable vision tower (HotelMatch)"})
    weight_decay: NonNegFloat = 1e-3
    warmup_fraction: Fraction = 0.1
    grad_clip: NonNegFloat = field(default=1.0, metadata={"help": "max gradient norm; 0 = no clipping"})
    init_scale: Annotated[Float, Field(gt=0)] = field(
        default=20.085536923187668, metadata={"help": "initial logit scale (e^3, NoteLLM-2)"}
    )
    mixed_precision: MixedPrecision = field(default="auto", metadata={"help": "'auto' (bf16 on a GPU), 'bf16' or 'no'"})
    max_steps: NonNegative = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no cap)"})
    eval_every: NonNegative = field(
        default=0, metadata={"help": "validate every N steps; 0 = at the end of each epoch"}
    )
    patience: NonNegative = field(
        default=0, metadata={"help": "stop after N validations without improvement; 0 = never"}
    )
    checkpoint_every: NonNegative = field(
        default=0, metadata={"help": "save a resumable checkpoint every N steps; 0 = off"}
    )
    keep_checkpoints: Positive = field(default=2, metadata={"help": "resumable checkpoints kept (older are deleted)"})
    tensorboard: StrictBool = field(default=True, metadata={"help": "write TensorBoard logs under the training folder"})
    seed: NonNegative = 0
    device: str = field(default="", metadata={"help": "'cpu' forces the CPU; empty = what accelerate finds"})
    logq: StrictBool = field(
        default=True,
        metadata={
            "help": "sampling-bias (logQ) correction: subtract log q(item) from every logit, q = the item's "
            "frequency as a candidate in the training pairs (Yi et al., RecSys 2019)"
        },
    )
    uniform_negatives: NonNegative = field(
        default=0,
        metadata={
            "help": "mixed negatives: this many catalogue items drawn uniformly per batch join the in-batch ones"
        },
    )
    hard_negatives: NonNegative = field(
        default=0,
        metadata={
            "help": "hard negatives: this many items per batch from the live champion's results for the batch's "
            "queries, mined from its index before training (none while nothing is live)"
        },
    )
    hard_negative_depth: Positive = field(
        default=20,
        metadata={
            "help": "how many of the champion's results per query are kept as hard negatives (the query's own "
            "item and its training positives are skipped)"
        },
    )
