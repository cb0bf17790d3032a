"""What the search service logs: impressions, views and clicks, in the behaviour-log contract.

Every row the service logs is first appended to a spool, JSON lines in `WORKDIR/serving/events.spool/`,
before the request is answered, and the spool is fsynced at most `spool_fsync_seconds` later. From
memory the rows are then written as Parquet parts under `WORKDIR/serving/events/`, each a new file
that appears by an atomic rename (fsynced), so a reader (the next run's `load_logs`, the rollout's
CTR) never sees half a file; a spool file is deleted only once the part holding its rows is durable.

What a crash loses: a killed process (SIGKILL, OOM) loses nothing it acknowledged (the spool is in
the page cache); a machine crash loses at most the last `spool_fsync_seconds` of rows. On start-up a
leftover spool is recovered into a part. A failed part write keeps the rows (in memory and in their
spool) for the next try; the flusher thread survives any error, retrying with backoff, and reports its
state (`health`) to /healthz, /readyz and /metrics. The folder is a behaviour log as it stands.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from tandem.core.atomic import fsync_dir, write_atomic
from tandem.data.compaction import part_written
from tandem.data.events import _typed

log = logging.getLogger(__name__)
SPOOL_SUFFIX = ".events.spool"  # not a log format the contract reads
MAX_BACKOFF = 30.0


class _Spool:
    """One append-only JSON-lines file, locked (flock) while this process owns it."""

    def __init__(self, folder: Path):
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp, self.path = folder / f".{name}.tmp", folder / f"{name}{SPOOL_SUFFIX}"
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked before it has a name recovery looks at
        os.rename(tmp, self.path)
        fsync_dir(folder)
        self.dirty = False

    def append(self, rows: list[dict]) -> None:
        data = "".join(json.dumps(r, default=_json) + "\n" for r in rows).encode()
        while data:
            data = data[os.write(self.fd, data) :]
        self.dirty = True

    def close(self) -> None:
        os.close(self.fd)


def _json(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy and pandas scalars
        return value.item()
    return None if pd.isna(value) else str(value)


def _read_spool(path: Path) -> list[dict]:
    """The rows of a spool file; a last line cut by the crash is dropped (it was never acknowledged)."""
    rows = []
    for line in path.read_bytes().split(b"\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row.get("ts"), str):
            row["ts"] = datetime.fromisoformat(row["ts"])
        rows.append(row)
    return rows


class EventLog:
    """A thread-safe, spooled buffer of event rows, flushed to a new Parquet part every `flush_rows` rows or
    `flush_seconds` seconds (by a background thread, off the request path) and on `close`."""

    def __init__(
        self,
        folder: str | Path,
        flush_rows: int = 1000,
        flush_seconds: float = 10.0,
        spool_fsync_seconds: float = 0.5,
        spool: str | Path | None = None,
    ):
        self.folder = Path(folder)
        self.spool_dir = Path(spool) if spool is not None else self.folder.with_name(self.folder.name + ".spool")
        self.flush_rows, self.flush_seconds, self.fsync_seconds = flush_rows, flush_seconds, spool_fsync_seconds
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # parts are written one at a time, in order
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spool: _Spool | None = None
        self._pending: list[Path] = []  # closed spool files whose rows are all in self._rows, not yet in a part
        self.written = 0
        self.recovered = 0  # rows of a crashed process's spool written as a part at start-up
        self.failures = 0  # consecutive failed part writes (0 after a success)
        self.error: str | None = None  # the last failure (a part write, the spool, the flusher), until a success
        self.last_error_at: datetime | None = None
        self.last_flush_at: datetime | None = None

    # ------------------------------------------------------------------------------------ life cycle
    def start(self) -> EventLog:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.recover()
        self._thread = threading.Thread(target=self._run, name="tandem-events", daemon=True)
        with self._lock:
            self._open_spool()
        self._thread.start()
        return self

    def recover(self) -> int:
        """Write the spool files left by a process that died (not locked by a live one) as parts; returns rows."""
        total = 0
        for path in sorted(self.spool_dir.glob(f"*{SPOOL_SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # recovered by another process meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live service owns it
                tag = path.name[: -len(SPOOL_SUFFIX)]
                rows = _read_spool(path)
                if rows and not part_written(self.folder, tag):  # not written (nor compacted) before the crash
                    self._write_part(rows, tag)
                    total += len(rows)
                path.unlink(missing_ok=True)
            except Exception as e:  # the file stays for the next start; the service starts anyway
                self._failed(f"recovering {path.name}: {type(e).__name__}: {e}")
                log.exception("could not recover the served events in %s", path)
            finally:
                os.close(fd)
        if total:
            fsync_dir(self.spool_dir)
            log.warning("recovered %d served events from the spool of a stopped service into %s", total, self.folder)
        self.recovered += total
        return total

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception:  # the rows stay in the spool: the next start recovers them
            log.exception("could not write the last served events to %s; they stay in %s", self.folder, self.spool_dir)
        with self._lock:
            if self._spool is not None:
                self._spool.close()
                if self._spool.path not in self._pending and not self._rows:
                    self._spool.path.unlink(missing_ok=True)
                self._spool = None

    # ------------------------------------------------------------------------------------ rows in
    def add(self, rows: list[dict]) -> None:
        """Spool `rows` (each gets `ts` = now unless it has one) and buffer them; returns once they are in the
        spool file (the page cache: a killed process loses none; fsynced within spool_fsync_seconds)."""
        now = datetime.now(UTC)
        rows = [{**row, "ts": row.get("ts", now)} for row in rows]
        with self._lock:
            self._open_spool()  # after a failure to open one
            if self._spool is not None:
                try:
                    self._spool.append(rows)
                except OSError as e:  # kept in memory: written with the next part, but not crash-safe meanwhile
                    self._failed(f"spool {type(e).__name__}: {e}")
                    log.exception("could not append served events to the spool %s", self._spool.path)
            self._rows.extend(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._rows)

    def sync(self) -> None:
        """fsync the spool file if rows were appended since the last sync (outside the lock: requests do not
        wait for the disk; a duplicate descriptor keeps the file open should a flush rotate it meanwhile)."""
        with self._lock:
            if self._spool is None or not self._spool.dirty:
                return
            self._spool.dirty = False
            fd = os.dup(self._spool.fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------------------ parts out
    def _write_part(self, rows: list[dict], tag: str) -> Path:
        name = f"part-{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{tag}.parquet"
        # hidden and not *.parquet while written: readers skip it; fsynced, renamed, the folder fsynced
        return write_atomic(self.folder / name, lambda f: _typed(pd.DataFrame(rows)).to_parquet(f, index=False))

    def flush(self) -> Path | None:
        """Write the buffered rows as one new part, then delete the spool files they came from; returns the
        part's path (None when nothing was buffered). On failure the rows go back to the buffer and the
        error is raised."""
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                if not rows:
                    return None
                spools, self._pending = self._pending, []
                if self._spool is not None:  # rotate: new rows go to a new file
                    self._spool.close()
                    spools, self._spool = [*spools, self._spool.path], None
                self._open_spool()
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                part = self._write_part(rows, spools[-1].name[: -len(SPOOL_SUFFIX)] if spools else uuid.uuid4().hex)
            except Exception as e:
                with self._lock:  # requeued ahead of newer rows, their spool files kept
                    self._rows[:0] = rows
                    self._pending[:0] = spools
                self._failed(f"{type(e).__name__}: {e}")
                raise
            for path in spools:  # the part is durable: its rows' spool files can go
                path.unlink(missing_ok=True)
            fsync_dir(self.spool_dir)
            self.written += len(rows)
            self.failures, self.error, self.last_flush_at = 0, None, datetime.now(UTC)
            return part

    def _open_spool(self) -> None:
        """A new spool file (call with the lock held); on failure rows are kept in memory only, loudly."""
        if self._spool is None and self._thread is not None and not self._stop.is_set():
            try:
                self._spool = _Spool(self.spool_dir)
            except OSError as e:
                self._failed(f"spool {type(e).__name__}: {e}")
                log.exception("could not open a spool file in %s: events are in memory only", self.spool_dir)

    def _failed(self, message: str) -> None:
        self.failures += 1
        self.error, self.last_error_at = message, datetime.now(UTC)

    def _run(self) -> None:
        """fsync the spool every `fsync_seconds`; write a part when `flush_seconds` passed or `flush_rows` are
        buffered (after a failure: when the backoff has passed). Any exception is logged and survived."""
        next_flush = time.monotonic() + self.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(min(self.fsync_seconds, max(0.0, next_flush - time.monotonic())))
            self._wake.clear()
            try:
                self.sync()
                now = time.monotonic()
                if now < next_flush and (self.buffered < self.flush_rows or self.failures):
                    continue
                next_flush = now + self.flush_seconds
                self.flush()
            except Exception as e:
                backoff = min(MAX_BACKOFF, self.flush_seconds, 0.5 * 2 ** min(self.failures, 10))
                next_flush = time.monotonic() + backoff
                if self.error is None or not self.error.endswith(str(e)):
                    self._failed(f"{type(e).__name__}: {e}")
                log.exception("could not write served events to %s (retrying in %.1fs)", self.folder, backoff)

    # ------------------------------------------------------------------------------------ health
    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """The flusher thread runs and the last write (if any) succeeded."""
        return self.alive and self.error is None

    def health(self) -> dict:
        """What /healthz shows of the event log."""
        return {
            "events_buffered": self.buffered,
            "events_written": self.written,
            "events_recovered": self.recovered,
            "events_flusher_alive": self.alive,
            "events_failures": self.failures,
            "events_last_error": self.error,
            "events_last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "events_last_flush_at": self.last_flush_at.isoformat() if self.last_flush_at else None,
        }


@dataclass(frozen=True)
class Served:
    """What a click is checked against: who was served what, for which query, by which arm (kept compactly
    by `tandem.serve.security.ClickMemory`)."""

    user_id: str
    query: str
    arm: str
    experiment: str
    items: tuple[str, ...]
