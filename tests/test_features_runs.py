"""Feast snapshots keyed per run, and an online store that an older backfill never moves backwards."""

from __future__ import annotations

import logging

import pandas as pd

from tandem.data import features as fs
from tandem.pipeline import stages

T1, T2 = pd.Timestamp("2024-03-01 12:00", tz="UTC"), pd.Timestamp("2024-03-08 12:00", tz="UTC")


def _table(ids: list[str], title: str, as_of: pd.Timestamp) -> pd.DataFrame:
    catalog = pd.DataFrame({"item_id": ids, "title": title, "content": "", "topics": [["t"]] * len(ids)})
    catalog["images"] = [[] for _ in ids]
    logs = pd.DataFrame({"user_id": "u", "item_id": ids, "event": "click", "ts": as_of - pd.Timedelta(hours=1)})
    empty_pairs = pd.DataFrame(columns=["item_id", "related_item_id"])
    return fs.item_feature_table(catalog, logs, empty_pairs, pd.DataFrame(columns=["item_id", "users"]), as_of)


def _titles(work, ids, **kw) -> list[str]:
    return fs.read_items(work, ids, columns=("title",), **kw)["title"].tolist()


def test_two_runs_with_the_same_as_of_read_their_own_snapshot(tmp_path):
    """Runs r1 and r2 of the same data interval (same as-of time), different features: each run's
    offline read (what its training uses, through `stages.items`) gives its own snapshot back."""
    work, ids = tmp_path / "work", ["a", "b", "c"]
    summaries = {}
    for run_id, title in (("r1", "first"), ("r2", "second")):
        summaries[run_id] = fs.apply_and_materialize(work, run_id, _table(ids, title, T1))
        assert summaries[run_id]["run_id"] == run_id
        assert (work / "feast" / fs.ITEM_VIEW / f"{run_id}.parquet").is_file()
    assert _titles(work, ids, as_of=T1, run_id="r1") == ["first"] * 3
    assert _titles(work, ids, as_of=T1, run_id="r2") == ["second"] * 3
    assert _titles(work, ids) == ["second"] * 3  # online: the later write of the same as-of time
    for run_id, title in (("r1", "first"), ("r2", "second")):  # the pipeline's read of the run's items
        run = stages.RunPaths.of(work, run_id)
        (run / "data").mkdir(parents=True)
        _table(ids, title, T1)[["item_id", "title"]].to_parquet(run / "data" / "catalog.parquet")
        run.save("features", summaries[run_id] | {"catalog_columns": ["title"]})
        assert stages.items(run)["title"].tolist() == [title] * 3


def test_an_older_backfill_never_overwrites_newer_online_values(tmp_path, caplog):
    """The newer interval runs first, then a backfill of an older one: the online store keeps the newer
    values (the backfill's items that are not online yet are written), the skip is logged and counted,
    and the backfill's own offline snapshot is still what its run reads."""
    work = tmp_path / "work"
    new = fs.apply_and_materialize(work, "new", _table(["a", "b", "c"], "new", T2))
    assert new["online"][fs.ITEM_VIEW] == {"written": 3, "skipped_newer": 0}
    with caplog.at_level(logging.WARNING, logger="tandem.data.features_online"):
        old = fs.apply_and_materialize(work, "old", _table(["a", "b", "c", "d"], "old", T1))
    counts = old["online"][fs.ITEM_VIEW]
    assert (counts["written"], counts["skipped_newer"]) == (1, 3)  # d was not online; a, b, c are newer there
    assert counts["online_newest"] == T2.isoformat()
    assert "3 of 4 rows" in caplog.text and "older backfill" in caplog.text
    assert _titles(work, ["a", "b", "c", "d"]) == ["new", "new", "new", "old"]
    assert _titles(work, ["a", "d"], as_of=T1, run_id="old") == ["old", "old"]
    assert _titles(work, ["a"], as_of=T2) == ["new"]  # point in time, no run: the latest snapshot
    again = fs.apply_and_materialize(work, "new", _table(["a", "b", "c"], "rerun", T2))  # same as-of: replaces
    assert again["online"][fs.ITEM_VIEW] == {"written": 3, "skipped_newer": 0}
    assert _titles(work, ["a", "d"]) == ["rerun", "old"]


def test_snapshots_written_before_the_run_key_are_upgraded(tmp_path):
    """A workdir of an older tandem (snapshots without `run_id`): the next run adds the column to them, so
    Feast still reads the whole folder, and the old run's snapshot is read back under its file name."""
    work = tmp_path / "work"
    old = work / "feast" / fs.ITEM_VIEW / "before.parquet"
    old.parent.mkdir(parents=True)
    _table(["a"], "before", T1).drop(columns="run_id").to_parquet(old, index=False)
    fs.apply_and_materialize(work, "after", _table(["a"], "after", T2))
    assert pd.read_parquet(old)["run_id"].tolist() == ["before"]
    assert _titles(work, ["a"], as_of=T1, run_id="before") == ["before"]
    assert _titles(work, ["a"], as_of=T2, run_id="after") == ["after"]
