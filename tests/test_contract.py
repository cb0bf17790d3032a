"""Loading logs and catalogues into the contract: good inputs, bad inputs, accounting."""

import json

import pandas as pd
import pytest
from PIL import Image

from tandem.data.contract import ContractError, load_catalog, load_logs


def write_csv(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def catalog_csv(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    return write_csv(
        tmp_path / "catalog.csv",
        (
            "item_id,title,topics,content,images\n"
            "1,red shirt,tops|shirts,cotton,a.png|broken.jpg|missing.png\n"
            "2,blue jeans,bottoms,,\n"
            "2,duplicate jeans,,,\n"
            ",no id,,,\n"
            "3,,,,\n"
            "4.0,float id,,,\n"
        ),
    )


def test_catalog_normalises_and_quarantines(catalog_csv, tmp_path):
    loaded = load_catalog(catalog_csv)
    kept = loaded.kept.set_index("item_id")
    assert list(kept.index) == ["1", "2", "4"]
    assert kept.loc["1", "topics"] == ["tops", "shirts"]
    assert kept.loc["1", "images"] == [str(tmp_path / "a.png")]  # relative to the catalogue, unreadable dropped
    assert kept.loc["2", "images"] == [] and kept.loc["2", "title"] == "blue jeans"
    reasons = dict(zip(loaded.quarantined["row"], loaded.quarantined["reason"]))
    assert reasons == {
        3: "duplicate item_id (first row kept)",
        4: "missing item_id",
        5: "no title, topics, content or images",
    }
    assert loaded.counts() == {"rows_in": 6, "rows_kept": 3, "rows_quarantined": 3}
    dropped = dict(
        zip(loaded.dropped_images["image"].map(lambda p: p.rsplit("/", 1)[1]), loaded.dropped_images["reason"])
    )
    assert dropped["missing.png"] == "image file not found" and dropped["broken.jpg"].startswith("image unreadable")


def test_catalog_jsonl_and_parquet_lists(tmp_path):
    rows = [
        {"item_id": 7, "title": "lamp", "topics": ["home", "light"], "city": "Oslo"},
        {"item_id": "x8", "title": "desk", "topics": "home|office"},
    ]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    kept = load_catalog(tmp_path / "c.jsonl").kept
    assert kept["item_id"].tolist() == ["7", "x8"]
    assert kept["topics"].tolist() == [["home", "light"], ["home", "office"]]
    assert kept["city"].tolist() == ["Oslo", ""]
    pd.DataFrame(rows[:1]).to_parquet(tmp_path / "c.parquet")
    assert load_catalog(tmp_path / "c.parquet").kept["topics"].tolist() == [["home", "light"]]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("missing.csv", None, "does not exist"),
        ("empty.csv", "", "is empty"),
        ("notitle.csv", "item_id,name\n1,x\n", "no column 'title'"),
        ("header.csv", "item_id,title\n", "no rows"),
        ("c.txt", "item_id,title\n1,x\n", "unknown format"),
    ],
)
def test_catalog_file_errors_name_the_problem(tmp_path, name, text, message):
    if text is not None:
        write_csv(tmp_path / name, text)
    with pytest.raises(ContractError, match=message) as err:
        load_catalog(tmp_path / name)
    assert name in str(err.value)


LOGS = (
    "user_id,item_id,event,ts,query\n"
    "u1,1,view,2024-01-01T10:00:00Z,\n"  # ISO with zone
    "u1,2.0,CLICK,1704103200,red shirt\n"  # epoch seconds, upper-case event, float-like id
    "7,1,purchase,2024-01-01 12:00:00,\n"  # int user id, naive timestamp = UTC
    ",1,view,2024-01-01 12:00:00,\n"  # missing user
    "u2,,view,2024-01-01 12:00:00,\n"  # missing item
    "u2,1,view,yesterday,\n"  # unparsable ts
    "u2,1,hover,2024-01-01 12:00:00,\n"  # unknown event
    "u2,99,view,2024-01-01 12:00:00,\n"  # not in catalogue
    "u1,1,view,2024-01-01T10:00:00Z,\n"  # duplicate of row 1
)


def test_logs_normalise_and_quarantine_with_reasons(tmp_path):
    loaded = load_logs(write_csv(tmp_path / "logs.csv", LOGS), catalog_ids=pd.Series(["1", "2"]))
    kept = loaded.kept
    assert kept["user_id"].tolist() == ["u1", "u1", "7"]
    assert kept["event"].tolist() == ["view", "click", "purchase"]
    assert kept["ts"].tolist() == [
        pd.Timestamp("2024-01-01 10:00", tz="UTC"),
        pd.Timestamp("2024-01-01 10:00", tz="UTC"),
        pd.Timestamp("2024-01-01 12:00", tz="UTC"),
    ]
    assert kept["query"].tolist()[1] == "red shirt"
    reasons = dict(zip(loaded.quarantined["row"], loaded.quarantined["reason"]))
    assert reasons == {
        4: "missing user_id",
        5: "missing item_id",
        6: "unparsable ts: yesterday",
        7: "unknown event: hover",
        8: "item_id not in catalogue",
        9: "duplicate event",
    }
    assert loaded.rows_in == len(kept) + len(loaded.quarantined) == 9


def test_logs_parquet_typed_columns(tmp_path):
    df = pd.DataFrame(
        {
            "user_id": [1, 2],
            "item_id": [10.0, 11.0],
            "event": ["view", "click"],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]),
        }
    )
    df.to_parquet(tmp_path / "l.parquet")
    kept = load_logs(tmp_path / "l.parquet").kept
    assert kept["item_id"].tolist() == ["10", "11"] and kept["user_id"].tolist() == ["1", "2"]


def test_logs_from_a_file_and_a_folder_keep_served_impressions(tmp_path):
    """The service's events (a folder of parts with extra columns and 'impression' rows) join the logs."""
    base = pd.DataFrame({"user_id": ["u1"], "item_id": ["1"], "event": ["view"], "ts": pd.to_datetime(["2024-01-01"])})
    base.to_parquet(tmp_path / "logs.parquet")
    served = tmp_path / "events" / "date=2024-01-02"
    served.mkdir(parents=True)
    part = base.assign(event=["impression"], arm=["champion"], ts=pd.to_datetime(["2024-01-02"], utc=True))
    part.to_parquet(served / "part-0.parquet")
    loaded = load_logs([tmp_path / "logs.parquet", tmp_path / "events"])
    assert loaded.kept["event"].tolist() == ["view", "impression"] and loaded.quarantined.empty


def test_logs_errors(tmp_path):
    with pytest.raises(ContractError, match=r"logs\.csv has no column 'ts'.*rename"):
        load_logs(write_csv(tmp_path / "logs.csv", "user_id,item_id,event\n1,2,view\n"))
    pd.DataFrame({"user_id": [1], "item_id": [1], "event": ["view"], "ts": [True]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(ContractError, match="column 'ts' has type BOOLEAN"):
        load_logs(tmp_path / "b.parquet")
    with pytest.raises(ContractError, match="no rows"):
        load_logs(write_csv(tmp_path / "h.csv", "user_id,item_id,event,ts\n"))
    with pytest.raises(ContractError, match="unknown format"):
        load_logs(write_csv(tmp_path / "l.jsonl", "{}"))
