"""Retention of the work folder by policy (`retention` section of the config; `tandem retain`).

Runs: each trained run keeps a few hundred MB of training state (`runs/<run>/training/checkpoints/`,
`checkpoints.superseded/`, `best/`) that only resuming or post-mortems of that run use. The newest
`retention.keep_runs` trained runs (by when their training finished, `train.json`) keep it; older ones lose
those folders. Never touched: model folders (`runs/<run>/model`, `collections/<c>/model`), vectors and
summaries of any run, and anything of a run whose collection is live, the challenger (any alias) or the
rollback target, nor a run whose training has not finished (it may resume).

Served events: parts older than `retention.compact_after_hours` are compacted into one file per hour or
day (`tandem.data.compaction`), so the hourly rollout guard and the next run read a few files, not one per
ten seconds.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.data.compaction import compact_events
from tandem.release.index import ItemIndex, built_by

log = logging.getLogger(__name__)
HEAVY = ("training/checkpoints", "training/checkpoints.superseded", "training/best")
DONE_SUMMARY = "train.json"  # written last by the train stage


def serving_collections(workdir: str | Path, cfg: RunConfig) -> set[str]:
    """The collections an alias points at (live, challenger) and the rollback target; empty when the
    workdir has no index yet. Raises ValueError when the index cannot be read (nothing is guessed)."""
    if not cfg.index.milvus_uri and not layout.milvus_db(workdir).exists():
        return set()
    try:
        with ItemIndex(cfg.index, workdir) as idx:
            return (set(idx.aliases().values()) | {idx.rollback_target()}) - {None}
    except Exception as e:  # Milvus unreachable, or Lite's file held by a running service
        raise ValueError(
            f"retention: cannot read the index's aliases to find the live and rollback runs ({type(e).__name__}: "
            f"{e}); run it where the index is reachable (a Milvus server: --milvus-uri), or with the service stopped "
            "when it uses Milvus Lite"
        ) from e


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def retain_runs(workdir: str | Path, keep_runs: int, protected: set[str], dry_run: bool = False) -> dict:
    """Remove the heavy training folders of trained runs beyond the newest `keep_runs`, except the runs
    built a collection in `protected`. Returns what was (or, dry, would be) removed and kept."""
    if keep_runs < 1:
        raise ValueError(f"retention.keep_runs must be at least 1, got {keep_runs}")
    runs_dir = layout.runs_dir(workdir)
    trained = [d for d in runs_dir.iterdir() if (d / DONE_SUMMARY).is_file()] if runs_dir.is_dir() else []
    trained.sort(key=lambda d: ((d / DONE_SUMMARY).stat().st_mtime, d.name))
    serving = sorted(d.name for d in trained if any(built_by(c, d.name) for c in protected))
    summary = {"dry_run": dry_run, "runs": len(trained), "kept_newest": [d.name for d in trained[-keep_runs:]]}
    summary |= {"kept_serving": serving, "pruned": {}, "bytes": 0}
    for run in trained[:-keep_runs]:
        if run.name in serving:
            continue
        heavy = [run / h for h in HEAVY if (run / h).is_dir()]
        if not heavy:
            continue
        size = sum(_size(h) for h in heavy)
        summary["pruned"][run.name] = [h.relative_to(run).as_posix() for h in heavy]
        summary["bytes"] += size
        if not dry_run:
            for h in heavy:
                shutil.rmtree(h)
            log.info("retention: removed %s of run %s (%.1f MB)", ", ".join(summary["pruned"][run.name]), run.name,
                     size / 1e6)  # fmt: skip
    return summary


def retain(workdir: str | Path, cfg: RunConfig, dry_run: bool = False, runs: bool = True, events: bool = True) -> dict:
    """The whole policy: compact the served-event parts, then prune the old runs' training folders."""
    rcfg, out = cfg.retention, {}
    if events:
        older = timedelta(hours=rcfg.compact_after_hours)
        out["events"] = compact_events(layout.events_dir(workdir), older, rcfg.compact_by, dry_run=dry_run)
    if runs:
        out["runs"] = retain_runs(workdir, rcfg.keep_runs, serving_collections(workdir, cfg), dry_run=dry_run)
    return out
