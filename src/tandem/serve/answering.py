"""How the service answers a batch of requests (`answer`) and one expanded search (`expanded`).

A batch (`tandem.serve.batching`) holds requests of one kind (/search or /similar) and one arm, with any
filters: the query tower embeds all the batch's texts in one call (or one query fetches all the viewed
items' stored vectors), then one Milvus search runs per distinct filter expression, for that filter's
requests only. A /similar query is the viewed item's stored vector for a symmetric model (NoteLLM-2); for an
asymmetric one (HotelMatch) it is the item's stored title through the query tower, with the click coordinates
of the item's stored vector (`Encoder.with_item_query_term`): what the hotelmatch protocol evaluates. A
search takes one filter expression, so requests with different filters cannot share a search call, but
they do share the embedding, which is most of a request's time on a CPU; requests with the same filter
share both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException

from tandem.release.index import ItemIndex


@dataclass(frozen=True)
class Ask:
    """One request of a batch: the query text (/search) or the viewed item id (/similar), its k and its
    filter expression ("" = none; see `tandem.release.scalars.filter_expression`)."""

    text: str
    k: int
    filter: str = ""


@dataclass(frozen=True)
class Answer:
    rows: list[dict]
    seconds: dict[str, float]  # of the whole batch: embed or fetch, search (all its search calls)
    batch: int  # requests answered by the same embedding (or fetch) call
    searches: int = 1  # Milvus search calls of the batch: one per distinct filter


def answer(index: ItemIndex, key: tuple, asks: Sequence[Ask]) -> list[Answer | Exception]:
    """A batch of requests of one kind and arm (`key` = (kind, arm)): one embedding (or vector fetch) call
    for all, then one Milvus search per distinct filter with that filter's largest k (each request keeps its
    own first k; at k > index.search_ef HNSW searches a wider list, so a batch can only find more of the
    true neighbours, never fewer)."""
    kind, arm = key[0], key[1]
    started = time.perf_counter()
    if kind == "search":
        vectors = arm.queries.embed_queries([a.text for a in asks], batch_size=len(asks), progress=False)
        found, first = list(range(len(asks))), "embed"
    else:  # similar: from the items' stored rows; an unknown item is that request's 404
        titled = titles_as_queries(arm, index)
        stored = index.rows_of(arm.collection, [a.text for a in asks], ("vector", "title") if titled else ("vector",))
        found, first = [n for n, a in enumerate(asks) if a.text in stored], "fetch"
        rows_found = [stored[asks[n].text] for n in found]
        vectors = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in rows_found]) if found else None
        if titled and found:  # the item's title through the query tower, with the item's click coordinates
            titles = [r["title"] for r in rows_found]
            queries = arm.queries.embed_queries(titles, batch_size=len(titles), progress=False)
            vectors, first = arm.model.with_item_query_term(queries, vectors), "embed"
    ready = time.perf_counter()
    extra = int(kind != "search")  # /similar asks for one more: the item itself is dropped from its results
    groups: dict[str, list[int]] = {}  # filter expression -> positions in `vectors`, in arrival order
    for position, n in enumerate(found):
        groups.setdefault(asks[n].filter, []).append(position)
    rows: dict[int, list[dict]] = {}
    for expression, positions in groups.items():
        k = max(asks[found[p]].k for p in positions) + extra
        hits = index.search_rows(arm.collection, vectors[positions], k=k, filter=expression)
        rows |= {found[p]: row for p, row in zip(positions, hits, strict=True)}
    seconds = {first: ready - started, "search": time.perf_counter() - ready}
    out: list[Answer | Exception] = []
    for n, a in enumerate(asks):
        if n not in rows:
            out.append(HTTPException(404, f"item {a.text!r} is not in collection {arm.collection}"))
        else:
            mine = [r for r in rows[n] if r["item_id"] != a.text] if extra else rows[n]
            out.append(Answer(mine[: a.k], seconds, len(asks), len(groups)))
    return out


def titles_as_queries(arm, index: ItemIndex) -> bool:
    """Whether /similar embeds the item's title with the query tower (an asymmetric model, as the hotelmatch
    protocol evaluates it) rather than searching with its stored vector (a symmetric model; or no stored title)."""
    return not getattr(arm.model, "symmetric", True) and "title" in index.cfg.scalar_fields


def expanded(index: ItemIndex, arm, expression: str, queries: list[str], k: int, expander) -> Answer:
    """One expanded request: all queries embedded in one call and searched in one Milvus call
    (`expander.depth` items each, at least k), fused by RRF; each row keeps its best cosine as `score`
    and gets its fused score as `rrf`."""
    started = time.perf_counter()
    vectors = arm.queries.embed_queries(queries, batch_size=len(queries), progress=False)
    ready = time.perf_counter()
    hits = index.search_rows(arm.collection, vectors, k=max(k, expander.depth), filter=expression)
    searched = time.perf_counter()
    best: dict[str, dict] = {}
    for row in hits:
        for r in row:
            if r["item_id"] not in best or r["score"] > best[r["item_id"]]["score"]:
                best[r["item_id"]] = r
    fused = expander.fuse([[r["item_id"] for r in row] for row in hits], limit=k)
    rows = [best[item] | {"rrf": score} for item, score in fused]
    seconds = {"embed": ready - started, "search": searched - ready, "fuse": time.perf_counter() - searched}
    return Answer(rows, seconds, 1)
