"""The served-event log's schema and reader: what the search service writes under
`WORKDIR/serving/events/` (Parquet parts, see `tandem.serve.events`), read by the next run's
`load_logs` and by the rollout's CTR. Pandas and pyarrow only, so readers need no service."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tandem.core import layout

# The contract's columns first (DESIGN.md, "Behaviour log"), then where the event came from.
EVENT_COLUMNS = ("user_id", "item_id", "event", "ts", "query", "arm", "experiment", "request_id", "position")
_STRINGS = ("user_id", "item_id", "event", "query", "arm", "experiment", "request_id")


def events_dir(workdir: str | Path) -> Path:
    return layout.events_dir(workdir)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The log's columns with fixed dtypes, so that every part has the same Parquet schema."""
    frame = frame.reindex(columns=list(EVENT_COLUMNS))
    for column in _STRINGS:
        frame[column] = frame[column].fillna("").astype(str)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    frame["position"] = frame["position"].astype("Int32")  # empty for a view: it was not a result
    return frame


def event_files(workdir: str | Path) -> list[Path]:
    """The Parquet files holding the served events: parts and compacted files, less the parts (and older
    compacted files) that a compacted file replaces (`tandem.data.compaction`), so no row counts twice."""
    from tandem.data.compaction import live_files

    return live_files(sorted(p for p in events_dir(workdir).rglob("*.parquet") if not p.name.startswith(".")))


def read_events(workdir: str | Path, attempts: int = 3) -> pd.DataFrame:
    """Every served event written so far, oldest first (an empty frame with the columns when none).
    A file that a compaction deleted between listing and reading makes it list the folder again."""
    import pyarrow.parquet as pq

    for attempt in range(attempts):
        files = [str(p) for p in event_files(workdir)]
        if not files:
            return _typed(pd.DataFrame())
        try:
            table = pq.read_table(files)
        except OSError:  # FileNotFoundError, or pyarrow's error for a file gone mid-read
            if attempt == attempts - 1:
                raise
            continue
        return _typed(table.to_pandas()).sort_values("ts", kind="stable").reset_index(drop=True)
    raise AssertionError("unreachable")
