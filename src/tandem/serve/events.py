"""What the search service logs: impressions, views and clicks, in the behaviour-log contract.

Rows are buffered in memory and written as Parquet parts under `WORKDIR/serving/events/`, each
part a new file that appears by an atomic rename, so a reader (the next run's `load_logs`, or
the rollout's CTR) never sees half a file. The folder is a behaviour log as it stands.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tandem.data.events import _typed

log = logging.getLogger(__name__)


class EventLog:
    """A thread-safe buffer of event rows, flushed to a new Parquet part every `flush_rows` rows or
    `flush_seconds` seconds (by a background thread, off the request path) and on `close`."""

    def __init__(self, folder: str | Path, flush_rows: int = 1000, flush_seconds: float = 10.0):
        self.folder = Path(folder)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # parts are written one at a time, in order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.error: str | None = None  # the last write's failure, until a write succeeds

    def start(self) -> EventLog:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="tandem-events", daemon=True)
        self._thread.start()
        return self

    def add(self, rows: list[dict]) -> None:
        now = datetime.now(UTC)
        with self._lock:
            self._rows.extend({**row, "ts": row.get("ts", now)} for row in rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._rows)

    def flush(self) -> Path | None:
        """Write the buffered rows as one new part; returns its path (None when nothing was buffered)."""
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return None
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = self.folder / f".{name}.tmp"  # hidden and not *.parquet: readers skip it
            try:
                _typed(pd.DataFrame(rows)).to_parquet(tmp, index=False)
                os.replace(tmp, self.folder / name)
            except OSError as e:
                self.error = f"{type(e).__name__}: {e}"
                raise
            self.written, self.error = self.written + len(rows), None
            return self.folder / name

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except OSError:  # a full disk must not kill the flusher: the rows are lost, loudly
                log.exception("could not write served events to %s", self.folder)

    @property
    def healthy(self) -> bool:
        """The flusher thread runs and the last write (if any) succeeded."""
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()


@dataclass(frozen=True)
class Served:
    """What a click is checked against: who was served what, for which query, by which arm (kept compactly
    by `tandem.serve.security.ClickMemory`)."""

    user_id: str
    query: str
    arm: str
    experiment: str
    items: tuple[str, ...]
