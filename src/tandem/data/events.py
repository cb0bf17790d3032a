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


def read_events(workdir: str | Path) -> pd.DataFrame:
    """Every served event written so far, oldest first (an empty frame with the columns when none)."""
    import pyarrow.parquet as pq

    files = sorted(str(p) for p in events_dir(workdir).rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        return _typed(pd.DataFrame())
    return _typed(pq.read_table(files).to_pandas()).sort_values("ts", kind="stable").reset_index(drop=True)
