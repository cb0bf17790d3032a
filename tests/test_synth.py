"""The seeded scale-log generator (tandem.data.synth.generate_logs / write_logs)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tandem.data.contract import load_logs
from tandem.data.synth import BLOCK_EVENTS, generate_logs, write_logs

N = 30_000


@pytest.fixture(scope="module")
def logs() -> pd.DataFrame:
    return generate_logs(N, seed=3)


def test_same_seed_same_log_other_seed_other_log(logs):
    pd.testing.assert_frame_equal(logs, generate_logs(N, seed=3))
    assert not logs.equals(generate_logs(N, seed=4))


def test_contract_schema_and_vocabulary(logs):
    assert list(logs.columns) == ["user_id", "item_id", "event", "ts"]
    assert len(logs) == N
    assert str(logs["ts"].dtype) == "datetime64[us, UTC]"
    for col in ("user_id", "item_id", "event"):
        assert logs[col].map(type).eq(str).all(), col
    assert set(logs["event"]) == {"view", "click", "purchase"}
    share = logs["event"].value_counts(normalize=True)
    assert share["view"] > share["click"] > share["purchase"] > 0.01
    assert logs["ts"].min() >= pd.Timestamp("2024-01-01", tz="UTC")
    assert logs["ts"].max() < pd.Timestamp("2024-01-31", tz="UTC") + pd.Timedelta(hours=6)


def test_zipf_items_and_heavy_users(logs):
    items = logs["item_id"].value_counts()
    top = items.iloc[: max(1, len(items) // 100)].sum() / N
    assert top > 0.15, f"top 1% of items hold only {top:.0%} of events"
    users = logs["user_id"].value_counts()
    assert users.iloc[: max(1, len(users) // 100)].sum() / N > 0.08  # heavy users
    assert users.max() > 20 * users.median()


def test_sessions_views_then_clicks_of_other_items(logs):
    df = logs.sort_values(["user_id", "ts"])
    gap = df.groupby("user_id")["ts"].diff().dt.total_seconds()
    # Bursts: most consecutive events of a user are minutes apart, yet there are long pauses.
    assert (gap < 600).mean() > 0.6 and (gap > 6 * 3600).sum() > 100
    # Co-occurrence: clicks on another item within an hour after a view by the same user.
    views = df[df["event"] == "view"][["user_id", "item_id", "ts"]]
    clicks = df[df["event"] == "click"][["user_id", "item_id", "ts"]]
    joined = views.merge(clicks, on="user_id", suffixes=("_v", "_c"))
    after = (joined["ts_c"] > joined["ts_v"]) & (joined["ts_c"] - joined["ts_v"] < pd.Timedelta(hours=1))
    pairs = joined[after & (joined["item_id_v"] != joined["item_id_c"])]
    assert pairs[["item_id_v", "item_id_c"]].drop_duplicates().shape[0] > 1000


def test_written_parquet_is_the_contract_and_every_row_is_kept(tmp_path, monkeypatch):
    import tandem.data.synth as synth

    monkeypatch.setattr(synth, "BLOCK_EVENTS", 4_000)  # several blocks and chunks on a small log
    n = 10_000
    folder = write_logs(tmp_path / "parts", n, chunk_events=5_000, seed=1)
    single = write_logs(tmp_path / "logs.parquet", n, chunk_events=5_000, seed=1)
    parts = sorted(folder.glob("part-*.parquet"))
    assert len(parts) == 2 and pq.ParquetFile(single).num_row_groups == 2
    schema = pq.read_schema(single)
    assert [(f.name, str(f.type)) for f in schema] == [
        ("user_id", "string"),
        ("item_id", "string"),
        ("event", "string"),
        ("ts", "timestamp[us, tz=UTC]"),
    ]
    from_folder = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(from_folder, pd.read_parquet(single))
    # Chunking does not change the rows: the in-memory log is the same.
    pd.testing.assert_frame_equal(pd.read_parquet(single), synth.generate_logs(n, seed=1))
    for path in (single, folder):
        loaded = load_logs(path)
        assert loaded.counts() == {"rows_in": n, "rows_kept": n, "rows_quarantined": 0}


def test_block_size_is_large():
    assert BLOCK_EVENTS >= 100_000  # vectorised blocks: numpy overhead per block stays negligible


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one event"):
        generate_logs(0)
