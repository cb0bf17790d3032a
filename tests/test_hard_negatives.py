"""Hard negatives from the live champion's index (`train.hard_negatives`, issue 16 item 1).

The trainer's side: the extra candidates of a batch come from the table hardest first, round-robin over the
batch's queries, without repeats, filled up uniformly. The pipeline's side: a first run (nothing live) trains
without them; the next run on the same logs mines the first run's live collection: an item query gets the
champion's nearest items to its stored vector (checked against numpy on the champion's vectors) minus itself
and its training positives, a typed query its query tower's results, and the trainer draws them.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_VISION

from tandem.core.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from tandem.data.synth import make_dataset
from tandem.models.text import query_text
from tandem.pipeline.hard_negatives import FILE
from tandem.pipeline.run import run
from tandem.training.data import PairDataset
from tandem.training.negatives import ExtraNegatives


class Prep:
    def prepare_items(self, rows):
        return {"titles": [r["title"] for r in rows]}


def _data() -> PairDataset:
    catalog = pd.DataFrame({"item_id": [f"i{n}" for n in range(8)], "title": [f"t{n}" for n in range(8)]})
    pairs = pd.DataFrame({"item_id": ["i0", "i1", "i2"], "related_item_id": ["i5", "i6", "i7"]})
    return PairDataset(pairs, catalog)


def test_hard_negatives_are_taken_hardest_first_round_robin_then_filled_uniformly():
    data = _data()
    table = {"t0": [3, 4, 1], "t1": [3, 2]}  # t0 and t1 share their hardest item
    draw = ExtraNegatives(Prep(), data, 0, seed=0, hard=3, table=table)
    got = draw([data[0], data[1]])["keys"].tolist()
    keys = [data.keys[r] for r in (3, 4, 2)]  # depth 0: 3 (once), depth 1: 4 and 2
    assert sorted(got) == sorted(keys) and draw.drawn == 3
    assert got == draw([data[0], data[1]])["keys"].tolist()  # seeded by the batch: a resume draws the same
    few = ExtraNegatives(Prep(), data, 0, seed=0, hard=4, table={"t0": [3]})
    got = few([data[0], data[1]])["keys"].tolist()
    assert len(got) == len(set(got)) == 4 and data.keys[3] in got and few.drawn == 1  # 3 uniform fill-ups
    mixed = ExtraNegatives(Prep(), data, 2, seed=0, hard=2, table=table)
    assert len(set(mixed([data[0], data[1]])["keys"].tolist())) == 4  # uniform and hard never repeat an item
    assert len(ExtraNegatives(Prep(), data, 2, seed=0, hard=5, table={})) == 2  # nothing mined: none


@pytest.fixture(scope="module")
def two_runs(tiny_encoder_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    logs_csv, catalog_csv = make_dataset(data, n_items=48, n_users=80)
    logs, catalog = pd.read_csv(logs_csv), pd.read_csv(catalog_csv)
    titles = catalog.set_index("item_id")["title"]
    searched = np.random.default_rng(0).random(len(logs)) < 0.3  # some clicks follow a search: the title's words
    typed = logs["item_id"].map(titles).map(lambda t: "find " + " ".join(reversed(t.lower().split())))
    logs["query"] = np.where(searched, typed, None)
    logs.to_csv(logs_csv, index=False)
    cfg = RunConfig(
        # a fixed popularity weight: the champion carries the term, whose coordinate mining must leave out
        model=replace(
            ModelConfig(), item_encoder=tiny_encoder_dir, query_layers=1, popularity_weight=0.5, **TINY_VISION
        ),
        train=replace(TrainConfig(), epochs=1, batch_size=16, lr_item=1e-3, lr_query=1e-3, hard_negatives=8),
        eval=replace(EvalConfig(), batch_size=32, n_boot=100),
    )
    workdir = tmp_path_factory.mktemp("work")
    first = run(logs_csv, catalog_csv, workdir, cfg, run_id="first", progress=False)
    second = run(logs_csv, catalog_csv, workdir, cfg, run_id="second", progress=False)
    return workdir, first, second


def test_a_first_run_trains_without_them(two_runs):
    workdir, first, _ = two_runs
    trained = json.loads((workdir / "runs" / "first" / "train.json").read_text())
    assert trained["hard_negatives"]["champion"] is None and "nothing is live" in trained["hard_negatives"]["why"]
    assert "hard_negatives_drawn" not in trained and not (workdir / "runs" / "first" / "training" / FILE).exists()
    assert first["index"]["live_collection"]  # the first run went live: the second has a champion


def test_the_next_run_mines_the_champions_index_and_trains_on_them(two_runs):
    workdir, first, _ = two_runs
    folder = workdir / "runs" / "second"
    trained = json.loads((folder / "train.json").read_text())
    mined = trained["hard_negatives"]
    champion = first["index"]["live_collection"]
    assert mined["champion"] == champion and mined["queries"] > 0 and mined["per_batch"] == 8
    assert trained["hard_negatives_drawn"] > 0  # the trainer's batches took them
    report = (folder / "report.md").read_text()
    assert f"hard negatives from `{champion}`: {mined['queries']} of" in report
    assert "no hard negatives (nothing is live yet)" in (workdir / "runs" / "first" / "report.md").read_text()
    table = pd.read_parquet(folder / "training" / FILE)
    assert (table["rank"] < 20).all() and set(table["champion"]) == {champion}
    train_pairs = pd.read_parquet(folder / "pairs" / "train.parquet")
    catalog = pd.read_parquet(folder / "data" / "catalog.parquet")
    title = catalog.set_index("item_id")["title"].map(query_text)  # an item query's text
    # the reference: the champion's own vectors (first run, same catalogue order), inner product, for item queries
    vectors = np.load(workdir / "runs" / "first" / "vectors" / "items.npy")
    assert (workdir / "runs" / "first" / "model" / "popularity.json").is_file()  # its last coordinate is the term
    ids = catalog["item_id"].astype(str).tolist()
    checked = 0
    for item_id, group in train_pairs.groupby("item_id"):
        mine = table[table["query"] == title[item_id]].sort_values("rank")["item_id"].tolist()
        if not mine or (train_pairs["item_id"].map(title) == title[item_id]).sum() != len(group):
            continue  # a title shared by two items mixes their rows
        skip = {item_id, *group["related_item_id"].astype(str)}
        assert not skip & set(mine)
        query = vectors[ids.index(item_id)].copy()
        query[-1] = 0.0  # content alone: the query's popularity coordinate is zeroed
        scores = vectors @ query
        order = [ids[i] for i in np.argsort(-scores, kind="stable") if ids[i] not in skip]
        assert mine == order[: len(mine)], item_id
        checked += 1
    assert checked > 5
    typed = set(table["query"]) - set(title)
    assert typed and all(q.startswith("find ") for q in typed)  # typed queries: the champion's query tower searched
    assert (table.groupby("query")["rank"].count() <= 20).all()
