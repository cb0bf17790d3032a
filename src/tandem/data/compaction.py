"""Compaction of the served-event parts: many small Parquet parts into one file per hour (or day).

The search service writes a part every few seconds (`tandem.serve.events`: `part-<UTC time>-<tag>.parquet`).
`compact_events` merges the parts older than a cut-off into `compacted-<bucket>-<id>.parquet`, one per
hour or day of the parts' names, and records in that file's Parquet metadata (`tandem.replaces`) the
names of the files it replaces. The order of the steps makes every moment safe for readers:

1. the compacted file is written under a hidden temporary name, fsynced and renamed into place (with the
   folder fsynced): from this instant it *and its list of replaced files* exist, atomically;
2. the replaced parts (and an older compacted file of the same bucket) are deleted.

Readers go through `live_files`, which drops every file that a compacted file in the folder lists, so a
kill between 1 and 2 (both the compacted file and its parts on disk) never shows a row twice, and the next
compaction deletes the leftovers. A reader that listed the folder before step 2 and finds a part gone
lists it again (`tandem.data.events.read_events`). New parts are never touched: only parts whose name is
older than the cut-off are compacted, and the service names a part by the time it writes it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)
PART_PREFIX, COMPACTED_PREFIX = "part-", "compacted-"
REPLACES = b"tandem.replaces"  # Parquet key-value metadata: JSON list of the file names replaced
BUCKETS = {"hour": "%Y%m%dT%H", "day": "%Y%m%d"}


def replaced_by(path: Path) -> list[str]:
    """The file names (same folder) that compacted file `path` replaces ([] for any other file)."""
    import pyarrow.parquet as pq

    if not path.name.startswith(COMPACTED_PREFIX) or path.suffix != ".parquet":
        return []
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata.get(REPLACES, b"[]"))


def live_files(files: Iterable[str | Path]) -> list[Path]:
    """`files` less those that a compacted file among them (in the same folder) replaces, in order."""
    files = [Path(f) for f in files]
    gone = {f.parent / name for f in files for name in replaced_by(f)}
    return [f for f in files if f not in gone]


def part_written(folder: Path, tag: str) -> bool:
    """Whether a part named `part-*-<tag>.parquet` was written to `folder`: on disk, or already compacted
    (the service's spool recovery asks, so that a compacted part's rows are not written again)."""
    if any(folder.glob(f"{PART_PREFIX}*-{tag}.parquet")):
        return True
    suffix = f"-{tag}.parquet"
    compacted = folder.glob(f"{COMPACTED_PREFIX}*.parquet")
    return any(n.startswith(PART_PREFIX) and n.endswith(suffix) for c in compacted for n in replaced_by(c))


def part_time(path: Path) -> datetime | None:
    """The UTC time in a part's name (`part-20240105T101500123456-<tag>.parquet`), None for other files."""
    if not path.name.startswith(PART_PREFIX):
        return None
    try:
        return datetime.strptime(path.name[len(PART_PREFIX) :].split("-")[0], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    except ValueError:
        return None


def _bucket_of(path: Path, by: str) -> str | None:
    if path.name.startswith(COMPACTED_PREFIX):
        return path.name[len(COMPACTED_PREFIX) :].split("-")[0]
    when = part_time(path)
    return None if when is None else when.strftime(BUCKETS[by])


def _remove(paths: Iterable[Path]) -> int:
    from tandem.core.atomic import fsync_dir

    done, folders = 0, set()
    for path in paths:
        if path.exists():
            path.unlink()
            done += 1
            folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)
    return done


def compact_events(
    folder: str | Path, older_than: timedelta, by: str = "hour", dry_run: bool = False, now: datetime | None = None
) -> dict:
    """Merge the parts of `folder` older than `older_than` into one compacted file per `by` ('hour' or 'day');
    returns counts (files before / after, parts compacted, rows, leftovers of a killed compaction removed)."""
    import pyarrow.parquet as pq

    from tandem.core.atomic import write_atomic

    if by not in BUCKETS:
        raise ValueError(f"compaction bucket {by!r}: use one of {', '.join(BUCKETS)} (retention.compact_by)")
    folder = Path(folder)
    summary = {"folder": str(folder), "dry_run": dry_run, "files_before": 0, "files_after": 0, "buckets": 0}
    summary |= {"parts_compacted": 0, "rows": 0, "leftovers_removed": 0}
    if not folder.is_dir():
        return summary
    cutoff = (now or datetime.now(UTC)) - older_than
    with open(folder / ".compact.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one compaction at a time; the service's writes need no lock
        files = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
        summary["files_before"] = len(files)
        live = set(live_files(files))
        leftovers = [p for p in files if p not in live]  # of a compaction killed before deleting them
        if not dry_run:
            summary["leftovers_removed"] = _remove(leftovers)
        files = [p for p in files if p in live]
        old = [p for p in files if (t := part_time(p)) is not None and t < cutoff]
        buckets: dict[str, list[Path]] = {}
        merged = 0  # earlier compacted files merged into a new one
        for part in old:
            buckets.setdefault(_bucket_of(part, by), []).append(part)
        for bucket, parts in sorted(buckets.items()):
            earlier = [p for p in files if p.name.startswith(f"{COMPACTED_PREFIX}{bucket}-")]
            inputs = earlier + parts  # an earlier compacted file of the bucket is merged in, and replaced
            summary["buckets"] += 1
            summary["parts_compacted"] += len(parts)
            merged += len(earlier)
            if dry_run:
                continue
            table = pq.read_table([str(p) for p in inputs])  # one dataset read: much faster than file by file
            metadata = (table.schema.metadata or {}) | {REPLACES: json.dumps([p.name for p in inputs]).encode()}
            table = table.replace_schema_metadata(metadata)
            target = folder / f"{COMPACTED_PREFIX}{bucket}-{uuid.uuid4().hex[:8]}.parquet"
            write_atomic(target, lambda f, t=table: pq.write_table(t, f))  # step 1: the file and its list
            summary["rows"] += table.num_rows
            _remove(inputs)  # step 2
        fcntl.flock(lock, fcntl.LOCK_UN)
    after = sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
    summary["files_after"] = len(files) - summary["parts_compacted"] - merged + len(buckets) if dry_run else len(after)
    if summary["parts_compacted"] and not dry_run:
        log.info("compacted %d event parts of %s into %d file(s)", summary["parts_compacted"], folder, len(buckets))
    return summary
