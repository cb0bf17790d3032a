"""Item vectors in Milvus: one collection per run, a `live` alias on the champion.

Milvus Lite (a file in the workdir) by default; a server by `IndexConfig.milvus_uri`.
Promotion is one alias switch, so searches never see a half-built index.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from tandem.config import IndexConfig

log = logging.getLogger(__name__)
PREFIX = "tandem_"


def collection_name(run_id: str) -> str:
    return PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", run_id)


class ItemIndex:
    """Thin, typed wrapper over a MilvusClient; import of pymilvus is deferred (slow)."""

    def __init__(self, cfg: IndexConfig = IndexConfig(), workdir: str | Path = "."):
        from pymilvus import MilvusClient

        self.cfg = cfg
        if cfg.milvus_uri:
            uri = cfg.milvus_uri
        else:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            uri = str(Path(workdir).resolve() / "milvus.db")
        self.uri = uri
        self.client = MilvusClient(uri=uri, token=cfg.token) if cfg.token else MilvusClient(uri=uri)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ItemIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(
        self, name: str, item_ids: list[str], vectors: np.ndarray, titles: list[str] | None = None, batch: int = 2000
    ) -> int:
        """Create collection `name` (or reuse it: re-indexing a run is idempotent, even while it is
        live) and upsert one row per item; rows of items no longer given are deleted."""
        if len(item_ids) != len(vectors):
            raise ValueError(f"{len(item_ids)} item ids but {len(vectors)} vectors")
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.client.has_collection(name):
            self._check_dim(name, vectors.shape[1])
        else:
            self._create(name, vectors.shape[1])
        titles = titles or [""] * len(item_ids)
        for start in range(0, len(item_ids), batch):
            end = start + batch
            rows = [
                {"item_id": i, "title": t[:1000], "vector": v}
                for i, t, v in zip(item_ids[start:end], titles[start:end], vectors[start:end])
            ]
            self.client.upsert(name, rows)
        self.client.flush(name)
        if self.count(name) > len(set(item_ids)):
            keep = set(item_ids)
            stale = [r["item_id"] for r in self._all_ids(name) if r["item_id"] not in keep]
            for start in range(0, len(stale), batch):
                self.client.delete(name, ids=stale[start : start + batch])
            self.client.flush(name)
        return self.count(name)

    def _create(self, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        params = self.client.prepare_index_params()
        extra = {"M": 16, "efConstruction": 200} if self.cfg.index_type == "HNSW" else {}
        params.add_index(field_name="vector", index_type=self.cfg.index_type, metric_type=self.cfg.metric, params=extra)
        self.client.create_collection(name, schema=schema, index_params=params)

    def _check_dim(self, name: str, dim: int) -> None:
        fields = self.client.describe_collection(name)["fields"]
        have = next(f["params"]["dim"] for f in fields if f["name"] == "vector")
        if int(have) != int(dim):
            raise ValueError(f"collection {name} holds {have}-d vectors, got {dim}-d; index a new run instead")

    def _all_ids(self, name: str) -> list[dict]:
        self._load(name)
        iterator = self.client.query_iterator(name, filter="", output_fields=["item_id"], batch_size=5000)
        rows: list[dict] = []
        while batch := iterator.next():
            rows += batch
        iterator.close()
        return rows

    def _load(self, name: str) -> str:
        """Load a collection (given by name or alias; Lite cannot load through an alias)."""
        if name in self.client.list_aliases().get("aliases", []):
            name = self.client.describe_alias(name)["collection_name"]
        self.client.load_collection(name)
        return name

    def count(self, name: str) -> int:
        name = self._load(name)
        return int(self.client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def live(self) -> str | None:
        """The collection the alias points at, or None before the first promotion."""
        if self.cfg.alias not in self.client.list_aliases().get("aliases", []):
            return None
        return self.client.describe_alias(self.cfg.alias)["collection_name"]

    def promote(self, name: str) -> str | None:
        """Point the alias at `name` atomically; returns the previous live collection."""
        previous = self.live()
        if previous is None:
            self.client.create_alias(name, self.cfg.alias)
        else:
            self.client.alter_alias(name, self.cfg.alias)
        log.info("alias %s: %s -> %s", self.cfg.alias, previous, name)
        return previous

    def search(self, name: str, vectors: np.ndarray, k: int = 10) -> list[list[tuple[str, float]]]:
        """Top-k (item_id, similarity) per query vector, through the index (name or alias)."""
        name = self._load(name)
        params = {"params": {"ef": max(k, 64)}} if self.cfg.index_type == "HNSW" else {}
        hits = self.client.search(
            name,
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            limit=k,
            search_params=params,
            output_fields=["item_id"],
        )
        return [[(h["item_id"], float(h["distance"])) for h in row] for row in hits]
