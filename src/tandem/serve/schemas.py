"""The search service's request and response bodies (pydantic; they are its OpenAPI schema at /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Hit(BaseModel):
    model_config = ConfigDict(extra="allow")  # plus the index's scalar fields (category, city, ...); rrf with expand

    item_id: str
    score: float = Field(description="cosine similarity to the query")
    title: str = ""


class Results(BaseModel):
    request_id: str = Field(description="send it back with POST /click (signed: NONCE.MAC)")
    user_id: str = Field(description="the user served; anonymous users get a request-scoped id")
    items: list[Hit] = Field(
        description="best first; with expand, ordered by the fused score `rrf`, and `score` is the item's best "
        "cosine similarity to any of the queries"
    )
    expansion: list[str] | None = Field(
        default=None, description="with expand: every query searched and fused, q first, then the generated prompts"
    )


class DebugResults(Results):
    """Results with the arm that answered (serve.debug: true only; clients must not learn their arm)."""

    arm: str = Field(description="'champion' or 'challenger'")
    collection: str


class Click(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, description="the request_id of the results the item was shown in")
    item_id: str = Field(min_length=1)
    user_id: str | None = Field(default=None, min_length=1, description="default: the user of that request")


class Clicked(BaseModel):
    request_id: str
    user_id: str
    item_id: str
    position: int
    counted: bool = Field(description="false for a repeated click on the same item of the same request (not logged)")


class DebugClicked(Clicked):
    arm: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool] = Field(
        description="model: the champion's model is loaded; index: Milvus answers; "
        "events: the event writer runs and its last write succeeded"
    )


class Health(BaseModel):
    status: str
    live: str = Field(description="the champion's collection (the live alias)")
    challenger: str | None = Field(description="the rollout's challenger collection while a rollout runs")
    experiment: str
    share: float = Field(description="percent of users routed to the challenger")
    items: int = Field(description="items in the live collection")
    family: str = Field(description="model family of the champion")
    events_buffered: int = Field(description="served events not yet in a Parquet part (they are in the spool)")
    events_written: int
    events_recovered: int = Field(description="events of a crashed service's spool written at start-up")
    events_flusher_alive: bool
    events_failures: int = Field(description="consecutive failed part writes (retried with backoff)")
    events_last_error: str | None
    events_last_error_at: str | None
    events_last_flush_at: str | None
