"""Hard negatives mined from the live champion's index (`train.hard_negatives`): for every query of the
training pairs, the items the champion serves for it that are not its positives.

An item query (an item -> item pair) searches with the item's stored vector, as /similar does; a typed
query (a search click) is embedded by the champion's query tower, as /search does. Where the champion
carries the popularity term, the query's popularity coordinate is zeroed, so the search ranks by content
alone: with it, every query's list is the same few popular items (MovieLens-100k: 106 distinct items for
1465 queries), negatives that teach the content towers to push popular items away from everything. The query's own item
and every item it is paired with in training are skipped; the first `train.hard_negative_depth` of the
rest are kept, in the champion's order (the trainer takes the hardest first). The table is saved with the
training (training/hard_negatives.parquet, temp-then-rename, with the pairs' fingerprint) so that an
interrupted run resumes with the negatives it started with; other pairs (late data)
mine afresh. Nothing live yet (a first run): no table, and the run trains without them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np
import pandas as pd

from tandem.core.atomic import write_atomic
from tandem.core.config import RunConfig
from tandem.models.popularity import PopularityTerm
from tandem.release.index import ItemIndex, model_dir_of
from tandem.training.data import PairDataset

log = logging.getLogger(__name__)
FILE = "hard_negatives.parquet"
SEARCH_CHUNK = 1000  # query vectors per Milvus search call


def _typed(pairs: pd.DataFrame) -> np.ndarray:
    """Which pairs have a typed query (a non-blank `query` cell) rather than an item as the query."""
    if "query" not in pairs.columns:
        return np.zeros(len(pairs), dtype=bool)
    text = pairs["query"].astype("string").fillna("").str.strip()
    return (text != "").to_numpy(dtype=bool)


def _table(frame: pd.DataFrame, catalog: pd.DataFrame) -> dict[str, np.ndarray]:
    """query text -> catalogue rows, in rank order; items no longer in the catalogue are dropped."""
    rows = pd.Index(catalog["item_id"].astype(str)).get_indexer(frame["item_id"].astype(str))
    kept = frame.assign(row=rows)[rows >= 0].sort_values(["query", "rank"], kind="stable")
    return {q: g["row"].to_numpy(dtype=np.int64) for q, g in kept.groupby("query", sort=False)}


def mine(
    run, cfg: RunConfig, pairs: pd.DataFrame, catalog: pd.DataFrame, known: list[pd.DataFrame], progress: bool = True
) -> tuple[dict, dict]:
    """(query text -> catalogue rows, summary) for the trainer's `pairs` (the training mix); empty when
    `train.hard_negatives` is 0 or nothing is live. `known`: every training pair (item and query pairs), also those the
    mix did not draw, whose items are skipped for their query. `run` is the stage's RunPaths (its training folder holds
    the saved table)."""
    per_batch, depth = cfg.train.hard_negatives, cfg.train.hard_negative_depth
    if not per_batch:
        return {}, {"per_batch": 0}
    about = {"per_batch": per_batch, "depth": depth}
    started, data, saved = time.perf_counter(), PairDataset(pairs, catalog), run / "training" / FILE
    if saved.is_file():  # the same training resumed: the negatives it started with, if mined for these pairs
        frame = pd.read_parquet(saved)
        if len(frame) and frame["data"].iloc[0] == data.fingerprint():
            champion = str(frame["champion"].iloc[0])
            return _table(frame, catalog), about | {"champion": champion, "queries": int(frame["query"].nunique())}
    ids, typed = data.ids, _typed(pairs)
    skip: dict[str, set[str]] = defaultdict(set)  # query text -> its own item and its training positives
    known = pd.concat(known, ignore_index=True)
    everything = PairDataset(known, catalog, "training pairs")
    for text, left, right, by_text in zip(
        everything.queries, everything.left, everything.right, _typed(known), strict=True
    ):
        skip[text] |= {everything.ids[right]} if by_text else {everything.ids[right], everything.ids[left]}
    anchor: dict[str, str] = {}  # item query text -> the query item (its stored vector searches)
    for text, left, by_text in zip(data.queries, data.left, typed, strict=True):
        if not by_text:
            anchor.setdefault(text, ids[left])
    # a typed text that is also an item query's (a search for a title) is searched as the item
    texts = sorted({t for t, by_text in zip(data.queries, typed, strict=True) if by_text} - set(anchor))
    with ItemIndex(cfg.index, run.workdir) as idx:
        live = idx.live()
        if not live or live == run.collection:
            log.info("train.hard_negatives: nothing is live yet, so this run trains without hard negatives")
            return {}, about | {"champion": None, "why": "nothing is live yet"}
        stored = idx.vectors_of(live, list(anchor.values()))
        queries = [t for t, item in anchor.items() if item in stored]  # items new since the champion: no vector
        vectors = [np.stack([stored[anchor[t]] for t in queries])] if queries else []
        if texts:
            from tandem.models import load_model

            champion_model = load_model(model_dir_of(run.workdir, live))
            vectors.append(champion_model.embed_queries(texts, batch_size=cfg.eval.batch_size, progress=progress))
            queries += texts
        if not queries:
            return {}, about | {"champion": live, "queries": 0}
        matrix = np.concatenate(vectors).astype(np.float32)
        term = PopularityTerm.load(model_dir_of(run.workdir, live))
        if term is not None:  # the query's popularity (and co-occurrence) coordinates off: its content ranking is mined
            matrix[:, -term.extra_dims :] = 0.0
        k = 2 * depth + 1  # room for the skipped items; a query with more positives keeps fewer
        hits = [
            h for s in range(0, len(matrix), SEARCH_CHUNK) for h in idx.search(live, matrix[s : s + SEARCH_CHUNK], k)
        ]
    records = []
    for text, found in zip(queries, hits, strict=True):
        kept = [item for item, _ in found if item not in skip[text]][:depth]
        records += [(text, item, rank) for rank, item in enumerate(kept)]
    frame = pd.DataFrame(records, columns=["query", "item_id", "rank"]).assign(champion=live, data=data.fingerprint())
    write_atomic(saved, lambda f: frame.to_parquet(f, index=False))
    summary = about | {
        "champion": live,
        "queries": int(frame["query"].nunique()),
        "of_queries": len(set(data.queries)),
        "items": int(frame["item_id"].nunique()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info(
        "hard negatives from %s: %d of %d queries, %d items",
        live,
        summary["queries"],
        summary["of_queries"],
        summary["items"],
    )
    return _table(frame, catalog), summary
