"""End to end: `tandem run` on a generated dataset with Pillow-drawn images and a tiny encoder."""

import json
from dataclasses import replace

import pytest
from conftest import TINY_VISION
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from tandem.core.config_release import GateConfig
from tandem.data.contract import load_catalog
from tandem.data.synth import make_dataset
from tandem.evaluation.results import load_per_pair
from tandem.pipeline.run import run
from tandem.release import rollout
from tandem.release.index import ItemIndex

BASE_METRICS = {"recall@10", "recall@100", "recall@1000", "mrr@10", "ndcg@10"}
# the synthetic items' texts are all short: both subsets hold every pair
METRICS = BASE_METRICS | {f"{s}/{m}" for s in ("short_query", "short_target") for m in BASE_METRICS}
WARM_COLD = {f"{s}/{m}" for s in ("warm", "cold") for m in BASE_METRICS}  # an empty subset is left out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_items=48, n_users=80)


@pytest.fixture(scope="module")
def cfg(tiny_encoder_dir):
    return RunConfig(
        model=replace(ModelConfig(), item_encoder=tiny_encoder_dir, query_layers=1, **TINY_VISION),
        train=replace(TrainConfig(), epochs=2, batch_size=16, lr_item=1e-3, lr_query=1e-3),
        eval=replace(EvalConfig(), batch_size=32),
    )


@pytest.fixture(scope="module")
def first(dataset, cfg, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("work")
    return workdir, run(*dataset, workdir, cfg, run_id="first", progress=False)


def test_report_has_metrics_gate_and_index(first, dataset):
    workdir, report = first
    on_disk = json.loads((workdir / "runs" / "first" / "report.json").read_text())
    assert on_disk["metrics"] == report["metrics"]
    assert set(report["metrics"]) == {"model", "untrained", "popularity", "bm25", "cooccurrence"}
    for values in report["metrics"].values():
        assert METRICS <= set(values) <= METRICS | WARM_COLD and "warm/recall@100" in values
        assert all(0.0 <= v <= 1.0 for v in values.values())
        assert values["recall@10"] <= values["recall@100"] <= values["recall@1000"]
        assert values["mrr@10"] <= values["ndcg@10"] <= values["recall@10"]
        assert values["short_query/recall@100"] == values["recall@100"]
    evaluated = json.loads((workdir / "runs" / "first" / "evaluate.json").read_text())
    assert evaluated["protocol"] == "hotelmatch" and evaluated["counts"]["pool_size"] == 48
    assert set(evaluated["latency_ms"]) == {"model"} and evaluated["latency_ms"]["model"] > 0
    for name, values in report["metrics"].items():
        for metric, mean in values.items():
            lo, hi = evaluated["ci"][name][metric]
            assert lo - 1e-9 <= mean <= hi + 1e-9
    per_pair = load_per_pair(workdir / "runs" / "first" / "evaluate" / "per_pair.npz")
    assert set(per_pair) == set(report["metrics"]) | {"_pairs"}  # _pairs: each pair's query item, for the gate
    assert per_pair["model"]["recall@100"].shape == (evaluated["counts"]["pairs_evaluated"],)
    assert "| 1.0000 [1.000, 1.000] |" in (workdir / "runs" / "first" / "report.md").read_text()  # mean [CI]
    assert report["gate"]["decision"] == "promote" and report["gate"]["champion"] is None
    assert report["index"]["collection"] == "tandem_first" and report["index"]["alias"] == "live"
    assert report["index"]["live_collection"] == "tandem_first"
    assert report["validation"]["success"] and (workdir / "runs/first/validation").is_dir()
    for name in ("report.md", "recall.png", "model/model.safetensors", "pairs/train.parquet", "quarantine/logs.csv"):
        assert (workdir / "runs" / "first" / name).is_file(), name
    data = report["data"]["logs"]
    assert data["rows_in"] == data["rows_kept"] + data["rows_quarantined"]
    # the pool has 47 candidates per query, so every target is inside the top 100
    assert report["metrics"]["model"]["recall@100"] == 1.0


def test_collection_holds_one_vector_per_item(first, dataset, cfg):
    workdir, report = first
    items = load_catalog(dataset[1]).kept["item_id"]
    with ItemIndex(cfg.index, workdir) as index:
        assert index.count("tandem_first") == len(items) == report["index"]["vectors"]
        rows = index.client.query("live", filter="", output_fields=["item_id"], limit=1000)
        assert sorted(r["item_id"] for r in rows) == sorted(items)
        assert index.live() == "tandem_first"


def test_trained_model_beats_untrained(first):
    _, report = first
    assert report["metrics"]["model"]["mrr@10"] > report["metrics"]["untrained"]["mrr@10"]


def test_gate_keeps_champion_unless_challenger_wins(first, dataset, cfg):
    workdir, _ = first
    # Same data, same seed: the same model again, which does not beat the champion.
    again = run(*dataset, workdir, cfg, run_id="again", progress=False)
    assert again["gate"]["decision"] == "reject"
    assert again["metrics"]["champion"] == pytest.approx(again["metrics"]["model"])
    assert again["index"]["live_collection"] == "tandem_first"
    # A negative margin lets an equal challenger through: a staged rollout starts, live stays on the champion
    # until the rollout completes (forced here: no traffic was served), then the alias moves.
    lenient = replace(cfg, gate=GateConfig(min_improvement=-1.0, max_latency_ratio=0.0))  # latency is noisy here
    moved = run(*dataset, workdir, lenient, run_id="moved", progress=False)
    assert moved["gate"]["decision"] == "promote" and moved["gate"]["champion_collection"] == "tandem_first"
    assert moved["index"]["live_collection"] == "tandem_first"
    assert rollout.load_state(workdir).challenger == "tandem_moved"
    while rollout.load_state(workdir).status == "running":
        rollout.advance(workdir, None, lenient, force=True)
    with ItemIndex(cfg.index, workdir) as index:
        assert index.live() == "tandem_moved"


def test_cli_help_and_bad_input(tmp_path, dataset):
    runner = CliRunner()
    for command in ([], ["run"], ["demo"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    bad = tmp_path / "logs.csv"
    bad.write_text("user_id,item_id,when\n1,2,2024-01-01\n")
    result = runner.invoke(app, ["run", "--logs", str(bad), "--catalog", str(dataset[1]), "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no column 'event', 'ts'" in result.output and "logs.csv" in result.output


def test_failing_validation_stops_the_run_with_a_readable_message(tmp_path, dataset):
    import pandas as pd

    logs = pd.read_csv(dataset[0])
    # A classic export bug: day numbers where epoch seconds were meant, so every event is in 1970.
    logs["ts"] = pd.to_datetime(logs["ts"]).dt.dayofyear * 86400 + pd.to_datetime(logs["ts"]).dt.hour * 3600
    logs.to_csv(tmp_path / "logs.csv", index=False)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--logs",
            str(tmp_path / "logs.csv"),
            "--catalog",
            str(dataset[1]),
            "--workdir",
            str(tmp_path / "work"),
        ],
    )
    # The contract quarantines every row (before 1990: outside contract.min_ts) and the load stage says so.
    assert result.exit_code == 2, result.output
    assert f"none of the {len(logs)} rows is usable (ts out of range: {len(logs)})" in result.output
    assert "(epoch seconds = 1970-" in result.output and "contract.min_ts" in result.output
    quarantine = list((tmp_path / "work" / "runs").glob("*/quarantine/logs.csv"))
    assert len(quarantine) == 1 and str(quarantine[0]) in result.output
    assert len(pd.read_csv(quarantine[0])) == len(logs)
    assert not list((tmp_path / "work" / "runs").glob("*/model"))  # stopped before training


def test_report_never_holds_the_milvus_token():
    from tandem.core.config_release import IndexConfig
    from tandem.pipeline.run import redacted

    cfg = RunConfig(index=IndexConfig(milvus_uri="http://m:19530", token="user:secret"))
    assert redacted(cfg)["index"] == {**redacted(cfg)["index"], "token": "***"}
    assert "secret" not in json.dumps(redacted(cfg))
