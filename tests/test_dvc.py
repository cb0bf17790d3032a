"""`dvc repro` of dvc.yaml in a throwaway DVC repo: tiny synthetic data, tiny encoder; reruns skip
unchanged stages, and a changed training param reruns training and what follows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tandem.config import load_config
from tandem.synth import make_dataset

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
DOWNSTREAM_OF_TRAIN = {"train", "embed", "publish"}


def _dvc(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` = this venv
        # each stage is a new interpreter importing torch, feast, GX: keep their bytecode (outside the venv)
        "PYTHONPYCACHEPREFIX": str(repo.parent.parent / "tandem-pycache"),  # kept across pytest sessions
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }
    done = subprocess.run([str(DVC), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


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
    """A DVC repo holding dvc.yaml, the code its stages depend on, params and raw data in data/."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    _dvc(repo, "init", "--no-scm", "-q")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(ROOT / "src" / "tandem", repo / "src" / "tandem", ignore=shutil.ignore_patterns("__pycache__"))
    _write_params(repo, tiny_encoder_dir, epochs=1)
    raw = repo / "data" / "completejourney"  # where dvc.yaml reads the raw data
    logs, catalog = make_dataset(raw, n_items=24, n_kinds=4, n_users=40, sessions_per_user=5, days=20)
    pd.read_csv(logs).to_parquet(raw / "logs.parquet", index=False)
    pd.read_csv(catalog, dtype=str, keep_default_na=False).to_parquet(raw / "catalog.parquet", index=False)
    logs.unlink(), catalog.unlink()
    first = _dvc(repo, "repro")
    return repo, first


def test_params_yaml_is_a_run_config():
    cfg = load_config(ROOT / "params.yaml")  # `tandem run --config params.yaml` reads it the same way
    assert cfg.train.epochs == 1 and cfg.eval.primary_metric == "recall@100"


def test_repro_runs_every_stage_and_writes_metrics(repo):
    repo, first = repo
    assert _ran(first) == {"load", "pairs", "validate", "features", "train", "embed", "publish"}
    metrics = json.loads((repo / "metrics.json").read_text())
    assert metrics["gate"] == "promote" and metrics["live_collection"] == "tandem_dvc"
    for name in ("model", "untrained", "popularity"):
        assert 0.0 <= metrics[name]["mrr@10"] <= metrics[name]["recall@10"] <= metrics[name]["recall@100"] <= 1.0
    assert metrics["model"]["recall@100"] == 1.0  # 23 candidates per query
    shown = _dvc(repo, "metrics", "show", "--json")
    assert "recall@10" in shown
    assert (repo / "work/dvc/feast/registry.db").is_file()


def test_repro_again_runs_nothing(repo):
    repo, _ = repo
    again = _dvc(repo, "repro")
    assert _ran(again) == set(), again


def test_changed_training_param_reruns_training_and_downstream(repo, tiny_encoder_dir):
    repo, _ = repo
    _write_params(repo, tiny_encoder_dir, epochs=2)
    assert "train" in _dvc(repo, "status")
    changed = _dvc(repo, "repro")
    assert _ran(changed) == DOWNSTREAM_OF_TRAIN, changed
    assert json.loads((repo / "work/dvc/runs/dvc/train.json").read_text())
