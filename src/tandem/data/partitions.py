"""Date-partitioned behaviour logs, for scheduled runs keyed on a data interval.

`ingest` copies the events of an interval from wherever they land (a CSV/Parquet file or a
folder of them) into `WAREHOUSE/logs/date=YYYY-MM-DD/part.parquet`, replacing those days'
partitions, so rerunning an interval never duplicates events. `select` lists the
partitions of a look-back window for the loop to read. Each day is built in a temporary folder and
renamed into place with its `_DONE` marker written last: a day without the marker is not complete
(`complete`), and `select` skips it.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from tandem.core.atomic import DONE, atomic_dir, is_done
from tandem.data.contract import log_files, reader_sql, ts_sql

log = logging.getLogger(__name__)
PART = "part.parquet"


def _utc(value: datetime | date | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def ingest(source: str | Path, warehouse: str | Path, start, end) -> dict[str, int]:
    """Copy the events with start <= ts < end into daily partitions; returns rows per day.

    Timestamps are parsed as the contract says (ISO strings, timestamps, epoch seconds); rows
    whose ts cannot be parsed are left for `load` to quarantine, so they are kept in the
    partition of the interval's first day rather than lost.
    """
    start, end = _utc(start), _utc(end)
    if end <= start:
        raise ValueError(f"empty interval: start {start} is not before end {end}")
    files, fmt = log_files(source)
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"CREATE TEMP VIEW raw AS SELECT * FROM {reader_sql(files, fmt)}")
    ts_type = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE raw)").fetchall()).get("ts")
    if ts_type is None:
        raise ValueError(f"log source {source} has no column 'ts'; the behaviour-log contract needs it")
    parsed = ts_sql(ts_type, source)
    counts: dict[str, int] = {}
    root = Path(warehouse) / "logs"
    for day in _days(start, end):
        lo, hi = max(start, _utc(day)), min(end, _utc(day + timedelta(days=1)))
        folder = root / f"date={day.isoformat()}"
        unparsed = f" OR ({parsed}) IS NULL" if day == start.date() else ""
        with atomic_dir(folder) as tmp:  # a rerun replaces the day; complete days only, _DONE written last
            target = str(tmp / PART).replace("'", "''")
            con.execute(
                f"COPY (SELECT * FROM raw WHERE (({parsed}) >= $lo AND ({parsed}) < $hi){unparsed}) "
                f"TO '{target}' (FORMAT parquet)",
                {"lo": lo, "hi": hi},
            )
            counts[day.isoformat()] = con.execute(f"SELECT count(*) FROM read_parquet('{target}')").fetchone()[0]
    con.close()
    log.info("ingested %d events for %s .. %s into %s", sum(counts.values()), start, end, root)
    return counts


def select(warehouse: str | Path, end, days: int) -> list[Path]:
    """Partition files of the `days` days before `end` (the look-back window of a run)."""
    end = _utc(end)
    wanted = {d.isoformat() for d in _days(end - timedelta(days=days), end)}
    root = Path(warehouse) / "logs"
    folders = sorted(p for p in root.glob("date=*") if p.name[5:] in wanted)
    partial = [p.name for p in folders if not complete(p)]
    if partial:
        log.warning("skipping incomplete log partitions (no %s marker; ingest those days again): %s", DONE, partial)
    files = [p / PART for p in folders if complete(p)]
    if not files:
        hint = f" ({len(partial)} incomplete, without {DONE}: {', '.join(partial)})" if partial else ""
        raise ValueError(f"no log partitions under {root} for the {days} days before {end}{hint}; ingest them first")
    return files


def complete(folder: str | Path) -> bool:
    """A day's partition is complete when its marker (written last by `ingest`) is there."""
    return is_done(folder) and (Path(folder) / PART).is_file()
