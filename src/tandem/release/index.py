"""Item vectors in Milvus: one collection per indexing attempt of a run, aliases for the champion (`live`)
and the challenger. Milvus Lite (a file in the workdir) by default; a server by `IndexConfig.milvus_uri`.

Promotion is one alias switch, so searches never see a half-built index; an alias moves only to a
complete collection (`tandem.release.completeness`), and one an alias points at is never written again
(`tandem.release.attempts`). Each promotion and rollback is also recorded in a small collection (`META`)
beside the runs' collections, so every client of the same Milvus sees the same history and can roll back.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tandem.core import layout
from tandem.core.config_release import IndexConfig
from tandem.release import completeness
from tandem.release.scalars import MAX_BYTES, clip, quote

log = logging.getLogger(__name__)
PREFIX = "tandem_"
META = "tandemmeta"  # no PREFIX: never mistaken for a run's collection
CREATED = "tandem.created_ns"  # collection property: creation order for retention
NOT_LOADED = 101  # Milvus error code: collection released (e.g. after a restart)


def collection_name(run_id: str) -> str:
    return PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", run_id)


def built_by(collection: str, run_id: str) -> bool:
    """Whether `collection` is an attempt of run `run_id`: its name, or its name + "__" + a content digest."""
    base = collection_name(run_id)
    return collection == base or (collection.startswith(base + "__") and collection[len(base) + 2 :].isalnum())


def model_dir_of(workdir: str | Path, collection: str) -> Path:
    """The model that `collection` was written with (the evaluator's champion, the service's arms): frozen in
    WORKDIR/collections/<collection>/model, else (collections from before that) WORKDIR/runs/<run>/model."""
    frozen = layout.collection_dir(workdir, collection) / "model"
    if (frozen / "config.json").is_file():
        return frozen
    runs = layout.runs_dir(workdir)
    for run_dir in sorted(runs.glob("*")):
        if built_by(collection, run_dir.name) and (run_dir / "model" / "config.json").is_file():
            return run_dir / "model"
    raise ValueError(
        f"collection {collection} has no run with a saved model under {runs}; use the workdir that trained it, "
        "or point the alias at a collection of this workdir"
    )


def _entity(hit) -> dict:
    return hit.get("entity") or {}


def hit_id(hit) -> str:
    """A search hit's item id. Milvus Lite keys the primary key by its field name (`item_id`), the
    Milvus 2.3 server by `id`; both return it in the entity when it is an output field."""
    for source in (_entity(hit), hit):
        if source.get("item_id") is not None:
            return str(source["item_id"])
    return str(hit["id"])


class ItemIndex:
    """Typed wrapper over a MilvusClient; import of pymilvus is deferred (slow)."""

    def __init__(self, cfg: IndexConfig = IndexConfig(), workdir: str | Path = "."):
        from pymilvus import MilvusClient

        self.cfg, self.workdir = cfg, Path(workdir)
        if cfg.milvus_uri:
            uri = cfg.milvus_uri
        else:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            uri = str(layout.milvus_db(workdir))
        self.uri = uri
        options: dict = {"token": cfg.token} if cfg.token else {}
        if uri.endswith(".db"):  # Milvus Lite, in this process: keepalive pings only earn a GOAWAY
            options["grpc_options"] = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}
        self.client = MilvusClient(uri=uri, **options)
        self._loaded: set[str] = set()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ItemIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------- writing
    def write(
        self,
        name: str,
        item_ids: list[str],
        vectors: np.ndarray,
        scalars: dict[str, list] | None = None,
        batch: int = 2000,
        model: str = "",
        digest: str = "",
    ) -> int:
        """Write collection `name` afresh (an earlier one of that name, which no alias may point at, is dropped):
        one row per item, the vector index, then the completeness marker last (`model`: the model folder
        relative to the workdir, `digest`: what was written). `scalars` holds a list per field of
        `IndexConfig.scalar_fields` (missing fields and values: "")."""
        scalars = scalars or {}
        if len(item_ids) != len(vectors):
            raise ValueError(f"{len(item_ids)} item ids but {len(vectors)} vectors")
        unknown = sorted(set(scalars) - set(self.cfg.scalar_fields))
        if unknown:
            raise ValueError(f"scalar field(s) {unknown} are not in index.scalar_fields {list(self.cfg.scalar_fields)}")
        for field, values in scalars.items():
            if len(values) != len(item_ids):
                raise ValueError(f"scalar field {field!r} has {len(values)} values for {len(item_ids)} items")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or not vectors.shape[1]:
            raise ValueError(f"vectors must be a 2-d array (items x dim), got shape {vectors.shape}")
        too_long = next((i for i in item_ids if len(str(i).encode()) > 512), None)
        if too_long is not None:
            raise ValueError(f"item id {str(too_long)[:40]!r}... is longer than 512 bytes; shorten the catalogue's ids")
        if self.client.has_collection(name):
            served = self.client.list_aliases(collection_name=name).get("aliases", [])
            if served:
                raise ValueError(
                    f"collection {name} is served (alias {', '.join(served)}) and is never written in place; "
                    "write a new collection (the index stage names a new attempt)"
                )
            self.client.drop_collection(name)  # an unserved earlier or unfinished write of that name
            self._loaded.discard(name)
        self._create(name, vectors.shape[1])
        columns = {f: [clip(v) for v in scalars.get(f, [""] * len(item_ids))] for f in self.cfg.scalar_fields}
        for start in range(0, len(item_ids), batch):
            end = start + batch
            rows = [
                {"item_id": str(i), "vector": v, **{f: columns[f][n] for f in columns}}
                for n, (i, v) in enumerate(zip(item_ids[start:end], vectors[start:end]), start)
            ]
            self.client.upsert(name, rows)
        self.client.flush(name)
        self._build_index(name)
        count, expected = completeness.strong_count(self, name), len({str(i) for i in item_ids})
        if count != expected:
            raise RuntimeError(f"collection {name} holds {count} rows after its write of {expected} items")
        completeness.mark_complete(self, name, count, model, digest)  # last: the collection may now serve
        return count

    def _index_params(self) -> dict:
        if self.cfg.index_type in ("HNSW", "HNSW_SQ"):
            return {"M": self.cfg.hnsw_m, "efConstruction": self.cfg.hnsw_ef_construction}
        if self.cfg.index_type.startswith("IVF"):
            return {"nlist": self.cfg.ivf_nlist}
        return {}

    def _search_params(self, k: int) -> dict:
        if self.cfg.index_type in ("HNSW", "HNSW_SQ"):
            return {"params": {"ef": max(k, self.cfg.search_ef)}}
        if self.cfg.index_type.startswith("IVF"):
            return {"params": {"nprobe": self.cfg.ivf_nprobe}}
        return {}

    def _create(self, name: str, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=512)
        for field in self.cfg.scalar_fields:
            schema.add_field(field, DataType.VARCHAR, max_length=MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        self.client.create_collection(name, schema=schema)  # indexed after the first upsert: `_build_index`
        self.client.alter_collection_properties(name, properties={CREATED: str(time.time_ns())})

    def _build_index(self, name: str) -> None:
        """Index the rows written so far and load the collection. Building once, after the rows are in,
        is faster than indexing as rows arrive, and Milvus Lite would search brute force until a
        background thread caught up; here its index is built before `write` returns."""
        params = self.client.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type=self.cfg.index_type,
            metric_type=self.cfg.metric,
            params=self._index_params(),
        )
        self.client.create_index(name, params)
        self._load(name, force=True)

    def _load(self, name: str, force: bool = False) -> str:
        """Load a collection (by name or alias) once per client: reopened collections start released."""
        if force or name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)
        return name

    def _loaded_call(self, name: str, call):
        """call() on a loaded collection; reloads once if the server released it meanwhile."""
        from pymilvus.exceptions import MilvusException

        self._load(name)
        try:
            return call()
        except MilvusException as e:
            if e.code != NOT_LOADED:
                raise
            self._load(name, force=True)
            return call()

    def count(self, name: str) -> int:
        rows = self._loaded_call(name, lambda: self.client.query(name, filter="", output_fields=["count(*)"]))
        return int(rows[0]["count(*)"])

    # ------------------------------------------------------------------------- reading
    def search_rows(self, name: str, vectors: np.ndarray, k: int = 10, filter: str = "") -> list[list[dict]]:
        """Top-k per query vector through the index (name or alias), optionally filtered
        (see `filter_expression`): dicts {"item_id", "score", + the scalar fields}."""
        fields = list(self.cfg.scalar_fields)
        hits = self._loaded_call(
            name,
            lambda: self.client.search(
                name,
                data=np.asarray(vectors, dtype=np.float32).tolist(),
                limit=k,
                filter=filter,
                search_params=self._search_params(k),
                output_fields=["item_id", *fields],  # the id in the entity too: servers differ in the hit's key
            ),
        )
        return [
            [
                {"item_id": hit_id(h), "score": float(h["distance"])} | {f: _entity(h).get(f, "") for f in fields}
                for h in row
            ]
            for row in hits
        ]

    def search(self, name: str, vectors: np.ndarray, k: int = 10, filter: str = "") -> list[list[tuple[str, float]]]:
        """Top-k (item_id, similarity) per query vector, through the index (name or alias)."""
        return [[(r["item_id"], r["score"]) for r in row] for row in self.search_rows(name, vectors, k, filter)]

    def vectors_of(self, name: str, item_ids: list[str], batch: int = 1000) -> dict[str, np.ndarray]:
        """The stored vectors of the given items (ids not in the collection are left out)."""
        rows = self.rows_of(name, item_ids, ("vector",), batch)
        return {i: np.asarray(r["vector"], dtype=np.float32) for i, r in rows.items()}

    def rows_of(self, name: str, item_ids: list[str], fields, batch: int = 1000) -> dict[str, dict]:
        """{item id: {field: value}} of the given items (ids not in the collection are left out)."""
        ids, out, wanted = [str(i) for i in dict.fromkeys(item_ids)], {}, ["item_id", *fields]
        for chunk in (ids[start : start + batch] for start in range(0, len(ids), batch)):
            # an explicit quoted filter: client.get() pastes ids into its expression unescaped
            expr = f"item_id in [{', '.join(quote(i) for i in chunk)}]"
            got = self._loaded_call(name, lambda e=expr: self.client.query(name, filter=e, output_fields=wanted))
            out |= {r["item_id"]: r for r in got}
        return out

    # ------------------------------------------------------------------------- aliases
    def aliases(self) -> dict[str, str]:
        """{alias: collection} for every alias in the database."""
        names = self.client.list_aliases().get("aliases", [])
        return {a: self.client.describe_alias(a)["collection_name"] for a in names}

    def set_alias(self, alias: str, name: str, strict: bool = True) -> None:
        """Point `alias` at collection `name` (created or moved atomically) if it is complete
        (`completeness.problems`; `strict=False`: also an indexed one from before markers existed)."""
        completeness.require_complete(self, name, strict)
        if alias in self.client.list_aliases().get("aliases", []):
            self.client.alter_alias(name, alias)
        else:
            self.client.create_alias(name, alias)

    def drop_alias(self, alias: str) -> None:
        """Remove `alias` if it exists (its collection stays)."""
        if alias in self.client.list_aliases().get("aliases", []):
            self.client.drop_alias(alias)

    def live(self) -> str | None:
        """The collection the live alias points at, or None before the first promotion."""
        return self.aliases().get(self.cfg.alias)

    # ------------------------------------------------------------------------- lifecycle
    def promote(self, name: str) -> str | None:
        """Point the live alias at collection `name` (or at the collection of alias `name`) atomically
        and record it; returns the previous live collection."""
        completeness.reconcile(self)  # a move whose record a crash cut off
        aliases = self.aliases()
        name, previous = aliases.get(name, name), aliases.get(self.cfg.alias)
        if previous == name:
            return previous
        self.set_alias(self.cfg.alias, name)
        self._record("promote", name, previous)
        log.info("alias %s: %s -> %s", self.cfg.alias, previous, name)
        return previous

    def rollback(self) -> str:
        """Point the live alias back at the previous champion (still present) and return it."""
        completeness.reconcile(self)
        target, live = self.rollback_target(), self.live()
        if target is None:
            raise ValueError(
                f"no previous champion to roll back to from {live!r}: alias {self.cfg.alias!r} was never promoted "
                "twice, or the earlier champions' collections were dropped"
            )
        self.set_alias(self.cfg.alias, target, strict=False)  # an earlier champion, maybe from before markers
        self._record("rollback", target, live)
        log.info("alias %s rolled back: %s -> %s", self.cfg.alias, live, target)
        return target

    def history(self) -> list[dict]:
        """The live alias's promotions and rollbacks, oldest first: {action, collection, previous, at}."""
        if not self.client.has_collection(META):
            return []
        rows = self._loaded_call(
            META,
            lambda: self.client.query(
                META,
                filter=f"alias == {quote(self.cfg.alias)}",
                output_fields=["key", "event"],
                limit=16384,
                consistency_level="Strong",  # another client's promotion of a moment ago included
            ),
        )
        return [json.loads(r["event"]) for r in sorted(rows, key=lambda r: r["key"])]

    def champions(self) -> list[str]:
        """The champion stack replayed from the history: a promotion pushes, a rollback pops."""
        stack: list[str] = []
        for event in self.history():
            collection, previous = event["collection"], event.get("previous")
            if event["action"] == "rollback" and collection in stack:
                del stack[len(stack) - stack[::-1].index(collection) :]
                continue
            if previous and (not stack or stack[-1] != previous):
                stack.append(previous)  # promoted before the history existed
            if not stack or stack[-1] != collection:
                stack.append(collection)
        return stack

    def rollback_target(self) -> str | None:
        """The champion before the live one whose collection still exists, or None."""
        live, stack = self.live(), self.champions()
        if live in stack:
            stack = stack[: len(stack) - stack[::-1].index(live) - 1]
        existing = set(self.client.list_collections())
        return next((c for c in reversed(stack) if c != live and c in existing), None)

    def _record(self, action: str, collection: str, previous: str | None, **extra) -> dict:
        from pymilvus import DataType, MilvusClient

        if not self.client.has_collection(META):
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=600)
            schema.add_field("alias", DataType.VARCHAR, max_length=512)
            schema.add_field("event", DataType.VARCHAR, max_length=4096)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one; unused
            params = self.client.prepare_index_params()
            params.add_index(field_name="vector", index_type="FLAT", metric_type="L2")
            self.client.create_collection(META, schema=schema, index_params=params)
        at = datetime.now(UTC)
        event = {"action": action, "collection": collection, "previous": previous, "at": at.isoformat()} | extra
        key = f"{self.cfg.alias}/{time.time_ns():020d}"  # sorts in time order
        self.client.insert(
            META, [{"key": key, "alias": self.cfg.alias, "event": json.dumps(event), "vector": [1.0, 0.0]}]
        )
        if self.uri.endswith(".db"):  # Lite persists on flush; a server logs the insert (a flush there takes ~3 s)
            self.client.flush(META)
        return event

    def run_collections(self) -> list[str]:
        """The runs' collections, oldest first (by creation; collections from before that was recorded first)."""
        names = [n for n in self.client.list_collections() if n.startswith(PREFIX)]
        created = {n: int(self.client.describe_collection(n).get("properties", {}).get(CREATED, 0)) for n in names}
        return sorted(names, key=lambda n: (created[n], n))

    def retain(self, keep: int) -> list[str]:
        """Drop all but the newest `keep` run collections, never one an alias points at nor the
        rollback target; returns the dropped names, oldest first."""
        if keep < 1:
            raise ValueError(f"retain: keep must be at least 1 (index.keep_collections), got {keep}")
        runs = self.run_collections()
        protected = set(runs[-keep:]) | set(self.aliases().values()) | {self.rollback_target()}
        dropped = []
        for name in runs:
            if name in protected:
                continue
            # an aliased collection is never dropped (a server refuses, and the alias would dangle):
            # check again in case another client pointed an alias at it since we looked
            if self.client.list_aliases(collection_name=name).get("aliases"):
                continue
            self.client.drop_collection(name)
            self._loaded.discard(name)
            dropped.append(name)
        if dropped:
            log.info("retention dropped %d collection(s): %s", len(dropped), ", ".join(dropped))
        return dropped
