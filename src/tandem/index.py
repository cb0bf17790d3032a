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

    def __enter__(self) -> "ItemIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, name: str, item_ids: list[str], vectors: np.ndarray, titles: list[str] | None = None,
              batch: int = 2000) -> int:
        """(Re)create collection `name` with one row per item; returns the row count."""
        from pymilvus import DataType, MilvusClient

        if len(item_ids) != len(vectors):
            raise ValueError(f"{len(item_ids)} item ids but {len(vectors)} vectors")
        if self.client.has_collection(name):  # re-indexing the same run replaces it
            self.client.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        params = self.client.prepare_index_params()
        extra = {"M": 16, "efConstruction": 200} if self.cfg.index_type == "HNSW" else {}
        params.add_index(field_name="vector", index_type=self.cfg.index_type, metric_type=self.cfg.metric, params=extra)
        self.client.create_collection(name, schema=schema, index_params=params)
        titles = titles or [""] * len(item_ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        for start in range(0, len(item_ids), batch):
            rows = [
                {"item_id": i, "title": t[:1000], "vector": v}
                for i, t, v in zip(item_ids[start:start + batch], titles[start:start + batch], vectors[start:start + batch])
            ]
            self.client.insert(name, rows)
        self.client.flush(name)
        return self.count(name)

    def count(self, name: str) -> int:
        self.client.load_collection(name)
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
        """Top-k (item_id, similarity) per query vector, through the index."""
        self.client.load_collection(name)
        params = {"params": {"ef": max(k, 64)}} if self.cfg.index_type == "HNSW" else {}
        hits = self.client.search(name, data=np.asarray(vectors, dtype=np.float32).tolist(), limit=k,
                                  search_params=params, output_fields=["item_id"])
        return [[(h["item_id"], float(h["distance"])) for h in row] for row in hits]
