"""benchmarks/cold_targets.py on a hand-made finished run: cold pairs grouped by target, hits read per ranker."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tandem.core.config import RunConfig, config_to_dict
from tandem.evaluation.evaluate import EvalSet
from tandem.evaluation.results import save_per_pair

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "cold_targets.py"


@pytest.fixture(scope="module")
def cold_targets():
    spec = importlib.util.spec_from_file_location("cold_targets_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs(*edges: str) -> pd.DataFrame:
    left, right = zip(*(e.split(">") for e in edges))
    return pd.DataFrame({"item_id": list(left), "related_item_id": list(right), "score": 1.0, "support": 1})


def test_cold_pairs_are_grouped_by_target_with_each_rankers_hits(tmp_path, cold_targets):
    run = tmp_path / "run"
    for folder in ("data", "pairs", "training", "evaluate"):
        (run / folder).mkdir(parents=True)
    n = 8
    catalog = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)], "title": [f"title {i}" for i in range(n)],
                            "topics": [[]] * n, "content": [""] * n})  # fmt: skip
    cutoff = pd.Timestamp("2024-01-10", tz="UTC")
    days = ["2024-01-01", "2024-01-02", "2024-01-12", "2024-01-03"]
    logs = pd.DataFrame({"user_id": ["u1", "u2", "u1", "u3"], "item_id": ["i5", "i5", "i6", "i0"], "event": "click",
                         "ts": pd.to_datetime(days, utc=True)})  # fmt: skip
    train, test = _pairs("i0>i1", "i2>i3"), _pairs("i0>i5", "i1>i5", "i2>i6", "i3>i1")  # cold: i5 twice, i6 once
    catalog.to_parquet(run / "data" / "catalog.parquet")
    logs.to_parquet(run / "data" / "logs.parquet")
    train.to_parquet(run / "pairs" / "train.parquet")
    test.to_parquet(run / "pairs" / "test.parquet")
    (run / "pairs.json").write_text(json.dumps({"cutoff": cutoff.isoformat()}))
    cfg = RunConfig()
    (run / "training" / "recipe.json").write_text(json.dumps(config_to_dict(cfg, redact=False)))
    ev = EvalSet.from_pairs(test, catalog, cfg.eval, "hotelmatch", train_pairs=train)
    found = np.array([1.0, 0.0, 1.0, 1.0])  # the model finds i5 from i0, misses it from i1, finds i6
    save_per_pair(run / "evaluate" / "per_pair.npz", {"model": {"recall@100": found},
                                                     "popularity": {"recall@100": np.zeros(4)}})  # fmt: skip
    summary = {"protocol": "hotelmatch", "test_pairs": 4, "counts": {"queries_are": "titles of the query items"}}
    (run / "evaluate.json").write_text(json.dumps(summary))
    text = cold_targets.breakdown(run)
    assert ev.subsets["cold"].tolist() == [True, True, True, False]
    assert "3 cold pairs on 2 target items" in text and "model 2, popularity 0" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()[3:]}
    assert rows["title 5"] == ["2", "2", "9", "1", "0"]  # pairs, users before, days seen, model, popularity
    assert rows["title 6"] == ["1", "0", "-2", "1", "0"]  # first seen inside the test window: a new item
