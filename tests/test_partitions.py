"""Date partitions: an interval's events land in their days; rerunning replaces, never duplicates."""

import pandas as pd
import pytest

from tandem.data.contract import load_logs
from tandem.data.partitions import ingest, select


@pytest.fixture
def source(tmp_path):
    ts = ["2024-01-01T10:00:00Z", "2024-01-01T23:59:59Z", "2024-01-02T00:00:00Z", "2024-01-03T12:00:00Z", "garbage"]
    df = pd.DataFrame({"user_id": ["u"] * 5, "item_id": ["a", "b", "c", "d", "e"], "event": ["view"] * 5, "ts": ts})
    df.to_csv(tmp_path / "landing.csv", index=False)
    return tmp_path / "landing.csv"


def test_ingest_splits_by_day_and_is_idempotent(source, tmp_path):
    counts = ingest(source, tmp_path / "wh", "2024-01-01", "2024-01-03")
    assert counts == {"2024-01-01": 3, "2024-01-02": 1}  # the unparsable row stays, for load to quarantine
    again = ingest(source, tmp_path / "wh", "2024-01-01", "2024-01-03")
    assert again == counts
    files = select(tmp_path / "wh", "2024-01-03", days=2)
    loaded = load_logs(files)
    assert sorted(loaded.kept["item_id"]) == ["a", "b", "c"]
    assert loaded.quarantined["reason"].tolist() == ["unparsable ts: garbage"]
    assert loaded.quarantined["file"].iloc[0].endswith("date=2024-01-01/part.parquet")
    assert load_logs(tmp_path / "wh" / "logs").rows_in == 4  # a folder works too


def test_select_window_and_errors(source, tmp_path):
    ingest(source, tmp_path / "wh", "2024-01-01", "2024-01-04")
    assert [p.parent.name for p in select(tmp_path / "wh", "2024-01-04", days=1)] == ["date=2024-01-03"]
    with pytest.raises(ValueError, match="no log partitions"):
        select(tmp_path / "wh", "2025-01-01", days=3)
    with pytest.raises(ValueError, match="empty interval"):
        ingest(source, tmp_path / "wh", "2024-01-02", "2024-01-01")
