"""Retention by policy: compaction of the served-event parts (every row exactly once, also after a kill
between writing the compacted file and deleting the parts) and removal of old runs' checkpoints that
never touches a model folder nor anything of the live or rollback run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.data import compaction
from tandem.data.contract import log_files
from tandem.data.events import _typed, event_files, read_events
from tandem.release import retention
from tandem.release.index import ItemIndex, collection_name

NOW = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def _parts(folder: Path, start: datetime, n: int, every: timedelta, rows: int = 3, tag: str = "a") -> list[str]:
    """`n` parts named as the service names them, from `start` on; returns the request ids written."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        when = start + i * every
        frame = pd.DataFrame(
            {"user_id": "u", "item_id": [f"i{j}" for j in range(rows)], "event": "impression", "ts": when}
            | {"request_id": [f"{tag}{i}-{j}" for j in range(rows)], "arm": "champion", "position": 0}
        )
        _typed(frame).to_parquet(folder / f"part-{when:%Y%m%dT%H%M%S%f}-{tag}{i}.parquet", index=False)
        ids += frame["request_id"].tolist()
    return ids


def _exactly_once(workdir: Path, ids: list[str]) -> None:
    got = read_events(workdir)["request_id"]
    assert not got.duplicated().any(), got[got.duplicated()].head().tolist()
    assert sorted(got) == sorted(ids)


def test_compaction_keeps_every_row_exactly_once_and_leaves_new_parts(tmp_path):
    folder = layout.events_dir(tmp_path)
    ids = _parts(folder, NOW - timedelta(hours=5), 36, timedelta(minutes=5))  # 3 hours of old parts
    ids += _parts(folder, NOW - timedelta(minutes=30), 3, timedelta(minutes=5), tag="new")  # younger than 2 h
    assert compaction.compact_events(folder, timedelta(hours=2), dry_run=True, now=NOW)["files_after"] == 7
    assert len(list(folder.glob("*.parquet"))) == 39  # the dry run changed nothing
    done = compaction.compact_events(folder, timedelta(hours=2), now=NOW)
    assert (done["files_before"], done["files_after"], done["parts_compacted"], done["rows"]) == (39, 7, 36, 108)
    assert len(list(folder.glob("compacted-*.parquet"))) == 4  # 07:30-10:25 spans the hours 07, 08, 09, 10
    _exactly_once(tmp_path, ids)
    assert [Path(f) for f in log_files(folder)[0]] == event_files(tmp_path)  # the next run's loader too
    # a late part of an hour already compacted: merged with that hour's file, which it replaces
    ids += _parts(folder, NOW - timedelta(hours=4, minutes=1), 1, timedelta(0), tag="late")
    again = compaction.compact_events(folder, timedelta(hours=2), now=NOW)
    assert again["parts_compacted"] == 1 and again["files_after"] == 7
    _exactly_once(tmp_path, ids)
    by_day = compaction.compact_events(folder, timedelta(hours=2), by="day", now=NOW + timedelta(hours=3))
    assert by_day["files_after"] == 5  # the 3 new parts, now old, into a day file beside the hour files
    _exactly_once(tmp_path, ids)


KILLED = """
import os, signal, sys
from datetime import datetime, timedelta
from tandem.data import compaction
compaction._remove = lambda paths: os.kill(os.getpid(), signal.SIGKILL) if list(paths) else 0
compaction.compact_events(sys.argv[1], timedelta(hours=2), now=datetime.fromisoformat(sys.argv[2]))
"""


def test_a_compaction_killed_between_writing_and_deleting_shows_no_row_twice(tmp_path):
    """SIGKILL right after the compacted file's rename, before any part is deleted: readers skip the parts
    it lists; the next compaction deletes them; every row is read once throughout."""
    folder = layout.events_dir(tmp_path)
    ids = _parts(folder, NOW - timedelta(hours=5, minutes=30), 12, timedelta(minutes=5))  # one hour: 07:00-07:55
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILLED, str(folder), NOW.isoformat()], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert len(list(folder.glob("compacted-*.parquet"))) == 1 and len(list(folder.glob("part-*.parquet"))) == 12
    assert len(event_files(tmp_path)) == 1 and len(log_files(folder)[0]) == 1
    _exactly_once(tmp_path, ids)
    after = compaction.compact_events(folder, timedelta(hours=2), now=NOW)
    assert after["leftovers_removed"] == 12 and after["parts_compacted"] == 0
    assert sorted(p.name.split("-")[0] for p in folder.glob("*.parquet")) == ["compacted"]
    _exactly_once(tmp_path, ids)


def test_the_hourly_guard_reads_fewer_files_after_compaction(tmp_path, monkeypatch):
    """The rollout guard's evidence (`rollout.served_events`): the same rows from 2 files instead of 360."""
    import pyarrow.parquet as pq

    from tandem.release import rollout

    folder = layout.events_dir(tmp_path)
    ids = _parts(folder, NOW - timedelta(hours=4), 360, timedelta(seconds=10), rows=1)  # one hour at 10 s
    read: list[int] = []
    real = pq.read_table

    def spy(files, *args, **kwargs):  # how many files each read_table call reads
        read.append(len(files) if isinstance(files, list) else 1)
        return real(files, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    before = rollout.served_events(tmp_path)
    cfg = RunConfig()
    summary = retention.retain(tmp_path, cfg, runs=False)  # the guard DAG's retain task, events part
    assert summary["events"]["parts_compacted"] == 360
    after = rollout.served_events(tmp_path)
    assert read[0] == 360 and read[-1] == 2, read  # 2: 08:30-09:29 spans two hours
    pd.testing.assert_frame_equal(before, after)
    assert sorted(after["request_id"]) == sorted(ids)


def _run(workdir: Path, run_id: str, finished: float | None) -> Path:
    run = layout.run_dir(workdir, run_id)
    for folder in ("training/checkpoints/step-2", "training/checkpoints.superseded/step-1", "training/best", "model"):
        (run / folder).mkdir(parents=True, exist_ok=True)
        (run / folder / "weights.bin").write_bytes(b"\0" * 1000)
    if finished is not None:
        (run / "train.json").write_text("{}")
        os.utime(run / "train.json", (finished, finished))
    return run


@pytest.fixture
def runs_with_live_and_rollback(tmp_path):
    """Six runs: r1 trained first ... r5 last, r6 still training; r1 was live, then r2 (r1 = rollback target)."""
    workdir = tmp_path / "work"
    runs = {f"r{i}": _run(workdir, f"r{i}", 1_700_000_000 + 3600 * i if i < 6 else None) for i in range(1, 7)}
    cfg = RunConfig()
    with ItemIndex(cfg.index, workdir) as index:
        for run_id in ("r1", "r2", "r3"):
            index.write(collection_name(run_id), ["a", "b"], np.eye(2, 4, dtype=np.float32))
        index.promote(collection_name("r1"))
        index.promote(collection_name("r2"))
        assert index.rollback_target() == collection_name("r1")
    return workdir, runs, cfg


def test_retention_keeps_the_live_and_rollback_runs_and_every_model(runs_with_live_and_rollback):
    workdir, runs, cfg = runs_with_live_and_rollback
    cfg = cfg.__class__(**{**cfg.__dict__, "retention": cfg.retention.__class__(keep_runs=1)})
    dry = retention.retain(workdir, cfg, dry_run=True, events=False)["runs"]
    assert sorted(dry["pruned"]) == ["r3", "r4"] and dry["bytes"] == 2 * 3 * 1000
    assert all((r / "training" / "checkpoints").is_dir() for r in runs.values())  # a dry run removes nothing
    done = retention.retain(workdir, cfg, events=False)["runs"]
    assert done["kept_newest"] == ["r5"] and done["kept_serving"] == ["r1", "r2"]
    assert sorted(done["pruned"]) == ["r3", "r4"]
    for run_id, run in runs.items():
        kept = run_id not in ("r3", "r4")  # newest, live, rollback target, or still training (r6)
        assert all((run / h).is_dir() == kept for h in retention.HEAVY), run_id
        assert (run / "model" / "weights.bin").is_file(), run_id  # no model folder is ever removed


def test_tandem_retain_command_dry_run_and_json(runs_with_live_and_rollback):
    workdir, runs, _ = runs_with_live_and_rollback
    _parts(layout.events_dir(workdir), datetime.now(UTC) - timedelta(hours=5), 4, timedelta(minutes=1))
    runner = CliRunner()
    dry = runner.invoke(app, ["retain", "--workdir", str(workdir), "--keep-runs", "1", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would compact 4 part(s)" in dry.output and "would remove r3" in dry.output
    assert (runs["r3"] / "training" / "checkpoints").is_dir()
    done = runner.invoke(app, ["retain", "--workdir", str(workdir), "--keep-runs", "1", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    assert summary["events"]["files_after"] == 1 and sorted(summary["runs"]["pruned"]) == ["r3", "r4"]
    bad = runner.invoke(app, ["retain", "--workdir", str(workdir), "--keep-runs", "0"])
    assert bad.exit_code == 2 and "keep_runs" in bad.output


def test_a_dead_services_spool_whose_part_was_compacted_is_not_written_again(tmp_path):
    """A service killed between its part's rename and its spool's deletion, restarted after the part was
    compacted: the start-up recovery sees the part in the compacted file's list and writes nothing."""
    from tandem.serve.events import SPOOL_SUFFIX, EventLog

    folder = layout.events_dir(tmp_path)
    ids = _parts(folder, NOW - timedelta(hours=5), 1, timedelta(0), tag="20240501T070000000000-999-abcde")
    tag = "20240501T070000000000-999-abcde0"  # the part's tag: the spool file it emptied
    spool = folder.with_name("events.spool")
    spool.mkdir()
    rows = read_events(tmp_path).assign(ts=lambda d: d["ts"].astype(str)).to_dict("records")
    (spool / f"{tag}{SPOOL_SUFFIX}").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert compaction.compact_events(folder, timedelta(hours=2), now=NOW)["parts_compacted"] == 1
    log = EventLog(folder, spool=spool)
    assert log.recover() == 0 and not list(spool.glob(f"*{SPOOL_SUFFIX}"))
    _exactly_once(tmp_path, ids)
