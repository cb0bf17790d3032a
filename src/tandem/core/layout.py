"""The work folder's layout: where each part of the loop keeps its state under WORKDIR.

    WORKDIR/
      runs/<run_id>/          one run's data, pairs, model, vectors, summaries and report
      milvus.db               Milvus Lite, shared by runs so that the `live` alias can move between them
      collections/<name>/     what each collection was built from (model, vectors, catalogue), frozen
      milvus-server/          a local Milvus server's data, logs and pid file (`tandem milvus up`)
      feast/                  the Feast feature store (registry, online store, offline files)
      vision/<digest>/        vision towers the align stage trained, one per catalogue content (a cache)
      serving/events/         what the search service served and what was clicked (Parquet parts)
      rollout/state.json      the A/B rollout's state, read by the service on every request
      audit/live.json         the latest audit of the live collection
      kfp/                    kfp.local's pipeline root
      hf-cache/               the Hugging Face cache of the Kubeflow promptgen tasks

Every module asks this one for a path, so the layout is spelled out once.
"""

from __future__ import annotations

from pathlib import Path


def runs_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "runs"


def run_dir(workdir: str | Path, run_id: str) -> Path:
    return runs_dir(workdir) / run_id


def milvus_db(workdir: str | Path) -> Path:
    """The Milvus Lite file (absolute: pymilvus takes it as a URI)."""
    return Path(workdir).resolve() / "milvus.db"


def collections_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "collections"


def collection_dir(workdir: str | Path, collection: str) -> Path:
    """The frozen model, vectors and catalogue that collection `collection` was written from
    (`tandem.release.attempts`): a rerun of its run cannot change them while it serves."""
    return collections_dir(workdir) / collection


def milvus_server_dir(workdir: str | Path) -> Path:
    """Where `tandem milvus up` keeps the local Milvus server's data, logs and server.json (pid, port)."""
    return Path(workdir).resolve() / "milvus-server"


def feast_dir(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / "feast"


def vision_dir(workdir: str | Path) -> Path:
    """The align stage's cache: one aligned vision tower per digest of the catalogue's photos, texts and settings."""
    return Path(workdir) / "vision"


def events_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "serving" / "events"


def rollout_state(workdir: str | Path) -> Path:
    return Path(workdir) / "rollout" / "state.json"


def audit_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "audit"


def kfp_root(workdir: str | Path) -> Path:
    return Path(workdir) / "kfp"


def hf_cache(workdir: str | Path) -> Path:
    return Path(workdir) / "hf-cache"
