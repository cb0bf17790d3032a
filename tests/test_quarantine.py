"""Quarantine at load time (tandem.data.contract.load_logs) and the duplicate-event / id-type checks of
the GX logs suite (tandem.data.validate): every bad row has its exact reason, keeps its original
values and its source file, and rows in = rows kept + rows quarantined."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tandem.core.config import ContractConfig, PairsConfig
from tandem.data.contract import load_logs

# 2024-01-01T10:00:00Z is epoch 1704103200.
BAD_CSV = """user_id,item_id,event,ts
u1,12,view,2024-01-01T10:00:00Z
u1,12.0,click,2024-01-01T10:05:00Z
,12,view,2024-01-01T10:00:00Z
u2,  ,view,2024-01-01T10:00:00Z
u2,7,view,not a time
u2,7,Hover,2024-01-01T10:00:00Z
7.0,13,purchase,1704103200
7,13.00,purchase,2024-01-01 10:00:00
u3,x9,click,
"""
CSV_REASONS = {
    3: ("", "12", "view", "2024-01-01T10:00:00Z", "missing user_id"),
    4: ("u2", "  ", "view", "2024-01-01T10:00:00Z", "missing item_id"),
    5: ("u2", "7", "view", "not a time", "unparsable ts: not a time"),
    6: ("u2", "7", "Hover", "2024-01-01T10:00:00Z", "unknown event: hover"),
    8: ("7", "13.00", "purchase", "2024-01-01 10:00:00", "duplicate event"),
    9: ("u3", "x9", "click", "", "unparsable ts: NULL"),
}


def _quarantine(loaded) -> dict:
    q = loaded.quarantined.fillna("")
    return {r.row: (r.user_id, r.item_id, r.event, r.ts, r.reason) for r in q.itertuples()}


def test_csv_reasons_original_values_and_accounting(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_text(BAD_CSV)
    loaded = load_logs(path)
    assert _quarantine(loaded) == CSV_REASONS
    assert set(loaded.quarantined["file"]) == {str(path)}
    assert loaded.counts() == {"rows_in": 9, "rows_kept": 3, "rows_quarantined": 6}
    kept = loaded.kept
    # "12" and "12.0" are one item, "7.0" and "7" one user; an epoch and an ISO string one instant.
    assert kept[["user_id", "item_id", "event"]].values.tolist() == [
        ["u1", "12", "view"],
        ["7", "13", "purchase"],
        ["u1", "12", "click"],
    ]
    assert kept["ts"].iloc[1] == pd.Timestamp("2024-01-01T10:00:00Z")


def _parquet_parts(folder: Path) -> list[Path]:
    """Three files whose id columns have three types: int64, float64 and string."""
    folder.mkdir()
    t = pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:05", "2024-01-01 11:00"], utc=True)
    frames = {
        "a.parquet": pd.DataFrame(
            {"user_id": [7, 8, 9], "item_id": [12, 13, 14], "event": ["view", "click", "view"], "ts": t}
        ),
        "b.parquet": pd.DataFrame(  # row 1 repeats a.parquet's row 1 as floats; row 3 has no item
            {"user_id": [7.0, 8.0, 9.0], "item_id": [12.0, 15.0, None], "event": ["view", "scroll", "view"], "ts": t}
        ),
        "c.parquet": pd.DataFrame(  # row 2 repeats a.parquet's row 2 as strings
            {"user_id": ["u1", "8", None], "item_id": ["12.0", "13", "14"], "event": ["view", "click", "view"], "ts": t}
        ),
    }
    for name, frame in frames.items():
        frame.to_parquet(folder / name)
    return [folder / n for n in frames]


def test_parquet_files_with_mixed_id_types(tmp_path):
    files = _parquet_parts(tmp_path / "parts")
    loaded = load_logs(tmp_path / "parts")
    q = loaded.quarantined
    got = {
        (Path(f).name, r): (u, i, e, reason)
        for f, r, u, i, e, reason in q[["file", "row", "user_id", "item_id", "event", "reason"]].itertuples(index=False)
    }
    assert got == {
        ("b.parquet", 1): ("7.0", "12.0", "view", "duplicate event"),
        ("b.parquet", 2): ("8.0", "15.0", "scroll", "unknown event: scroll"),
        ("b.parquet", 3): ("9.0", None, "view", "missing item_id"),
        ("c.parquet", 2): ("8", "13", "click", "duplicate event"),
        ("c.parquet", 3): (None, "14", "view", "missing user_id"),
    }
    assert set(q["file"]) <= {str(f) for f in files}
    assert loaded.counts() == {"rows_in": 9, "rows_kept": 4, "rows_quarantined": 5}
    kept = loaded.kept.sort_values(["user_id", "item_id"])
    assert kept[["user_id", "item_id"]].values.tolist() == [["7", "12"], ["8", "13"], ["9", "14"], ["u1", "12"]]
    assert kept["user_id"].map(type).eq(str).all() and kept["item_id"].map(type).eq(str).all()


def test_same_ids_from_csv_and_parquet(tmp_path):
    """One log written as CSV (ids as text, some with '.0') and as Parquet (ids as floats) loads
    to the same rows."""
    frame = pd.DataFrame(
        {
            "user_id": [1.0, 2.0, 3.0],
            "item_id": [10.0, 11.0, 12.0],
            "event": ["view", "click", "view"],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"], utc=True),
        }
    )
    frame.to_parquet(tmp_path / "l.parquet")
    (tmp_path / "l.csv").write_text(
        "user_id,item_id,event,ts\n1,10.0,view,2024-01-01\n2.0,11,click,1704153600\n3,12,VIEW ,2024-01-03T00:00:00Z\n"
    )
    from_parquet, from_csv = load_logs(tmp_path / "l.parquet"), load_logs(tmp_path / "l.csv")
    pd.testing.assert_frame_equal(from_parquet.kept, from_csv.kept)
    assert from_csv.counts() == from_parquet.counts() == {"rows_in": 3, "rows_kept": 3, "rows_quarantined": 0}


# --- the GX logs suite ------------------------------------------------------------------------


def _logs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["a", "b", "a"],
            "event": ["view", "click", "view"],
            "ts": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 10:05", "2024-01-02 00:00"], utc=True),
        }
    )


def _gx_failures(tmp_path, logs: pd.DataFrame) -> list[dict]:
    from tandem.data.validate import validate_run

    catalog = pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]})
    pairs = pd.DataFrame(
        {"item_id": ["a"], "related_item_id": ["b"], "score": [1.0], "support": [1], "split": ["train"]}
    )
    result = validate_run(logs, catalog, pairs, tmp_path, ContractConfig(), PairsConfig(), raise_on_failure=False)
    assert result.suites["catalog"]["success"] and result.suites["pairs"]["success"]
    return result.suites["logs"]["failed"]


@pytest.mark.parametrize("case", ["duplicate", "int_ids"])
def test_gx_logs_suite_catches_duplicates_and_non_string_ids(tmp_path, case):
    logs = _logs()
    if case == "duplicate":
        logs = pd.concat([logs, logs.iloc[[1]]], ignore_index=True)
        (failed,) = _gx_failures(tmp_path, logs)
        assert failed["expectation"] == "expect_compound_columns_to_be_unique"
        assert failed["column"] == "user_id, item_id, event, ts"
        assert "no duplicate events" in failed["details"] and "2 unexpected" in failed["details"]
    else:
        logs["item_id"] = [1, 2, 1]
        (failed,) = _gx_failures(tmp_path, logs)
        assert failed["expectation"] == "expect_column_values_to_be_of_type" and failed["column"] == "item_id"
