"""Bad input to the data contract (issue 19, item 6): implausible or unconvertible timestamps, float ids,
broken CSV files and catalogue image paths. Each bad input is quarantined with its reason (rows),
dropped from its item with the reason (images) or refused with a message naming the line or column and
the fix; never a traceback from a reader. docs/reliability.md lists these tests."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tandem.core.config import ContractConfig, RunConfig, SplitConfig, config_from_dict
from tandem.data.contract import ContractError, load_catalog, load_logs
from tandem.data.synth import make_dataset
from tandem.pairs.split import split_pairs
from tandem.pipeline import stages

T = pd.Timestamp("2024-01-01T10:00:00.123Z")  # epoch 1704103200.123


def logs_csv(tmp_path, rows, header="user_id,item_id,event,ts"):
    path = tmp_path / "logs.csv"
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def reasons(loaded) -> dict:
    return dict(zip(loaded.quarantined["row"], loaded.quarantined["reason"]))


# ---- timestamps ----------------------------------------------------------------------------------


def test_epoch_units_are_recognised_by_magnitude(tmp_path):
    """Seconds, ms, us and ns since 1970 are one instant; a ms epoch is no longer the year 55970 and a
    us or ns epoch no longer a DuckDB ConversionException."""
    raw = ["1704103200.123", "1704103200123", "1704103200123000", "1704103200123000000"]
    loaded = load_logs(logs_csv(tmp_path, [f"u{i},1,view,{v}" for i, v in enumerate(raw)]))
    assert loaded.quarantined.empty
    assert loaded.kept["ts"].tolist() == [T] * 4


BAD_TS = {
    "inf": "unparsable ts: inf (not a finite number)",
    "-inf": "unparsable ts: -inf (not a finite number)",
    "NaN": "unparsable ts: NaN (not a finite number)",
    "1e26": "unparsable ts: 1e26 (too large for an epoch in seconds, ms, us or ns)",
    "9999-12-31": "ts out of range: 9999-12-31 is outside the plausible window 1990-01-01 00:00 .. ",
    "1980-05-01T00:00:00Z": "ts out of range: 1980-05-01T00:00:00Z is outside the plausible window",
    "10000000000": "ts out of range: 10000000000 (epoch seconds = 2286-11-20 17:46:40+00) is outside",
    "infinity": "unparsable ts: infinity (not a finite number)",
}


def test_implausible_timestamps_are_quarantined_with_their_reason(tmp_path):
    rows = ["u0,1,view,2024-01-01T10:00:00Z"] + [f"u{i},1,view,{v}" for i, v in enumerate(BAD_TS, 1)]
    loaded = load_logs(logs_csv(tmp_path, rows))
    got = reasons(loaded)
    assert set(got) == set(range(2, len(BAD_TS) + 2)) and len(loaded.kept) == 1
    for row, (value, reason) in enumerate(BAD_TS.items(), 2):
        assert got[row].startswith(reason), (value, got[row])
    assert "(contract.min_ts, contract.max_ts)" in got[6]


def test_float_parquet_ts_column_and_float_ids_never_raise(tmp_path):
    """A float64 ts column (epoch seconds and ms, inf, NaN, 1e26) and a float id of inf: reasons per row."""
    ts = pa.array([1704103200.123, 1704103200123.0, float("inf"), float("nan"), 1e26, 1704103200.0])
    table = pa.table(
        {
            "user_id": ["a", "b", "c", "d", "e", "f"],
            "item_id": pa.array([1.0, 1.0, 1.0, 1.0, 1.0, float("inf")]),
            "event": ["view"] * 6,
            "ts": ts,
        }
    )
    pq.write_table(table, tmp_path / "l.parquet")
    loaded = load_logs(tmp_path / "l.parquet")
    assert loaded.kept["ts"].tolist() == [T, T] and loaded.kept["item_id"].tolist() == ["1", "1"]
    assert reasons(loaded) == {
        3: "unparsable ts: inf (not a finite number)",
        4: "unparsable ts: nan (not a finite number)",
        5: "unparsable ts: 1e+26 (too large for an epoch in seconds, ms, us or ns)",
        6: "missing item_id (inf is not an id)",
    }


def test_float_catalogue_ids_of_inf_and_nan_are_missing_ids(tmp_path):
    pd.DataFrame({"item_id": [1.0, float("inf"), float("nan")], "title": ["a", "b", "c"]}).to_parquet(
        tmp_path / "c.parquet"
    )
    loaded = load_catalog(tmp_path / "c.parquet")
    assert loaded.kept["item_id"].tolist() == ["1"]
    assert reasons(loaded) == {2: "missing item_id", 3: "missing item_id"}


def test_parquet_timestamps_beyond_the_window_or_the_range(tmp_path):
    """A timestamp column holding 9999-12-31 is quarantined; one whose milliseconds overflow microseconds
    (a reader's ConversionException) is refused naming the column."""
    ms = [1704103200000, 253402214400000, 2**62]
    for name, values in (("window", ms[:2]), ("range", ms)):
        n = len(values)
        table = pa.table({"user_id": list("abc"[:n]), "item_id": ["1"] * n, "event": ["view"] * n, "ts": values})
        pq.write_table(table.set_column(3, "ts", pa.array(values, pa.timestamp("ms"))), tmp_path / f"{name}.parquet")
    loaded = load_logs(tmp_path / "window.parquet")
    assert len(loaded.kept) == 1
    assert reasons(loaded)[2].startswith("ts out of range: 9999-12-31 00:00:00 is outside the plausible window")
    with pytest.raises(ContractError, match=r"range\.parquet: column 'ts' holds a value that cannot be converted"):
        load_logs(tmp_path / "range.parquet")


def test_the_plausible_window_is_configurable(tmp_path):
    rows = ["u1,1,view,1985-01-01", "u2,1,view,2024-01-01", "u3,1,view,2040-01-01"]
    path = logs_csv(tmp_path, rows)
    assert load_logs(path).kept["user_id"].tolist() == ["u2"]
    wide = ContractConfig(min_ts="1980-01-01", max_ts="2050-01-01T00:00:00Z")
    assert load_logs(path, wide).kept["user_id"].tolist() == ["u1", "u2", "u3"]
    narrow = load_logs(path, ContractConfig(max_ts="2023-06-01"))
    assert reasons(narrow)[2].endswith(
        "outside the plausible window 1990-01-01 00:00 .. 2023-06-01 00:00 UTC (contract.min_ts, contract.max_ts)"
    )
    with pytest.raises(ValueError, match=r"contract\.max_ts: 'tomorrow' is not an ISO-8601 date"):
        config_from_dict({"contract": {"max_ts": "tomorrow"}})
    with pytest.raises(ValueError, match=r"contract\.min_ts \(2030-01-01\) must be before contract\.max_ts"):
        config_from_dict({"contract": {"min_ts": "2030-01-01", "max_ts": "2020-01-01"}})


def test_a_few_bad_timestamps_among_many_are_quarantined_and_the_run_goes_on(tmp_path):
    """Two rows dated 9999 and 2286 among the demo's events used to stretch the time split so that the
    test part was empty ('widen --window-hours'); now the load stage quarantines them (quarantine/logs.csv,
    with the reason) and the split of the rest has both parts."""
    logs, catalog = make_dataset(tmp_path / "data", n_users=40)
    events = len(logs.read_text().splitlines()) - 1
    first = logs.read_text().splitlines()[1].split(",")
    with logs.open("a") as f:
        f.write(f"{first[0]},{first[1]},view,9999-12-31T00:00:00Z\n{first[0]},{first[1]},click,10000000000\n")
    run = stages.RunPaths.of(tmp_path / "work", "r1")
    summary = stages.load(run, logs, catalog, RunConfig())
    quarantine = pd.read_csv(run / "quarantine" / "logs.csv")
    bad = quarantine[quarantine["reason"].str.startswith("ts")]
    assert bad["row"].tolist() == [events + 1, events + 2]
    assert bad["reason"].iloc[0].startswith("ts out of range: 9999-12-31T00:00:00Z is outside the plausible window")
    assert bad["reason"].iloc[1].startswith("ts out of range: 10000000000 (epoch seconds = 2286-11-20")
    assert summary["logs"] == {
        "rows_in": events + 2,
        "rows_kept": events + 2 - len(quarantine),
        "rows_quarantined": len(quarantine),
    }
    kept = pd.read_parquet(run / "data" / "logs.parquet")
    assert len(kept) == events + 2 - len(quarantine) and kept["ts"].max() < pd.Timestamp("2100-01-01", tz="UTC")
    split = split_pairs(kept, split=SplitConfig())
    split.require_pairs()
    assert len(split.train) > 0 and len(split.test) > 0


def test_when_no_row_is_kept_the_message_gives_the_reasons(tmp_path):
    """Day numbers written where epoch seconds were meant: every row is from 1970, so all are
    quarantined and `require_kept` (called by the load stage and `tandem pairs` after the quarantine
    file is written) names the reason, an example row and the setting to change."""
    loaded = load_logs(logs_csv(tmp_path, [f"u{i},1,view,{i * 86400}" for i in range(1, 6)]))
    assert loaded.kept.empty and loaded.counts()["rows_quarantined"] == 5
    with pytest.raises(ContractError) as err:
        loaded.require_kept("logs", tmp_path / "q.csv")
    msg = str(err.value)
    assert msg.startswith("logs: none of the 5 rows is usable (ts out of range: 5); e.g. row 1 of ")
    assert "86400 (epoch seconds = 1970-01-02 00:00:00+00) is outside the plausible window" in msg
    assert f"Every row and its reason: {tmp_path / 'q.csv'}." in msg and "widen contract.min_ts" in msg
    load_logs(logs_csv(tmp_path, ["u,1,view,2024-01-01", "u,1,view,1"])).require_kept("logs")  # one kept: fine


# ---- CSV and Parquet structure -------------------------------------------------------------------


@pytest.mark.parametrize("what", ["logs", "catalogue"])
def test_duplicated_header_is_refused_naming_the_column(tmp_path, what):
    if what == "logs":
        path, load = logs_csv(tmp_path, ["u1,1,2,view,2024-01-01"], "user_id,item_id,item_id,event,ts"), load_logs
    else:
        (path := tmp_path / "c.csv").write_text("item_id,title,title\n1,a,b\n")
        load = load_catalog
    column = "item_id" if what == "logs" else "title"
    with pytest.raises(ContractError, match=rf"{what} file .*: column '{column}' appears more than once"):
        load(path)


def test_duplicated_parquet_column_is_refused(tmp_path):
    table = pa.table(
        [["u"], ["1"], ["2"], ["view"], ["2024-01-01"]], names=["user_id", "item_id", "item_id", "event", "ts"]
    )
    pq.write_table(table, tmp_path / "l.parquet")
    with pytest.raises(ContractError, match="column 'item_id' appears more than once"):
        load_logs(tmp_path / "l.parquet")


@pytest.mark.parametrize("what", ["logs", "catalogue"])
def test_a_nul_byte_is_refused_with_its_line(tmp_path, what):
    if what == "logs":
        path, load = logs_csv(tmp_path, ["u1,1,view,2024-01-01", "u2,1\x002,view,2024-01-01"]), load_logs
    else:
        (path := tmp_path / "c.csv").write_text("item_id,title\n1,a\n2\x003,b\n")
        load = load_catalog
    with pytest.raises(ContractError, match=rf"{what} file .*: line 3 holds a NUL byte"):
        load(path)


@pytest.mark.parametrize(
    "what, text, message",
    [
        (
            "logs",
            "user_id,item_id,event,ts\nu,1,view,2024-01-01\nu,1,view,2024-01-01,x\n",
            "line 3 has 5 fields, expected 4",
        ),
        ("logs", "user_id,item_id,event,ts\nu,1,view,2024-01-01\n\nu,2,view\n", "line 4 has 3 fields, expected 4"),
        ("catalogue", "item_id,title\n1,a,b\n2,c\n", "line 2 has 3 fields, expected 2"),
        ("catalogue", 'item_id,title\n1,"a, quoted\nline"\n2\n', "line 4 has 1 fields, expected 2"),
    ],
)
def test_ragged_rows_are_refused_with_line_and_field_counts(tmp_path, what, text, message):
    path = tmp_path / ("logs.csv" if what == "logs" else "c.csv")
    path.write_text(text)
    with pytest.raises(ContractError, match=rf"{what} file .*: {message} \(the header's: "):
        (load_logs if what == "logs" else load_catalog)(path)


# ---- image paths ---------------------------------------------------------------------------------


@contextmanager
def deadline(seconds: int):
    def fail(*_):
        raise TimeoutError(f"still loading after {seconds} s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def image_tree(tmp_path):
    """shop/catalog.csv with images inside its folder, beside it, behind a symlink, a FIFO, a URL."""
    shop, other = tmp_path / "shop", tmp_path / "other"
    (shop / "img").mkdir(parents=True)
    other.mkdir()
    for path in (shop / "img" / "ok.png", other / "outside.png"):
        Image.new("RGB", (4, 4), "red").save(path)
    (shop / "img" / "link.png").symlink_to(other / "outside.png")
    os.mkfifo(shop / "img" / "pipe.png")
    images = [
        "img/ok.png",
        "../other/outside.png",
        str(other / "outside.png"),
        "img/link.png",
        "img/pipe.png",
        "img",
        "https://example.com/a.png",
    ]
    (shop / "catalog.csv").write_text("item_id,title,images\n1,shirt," + "|".join(images) + "\n")
    return shop, other


@pytest.mark.parametrize("check_images", [True, False])
def test_image_paths_are_confined_regular_files_and_urls_refused_by_default(image_tree, check_images):
    shop, other = image_tree
    with deadline(20):  # a FIFO opened for reading would wait for a writer for ever
        loaded = load_catalog(shop / "catalog.csv", ContractConfig(check_images=check_images))
    assert loaded.kept["images"].tolist() == [[str(shop / "img" / "ok.png")]]
    dropped = loaded.dropped_images
    why = dict(zip(dropped["image"], dropped["reason"]))
    outside = f"image outside the catalogue's folder {shop}: move it there or add its folder to contract.image_roots"
    assert why[str(other / "outside.png")] == outside  # ../other, the absolute path and the symlink: one path
    assert dropped["image"].tolist().count(str(other / "outside.png")) == 3
    assert why[str(shop / "img" / "pipe.png")] == "image is not a regular file (a folder, FIFO, socket or device)"
    assert why[str(shop / "img")] == why[str(shop / "img" / "pipe.png")]
    assert why["https://example.com/a.png"].startswith("image URL not allowed")
    assert len(loaded.kept) == 1 and loaded.quarantined.empty  # the item stays


def test_image_roots_and_urls_when_allowed(image_tree):
    shop, other = image_tree
    cfg = ContractConfig(image_roots=("../other",), allow_image_urls=True)
    with deadline(20):
        loaded = load_catalog(shop / "catalog.csv", cfg)
    assert loaded.kept["images"].iloc[0] == [
        str(shop / "img" / "ok.png"),
        *[str(other / "outside.png")] * 3,
        "https://example.com/a.png",
    ]
    assert set(loaded.dropped_images["reason"]) == {"image is not a regular file (a folder, FIFO, socket or device)"}
