"""When a collection may serve: the completeness check that every alias move passes, and the repair of a
promotion whose history record a crash cut off.

A finished `ItemIndex.write` sets the collection property `tandem.complete` last, after its rows are
flushed, its vector index is built and its row count checked: {"rows", "model", "digest", "workdir"}. A
collection is complete when that marker is there, it holds exactly `rows` rows, its vector index exists
and, when a model folder is named (relative to this client's workdir or to the writer's), that folder
holds its `_DONE` marker. A writer killed at any moment leaves a collection without the marker, which no
alias will point at (`problems`).

`promote` and `rollback` move the alias first and record the move in the history second; `reconcile`
(run before each of them) records a move whose record is missing, so a crash between the two loses
nothing. These functions take an `ItemIndex` (`tandem.release.index`), which calls them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tandem.core.atomic import is_done

log = logging.getLogger(__name__)
COMPLETE = "tandem.complete"  # collection property, set last by a finished write


def marker(index, name: str) -> dict | None:
    """The collection's completeness marker, or None (a write that never finished, or a collection
    written before markers existed)."""
    raw = index.client.describe_collection(name).get("properties", {}).get(COMPLETE)
    return json.loads(raw) if raw else None


def mark_complete(index, name: str, rows: int, model: str = "", digest: str = "") -> None:
    """`model`: the model folder relative to the writer's workdir (also recorded, absolute, as `workdir`)."""
    mark = {"rows": int(rows), "model": model, "digest": digest, "workdir": str(Path(index.workdir).resolve())}
    value = json.dumps(mark, sort_keys=True)
    index.client.alter_collection_properties(name, properties={COMPLETE: value})


def strong_count(index, name: str) -> int:
    """The row count, read with strong consistency (every write acknowledged so far is counted)."""

    def call():
        return index.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")

    return int(index._loaded_call(name, call)[0]["count(*)"])


def has_vector_index(index, name: str) -> bool:
    return bool(index.client.list_indexes(name, field_name="vector"))


def problems(index, name: str, strict: bool = True) -> list[str]:
    """Why collection `name` must not serve ([] when it may). `strict=False` (a rollback to an earlier
    champion) accepts a collection without the marker, written before markers existed, if it is indexed
    and not empty."""
    if not index.client.has_collection(name):
        return [f"no collection {name!r} in {index.uri}; index the run first"]
    if not has_vector_index(index, name):  # loading (and so counting) needs the index
        return ["its vector index was never built: its write stopped before the end"]
    mark, count = marker(index, name), strong_count(index, name)
    if mark is None:
        if strict or not count:
            return [f"it holds {count} rows but was never marked complete (a finished write marks it last)"]
        return []
    found = []
    if count != mark["rows"]:
        found.append(f"it holds {count} rows, its write marked {mark['rows']}")
    model, places = mark.get("model"), {Path(index.workdir), Path(mark.get("workdir") or index.workdir)}
    if model and not any(is_done(place / model) for place in places):  # this client's workdir, or the writer's
        found.append(
            f"its model folder {model} (under {' or '.join(sorted(map(str, places)))}) is missing or has no "
            "_DONE marker; use the workdir that indexed it"
        )
    return found


def require_complete(index, name: str, strict: bool = True) -> None:
    found = problems(index, name, strict)
    if found:
        raise ValueError(
            f"collection {name!r} is not complete: {'; '.join(found)}. No alias moves to it; "
            "index the run again (a new attempt writes a new collection)"
        )


def reconcile(index) -> dict | None:
    """Record the live alias's last move if a crash cut off its record (the alias is ahead of the history):
    a move back to an earlier champion as a rollback, any other as a promotion. Returns the event written."""
    live, events = index.live(), index.history()
    last = events[-1]["collection"] if events else None
    if live is None or live == last:
        return None
    action = "rollback" if live in index.champions() else "promote"
    log.warning("alias %s is on %s, its history ends at %s: recording the %s", index.cfg.alias, live, last, action)
    return index._record(action, live, last, recovered=True)
