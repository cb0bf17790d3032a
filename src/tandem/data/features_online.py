"""Writes into the Feast online store that never move it backwards, and the per-run key of the snapshots.

Feast's `materialize` (and `write_to_online_store`) upsert whatever they are given: on the SQLite
online store a backfill of an older as-of time (a rerun of last week's interval) would replace the
newer values a later run put there. `write_online` reads the online event time of every entity of the
snapshot first (one `get_online_features` call) and writes only the rows whose online values are not
newer than the snapshot's as-of time, under a file lock of the workdir's store so that two runs cannot
interleave check and write. Rows skipped that way are counted and logged; a rerun of the same as-of
time (same second: Feast keeps online event times in whole seconds) replaces its values as before.

Snapshots carry their run id (`run_id` column): the offline reads of a run join on it
(`tandem.data.features.read_items(..., run_id=...)`), so two runs of the same as-of time never read
each other's snapshot. `add_run_ids` upgrades snapshots written before that column existed.
"""

from __future__ import annotations

import fcntl
import logging
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
TS_SUFFIX = "__ts"  # Feast's OnlineResponse.to_dict(include_event_timestamps=True) key suffix


@contextmanager
def online_lock(root: Path):
    """An exclusive lock over check-then-write of the online store of this workdir's store."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".online.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def online_seconds(store, view: str, key: str, probe: str, ids) -> np.ndarray:
    """The online event time (epoch seconds; 0 = absent) of each entity `ids` in feature view `view`."""
    ids = [str(i) for i in ids]
    if not ids:
        return np.zeros(0, dtype="int64")
    response = store.get_online_features(features=[f"{view}:{probe}"], entity_rows=[{key: i} for i in ids])
    return np.asarray(response.to_dict(include_event_timestamps=True)[probe + TS_SUFFIX], dtype="int64")


def write_online(store, view: str, key: str, probe: str, table: pd.DataFrame, as_of) -> dict:
    """Put `table` (one snapshot: every row's event_timestamp is `as_of`) into the online store of `view`,
    except the entities whose online values are newer than `as_of`. Returns the counts written / skipped."""
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    online = online_seconds(store, view, key, probe, table[key])
    newer = online > int(np.floor(as_of.timestamp()))
    counts = {"written": int((~newer).sum()), "skipped_newer": int(newer.sum())}
    if not newer.any():  # the usual case: Feast's materialize (recorded in the registry's intervals)
        start, end = as_of.to_pydatetime() - timedelta(seconds=1), as_of.to_pydatetime() + timedelta(seconds=1)
        store.materialize(start_date=start, end_date=end, feature_views=[view])
        return counts
    newest = pd.Timestamp(int(online.max()), unit="s", tz="UTC")
    log.warning(
        "feature view %s: %d of %d rows of the snapshot as of %s not written to the online store, which holds "
        "newer values (up to %s): an older backfill never overwrites them",
        view, counts["skipped_newer"], len(table), as_of.isoformat(), newest.isoformat(),
    )  # fmt: skip
    if counts["written"]:
        store.write_to_online_store(view, table[~newer].reset_index(drop=True))
    return counts | {"online_newest": newest.isoformat()}


def add_run_ids(folder: Path) -> int:
    """Add the `run_id` column (the file's name) to snapshots in `folder` written without it; returns how
    many were rewritten. Feast's file source reads the whole folder, so every file needs the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tandem.core.atomic import write_atomic

    done = 0
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        if "run_id" in pq.read_schema(path).names:
            continue
        table = pq.read_table(path)
        table = table.append_column("run_id", pa.array([path.stem] * table.num_rows, pa.string()))
        write_atomic(path, lambda f, t=table: pq.write_table(t, f))
        done += 1
    if done:
        log.info("added run_id to %d snapshot(s) in %s written before snapshots were keyed per run", done, folder)
    return done
