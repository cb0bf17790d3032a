"""Query -> item pairs from search events (issue 17 item 1) and catalogues without text (item 2).

Units: the pairs' weights (like co-occurrence, 1/N_u per user), the time split, the HotelMatch training mix,
evaluation on held-out real queries (co-occurrence n/a there). End to end: an image-only catalogue (PNG
photos drawn here, no title or text) with caption search logs through `tandem run` as a user types it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_VISION

from tandem.core.config import PairsConfig, RunConfig
from tandem.evaluation.baselines import score_baselines
from tandem.evaluation.queries import PROXY, REAL, eval_set
from tandem.pairs.queries import (
    QUERY_PAIR_COLUMNS,
    mine_query_pairs,
    read_query_pairs,
    split_query_pairs,
    training_mix,
    write_query_pairs,
)
from tandem.pairs.split import split_pairs

T0 = pd.Timestamp("2024-05-01", tz="UTC")


def _logs(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "query"])
    return frame.assign(ts=T0 + pd.to_timedelta(frame["ts"], unit="h"))


def test_query_pairs_are_weighted_like_cooccurrence():
    logs = _logs(
        [
            ("u1", "a", "click", 0, "Red  Lamp"),  # u1 clicked 2 distinct items: 1/2 per pair
            ("u1", "b", "click", 1, None),
            ("u2", "a", "click", 2, "red lamp"),  # same query once normalised; u2 clicked 1 item: 1/1
            ("u2", "a", "click", 3, "red lamp"),  # a user counts once per pair
            ("u3", "c", "view", 4, "red lamp"),  # a view is not a search click
            ("u3", "c", "click", 5, "   "),  # a blank query is no query
        ]
    )
    pairs = mine_query_pairs(logs)
    assert pairs.to_dict("records") == [
        {"item_id": "a", "related_item_id": "a", "score": 1.5, "support": 2, "query": "red lamp"}
    ]
    assert mine_query_pairs(logs, PairsConfig(min_support=3)).empty
    assert mine_query_pairs(logs.drop(columns="query")).empty  # logs without a query column: none


def test_query_pairs_split_at_the_cutoff_without_trained_pairs_in_test():
    logs = _logs(
        [("u1", "a", "click", 0, "lamp"), ("u2", "b", "click", 1, "mug"), ("u3", "a", "click", 10, "lamp")]
        + [("u4", "c", "click", 11, "lamp"), ("u5", "b", "click", 12, "blue mug")]
    )
    train, valid, test, counts = split_query_pairs(logs, T0 + pd.Timedelta(hours=5))
    assert set(zip(train["query"], train["item_id"])) == {("lamp", "a"), ("mug", "b")} and valid.empty
    assert set(zip(test["query"], test["item_id"])) == {("lamp", "c"), ("blue mug", "b")}  # (lamp, a) trained
    assert counts | {"log_rows_with_query": 5} == {
        "log_rows_with_query": 5, "train": 2, "valid": 0, "test": 2, "test_dropped_seen": 1, "valid_dropped_seen": 0,
        "train_queries": 2, "valid_queries": 0, "test_queries": 2, "valid_by": "random",
    }  # fmt: skip


def test_query_top_t_keeps_more_clicked_items_per_query_in_every_split():
    """A query names a set of items: `pairs.query_top_t` (default 50) replaces the item pairs' top t (3) for query
    pairs, in training and in the held-out splits; 0 keeps train_top_t in training and top_t elsewhere."""
    early = [(f"u{n}", f"i{n}", "click", n, "lamp") for n in range(6)]
    late = [(f"v{n}", f"k{n}", "click", 100 + n, "lamp") for n in range(5)]
    logs, cutoff = _logs(early + late), T0 + pd.Timedelta(hours=50)
    sizes = {}
    for name, cfg in {
        "item pairs' cut": PairsConfig(query_top_t=0),
        "train_top_t": PairsConfig(train_top_t=4, query_top_t=0),
        "query_top_t": PairsConfig(train_top_t=4, query_top_t=5),
        "default": PairsConfig(),  # 50
    }.items():
        train, _, test, _ = split_query_pairs(logs, cutoff, cfg)
        sizes[name] = (len(train), len(test))
    assert sizes == {"item pairs' cut": (3, 3), "train_top_t": (4, 3), "query_top_t": (5, 5), "default": (6, 5)}


def _search_days(days: int = 20) -> pd.DataFrame:
    """Day d: a user views `a` and clicks j<d> after typing "lamp", another clicks `m` after typing "mug" (every
    day the same pair), a third views `a` and clicks `b` (co-occurrence pairs in every part of the log)."""
    rows = []
    for d in range(days):
        h = 24 * d
        rows += [(f"u{d}", "a", "view", h, None), (f"u{d}", f"j{d}", "click", h + 1, "lamp")]
        rows += [(f"v{d}", "m", "click", h + 2, "mug"), (f"w{d}", "a", "view", h + 3, None)]
        rows += [(f"w{d}", "b", "click", h + 4, None)]
    return _logs(rows)


def test_query_pairs_are_split_by_time_like_the_item_pairs(tmp_path):
    logs, cfg = _search_days(), RunConfig()
    split = split_pairs(logs, cfg.pairs, replace(cfg.split, test_fraction=0.25, valid_fraction=0.2), cfg.contract)
    assert split.valid_by == "time" and split.valid_cutoff is not None
    counts = write_query_pairs(tmp_path, logs, split, cfg)
    train, valid, test = (read_query_pairs(tmp_path, s) for s in ("train", "valid", "test"))
    day = lambda frame: {int(i[1:]) for i in frame["item_id"] if i[0] == "j"}  # noqa: E731  (j<d>: clicked on day d)
    valid_day, test_day = ((t - T0) / pd.Timedelta(days=1) for t in (split.valid_cutoff, split.cutoff))
    # a search click of the validation window validates and does not train; one before it trains
    assert day(valid) and valid_day <= min(day(valid)) and max(day(valid)) < test_day
    assert day(train) and max(day(train)) < valid_day and not day(train) & day(valid)
    assert day(test) and min(day(test)) >= test_day
    # the daily (mug, m) was trained before the validation window: dropped from validation and test, counted
    assert ("mug", "m") in set(zip(train["query"], train["item_id"])) and "mug" not in set(valid["query"])
    assert counts["valid_dropped_seen"] == 1 and counts["test_dropped_seen"] == 1
    assert counts["valid"] == len(valid) and counts["valid_by"] == "time" and counts["valid_queries"] == 1


def test_query_pairs_hold_out_a_seeded_random_share(tmp_path):
    logs, cfg = _search_days(), RunConfig()
    split_cfg = replace(cfg.split, test_fraction=0.25, valid_fraction=0.4, valid_by="random", seed=3)
    held = []
    for seed in (3, 3, 4):
        run_cfg = replace(cfg, split=replace(split_cfg, seed=seed))
        split = split_pairs(logs, run_cfg.pairs, run_cfg.split, run_cfg.contract)
        assert split.valid_by == "random" and split.valid_cutoff is None
        folder = tmp_path / f"run{len(held)}"
        folder.mkdir()
        counts = write_query_pairs(folder, logs, split, run_cfg)
        train, valid = (read_query_pairs(folder, s) for s in ("train", "valid"))
        every = mine_query_pairs(split.train_logs, run_cfg.pairs, run_cfg.contract)  # the whole training window
        assert len(train) + len(valid) == len(every) and 0 < len(valid) < len(every)
        assert set(zip(train["query"], train["item_id"])) | set(zip(valid["query"], valid["item_id"])) == set(
            zip(every["query"], every["item_id"])
        )
        assert counts["valid"] == len(valid) and counts["valid_by"] == "random" and counts["valid_dropped_seen"] == 0
        held.append(set(valid["item_id"]))
    assert held[0] == held[1] and held[0] != held[2]  # split.seed decides the share


def test_runs_before_query_validation_read_an_empty_frame(tmp_path):
    (tmp_path / "query_train.parquet").touch()  # an older run: train and test only
    valid = read_query_pairs(tmp_path, "valid")
    assert valid.empty and list(valid.columns) == QUERY_PAIR_COLUMNS
    with pytest.raises(ValueError, match="'dev' is not one of train, valid, test"):
        read_query_pairs(tmp_path, "dev")


def test_training_mix_follows_the_recipe_ratio():
    items = pd.DataFrame({"item_id": [f"i{n}" for n in range(10)], "related_item_id": [f"j{n}" for n in range(10)]})
    queries = pd.DataFrame({"item_id": ["a", "b"], "related_item_id": ["a", "b"], "query": ["lamp", "mug"]})
    cfg = RunConfig()
    assert cfg.pairs.query_ratio == 0.5 and cfg.model.family == "hotelmatch"
    mixed, counts = training_mix(items, queries, cfg)
    assert len(mixed) == 12 and mixed["query"].notna().sum() == 6  # half of the 12 slots: 2 pairs + 4 repeats
    assert set(mixed["query"].dropna()) == {"lamp", "mug"} and counts["query_pairs_used"] == 6
    quarter, _ = training_mix(items, queries, replace(cfg, pairs=replace(cfg.pairs, query_ratio=0.25)))
    assert quarter["query"].notna().sum() == 3 and len(quarter) == 12
    off, counts = training_mix(items, queries, replace(cfg, pairs=replace(cfg.pairs, query_ratio=0.0)))
    assert off is items and counts["query_pairs_used"] == 0
    only, _ = training_mix(items.iloc[:0], queries, cfg)  # search logs alone
    assert only is queries
    notellm2 = replace(cfg, model=replace(cfg.model, family="notellm2"))
    assert training_mix(items, queries, notellm2)[0] is items  # item-to-item: no text queries
    with pytest.raises(ValueError, match="query_ratio"):
        PairsConfig(query_ratio=1.5)


def test_evaluation_uses_real_queries_when_there_are_some():
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["red lamp", "blue mug", ""]})
    item_test = pd.DataFrame({"item_id": ["a"], "related_item_id": ["b"], "score": [1.0], "support": [1]})
    query_test = pd.DataFrame(
        {"item_id": ["c", "b", "c"], "related_item_id": ["c", "b", "c"], "query": ["grey cup", "mug", "grey cup"]}
    )
    few = eval_set(item_test, query_test, catalog, RunConfig().eval, symmetric=False)  # 3 < min_query_pairs 10
    assert few.counts["queries_are"].startswith("titles") and "3 < eval.min_query_pairs 10" in few.counts["queries_are"]
    assert eval_set(item_test.iloc[:0], query_test, catalog, RunConfig().eval, False).counts["queries_are"] == REAL
    cfg = replace(RunConfig().eval, min_query_pairs=3)
    ev = eval_set(item_test, query_test, catalog, cfg, symmetric=False, train_pairs=item_test)
    assert ev.counts["queries_are"] == REAL and ev.query_texts == ["grey cup", "mug"]
    assert ev.pool.tolist() == [0, 1, 2] and (ev.exclude == -1).all()  # a typed query leaves no item out
    assert ev.query_of_pair.tolist() == [0, 1, 0] and ev.target.tolist() == [2, 1, 2]
    assert ev.subsets["cold"].tolist() == [True, False, True]  # b is in a training pair
    assert ev.description == "the catalogue (3 candidates per query)"
    ranks = ev.ranks(lambda batch: np.tile([0.0, 1.0, 2.0], (len(batch), 1)))
    assert ranks.tolist() == [0, 1, 0]
    pop = pd.DataFrame({"item_id": ["a"], "users": [3]})
    scored, unavailable = score_baselines(ev, ["popularity", "cooccurrence", "bm25"], catalog, item_test, pop)
    assert set(scored) == {"popularity", "bm25"} and "typed search texts" in unavailable["cooccurrence"]
    proxy = eval_set(item_test, query_test.iloc[:0], catalog, cfg, symmetric=False)
    assert proxy.counts["queries_are"] == PROXY and proxy.query_texts == ["red lamp"]


def test_a_querys_trained_clicks_are_left_out_of_its_ranking():
    """Filtered ranking (eval.hide_trained_clicks): the test keeps the (query, item) pairs not trained, so a query's
    trained clicks are neither its targets nor its misses: left out of its ranking, as a per-query reference does."""
    ids = [f"i{n}" for n in range(12)]
    catalog = pd.DataFrame({"item_id": ids, "title": ids})
    query_test = pd.DataFrame({"query": ["q0", "q0", "q1", "q2"], "related_item_id": ["i1", "i2", "i3", "i4"]})
    query_train = pd.DataFrame(
        {
            "query": ["q0", "q0", "q1", "q1", "other", "q2"],
            "related_item_id": ["i5", "i6", "i3", "i7", "i8", "gone"],  # (q1, i3) is a test target: kept
        }
    )
    query_test["item_id"], query_train["item_id"] = query_test["related_item_id"], query_train["related_item_id"]
    cfg = replace(RunConfig().eval, min_query_pairs=1)
    ev = eval_set(query_test.iloc[:0], query_test, catalog, cfg, False, query_train=query_train)
    assert ev.hidden.tolist() == [[0, 5], [0, 6], [1, 7]] and ev.counts["hidden_trained"] == 3
    assert "minus the query's trained clicks" in ev.description
    rows, cols = ev.never_ranked(np.array([2, 0, 1, 0]))
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(1, 5), (1, 6), (2, 7), (3, 5), (3, 6)]
    scores = np.random.default_rng(0).normal(size=(3, 12))
    scores[0, 5] = scores[1, 7] = 9.0  # trained clicks above every target

    def reference(hidden: dict[int, list[int]]) -> list[int]:
        out = []
        for q, t in zip(ev.query_of_pair, ev.target):
            row = scores[q].copy()
            row[hidden.get(int(q), [])] = -np.inf
            out.append(int((row > row[t]).sum()))
        return out

    assert ev.ranks(lambda b: scores[b]).tolist() == reference({0: [5, 6], 1: [7]})
    off = eval_set(query_test.iloc[:0], query_test, catalog, replace(cfg, hide_trained_clicks=False), False,
                   query_train=query_train)  # fmt: skip
    assert off.hidden is None and off.ranks(lambda b: scores[b]).tolist() == reference({})
    assert reference({}) != reference({0: [5, 6], 1: [7]})


# ------------------------------------------------------------------------------ image-only, end to end
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
WORDS = {
    "red": ["red", "crimson", "scarlet"], "green": ["green", "emerald", "lime"], "blue": ["blue", "navy", "azure"],
    "yellow": ["yellow", "golden", "lemon"], "square": ["square", "box", "block"],
    "stripes": ["stripes", "striped", "lines"], "dot": ["dot", "circle", "round"],
}  # fmt: skip


def image_only_dataset(out: Path, n_items: int = 36, n_users: int = 80, seed: int = 0) -> tuple[Path, Path]:
    """A catalogue of item_id + one 16 px PNG each (a coloured square, stripes or dot; no title, no text) and a
    search log: each user types a caption in words of their choice ("crimson box") and clicks a matching photo."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_items):
        colour, shape = list(COLOURS)[i % 4], ("square", "stripes", "dot")[(i // 4) % 3]
        image = Image.new("RGB", (16, 16), "white")
        draw = ImageDraw.Draw(image)
        if shape == "square":
            draw.rectangle((3, 3, 12, 12), fill=COLOURS[colour])
        elif shape == "dot":
            draw.ellipse((4, 4, 11, 11), fill=COLOURS[colour])
        else:
            for y in range(0, 16, 4):
                draw.rectangle((0, y, 15, y + 1), fill=COLOURS[colour])
        image.save(out / "images" / f"{i}.png")
        items.append({"item_id": f"p{i}", "images": f"images/{i}.png", "colour": colour, "shape": shape})
    rows = []
    for u in range(n_users):
        for _ in range(3):
            item = items[int(rng.integers(n_items))]
            ts = pd.Timestamp("2024-03-01", tz="UTC") + pd.Timedelta(hours=float(rng.uniform(0, 480)))
            query = f"{rng.choice(WORDS[item['colour']])} {rng.choice(WORDS[item['shape']])}"
            rows.append((f"u{u}", item["item_id"], "click", ts.isoformat(), query))
    pd.DataFrame(items)[["item_id", "images"]].to_csv(out / "catalog.csv", index=False)
    pd.DataFrame(rows, columns=["user_id", "item_id", "event", "ts", "query"]).to_csv(out / "logs.csv", index=False)
    return out / "logs.csv", out / "catalog.csv"


def test_image_only_catalogue_with_search_logs_runs_end_to_end(tiny_encoder_dir, tmp_path):
    """`tandem run --logs logs.csv --catalog catalog.csv --workdir work --config tiny.yaml --max-steps 5`."""
    logs, catalog = image_only_dataset(tmp_path / "data")
    assert list(pd.read_csv(catalog).columns) == ["item_id", "images"]
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        json.dumps(
            {
                "model": {"item_encoder": tiny_encoder_dir, "query_layers": 1, **TINY_VISION},
                "train": {"batch_size": 16, "lr_item": 1e-3, "lr_query": 1e-3},
                "eval": {"batch_size": 64, "n_boot": 100, "latency_queries": 4},
            }
        )
    )
    argv = ["run", "--logs", logs, "--catalog", catalog, "--workdir", tmp_path / "work", "--config", recipe]
    command = [str(Path(sys.executable).parent / "tandem"), *map(str, argv), "--max-steps", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line and line[0] != " ")
    report = json.loads(Path(lines["report.json"]).read_text())
    queries = report["pairs"]["query_pairs"]
    assert queries["log_rows_with_query"] == 240 and queries["train"] > 0 and queries["test"] > 0
    assert report["training"]["mix"]["query_pairs_used"] > 0  # the query tower learned from typed captions
    # the validation window's captions validate (not train), and training validated on them as the test evaluates
    assert queries["valid_by"] == "time" and queries["valid"] >= 10
    assert report["training"]["validated_on"] == "queries"
    assert report["training"]["validation"]["pairs"] == queries["valid"]
    counts = report["eval"]["counts"]
    assert counts["queries_are"] == REAL and counts["pairs_evaluated"] == queries["test"]
    assert {"model", "untrained", "popularity"} <= set(report["metrics"])
    markdown = Path(lines["report"]).read_text()
    assert "| bm25 | n/a |" in markdown and "BM25 needs words" in markdown  # the reason, not a crash
    assert "real search queries (held out)" in markdown and "query pairs (search text -> clicked item" in markdown


def test_a_query_pair_only_the_earlier_part_keeps_trains_and_does_not_test():
    # query_top_t 1: "lamp" -> b before the validation cutoff (3 users), -> c inside it (6 users), -> b again in
    # the test window. The whole training window's cut keeps c; the earlier part alone, which trains, keeps b.
    rows = [(f"b{u}", "b", "click", u, "lamp") for u in range(3)]
    rows += [(f"c{u}", "c", "click", 60 + u, "lamp") for u in range(6)]
    rows += [(f"d{u}", "b", "click", 100 + u, "lamp") for u in range(3)]
    logs, cfg = _logs(rows), PairsConfig(low=0.0, top_t=1, query_top_t=1)
    cutoff, valid_cutoff = T0 + pd.Timedelta(hours=80), T0 + pd.Timedelta(hours=40)
    train, valid, test, counts = split_query_pairs(logs, cutoff, cfg, valid_cutoff=valid_cutoff)
    assert list(zip(train["query"], train["item_id"])) == [("lamp", "b")]
    assert list(zip(valid["query"], valid["item_id"])) == [("lamp", "c")]
    assert test.empty and counts["test_dropped_seen"] == 1
