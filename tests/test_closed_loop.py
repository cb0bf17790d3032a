"""The loop closes in one run (issue 17 item 4): clicks the service logged in one interval train the next model.

A first run on a generated log goes live; users open /similar/A and click B (never together in the log) and
search "blue lamp" and click a result; then the next interval's events arrive. The next run, on everything,
with `split.test_days` (the test window = the latest days), trains on the served clicks: A -> B is a training
pair, the search click a query -> item training pair, and the trainer's data fingerprint is that of a training
set holding both. With the old split (a share of the whole time span) the same logs put them in test only.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
from conftest import TINY_VISION
from fastapi.testclient import TestClient

from tandem.core.config import EvalConfig, ModelConfig, RunConfig, SplitConfig, TrainConfig
from tandem.core.config_release import ServeConfig
from tandem.data.contract import load_catalog
from tandem.data.synth import make_dataset
from tandem.pairs.queries import training_mix
from tandem.pairs.split import split_pairs
from tandem.pipeline.run import run
from tandem.serve import create_app, events_dir
from tandem.training.data import PairDataset

A, B = "it0", "it1"  # different kinds: no user of the generated log touches both


@pytest.fixture(scope="module")
def loop(tiny_encoder_dir, tmp_path_factory):
    logs_csv, catalog = make_dataset(tmp_path_factory.mktemp("data"), n_items=48, n_users=80)
    cfg = RunConfig(
        model=replace(ModelConfig(), item_encoder=tiny_encoder_dir, query_layers=1, **TINY_VISION),
        train=replace(TrainConfig(), epochs=1, batch_size=16, lr_item=1e-3, lr_query=1e-3),
        eval=replace(EvalConfig(), batch_size=32, n_boot=100),
        serve=replace(ServeConfig(), flush_rows=100_000, flush_seconds=3600.0),  # flushed on shutdown
    )
    workdir = tmp_path_factory.mktemp("work")
    run(logs_csv, catalog, workdir, cfg, run_id="first", progress=False)
    with TestClient(create_app(workdir, cfg)) as client:  # the first model serves
        for n in range(5):
            shown = client.get(f"/similar/{A}", params={"k": 47, "user_id": f"loop{n}"}).json()
            client.post("/click", json={"request_id": shown["request_id"], "item_id": B}).raise_for_status()
        searched = client.get("/search", params={"q": "blue lamp", "user_id": "loop-search"}).json()
        clicked = searched["items"][0]["item_id"]
        client.post("/click", json={"request_id": searched["request_id"], "item_id": clicked}).raise_for_status()
    served = sorted(events_dir(workdir).glob("*.parquet"))
    # the next interval: organic events of the 30 days after the serving (another seed of the generator)
    later_csv, _ = make_dataset(tmp_path_factory.mktemp("later"), n_items=48, n_users=80, seed=1)
    later = pd.read_csv(later_csv)
    shift = pd.Timestamp.now(tz="UTC").ceil("h") + pd.Timedelta(hours=1) - pd.Timestamp("2024-01-01", tz="UTC")
    later["ts"] = pd.to_datetime(later["ts"], utc=True) + shift
    original = pd.read_csv(logs_csv).assign(ts=lambda f: pd.to_datetime(f["ts"], utc=True))
    logs = [tmp_path_factory.mktemp("logs") / f"{name}.parquet" for name in ("original", "later")]
    original.to_parquet(logs[0], index=False)
    later.to_parquet(logs[1], index=False)
    horizon = (later["ts"].max() + pd.Timedelta(days=1)).isoformat()  # the simulated interval lies ahead
    next_cfg = replace(cfg, split=replace(cfg.split, test_days=7.0), contract=replace(cfg.contract, max_ts=horizon))
    report = run([logs[0], *served, logs[1]], catalog, workdir, next_cfg, run_id="second", progress=False)
    return workdir, next_cfg, report, clicked, catalog


def test_served_clicks_train_the_next_model(loop):
    workdir, cfg, report, clicked, catalog = loop
    pairs_dir = workdir / "runs" / "second" / "pairs"
    train = pd.read_parquet(pairs_dir / "train.parquet")
    served = train.query("item_id == @A and related_item_id == @B")
    assert len(served) == 1 and served["support"].iloc[0] == 5  # the five served clicks, one training pair
    queries = pd.read_parquet(pairs_dir / "query_train.parquet")
    assert ((queries["query"] == "blue lamp") & (queries["related_item_id"] == clicked)).sum() == 1
    assert report["pairs"]["query_pairs"]["train"] >= 1
    cutoff = pd.Timestamp(report["pairs"]["cutoff"])
    assert cutoff > pd.Timestamp.now(tz="UTC")  # the test window is the next interval's last 7 days

    # what the trainer trained on is that training set (its data fingerprint), the served pairs in it
    mixed, mix = training_mix(train, queries, cfg)
    assert mix["query_pairs_used"] >= 1 and report["training"]["mix"] == mix
    items = load_catalog(catalog, cfg.contract).kept
    states = (workdir / "runs" / "second" / "training" / "checkpoints").glob("step-*/trainer_state.json")
    last = max(states, key=lambda p: int(p.parent.name.split("-")[1]))
    assert json.loads(last.read_text())["data"] == PairDataset(mixed, items).fingerprint()
    assert len(mixed.query("item_id == @A and related_item_id == @B")) >= 1
    assert ((mixed["query"] == "blue lamp") & (mixed["related_item_id"] == clicked)).any()


def test_the_span_share_split_keeps_served_clicks_out_of_training(loop):
    """The old behaviour, for contrast: test_fraction of the whole span puts the served interval in test."""
    workdir, cfg, _, _, _ = loop
    logs = pd.read_parquet(workdir / "runs" / "second" / "data" / "logs.parquet")
    old = split_pairs(logs, cfg.pairs, SplitConfig(), cfg.contract)
    assert old.train.query("item_id == @A and related_item_id == @B").empty
