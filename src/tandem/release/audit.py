"""A health check of what is serving: the collection behind the live alias, after each promotion.

It finds the run that built the live collection, checks that the collection holds exactly one
vector per catalogue item of that run, and that searching through the alias with items' own
vectors finds those items (a broken or half-written index fails here, not in production).
The result goes to `WORKDIR/audit/live.json` and `runs/<run_id>/audit.json`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.release.attempts import frozen
from tandem.release.index import ItemIndex, built_by


def _run_of(workdir: Path, collection: str) -> Path:
    """What the collection was written from: its frozen folder (tandem.release.attempts), else its run's folder."""
    if frozen(workdir, collection) is not None:
        return layout.collection_dir(workdir, collection)
    for run_dir in sorted(layout.runs_dir(workdir).glob("*")):
        if built_by(collection, run_dir.name):
            return run_dir
    raise ValueError(f"the live collection {collection} was not built by any run under {workdir}/runs")


def audit_live(
    workdir: str | Path, cfg: RunConfig = RunConfig(), sample: int = 50, k: int = 10, min_self_recall: float = 0.95
) -> dict:
    """Check the live collection; raises ValueError (after writing the result) when it is unhealthy."""
    workdir = Path(workdir).resolve()
    with ItemIndex(cfg.index, workdir) as idx:
        live = idx.live()
        if live is None:
            raise ValueError(f"no '{cfg.index.alias}' alias in {idx.uri} yet: nothing has been promoted")
        run_dir = _run_of(workdir, live)
        catalog = pd.read_parquet(run_dir / "data" / "catalog.parquet")
        vectors = np.load(run_dir / "vectors" / "items.npy")
        count = idx.count(live)
        rows = np.linspace(0, len(catalog) - 1, num=min(sample, len(catalog)), dtype=int)
        hits = idx.search(cfg.index.alias, vectors[rows], k=k)
    ids = catalog["item_id"].to_numpy()
    found = [ids[r] in {h[0] for h in row} for r, row in zip(rows, hits)]
    self_recall = float(np.mean(found)) if found else 0.0
    problems = []
    if count != len(catalog):
        problems.append(f"{count} vectors for {len(catalog)} catalogue items")
    if self_recall < min_self_recall:
        problems.append(f"only {self_recall:.0%} of sampled items find themselves in their top {k}")
    result = {
        "checked_at": datetime.now(UTC).isoformat(),
        "live_collection": live,
        "run_id": (frozen(workdir, live) or {}).get("run_id", run_dir.name),
        "vectors": count,
        "items": len(catalog),
        f"self_recall@{k}": self_recall,
        "sampled": len(rows),
        "ok": not problems,
        "problems": problems,
    }
    text = json.dumps(result, indent=2)
    layout.audit_dir(workdir).mkdir(exist_ok=True)
    (layout.audit_dir(workdir) / "live.json").write_text(text)
    run_folder = layout.run_dir(workdir, result["run_id"])
    (run_folder if run_folder.is_dir() else run_dir).joinpath("audit.json").write_text(text)
    if problems:
        raise ValueError(f"live index {live} (run {result['run_id']}) is unhealthy: {'; '.join(problems)}")
    return result
