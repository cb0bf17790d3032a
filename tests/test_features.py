"""Feast feature store: tables, apply/materialise, online and offline reads, and `stages.items` through it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tandem import features as fs
from tandem import stages
from tandem.config import RunConfig
from tandem.synth import make_dataset

UTC = "UTC"


def test_popularity_degree_and_last_seen_on_a_hand_example():
    catalog = pd.DataFrame(
        {"item_id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"], "topics": [["t"], [], ["u", "v"], []]}
        | {"content": ["", "", "", ""], "images": [["/x/1.png", "/x/2.png"], [], [], ["/x/3.png"]]}
    )
    ts = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-09"], utc=True)
    logs = pd.DataFrame({"user_id": ["1", "1", "2", "2"], "item_id": ["a", "b", "a", "c"], "event": "click", "ts": ts})
    # a-b both ways counts once; a-c; c-c (self) ignored; d has no pair
    train = pd.DataFrame({"item_id": ["a", "b", "a", "c"], "related_item_id": ["b", "a", "c", "c"]})
    pop = pd.DataFrame({"item_id": ["a", "b"], "users": [2, 1]})
    as_of = pd.Timestamp("2024-01-05", tz=UTC)  # the event on 2024-01-09 is after it
    table = fs.item_feature_table(catalog, logs, train, pop, as_of).set_index("item_id")
    assert list(table.index) == ["a", "b", "c", "d"]
    assert table["popularity"].tolist() == [2, 1, 0, 0]
    assert table["degree"].tolist() == [2, 1, 1, 0]
    assert table["n_images"].tolist() == [2, 0, 0, 1]
    assert table.loc["a", "last_seen"] == pd.Timestamp("2024-01-03", tz=UTC)
    assert table.loc["c", "last_seen"] is pd.NaT and table.loc["d", "last_seen"] is pd.NaT
    assert (table["event_timestamp"] == as_of).all()
    assert table.loc["b", "facilities"] == [] and table.loc["b", "city"] == ""
    users = fs.user_feature_table(logs, as_of).set_index("user_id")
    assert users["n_events"].tolist() == [2, 1] and users["n_items"].tolist() == [2, 1]


def test_feature_store_yaml_matches_the_library():
    repo = Path(__file__).resolve().parents[1] / "features"
    conf = yaml.safe_load((repo / "feature_store.yaml").read_text())
    assert conf["project"] == fs.PROJECT and conf["provider"] == "local"
    assert conf["offline_store"]["type"] == "file" and conf["online_store"]["type"] == "sqlite"
    assert conf["entity_key_serialization_version"] == 3
    assert "work/feast" in conf["registry"]  # state outside git (work/ is ignored)
    assert "definitions(" in (repo / "definitions.py").read_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run loaded, mined and put through the features stage; the catalogue has optional
    columns, empty lists and items without images."""
    data = tmp_path_factory.mktemp("data")
    logs_path, catalog_path = make_dataset(data, n_items=12, n_kinds=3, n_users=20, sessions_per_user=4, days=10)
    catalog = pd.read_csv(catalog_path, dtype=str, keep_default_na=False)
    catalog["city"] = ["Oslo", ""] * 6
    catalog["facilities"] = ["wifi|pool", "", "spa"] * 4
    catalog["topics"] = catalog["topics"].where(catalog.index % 4 != 3, "")  # some items without topics
    catalog.to_csv(catalog_path, index=False)
    run = stages.RunPaths.of(tmp_path_factory.mktemp("work"), "r1")
    cfg = RunConfig()
    stages.load(run, logs_path, catalog_path, cfg)
    stages.mine(run, cfg)
    with pytest.raises(ValueError, match="features stage"):
        stages.items(run)
    summary = stages.features(run, cfg)
    return run, summary


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col in ("topics", "images", "facilities"):
        if col in frame:
            frame[col] = frame[col].map(list)
    return frame.reset_index(drop=True)


def test_features_stage_summary_and_store_location(run):
    run, summary = run
    assert summary["items"] == 12 and summary["users"] == 20
    assert set(summary["catalog_columns"]) == {"title", "content", "city", "topics", "images", "facilities"}
    assert summary["repo"] == str(run.workdir / "feast")
    assert (run.workdir / "feast" / "registry.db").is_file() and (run.workdir / "feast" / "online.db").is_file()
    assert Path(summary["snapshots"]["item_features"]).is_file()
    assert summary["as_of"] == pd.read_parquet(run / "data" / "logs.parquet")["ts"].max().isoformat()
    assert stages.RunPaths.of(run.workdir, "r1").summary("features") == summary


def test_items_through_feast_equal_the_catalogue(run):
    run, _ = run
    expected = _normalised(pd.read_parquet(run / "data" / "catalog.parquet"))
    got = stages.items(run)
    assert list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(_normalised(got), expected)
    assert all(isinstance(v, list) for v in got["topics"]) and [] in got["topics"].tolist()
    assert [] in got["images"].tolist() and [] in got["facilities"].tolist()
    assert all(Path(p).is_absolute() for ps in got["images"] for p in ps)


def test_online_read_matches_offline_with_numeric_features(run):
    run, summary = run
    ids = ["it5", "it0", "it3"]  # any order comes back in that order
    columns = fs.ITEM_FEATURES  # the catalogue's fields and the computed ones
    online = fs.read_items(run.workdir, ids, columns=columns)
    offline = fs.read_items(run.workdir, ids, as_of=summary["as_of"], columns=columns)
    assert online["item_id"].tolist() == ids
    pd.testing.assert_frame_equal(online, offline, check_dtype=False)
    assert online["n_images"].tolist() == [len(v) for v in online["images"]]
    pop = pd.read_parquet(run / "pairs" / "popularity.parquet").set_index("item_id")["users"]
    assert online["popularity"].tolist() == [int(pop.get(i, 0)) for i in ids]
    train = stages.pairs(run, "train")
    for item, degree in zip(ids, online["degree"]):
        partners = set(train.loc[train["item_id"] == item, "related_item_id"])
        partners |= set(train.loc[train["related_item_id"] == item, "item_id"])
        assert degree == len(partners - {item})
    logs = pd.read_parquet(run / "data" / "logs.parquet")
    assert online["last_seen"].iloc[1] == logs.loc[logs["item_id"] == "it0", "ts"].max()


def test_unknown_items_raise(run):
    run, summary = run
    with pytest.raises(ValueError, match="no features"):
        fs.read_items(run.workdir, ["it0", "nope"])
    with pytest.raises(ValueError, match="no features"):
        fs.read_items(run.workdir, ["it0"], as_of=pd.Timestamp("2000-01-01", tz=UTC))


def test_training_reads_point_in_time_while_serving_reads_latest(run):
    """A later snapshot (a later run) changes the online store, not what this run reads."""
    run, summary = run
    catalog = pd.read_parquet(run / "data" / "catalog.parquet")
    later = pd.Timestamp(summary["as_of"]) + pd.Timedelta(days=1)
    empty = pd.DataFrame(columns=["item_id", "related_item_id"])
    logs = pd.read_parquet(run / "data" / "logs.parquet")
    table = fs.item_feature_table(
        catalog.assign(title="renamed"), logs, empty, pd.DataFrame(columns=["item_id", "users"]), later
    )
    fs.apply_and_materialize(run.workdir, "r2", table)
    assert set(fs.read_items(run.workdir, ["it0", "it1"])["title"]) == {"renamed"}
    assert stages.items(run)["title"].tolist() == catalog["title"].tolist()
