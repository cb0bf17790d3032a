"""Great Expectations validation of logs / catalog / pairs (tandem.data.validate)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from tandem.core.config import ContractConfig, PairsConfig
from tandem.data.validate import DataValidationError, ValidationResult, validate_run

CONTRACT = ContractConfig()
PAIRS_CFG = PairsConfig(up=30.0, low=0.01, top_t=2)


def _logs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["a", "b", "a", "c"],
            "event": ["view", "click", "view", "purchase"],
            "ts": pd.to_datetime(
                ["2024-01-01 10:00", "2024-01-01 10:05", "2024-01-02 00:00", "2024-01-02 01:00"], utc=True
            ),
            "query": ["red shoes", None, None, "bag"],
        }
    )


def _catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Shoe", "Boot", "Bag"],
            "topics": [["shoes"], ["shoes", "winter"], []],
            "content": ["red shoe", "warm boot", "leather bag"],
            "images": [["img/a.jpg"], [], ["img/c1.jpg", "img/c2.jpg"]],
            "city": ["Paris", "Oslo", "Rome"],
            "facilities": [["wifi"], [], ["pool"]],
        }
    )


def _pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": ["a", "a", "b", "c"],
            "related_item_id": ["b", "c", "a", "a"],
            "score": [1.5, 0.5, 2.0, 0.02],
            "support": [3, 1, 2, 1],
            "split": ["train", "train", "valid", "test"],
        }
    )


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[ValidationResult, object]:
    """One validation of the good tables (GX import + context are the slow part), then a re-run
    into the same out_dir to check idempotency."""
    out = tmp_path_factory.mktemp("gx_good")
    validate_run(_logs(), _catalog(), _pairs(), out, CONTRACT, PAIRS_CFG)
    return validate_run(_logs(), _catalog(), _pairs(), out, CONTRACT, PAIRS_CFG), out


def _fails(tmp_path, logs=None, catalog=None, pairs=None) -> str:
    with pytest.raises(DataValidationError) as info:
        validate_run(
            _logs() if logs is None else logs,
            _catalog() if catalog is None else catalog,
            _pairs() if pairs is None else pairs,
            tmp_path,
            CONTRACT,
            PAIRS_CFG,
        )
    msg = str(info.value)
    assert not info.value.result.success
    assert str(info.value.result.docs_path) in msg.splitlines()[-1]
    assert info.value.result.docs_path.is_file()
    return msg


def _failed_line(msg: str, suite: str, column: str) -> str:
    lines = [ln for ln in msg.splitlines() if f"[{suite}]" in ln and f"column '{column}'" in ln]
    assert lines, msg
    return lines[0]


def test_import_has_no_side_effects():
    code = "import sys, tandem.data.validate; assert 'great_expectations' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_good_data_passes_and_writes_data_docs(good_run):
    result, out = good_run
    assert result.success
    assert set(result.suites) == {"logs", "catalog", "pairs"}
    assert all(s["success"] and s["evaluated"] > 0 and s["failed"] == [] for s in result.suites.values())
    assert result.docs_path.name == "index.html" and result.docs_path.is_file()
    assert result.docs_path.is_relative_to(out)
    html = result.docs_path.read_text()
    assert all(f"validations/{suite}/" in html for suite in ("logs", "catalog", "pairs"))


def test_unknown_event(tmp_path):
    logs = _logs()
    logs.loc[1, "event"] = "hover"
    line = _failed_line(_fails(tmp_path, logs=logs), "logs", "event")
    assert "hover" in line and "view" in line


def test_null_item_id_in_logs(tmp_path):
    logs = _logs()
    logs.loc[2, "item_id"] = None
    line = _failed_line(_fails(tmp_path, logs=logs), "logs", "item_id")
    assert "not be null" in line and "1 unexpected" in line


def test_timestamps_out_of_range_with_utc_column(tmp_path):
    logs = _logs()
    logs.loc[0, "ts"] = pd.Timestamp("1980-05-01", tz="UTC")
    logs.loc[3, "ts"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=30)
    line = _failed_line(_fails(tmp_path, logs=logs), "logs", "ts")
    assert "2 unexpected" in line and "1980-05-01" in line and "error" not in line


def test_timestamp_window_is_the_contracts(tmp_path):
    """contract.min_ts / max_ts widen the suite's window too, so a row the loader keeps passes here."""
    logs = _logs()
    logs.loc[0, "ts"] = pd.Timestamp("1980-05-01", tz="UTC")
    wide = ContractConfig(min_ts="1975-01-01")
    assert validate_run(logs, _catalog(), _pairs(), tmp_path, wide, PAIRS_CFG, raise_on_failure=False).success
    narrow = ContractConfig(max_ts="2024-01-01T12:00:00Z")  # the two events of 2024-01-02 are after it
    result = validate_run(_logs(), _catalog(), _pairs(), tmp_path, narrow, PAIRS_CFG, raise_on_failure=False)
    failed = [f for f in result.suites["logs"]["failed"] if f["column"] == "ts"]
    assert len(failed) == 1 and "2 unexpected" in failed[0]["details"]


def test_missing_log_column(tmp_path):
    msg = _fails(tmp_path, logs=_logs().drop(columns="event"))
    assert "[logs] column 'event': expect_column_to_exist" in msg


def test_duplicate_catalog_item_id(tmp_path):
    catalog = pd.concat([_catalog(), _catalog().iloc[[1]]], ignore_index=True)
    line = _failed_line(_fails(tmp_path, catalog=catalog), "catalog", "item_id")
    assert "unique" in line and "'b'" in line


def test_score_above_up(tmp_path):
    pairs = _pairs()
    pairs.loc[0, "score"] = 99.0
    line = _failed_line(_fails(tmp_path, pairs=pairs), "pairs", "score")
    assert "99.0" in line and "max_value=30.0" in line


def test_self_pair(tmp_path):
    pairs = _pairs()
    pairs.loc[2, "related_item_id"] = "b"
    line = _failed_line(_fails(tmp_path, pairs=pairs), "pairs", "self_pair_item_id")
    assert "related_item_id" in line and "'b'" in line


def test_too_many_related_items(tmp_path):
    extra = pd.DataFrame(
        {"item_id": ["a"], "related_item_id": ["d"], "score": [1.0], "support": [1], "split": ["train"]}
    )
    pairs = pd.concat([_pairs(), extra], ignore_index=True)  # "a" now has 3 train pairs, top_t=2
    line = _failed_line(_fails(tmp_path, pairs=pairs), "pairs", "n_related_per_item_split")
    assert "top_t=2" in line and "observed 3" in line


def test_no_raise_returns_failed_summary(tmp_path):
    pairs = _pairs()
    pairs.loc[1, "split"] = "holdout"
    result = validate_run(_logs(), _catalog(), pairs, tmp_path, CONTRACT, PAIRS_CFG, raise_on_failure=False)
    assert not result.success and result.suites["logs"]["success"] and result.suites["catalog"]["success"]
    (failed,) = result.suites["pairs"]["failed"]
    assert failed["column"] == "split" and failed["expectation"] == "expect_column_values_to_be_in_set"
    assert "holdout" in failed["details"]
