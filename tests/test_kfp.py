"""Kubeflow Pipelines: the committed YAML is fresh and asks for GPUs; the whole pipeline runs with kfp.local."""

import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import TINY_VISION
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core.config import EvalConfig, ModelConfig, RunConfig, TrainConfig
from tandem.core.config_release import IndexConfig
from tandem.data.contract import load_catalog
from tandem.data.synth import make_dataset
from tandem.orchestration import kubeflow as pipelines
from tandem.pipeline import stages
from tandem.release.index import ItemIndex

ROOT = Path(__file__).resolve().parents[1]
GPU_TASKS = {"align", "train", "embed"}
CACHED = {"mine", "validate", "train", "embed"}  # functions of their input artifacts
RETRIED = {"load", "features", "index", "evaluate", "promote"}  # storage, Feast, Milvus
pytestmark = pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner")
ALL_TASKS = {"load", "mine", "validate", "features", "align", "train", "embed", "index", "evaluate", "gate", "promote"}
ALL_TASKS |= {"report", "report-2"}  # the report after promote, and the report of a rejecting gate


def _docs(path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def _tasks(spec: dict) -> dict:
    """Every task of the pipeline by name, the ones inside dsl.If included."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for name, component in spec["components"].items():
        if name.startswith("comp-condition"):
            tasks |= component["dag"]["tasks"]
    return tasks


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = pipelines.compile(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    return _docs(path)


def test_committed_yaml_is_not_stale(compiled):
    committed = _docs(ROOT / "components" / pipelines.PIPELINE_YAML)
    assert committed == compiled, "components/pipeline.yaml is stale: run `tandem kfp compile` and commit it"


def test_yaml_requests_gpus_limits_retries_and_caching(compiled):
    spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in GPU_TASKS:
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["resourceCpuLimit"] and resources["resourceMemoryLimit"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s[f"exec-{name}"][
            "tolerations"
        ]
    assert "accelerator" not in executors["exec-evaluate"]["container"]["resources"]
    tasks = _tasks(spec)
    assert set(tasks) - {"condition-1", "condition-2"} == ALL_TASKS
    for name in ALL_TASKS:
        assert bool(tasks[name]["cachingOptions"].get("enableCache")) == (name in CACHED), name
        assert ("retryPolicy" in tasks[name]) == (name in RETRIED), name
        assert tasks[name].get("retryPolicy", {"maxRetryCount": 3})["maxRetryCount"] == 3
        assert executors[f"exec-{name}"]["container"]["image"] == pipelines.DEFAULT_IMAGE
        assert k8s[f"exec-{name}"]["pvcMount"][0]["mountPath"] == pipelines.MOUNT_PATH
    # promotion only under the gate's decision; the token only from a Secret
    condition = spec["root"]["dag"]["tasks"]["condition-1"]["triggerPolicy"]["condition"]
    assert "gate-Output" in condition and "'promote'" in condition
    assert "promote" in spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert k8s["exec-promote"]["secretAsEnv"][0]["secretName"] == pipelines.MILVUS_SECRET
    # the report comes after promote, or alone when the gate rejects; its page is an HTML artifact for the UI
    assert spec["components"]["comp-condition-1"]["dag"]["tasks"]["report"]["dependentTasks"] == ["promote"]
    rejected = spec["root"]["dag"]["tasks"]["condition-2"]["triggerPolicy"]["condition"]
    assert "gate-Output" in rejected and "'reject'" in rejected
    assert "report-2" in spec["components"]["comp-condition-2"]["dag"]["tasks"]
    for name in ("comp-report", "comp-report-2"):
        page = spec["components"][name]["outputDefinitions"]["artifacts"]["page"]
        assert page["artifactType"]["schemaTitle"] == "system.HTML"


def test_token_never_travels_as_a_parameter(tmp_path):
    cfg = RunConfig(index=IndexConfig(milvus_uri="http://milvus:19530", token="s3cret"))
    with pytest.raises(ValueError, match="Secret"):
        pipelines.arguments("logs", "catalog", cfg=cfg)
    args = pipelines.arguments("logs", "catalog", cfg=replace(cfg, index=replace(cfg.index, token="")))
    assert json.loads(args["config"])["index"]["milvus_uri"] == "http://milvus:19530"
    with pytest.raises(ValueError, match="tandem kfp compile"):
        pipelines.submit("http://localhost:1", args, package=tmp_path / "missing.yaml")


def test_gate_component_on_its_own(tmp_path):
    """A component body is plain Python: `.python_func` with a stand-in for the input artifact."""
    gate = pipelines.definitions().components(pipelines.DEFAULT_IMAGE)["gate"]
    report = tmp_path / "report"
    (report / "evaluate").mkdir(parents=True)
    metrics = {"recall@100": 0.5, "short_query/recall@100": 0.5, "mrr@10": 0.1}
    evaluation = {"metrics": {"model": metrics, "champion": metrics}, "champion_collection": "tandem_old"}
    (report / "evaluate.json").write_text(json.dumps(evaluation))
    hits = np.tile([1.0, 0.0], 50)  # both arms the same per-pair results (the evaluate stage's per_pair.npz)
    np.savez(report / "evaluate" / "per_pair.npz", **{f"{a}|{m}": hits for a in ("model", "champion") for m in metrics})
    args = dict(config="{}", run_id="r1", workdir=str(tmp_path / "work"), report=SimpleNamespace(path=str(report)))
    assert gate.python_func(**args) == "reject"  # equal is not better
    lenient = json.dumps({"gate": {"min_improvement": -1.0}})
    assert gate.python_func(**(args | {"config": lenient})) == "promote"
    assert json.loads((tmp_path / "work/runs/r1/gate.json").read_text())["decision"] == "promote"


def test_cli_compile(tmp_path):
    runner = CliRunner()
    for command in (["kfp"], ["kfp", "compile"], ["kfp", "run-local"], ["kfp", "submit"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output
    result = runner.invoke(app, ["kfp", "compile", "--output", str(tmp_path / "p.yaml"), "--image", "reg/tandem:1"])
    assert result.exit_code == 0, result.output
    assert "image: reg/tandem:1" in (tmp_path / "p.yaml").read_text()


def test_cli_submit_takes_host_from_env_and_never_sends_the_token(monkeypatch):
    import kfp

    monkeypatch.chdir(ROOT)  # the compiled pipeline is read from ./components/

    calls = {}

    class FakeClient:  # stands in for the KFP API server
        def __init__(self, host):
            calls["host"] = host

        def create_run_from_pipeline_package(self, pipeline_file, arguments, run_name, experiment_name):
            calls.update(package=pipeline_file, arguments=arguments, experiment=experiment_name)
            return SimpleNamespace(run_id="run-123")

    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setenv("TANDEM_KFP_HOST", "http://kfp.example:8888")
    monkeypatch.setenv("TANDEM_MILVUS_TOKEN", "s3cret")
    result = CliRunner().invoke(
        app,
        ["kfp", "submit", "--logs", "/mnt/tandem/in/logs.csv", "--catalog", "/mnt/tandem/in/c.csv", "--epochs", "3"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["run_id"] == "run-123" and calls["host"] == "http://kfp.example:8888"
    assert calls["package"].endswith("components/pipeline.yaml") and calls["experiment"] == "tandem"
    config = json.loads(calls["arguments"]["config"])
    assert config["train"]["epochs"] == 3 and config["index"]["token"] == ""
    assert "s3cret" not in json.dumps(calls)


# ------------------------------------------------------------- the whole pipeline, kfp.local
@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_encoder_dir):
    logs, catalog = make_dataset(tmp_path_factory.mktemp("data"), n_items=48, n_users=80)
    cfg = RunConfig(
        model=replace(ModelConfig(), item_encoder=tiny_encoder_dir, query_layers=1, **TINY_VISION),
        train=replace(TrainConfig(), epochs=1, max_steps=3, batch_size=16, lr_item=1e-3, lr_query=1e-3),
        eval=replace(EvalConfig(), batch_size=32),
    )
    workdir = tmp_path_factory.mktemp("work")
    return workdir, catalog, cfg, pipelines.run_local(logs, catalog, workdir, cfg, run_id="kfp1")


def test_local_pipeline_promotes_and_indexes_every_item(local_run):
    workdir, catalog, cfg, result = local_run
    assert result["gate"]["decision"] == "promote"
    assert result["promote"]["live_collection"] == "tandem_kfp1"
    items = load_catalog(catalog).kept["item_id"]
    with ItemIndex(cfg.index, workdir) as index:
        assert index.live() == "tandem_kfp1"
        assert index.count("tandem_kfp1") == len(items) == result["index"]["vectors"]
    # the shared run folder has tandem run's layout: a later run's evaluate finds this champion's model
    for name in ("model/model.safetensors", "vectors/items.npy", "features.json", "evaluate.json"):
        assert (workdir / "runs/kfp1" / name).is_file(), name
    later = stages.RunPaths.of(workdir, "next")
    assert stages._champion_model(later, "tandem_kfp1") == later.workdir / "collections/tandem_kfp1/model"  # frozen


def test_local_pipeline_artifacts_carry_model_and_metrics(local_run):
    workdir, _, _, result = local_run
    (root,) = (workdir / "kfp").iterdir()  # one pipeline run
    assert (root / "train/model/model/model.safetensors").is_file()
    assert (root / "mine/pairs/pairs/train.parquet").is_file()
    evaluated = json.loads((root / "evaluate/executor_output.json").read_text())
    logged = evaluated["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["model.recall@100"] == result["evaluate"]["metrics"]["model"]["recall@100"]
    assert {"model.mrr@10", "popularity.recall@10", "untrained.recall@10"} <= set(logged)
    # the report task's HTML artifact is the run folder's self-contained report.html
    page = root / "report" / "page"
    assert page.read_text() == (workdir / "runs/kfp1/report.html").read_text()
    assert "tandem run kfp1" in page.read_text() and 'src="data:image/png;base64,' in page.read_text()
    assert result["report"]["report_files"]["html"] == str(workdir / "runs/kfp1/report.html")
    assert not (root / "report-2").exists()  # the gate promoted: the rejected branch's report did not run
    (docs,) = re.findall(r'href="([^"]+)"', page.read_text())  # Data Docs, from validate's scratch folder
    assert (workdir / "runs/kfp1" / docs).is_file()
