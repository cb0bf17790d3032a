"""benchmarks/log_signals.py: its co-occurrence and recency rankers against plain loops over the clicks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tandem.core.config import EvalConfig
from tandem.evaluation.evaluate import EvalSet

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def log_signals():
    sys.path.insert(0, str(BENCHMARKS))  # it reads cold_targets' rebuild, as when run from benchmarks/
    try:
        spec = importlib.util.spec_from_file_location("log_signals_benchmark", BENCHMARKS / "log_signals.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def _setup(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 12
    catalog = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "title": [f"t{i}" for i in range(n)],
                            "topics": [[]] * n, "content": [""] * n})  # fmt: skip
    users, rows = rng.integers(0, 9, 80), rng.integers(0, n, 80)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    clicks = pd.DataFrame({"user_id": [f"u{u}" for u in users], "row": rows,
                           "ts": start + pd.to_timedelta(rng.integers(0, 40 * 24, 80), unit="h")})  # fmt: skip
    test = pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3"], "related_item_id": ["i4", "i5", "i6", "i7"]})
    ev = EvalSet.from_pairs(test, catalog, EvalConfig(), "hotelmatch", subsets=False)
    return ev, clicks, n, start + pd.Timedelta(days=41)


@pytest.mark.parametrize("cosine", [False, True])
def test_cooccurrence_over_users_counts_users_in_common(log_signals, cosine):
    ev, clicks, n, _ = _setup()
    scores = log_signals.cooccurrence_over_users(ev, clicks, n, cosine)(np.arange(len(ev.query_item)))
    sets = {row: set(group["user_id"]) for row, group in clicks.groupby("row")}
    for q, query in enumerate(ev.query_item):
        for p, item in enumerate(ev.pool):
            common = len(sets.get(query, set()) & sets.get(item, set()))
            if cosine:
                common /= np.sqrt(max(len(sets.get(query, ())), 1) * max(len(sets.get(item, ())), 1))
                assert scores[q, p] == pytest.approx(common, abs=1e-6)
            else:  # the popularity tie-break stays below one user in common
                assert int(scores[q, p]) == common and scores[q, p] - common < 1.0


def test_recency_popularity_weights_each_users_latest_click(log_signals):
    _, clicks, n, cutoff = _setup(1)
    got = log_signals.recency_popularity(clicks, cutoff, n, half_life=10.0)
    for row in range(n):
        latest = clicks[clicks["row"] == row].groupby("user_id")["ts"].max()
        days = (cutoff - latest).dt.total_seconds() / 86400
        assert got[row] == pytest.approx(float((0.5 ** (days / 10.0)).sum()))
