"""The search service (`tandem serve`): FastAPI over the live Milvus collection, A/B routing by
`tandem.release.rollout`, and the served impressions and clicks logged as the next run's behaviour log.

`read_events` stays light (pandas only); `create_app` imports FastAPI, pymilvus and the models
on first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tandem.core.config import RunConfig
from tandem.data.events import EVENT_COLUMNS, events_dir, read_events

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["EVENT_COLUMNS", "create_app", "events_dir", "read_events"]


def create_app(
    workdir: str | Path, cfg: RunConfig = RunConfig(), promptgen: str | Path | None = None, expand_k: int = 4
) -> FastAPI:
    """The FastAPI app serving WORKDIR's live collection (see `tandem.serve.app`); with `promptgen`
    (a `tandem promptgen train` folder), /search?expand=true expands queries into `expand_k` prompts."""
    from tandem.serve.app import create_app as build

    return build(workdir, cfg, promptgen=promptgen, expand_k=expand_k)
