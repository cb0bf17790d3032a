"""The release side of the configuration: the Milvus index, the promotion gate, the A/B rollout and the
search service, and retention (sections `index`, `gate`, `rollout`, `serve`, `retention` of a RunConfig;
see `tandem.core.config`)."""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictBool

from tandem.core.config_schema import (
    INDEX_TYPES,
    Float,
    Fraction,
    Guards,
    IndexType,
    Int,
    Metric,
    Names,
    NonNegative,
    NonNegFloat,
    OpenFraction,
    Positive,
    QueryEncoder,
    as_tuple,
    section,
)


@section("index")
class IndexConfig:
    """Milvus: one collection per run, aliases for the champion and the challenger (owner: tandem.release.index)."""

    milvus_uri: str = field(default="", metadata={"help": "Milvus server URI; empty = Milvus Lite file in the workdir"})
    token: str = field(default="", metadata={"help": "Milvus token ('user:password' or an API key); never reported"})
    alias: str = field(default="live", metadata={"help": "alias that serves the champion's collection"})
    challenger_alias: str = field(
        default="challenger", metadata={"help": "alias of the collection under A/B test during a rollout"}
    )
    index_type: IndexType = field(
        default="HNSW", metadata={"help": f"vector index: one of {', '.join(INDEX_TYPES)} (Lite reloads the first 6)"}
    )
    metric: Metric = field(default="COSINE", metadata={"help": "similarity: COSINE, IP or L2"})
    hnsw_m: Positive = field(
        default=16, metadata={"help": "HNSW / HNSW_SQ graph degree M (more: better recall, more RAM)"}
    )
    hnsw_ef_construction: Positive = field(default=200, metadata={"help": "HNSW / HNSW_SQ build-time candidate list"})
    search_ef: Positive = field(
        default=64, metadata={"help": "HNSW / HNSW_SQ search-time candidate list (at least k is used); recall vs speed"}
    )
    ivf_nlist: Positive = field(default=1024, metadata={"help": "IVF_* cluster count"})
    ivf_nprobe: Positive = field(default=32, metadata={"help": "IVF_* clusters scanned per query"})
    scalar_fields: Names = field(
        default=("title", "category", "city", "country"),
        metadata={"help": "string fields stored beside each vector, for filters and search results"},
    )
    keep_collections: Positive = field(
        default=5, metadata={"help": "run collections kept by retention (plus aliased ones and the rollback target)"}
    )

    def __post_init__(self) -> None:
        if not self.alias or not self.challenger_alias or self.alias == self.challenger_alias:
            raise ValueError("index.alias and index.challenger_alias must be two different non-empty names")
        bad = [f for f in self.scalar_fields if not f.isidentifier() or f in ("item_id", "vector")]
        if bad or len(set(self.scalar_fields)) != len(self.scalar_fields):
            raise ValueError(
                f"index.scalar_fields: {list(self.scalar_fields)} must be distinct identifiers other than "
                "item_id and vector"
            )


@section("gate")
class GateConfig:
    """Promotion gate (tandem.evaluation.gate): margin + paired-bootstrap significance on the primary metric,
    plus guards.

    YAML sets guards as a mapping, e.g. `guards: {"short_query/recall@{k}": 0.02, "mrr@10": 0.01}`.
    """

    min_improvement: Float = field(
        default=0.0, metadata={"help": "challenger must beat the champion's primary metric by more than this"}
    )
    alpha: Annotated[Float, Field(gt=0, lt=0.5)] = field(
        default=0.05, metadata={"help": "one-sided significance level of the paired bootstrap (promote if p < alpha)"}
    )
    n_boot: Annotated[Int, Field(ge=100)] = field(
        default=2000, metadata={"help": "paired bootstrap rounds (the p-value's resolution: 1/n)"}
    )
    seed: NonNegative = field(default=0, metadata={"help": "bootstrap random seed: same inputs, same decision"})
    guards: Guards = field(
        default=(("short_query/recall@{k}", 0.02),),
        metadata={
            "help": "(metric, allowed absolute drop) pairs that must not regress; {k} = the primary metric's K; "
            "a guard whose subset has no pairs is 'not evaluated'"
        },
    )
    max_latency_ratio: NonNegFloat = field(
        default=1.5, metadata={"help": "largest challenger / champion median query latency; 0 = no latency guard"}
    )
    beat_baselines: StrictBool = field(
        default=True,
        metadata={"help": "refuse a challenger (a first run too) whose primary metric loses to the strongest baseline"},
    )
    baseline_tolerance: NonNegFloat = field(
        default=0.01,
        metadata={"help": "beat_baselines: largest allowed shortfall of the primary metric below the best baseline"},
    )

    def __post_init__(self) -> None:
        metrics = [metric for metric, _ in self.guards]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"gate.guards: {metrics} names a metric twice; give each guard once")


@section("rollout")
class RolloutConfig:
    """Staged A/B rollout of a promoted challenger (owner: tandem.release.rollout).

    Stop rule (tandem.release.sequential), judged on the served events of every stage so far: 'stop' (advance
    refused, abort advised) when the always-valid p-value of the one-sided mixture SPRT 'the challenger's CTR is below
    the champion's' reaches alpha (valid however often the guard and `advance` look; stages with min_impressions in
    both arms are its strata); 'hold' (advance refused unless forced) while an arm of the current stage lacks
    min_impressions or its relative CTR drop exceeds max_ctr_drop without being significant yet; else 'ok'.
    """

    enabled: StrictBool = field(
        default=True,
        metadata={"help": "a gate 'promote' over a champion starts a staged A/B rollout; False = switch live at once"},
    )
    stages: Annotated[tuple[Float, ...], BeforeValidator(as_tuple)] = field(
        default=(5.0, 25.0, 50.0, 100.0),
        metadata={"help": "challenger traffic shares in percent, increasing, in (0, 100], ending at 100"},
    )
    salt: str = field(
        default="", metadata={"help": "bucketing salt (hash of salt and user id); empty = the experiment id"}
    )
    min_impressions: Positive = field(
        default=500, metadata={"help": "impressions each arm needs in a stage before the stop rule may judge it"}
    )
    alpha: OpenFraction = field(
        default=0.05,
        metadata={"help": "false-stop rate of the stop rule at equal CTRs, under any number of looks (always valid)"},
    )
    tau: Annotated[Float, Field(gt=0, lt=1)] = field(
        default=0.01,
        metadata={
            "help": "mixing scale of the stop rule's mSPRT, an absolute CTR difference, about the drop to catch "
            "soonest (smaller: more power for small drops, far less for large ones on little traffic)"
        },
    )
    max_ctr_drop: Fraction = field(
        default=0.1,
        metadata={"help": "relative CTR drop (challenger vs champion) above which a stage holds for more evidence"},
    )

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if not stages or any(not 0 < s <= 100 for s in stages):
            raise ValueError(f"rollout.stages: {stages} must be percents in (0, 100], e.g. (5, 25, 50, 100)")
        if any(b <= a for a, b in zip(stages, stages[1:])) or stages[-1] != 100:
            raise ValueError(f"rollout.stages: {stages} must increase strictly and end at 100, e.g. (5, 25, 50, 100)")


@section("serve")
class ServeConfig:
    """The search service `tandem serve` (tandem.serve): limits on client input, the event log,
    micro-batching and the query encoder."""

    host: str = field(default="127.0.0.1", metadata={"help": "address uvicorn binds; 0.0.0.0 to serve other hosts"})
    port: Annotated[Int, Field(ge=0, le=65535)] = field(default=8000, metadata={"help": "TCP port uvicorn listens on"})
    default_k: Positive = field(default=10, metadata={"help": "items returned when a request gives no k"})
    max_k: Positive = field(default=100, metadata={"help": "largest k a client may ask for (more is a 422)"})
    max_query_chars: Positive = field(default=512, metadata={"help": "longest /search query text (longer is a 422)"})
    max_id_chars: Positive = field(default=256, metadata={"help": "longest user, item, request id or filter value"})
    max_body_bytes: Positive = field(default=4096, metadata={"help": "largest request body (larger is a 413)"})
    flush_rows: Positive = field(default=1000, metadata={"help": "write the buffered events once this many are held"})
    flush_seconds: Annotated[Float, Field(gt=0)] = field(
        default=10.0, metadata={"help": "...and at least every this many seconds"}
    )
    spool_fsync_seconds: Annotated[Float, Field(gt=0, le=1)] = field(
        default=0.5,
        metadata={
            "help": "served events are appended to a spool before the response and fsynced this often: a machine "
            "crash loses at most this long of events, a killed process none (at most 1)"
        },
    )
    recent_requests: Positive = field(
        default=100_000, metadata={"help": "served requests remembered (LRU) so that clicks can be checked"}
    )
    click_ttl_seconds: Annotated[Float, Field(gt=0)] = field(
        default=3600.0, metadata={"help": "...for this long: a later click on a request is refused (404)"}
    )
    click_memory_mb: Positive = field(
        default=64, metadata={"help": "...in at most this many MiB (items kept as 8-byte hashes; oldest dropped)"}
    )
    max_expand: Positive = field(
        default=2, metadata={"help": "expand=true searches run at once; one more gets HTTP 429 (Retry-After: 1)"}
    )
    debug: StrictBool = field(
        default=False,
        metadata={"help": "responses name their arm and collection (clicks their arm): for tests, never in production"},
    )
    refresh_seconds: NonNegFloat = field(
        default=5.0, metadata={"help": "how often the live alias is re-read (the rollout state: on every change)"}
    )
    batch_window_ms: NonNegFloat = field(
        default=5.0,
        metadata={
            "help": "micro-batching: concurrent requests for one arm and filter wait at most this long to share one "
            "query-tower and one Milvus call (Milvus Lite pays a full scan per call); 0 = off"
        },
    )
    max_batch: Positive = field(default=64, metadata={"help": "...or until this many requests wait"})
    query_encoder: QueryEncoder = field(
        default="torch",
        metadata={
            "help": "what embeds /search queries: 'torch' (the model, as the gate measured it), 'onnx-int8' or "
            "'onnx-fp32' (the query tower's ONNX export, made on start-up when missing or stale; HotelMatch only)"
        },
    )

    def __post_init__(self) -> None:
        if self.default_k > self.max_k:
            raise ValueError(f"serve.default_k ({self.default_k}) must not exceed serve.max_k ({self.max_k})")


@section("retention")
class RetentionConfig:
    """What old state is removed (owner: tandem.release.retention, tandem.data.compaction; `tandem retain`)."""

    keep_runs: Positive = field(
        default=3,
        metadata={
            "help": "runs (newest trained first) that keep their checkpoints (training/checkpoints*, training/best); "
            "older runs lose them; model folders are never removed, nor anything of a live, challenger or rollback run"
        },
    )
    compact_after_hours: NonNegFloat = field(
        default=2.0, metadata={"help": "served-event parts older than this are compacted into one file per bucket"}
    )
    compact_by: Literal["hour", "day"] = field(
        default="hour", metadata={"help": "compaction bucket of the served-event parts: 'hour' or 'day'"}
    )
