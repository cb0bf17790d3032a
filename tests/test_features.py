"""Feast feature store: tables, apply/materialise, online and offline reads, and `stages.items` through it."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tandem.core.config import RunConfig, SplitConfig
from tandem.data import features as fs
from tandem.data.synth import make_dataset
from tandem.pipeline import stages

UTC = "UTC"
REPO_YAML = Path(__file__).resolve().parents[1] / "features" / "feature_store.yaml"
REDIS_DB = 13  # a Redis database of its own; the test's keys are also under a project name of its own


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


def test_feature_store_yaml_is_the_built_in_default_and_the_cli_sees_the_default_workdir(tmp_path, monkeypatch):
    conf = yaml.safe_load(REPO_YAML.read_text())
    assert REPO_YAML.read_text() == fs.shipped_store_yaml()  # the checkout's is the package's (tandem init)
    assert conf["project"] == fs.PROJECT
    monkeypatch.delenv(fs.STORE_YAML_ENV, raising=False)
    monkeypatch.chdir(REPO_YAML.parents[1])  # in a checkout's root: its features/feature_store.yaml
    assert fs.store_yaml() == (REPO_YAML.read_text(), "features/feature_store.yaml")
    monkeypatch.chdir(tmp_path)  # elsewhere (no features/ here): the one the package ships
    assert fs.store_yaml()[0] == fs.shipped_store_yaml() and "shipped" in fs.store_yaml()[1]
    (tmp_path / "features").mkdir()  # a deployment folder: its own, edited one
    (tmp_path / "features" / "feature_store.yaml").write_text("project: mine\n")
    assert fs.store_yaml() == ("project: mine\n", "features/feature_store.yaml")
    monkeypatch.undo()
    assert conf["registry"] == "feast/registry.db" and conf["online_store"]["path"] == "feast/online.db"
    # the Feast CLI resolves those paths from features/: its `feast` link is the default workdir's store
    assert os.readlink(REPO_YAML.parent / "feast") == "../work/feast"
    assert "definitions(" in (REPO_YAML.parent / "definitions.py").read_text()
    # the library resolves them against any workdir, and ${TANDEM_WORKDIR} too
    work = tmp_path / "w"
    config = fs.store_config(work)
    assert fs.registry_file(config) == work / "feast" / "registry.db" and config.repo_path == work
    assert (config.online_store.type, config.offline_store.type) == ("sqlite", "file")
    edited = tmp_path / "fs.yaml"
    edited.write_text(REPO_YAML.read_text().replace("registry: feast/", "registry: ${TANDEM_WORKDIR}/reg/"))
    assert fs.registry_file(fs.store_config(work, edited)) == work / "reg" / "registry.db"
    edited.write_text(REPO_YAML.read_text().replace("type: sqlite", "type: sqlight"))
    with pytest.raises(ValueError, match=str(edited)):
        fs.store_config(work, edited)
    edited.write_text("project: [tandem\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        fs.store_config(work, edited)
    monkeypatch.setenv(fs.STORE_YAML_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="missing.yaml does not exist"):
        fs.store_config(work)


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
    # 12 items: with split.drop_reverse (on by default) no test pair would be left; these tests need none
    cfg = RunConfig(split=replace(SplitConfig(), drop_reverse=False))
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


def test_a_copied_store_reads_its_own_files(run, tmp_path):
    """Every path in the store is relative to its workdir: a copy (e.g. `dvc pull` in another clone) reads
    its own snapshots and online DB, even with the original's gone."""
    run, summary = run
    copy = tmp_path / "elsewhere"
    shutil.copytree(run.workdir / "feast", copy / "feast")
    assert fs.store(copy).get_feature_view(fs.ITEM_VIEW).batch_source.path == "feast/item_features"
    latest = fs.read_items(run.workdir, ["it1", "it0"])  # the online store's values (a later test renames them)
    original = run.workdir / "feast"
    original.rename(run.workdir / "hidden")
    try:
        offline = fs.read_items(copy, ["it1", "it0"], as_of=summary["as_of"])
        online = fs.read_items(copy, ["it1", "it0"])
    finally:
        (run.workdir / "hidden").rename(original)
    titles = pd.read_parquet(run / "data" / "catalog.parquet").set_index("item_id").loc[["it1", "it0"], "title"]
    assert offline["title"].tolist() == titles.tolist()
    pd.testing.assert_frame_equal(online, latest)


def test_feast_cli_in_features_sees_the_default_workdirs_store(run, tmp_path):
    """The README's `cd features && feast apply` / `feast feature-views list`, in a copy of the repo whose
    work/feast is this run's store: the CLI and the library share registry, sources and online store."""
    run, _ = run
    shutil.copytree(
        REPO_YAML.parent, tmp_path / "features", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(run.workdir / "feast", tmp_path / "work" / "feast")
    feast = Path(sys.executable).parent / "feast"
    env = {k: v for k, v in os.environ.items() if k != fs.STORE_YAML_ENV}
    for args in (["apply"], ["feature-views", "list"]):
        done = subprocess.run(
            [str(feast), *args], cwd=tmp_path / "features", env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "item_features" in done.stdout and "user_features" in done.stdout
    assert not (tmp_path / "features" / "data").exists()  # everything went through the link into work/feast
    got = fs.read_items(tmp_path / "work", ["it2"], as_of=run.summary("features")["as_of"])
    assert got["title"].tolist() == stages.catalog(run).set_index("item_id").loc[["it2"], "title"].tolist()


def _later_table(run, summary, title: str) -> pd.DataFrame:
    """The run's item features, retitled, as of a day later (a store of its own in each test below)."""
    later = pd.Timestamp(summary["as_of"]) + pd.Timedelta(days=1)
    return fs.item_feature_table(
        pd.read_parquet(run / "data" / "catalog.parquet").assign(title=title),
        pd.read_parquet(run / "data" / "logs.parquet"),
        pd.DataFrame(columns=["item_id", "related_item_id"]),
        pd.DataFrame(columns=["item_id", "users"]),
        later,
    )


def test_the_store_is_what_feature_store_yaml_says(run, tmp_path, monkeypatch):
    """A copy of features/feature_store.yaml with another registry and online DB: the data lands there."""
    run, summary = run
    online = tmp_path / "elsewhere" / "items-online.db"  # absolute; the registry's path stays relative
    text = REPO_YAML.read_text().replace("path: feast/online.db", f"path: {online}")
    config = tmp_path / "feature_store.yaml"
    config.write_text(text.replace("registry: feast/registry.db", "registry: state/reg.db"))
    monkeypatch.setenv(fs.STORE_YAML_ENV, str(config))
    work = tmp_path / "work"
    fs.apply_and_materialize(work, "r1", _later_table(run, summary, "moved"))
    assert (work / "state" / "reg.db").is_file() and online.is_file()
    assert not (work / "feast" / "registry.db").exists() and not (work / "feast" / "online.db").exists()
    with sqlite3.connect(online) as db:  # the SQLite online store's table of the view holds the items
        assert db.execute("SELECT COUNT(DISTINCT entity_key) FROM tandem_item_features").fetchone()[0] == 12
    assert fs.store(work).config.offline_store.type == "file"
    assert set(fs.read_items(work, ["it0", "it3"])["title"]) == {"moved"}
    online.unlink()  # reads go to that file, nowhere else: a new empty one has no table of the view
    with pytest.raises(sqlite3.OperationalError, match="no such table: tandem_item_features"):
        fs.read_items(work, ["it0"])


def _redis_or_skip():
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    return client


def test_online_store_on_redis_chosen_by_feature_store_yaml(run, tmp_path, monkeypatch):
    """Only the yaml changes (online_store: redis): materialise into the real Redis, read items back from it."""
    client = _redis_or_skip()
    run, summary = run
    project = f"tandem_test_{uuid.uuid4().hex[:8]}"
    conf = yaml.safe_load(REPO_YAML.read_text())
    conf |= {
        "project": project,
        "online_store": {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"},
    }
    config = tmp_path / "feature_store.yaml"
    config.write_text(yaml.safe_dump(conf))
    monkeypatch.setenv(fs.STORE_YAML_ENV, str(config))
    work = tmp_path / "work"

    def keys() -> list[bytes]:  # Feast's Redis keys end with the project's name
        return [k for k in client.scan_iter(count=1000) if k.endswith(project.encode())]

    try:
        table = _later_table(run, summary, "from redis")
        fs.apply_and_materialize(work, "r1", table)
        assert len(keys()) == 12  # one hash per item
        assert not (work / "feast" / "online.db").exists()
        ids = ["it4", "it0"]
        got = fs.read_items(work, ids, columns=("title", "images", "popularity", "last_seen"))
        expected = table.set_index("item_id").loc[ids]
        assert got["title"].tolist() == ["from redis"] * 2
        assert got["images"].tolist() == [list(v) for v in expected["images"]]
        assert got["popularity"].tolist() == [0, 0]
        assert got["last_seen"].tolist() == expected["last_seen"].tolist()
    finally:
        if (work / "feast" / "registry.db").is_file():
            fs.store(work).teardown()  # drops the views' keys from Redis
        for key in keys():
            client.delete(key)
    assert keys() == []
