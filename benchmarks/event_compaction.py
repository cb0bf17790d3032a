"""What the hourly rollout guard pays to read the served events, before and after compaction.

    .venv/bin/python benchmarks/event_compaction.py [--hours 6] [--rows 5]

Writes `--hours` hours of parts as the search service does (one part every 10 s, `--rows` rows each, named
`part-<UTC time>-<tag>.parquet`) into a temporary work folder, times `tandem.data.events.read_events` (what
`tandem.release.rollout.served_events` calls) best of 3, compacts the parts older than 2 h with
`tandem.data.compaction.compact_events` (one file per hour), times the read again and checks that it returns
the same frame. Prints a Markdown report and writes it to benchmarks/results/event_compaction.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from tandem.core import layout
from tandem.data.compaction import compact_events
from tandem.data.events import _typed, event_files, read_events

RESULTS = Path(__file__).parent / "results" / "event_compaction.md"


def write_parts(folder: Path, start: datetime, n: int, rows: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        when = start + timedelta(seconds=10 * i)
        frame = pd.DataFrame(
            {"user_id": [f"u{j}" for j in range(rows)], "item_id": [f"i{j}" for j in range(rows)], "ts": when}
            | {"event": "impression", "request_id": [f"r{i}-{j}" for j in range(rows)], "arm": "champion"}
        )
        _typed(frame).to_parquet(folder / f"part-{when:%Y%m%dT%H%M%S%f}-b{i}.parquet", index=False)
    return n * rows


def best_of(fn, n: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=6.0, help="hours of parts, one every 10 s")
    ap.add_argument("--rows", type=int, default=5, help="rows per part")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="event-compaction-"))
    try:
        folder = layout.events_dir(work)
        now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        n_parts = int(args.hours * 360)
        rows = write_parts(folder, now - timedelta(hours=args.hours + 2), n_parts, args.rows)
        load_before = os.getloadavg()
        files_before = len(event_files(work))
        before_s, before = best_of(lambda: read_events(work))
        t = time.perf_counter()
        done = compact_events(folder, timedelta(hours=2), now=now)
        compact_s = time.perf_counter() - t
        files_after = len(event_files(work))
        after_s, after = best_of(lambda: read_events(work))
        pd.testing.assert_frame_equal(before, after)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = f"""# Served events: the guard's read before and after compaction

Command: `python benchmarks/event_compaction.py --hours {args.hours:g} --rows {args.rows}`
Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work), no GPU; load average
{load_before[0]:.1f} before, {load_after[0]:.1f} after.

{n_parts} parts (one every 10 s for {args.hours:g} h, {args.rows} rows each: {rows} rows), all older than the
2 h cut-off, compacted into one file per hour. `read_events` is what the hourly guard
(`rollout.served_events`) reads; times are the best of 3 in the same run; the frame read after compaction
equals the one before (`pandas.testing.assert_frame_equal`).

| | files read | read_events |
|---|---|---|
| before | {files_before} | {before_s:.3f} s |
| after | {files_after} | {after_s:.3f} s |
| ratio | {files_before / files_after:.0f}x fewer | {before_s / after_s:.1f}x faster |

Compaction itself: {compact_s:.2f} s ({done["parts_compacted"]} parts, {done["rows"]} rows, {done["buckets"]} files).
"""
    print(report)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
