"""Indexing attempts: each indexing of a run writes a collection of its own, never one that serves.

The daily DAG reruns an interval under the same run id (`daily-YYYYMMDD`), and a rerun retrains the
model in the same run folder. So an attempt is named after what it writes: a digest of the model folder,
the vectors, the item ids and filter fields and the index settings. The run's first attempt takes the
run's collection name (`collection_name(run_id)`); an attempt with the same digest as a complete
collection reuses it (a rerun that changed nothing writes nothing); any other attempt takes
`<name>__<digest[:12]>`. A collection that an alias points at or that was a champion is never written
again; an unfinished attempt (no completeness marker: the writer was killed) is dropped and rewritten.

Before its collection is written, an attempt freezes what it was built from into
`WORKDIR/collections/<collection>/` (hard links of the model folder, `vectors/items.npy` and
`data/catalog.parquet`; `_DONE` last), which the service, the evaluator's champion and the audit read
(`tandem.release.index.model_dir_of`), so a later retraining of the run cannot change a model that
serves. The collection's completeness marker names that model folder; no alias moves to a collection
whose model folder lacks its marker (`tandem.release.completeness`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tandem.core import layout
from tandem.core.atomic import DONE, atomic_dir, is_done
from tandem.core.config_release import IndexConfig
from tandem.release import completeness
from tandem.release.index import ItemIndex, built_by, collection_name

log = logging.getLogger(__name__)
# the IndexConfig fields that shape a collection (search-time settings and retention do not)
BUILD_SETTINGS = ("index_type", "metric", "hnsw_m", "hnsw_ef_construction", "ivf_nlist", "scalar_fields")


def _hash_file(sha, path: Path) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)


def content_digest(model_dir: Path, vectors_path: Path, item_ids: list, scalars: dict, cfg: IndexConfig) -> str:
    """sha256 of everything a collection and its serving depend on."""
    sha = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        sha.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        _hash_file(sha, path)
    _hash_file(sha, Path(vectors_path))
    settings = {k: v for k, v in asdict(cfg).items() if k in BUILD_SETTINGS}
    rows = {"ids": [str(i) for i in item_ids], "scalars": scalars, "index": settings}
    sha.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return sha.hexdigest()


def _served(idx: ItemIndex, name: str) -> bool:
    return bool(idx.client.list_aliases(collection_name=name).get("aliases")) or name in idx.champions()


def choose(idx: ItemIndex, base: str, digest: str) -> tuple[str, bool]:
    """(collection name, whether it is already complete with this content) for an attempt of `digest`."""
    for name in (base, f"{base}__{digest[:12]}"):
        if not idx.client.has_collection(name):
            return name, False
        mark = completeness.marker(idx, name)
        if mark is not None and mark.get("digest") == digest and not completeness.problems(idx, name):
            return name, True
        if not _served(idx, name) and (mark is None or name != base):
            return name, False  # an unfinished attempt (or one whose model folder is gone): written again
    raise ValueError(
        f"collection {name} serves (an alias or the champion history) but is incomplete for this content; "
        "index under a new run id"
    )


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the run's files are replaced by rename, never rewritten: a link stays as it was
    except OSError:
        shutil.copy2(src, dst)


def freeze(workdir: Path, collection: str, uri: str, run_id: str, model_dir: Path, files: dict[str, Path]) -> Path:
    """WORKDIR/collections/<collection>/: model/ plus `files` ({relative name: source}), `_DONE` last
    (holding the run id and the Milvus URI)."""
    if not is_done(model_dir):
        raise ValueError(f"no complete model in {model_dir} (no _DONE marker): run the train stage first")
    with atomic_dir(layout.collection_dir(workdir, collection), run_id=run_id, uri=uri) as tmp:
        shutil.copytree(model_dir, tmp / "model", copy_function=_link_or_copy)
        for name, source in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(str(source), str(tmp / name))
    return layout.collection_dir(workdir, collection)


def frozen(workdir: str | Path, collection: str) -> dict | None:
    """What the complete frozen folder of `collection` records ({"run_id", "uri"}), or None."""
    folder = layout.collection_dir(workdir, collection)
    return json.loads((folder / DONE).read_text()) if is_done(folder) else None


def prune(workdir: Path, idx: ItemIndex) -> list[str]:
    """Delete the frozen folders of this Milvus's collections that no longer exist (dropped by retention)."""
    existing, gone = set(idx.client.list_collections()), []
    for folder in sorted(layout.collections_dir(workdir).glob("[!.]*")):
        info = frozen(workdir, folder.name)
        if info is not None and info.get("uri") == idx.uri and folder.name not in existing:
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder.name)
    return gone


def index_run(
    workdir: str | Path,
    run_dir: Path,
    base: str,
    cfg: IndexConfig,
    item_ids: list,
    vectors: np.ndarray,
    scalars: dict[str, list],
    keep: int,
) -> dict:
    """Write (or reuse) the attempt's collection from the run folder's `model/`, `vectors/items.npy` and
    `data/catalog.parquet`, then apply retention; returns the index stage's summary."""
    workdir, run_dir = Path(workdir).resolve(), Path(run_dir)
    sources = {
        "vectors/items.npy": run_dir / "vectors/items.npy",
        "data/catalog.parquet": run_dir / "data/catalog.parquet",
    }
    digest = content_digest(run_dir / "model", sources["vectors/items.npy"], item_ids, scalars, cfg)
    with ItemIndex(cfg, workdir) as idx:
        name, reuse = choose(idx, base, digest)
        if reuse:
            log.info("collection %s already holds this attempt's content: reused", name)
        else:
            folder = freeze(workdir, name, idx.uri, run_dir.name, run_dir / "model", sources)
            model = (folder / "model").relative_to(workdir).as_posix()
            idx.write(name, item_ids, vectors, scalars, model=model, digest=digest)
        count = completeness.strong_count(idx, name)
        dropped = idx.retain(keep)
        prune(workdir, idx)
        uri = idx.uri
    return {"uri": uri, "collection": name, "vectors": count, "reused": reuse, "retention_dropped": dropped}


def latest(idx: ItemIndex, run_id: str) -> str:
    """The newest complete collection written for run `run_id` (its base name when there is none)."""
    found = [c for c in idx.run_collections() if built_by(c, run_id) and not completeness.problems(idx, c)]
    return found[-1] if found else collection_name(run_id)
