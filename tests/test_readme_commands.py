"""The README's commands, run the way a user types them, on a small slice of the demo data.

One demo workdir is built once (`tandem demo` as a subprocess of the installed console script, with a
tiny encoder); the commands that follow in the README use it in the README's order: serve (a real
uvicorn process, one request of each kind), run with the served events as a second --logs, rollout
status, pairs, train (plain and through `accelerate launch -m tandem.cli`). Elsewhere: export-onnx in
test_onnx_export.py, promptgen in test_promptgen_cli.py, DVC in test_dvc.py, Airflow in test_dags.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pandas as pd
import pytest
from conftest import TINY_VISION
from typer.testing import CliRunner

from tandem.cli import app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: tandem, accelerate
MAX_ITEMS = "60"  # products of the demo slice (~180k events, ~45 s for the whole loop on 2 cores)
runner = CliRunner()


def tandem(*argv, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`tandem ARGV...` as typed in a shell: the installed console script, its own process."""
    command = [str(BIN / "tandem"), *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kwargs)


def cli(*argv) -> SimpleNamespace:
    """The same argv through Typer's CliRunner, in this process (cheaper: no second torch import)."""
    result = runner.invoke(app, [str(a) for a in argv])
    return SimpleNamespace(code=result.exit_code, out=result.stdout, all=result.output)


@pytest.fixture(scope="module")
def recipe(tiny_encoder_dir, tmp_path_factory) -> Path:
    """A recipe for the tiny test encoder; a recipe is the README's way to pick a model."""
    values = {
        "model": {"item_encoder": tiny_encoder_dir, "query_layers": 1, **TINY_VISION},
        "train": {"batch_size": 16, "lr_item": 1e-3, "lr_query": 1e-3},
        "eval": {"batch_size": 64, "n_boot": 100, "latency_queries": 4},
        "serve": {"flush_seconds": 0.5},
    }
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def demo(recipe, tmp_path_factory):
    """`tandem demo --workdir work --max-items N --max-steps 5 --config tiny.yaml --json`."""
    workdir = tmp_path_factory.mktemp("demo") / "work"
    started = time.perf_counter()
    done = tandem(
        "demo", "--workdir", workdir, "--max-items", MAX_ITEMS, "--max-steps", 5, "--config", recipe, "--json"
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)  # --json: stdout is one JSON document, the logs went to stderr
    data = workdir / "data" / f"completejourney-{MAX_ITEMS}"
    return SimpleNamespace(
        workdir=workdir,
        summary=summary,
        logs=data / "logs.parquet",
        catalog=data / "catalog.parquet",
        run_dir=workdir / "runs" / summary["run_id"],
        stderr=done.stderr,
        seconds=time.perf_counter() - started,
    )


def test_demo_runs_the_loop_and_reports(demo):
    s = demo.summary
    assert s["gate"]["decision"] == "promote"  # the first run in a workdir goes live
    assert s["index"]["live_collection"] == s["index"]["collection"]
    logs, catalog = s["data"]["logs"], s["data"]["catalog"]
    assert logs["rows_in"] == logs["rows_kept"] + logs["rows_quarantined"] and logs["rows_kept"] > 10_000
    assert 0 < catalog["rows_kept"] <= int(MAX_ITEMS)
    assert s["pairs"]["train"] > 0 and s["pairs"]["test"] > 0
    assert set(s["metrics"]) >= {"model", "untrained", "popularity"}
    for kind in ("markdown", "json"):
        assert Path(s["report_files"][kind]).is_file()
    assert "stage train done" in demo.stderr  # the log lines are on stderr
    print(f"tandem demo --max-items {MAX_ITEMS}: {demo.seconds:.0f} s")


def test_demo_text_output_and_bad_flags(tmp_path):
    bad = cli("demo", "--workdir", tmp_path, "--max-items", "0")
    assert bad.code == 2 and "--max-items" in bad.all
    bad = cli("demo", "--workdir", tmp_path, "--family", "bert")
    assert bad.code == 2 and "hotelmatch" in bad.all and "notellm2" in bad.all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def promptgen_dir(demo, tmp_path_factory):
    """`tandem promptgen train --catalog CATALOG -n N --out DIR --preset P --epochs E` on the demo's catalogue."""
    out = tmp_path_factory.mktemp("promptgen") / "pg"
    result = cli(
        "promptgen", "train", "--catalog", demo.catalog, "-n", 60, "--out", out, "--preset", "tiny", "--epochs", 1
    )
    assert result.code == 0, result.all
    return out


@pytest.fixture(scope="module")
def served(demo, recipe, promptgen_dir):
    """`tandem serve --workdir work --host 127.0.0.1 --port P --config recipe.yaml --batch-window-ms 5 --promptgen
    DIR --expand-k 2`, then the README's curl requests: /search (plain and expand=true), /similar/ITEM with
    X-User-Id, POST /click; stopped with Ctrl-C."""
    port = free_port()
    argv = ["serve", "--workdir", demo.workdir, "--host", "127.0.0.1", "--port", port, "--config", recipe]
    argv += ["--batch-window-ms", 5, "--promptgen", promptgen_dir, "--expand-k", 2]
    process = subprocess.Popen(
        [str(BIN / "tandem"), *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base, answers = f"http://127.0.0.1:{port}", {}
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"tandem serve exited: {process.stdout.read()[-3000:]}"
            try:
                health = httpx.get(f"{base}/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "tandem serve did not answer /healthz within 180 s"
            time.sleep(0.5)
        answers["health"] = health.json()
        search = httpx.get(f"{base}/search", params={"q": "bananas", "k": 5, "user_id": "alice"}, timeout=60)
        answers["search"] = search.json()
        expanded = httpx.get(f"{base}/search", params={"q": "bananas", "k": 5, "expand": "true"}, timeout=60)
        answers["expanded"] = expanded.json()
        item = answers["search"]["items"][0]["item_id"]
        similar = httpx.get(f"{base}/similar/{item}", params={"k": 5}, headers={"X-User-Id": "alice"}, timeout=60)
        answers["similar"] = similar.json()
        body = {"request_id": answers["similar"]["request_id"], "item_id": answers["similar"]["items"][1]["item_id"]}
        answers["click"] = httpx.post(f"{base}/click", json=body, timeout=60)
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down and the event log is flushed
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    return SimpleNamespace(answers=answers, output=output, code=process.returncode)


def test_serve_answers_search_similar_and_click(served, demo):
    a = served.answers
    assert a["health"]["live"] == demo.summary["index"]["live_collection"]
    assert len(a["search"]["items"]) == 5 and "arm" not in a["search"]  # clients are not told their arm
    assert a["expanded"]["expansion"][0] == "bananas" and 2 <= len(a["expanded"]["expansion"]) <= 3
    assert len(a["expanded"]["items"]) == 5 and all("rrf" in item for item in a["expanded"]["items"])
    assert a["search"]["items"][0]["item_id"] not in {i["item_id"] for i in a["similar"]["items"]}
    assert a["click"].status_code == 200, a["click"].text
    assert "serving" in served.output and served.code in (0, -signal.SIGINT)
    events = pd.concat(pd.read_parquet(p) for p in (demo.workdir / "serving" / "events").rglob("*.parquet"))
    assert set(events["event"]) == {"impression", "view", "click"}
    assert set(events.loc[events["request_id"] == a["search"]["request_id"], "arm"]) == {"champion"}


def test_run_with_served_events_as_a_second_log(served, demo, recipe):
    """`tandem run --logs logs.parquet --logs work/serving/events --catalog ... --workdir work` (text output)."""
    events = demo.workdir / "serving" / "events"
    # The served events are the test part of this log; the few the tests served co-occur as the reverse
    # of trained pairs, which the default split drops (split.drop_reverse), leaving no test pair.
    values = json.loads(recipe.read_text()) | {"split": {"drop_reverse": False}}
    recipe = recipe.with_name("tiny-keep-reverse.yaml")
    recipe.write_text(json.dumps(values))
    result = cli(
        "run", "--logs", demo.logs, "--logs", events, "--catalog", demo.catalog, "--workdir", demo.workdir,
        "--config", recipe, "--max-steps", 5,
    )  # fmt: skip
    assert result.code == 0, result.all[-4000:]
    lines = dict(line.split(": ", 1) for line in result.out.splitlines() if ": " in line and line[0] != " ")
    second = json.loads(Path(lines["report.json"]).read_text())
    served_rows = sum(len(pd.read_parquet(p)) for p in events.rglob("*.parquet"))
    logs = second["data"]["logs"]
    assert logs["rows_in"] == demo.summary["data"]["logs"]["rows_in"] + served_rows
    assert (
        lines["logs"]
        == f"{logs['rows_in']} rows in = {logs['rows_kept']} kept + {logs['rows_quarantined']} quarantined"
    )
    assert second["gate"]["champion_collection"] == demo.summary["index"]["live_collection"]  # gated vs the demo
    assert lines["gate"].startswith(second["gate"]["decision"]) and Path(lines["report"]).is_file()

    status = cli("rollout", "status", "--workdir", demo.workdir, "--config", recipe)  # README: rollout status
    assert status.code == 0, status.all
    expected = "experiment:" if second["gate"]["decision"] == "promote" else "no rollout"
    assert expected in status.out


def test_pairs_command(demo, tmp_path):
    """`tandem pairs --logs PATH --out pairs.parquet --engine duckdb`."""
    result = cli("pairs", "--logs", demo.logs, "--out", tmp_path / "pairs.parquet", "--engine", "duckdb")
    assert result.code == 0, result.all
    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    assert list(pairs.columns) == ["item_id", "related_item_id", "score", "support"] and len(pairs) > 0
    assert (tmp_path / "pairs.parquet.quarantine.csv").is_file()
    bad = cli("pairs", "--logs", demo.logs, "--out", tmp_path / "p.parquet", "--engine", "pandas")
    assert bad.code == 2 and "duckdb" in bad.all and "spark" in bad.all


def test_train_command_and_resume(demo, recipe, tmp_path):
    """`tandem train --pairs train.parquet --valid-pairs valid.parquet --catalog C --out runs/x --config R`, twice."""
    pairs = demo.run_dir / "pairs"
    argv = ["train", "--pairs", pairs / "train.parquet", "--valid-pairs", pairs / "valid.parquet"]
    argv += ["--catalog", demo.catalog, "--out", tmp_path / "x", "--config", recipe, "--max-steps", 3]
    first = cli(*argv)
    assert first.code == 0, first.all
    assert "3 steps" in first.out and (tmp_path / "x" / "model" / "model.safetensors").is_file()
    again = cli(*argv)  # "rerun the same command to resume": a finished run resumes at its end
    assert again.code == 0 and "3 steps" in again.out, again.all


def test_train_through_accelerate_launch(demo, recipe, tmp_path):
    """`accelerate launch --num_processes N -m tandem.cli train ...` with one CPU process here."""
    pairs = demo.run_dir / "pairs" / "train.parquet"
    command = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "-m", "tandem.cli", "train"]
    command += ["--pairs", str(pairs), "--catalog", str(demo.catalog), "--out", str(tmp_path / "x")]
    command += ["--config", str(recipe), "--max-steps", "2"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 steps" in done.stdout and (tmp_path / "x" / "model" / "model.safetensors").is_file()


def test_python_m_tandem_cli_and_version():
    done = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "--version"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.startswith("tandem ")
    from importlib.metadata import version

    assert done.stdout.split()[1] == version("tandem-mlops")


# ------------------------------------------------------------------------------ a Milvus server (README)
def test_milvus_up_status_down_as_in_readme(tmp_path):
    """`tandem milvus up --workdir work` prints the URI to export; the server answers, keeps the live alias and
    its history across `down` / `up`, and `status` says whether it runs (exit 0 / 1)."""
    import numpy as np

    from tandem.core.config_release import IndexConfig
    from tandem.release.index import ItemIndex

    work = tmp_path / "work"
    up = tandem("milvus", "up", "--workdir", work, timeout=300)
    if up.returncode == 2 and "not installed" in up.stderr:
        pytest.skip(up.stderr.strip())
    if up.returncode == 1 and "Milvus server" in up.stderr:  # exited or did not answer: the machine, not tandem
        pytest.skip(f"the Milvus server did not start: {up.stderr[-500:]}")
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        uri = up.stdout.split("export TANDEM_MILVUS_URI=")[1].split()[0]
        assert (work / "milvus-server" / "server.json").is_file()
        assert tandem("milvus", "up", "--workdir", work).stdout == up.stdout  # already running: found, not restarted
        status = tandem("milvus", "status", "--workdir", work)
        assert status.returncode == 0 and status.stdout.startswith(f"running: {uri}")
        vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
        with ItemIndex(IndexConfig(milvus_uri=uri, index_type="FLAT")) as index:
            index.write("tandem_one", [f"i{n}" for n in range(30)], vectors)
            index.write("tandem_two", [f"i{n}" for n in range(30)], vectors[::-1].copy())
            index.promote("tandem_one")
            index.promote("tandem_two")
        down = tandem("milvus", "down", "--workdir", work)
        assert down.returncode == 0 and "stopped" in down.stdout and "data kept" in down.stdout
        stopped = tandem("milvus", "status", "--workdir", work)
        assert stopped.returncode == 1 and stopped.stdout.startswith("not running")
        again = tandem("milvus", "up", "--workdir", work, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        uri = again.stdout.split("export TANDEM_MILVUS_URI=")[1].split()[0]
        with ItemIndex(IndexConfig(milvus_uri=uri, index_type="FLAT")) as index:
            assert index.live() == "tandem_two" and index.rollback_target() == "tandem_one"
            assert [e["collection"] for e in index.history()] == ["tandem_one", "tandem_two"]
            assert index.search("live", vectors[:1], k=1)[0][0][0] == "i29"  # tandem_two holds them reversed
    finally:
        tandem("milvus", "down", "--workdir", work)
    assert tandem("milvus", "down", "--workdir", work).stdout.startswith("no Milvus server running")


# ------------------------------------------------------------------------------ Kubeflow (README section)
def test_kfp_compile_as_in_readme(tmp_path):
    """`tandem kfp compile --image REGISTRY/tandem:TAG` (and --pipeline promptgen), written to tmp here."""
    for pipeline, name in (("tandem", "tandem"), ("promptgen", "tandem-promptgen")):
        out = tmp_path / f"{pipeline}.yaml"
        result = cli("kfp", "compile", "--pipeline", pipeline, "--image", "registry.local/tandem:v1", "-o", out)
        assert result.code == 0, result.all
        assert "image: registry.local/tandem:v1" in out.read_text() and f"name: {name}" in out.read_text()


def test_kfp_submit_as_in_readme(monkeypatch):
    """`tandem kfp submit --host URL --logs ... --catalog ... --config training/hotelmatch_gpu.yaml` against a
    stand-in for the KFP API server (no cluster here)."""
    import kfp

    sent = {}

    class FakeClient:
        def __init__(self, host):
            sent["host"] = host

        def create_run_from_pipeline_package(self, pipeline_file, arguments, run_name, experiment_name):
            sent.update(package=pipeline_file, arguments=arguments)
            return SimpleNamespace(run_id="run-1")

    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.chdir(ROOT)
    result = cli(
        "kfp", "submit", "--host", "https://kfp.example", "--logs", "/mnt/tandem/in/logs",
        "--catalog", "/mnt/tandem/in/catalog.csv", "--config", "training/hotelmatch_gpu.yaml",
    )  # fmt: skip
    assert result.code == 0, result.all
    assert json.loads(result.out)["run_id"] == "run-1" and sent["host"] == "https://kfp.example"
    config = json.loads(sent["arguments"]["config"])
    from tandem.core.config import load_config

    gpu = load_config(ROOT / "training" / "hotelmatch_gpu.yaml")
    assert config["train"]["batch_size"] == gpu.train.batch_size and config["model"]["family"] == gpu.model.family


def test_kfp_run_local_hands_the_flags_to_the_pipeline(monkeypatch, tmp_path):
    """`tandem kfp run-local --logs L --catalog C --workdir W`: the parsing and hand-over; the pipeline run
    itself (kfp.local, a process per component) is tests/test_kfp.py's local_run."""
    from tandem.orchestration import kubeflow as pipelines

    calls = {}

    def fake_run_local(logs, catalog, workdir, cfg, run_id):
        calls.update(logs=logs, catalog=catalog, workdir=workdir, cfg=cfg)
        gate = {"decision": "promote", "reason": "first"}
        return {"gate": gate, "promote": {"live_collection": "tandem_x"}, "run_dir": "r", "pipeline_root": "p"}

    monkeypatch.setattr(pipelines, "run_local", fake_run_local)
    result = cli("kfp", "run-local", "--logs", "L.csv", "--catalog", "C.csv", "--workdir", tmp_path, "--epochs", 2)
    assert result.code == 0, result.all
    assert calls["logs"] == Path("L.csv") and calls["workdir"] == tmp_path and calls["cfg"].train.epochs == 2
    assert "live collection: tandem_x" in result.out


def test_kfp_run_local_promptgen_hands_the_flags_to_the_pipeline(monkeypatch, tmp_path):
    """`tandem kfp run-local --pipeline promptgen --catalog C --workdir W --preset tiny --epochs 1`: the hand-over;
    the pipeline run itself is tests/test_kfp_promptgen.py's local_run."""
    from tandem.orchestration import kubeflow as pipelines

    calls = {}

    def fake(workdir, **options):
        calls.update(options, workdir=workdir)
        fit = {"fit": {"epoch_loss": [1.5]}}
        teacher = {"source": "catalogue", "examples": 60, "quarantined": 0}
        return {"teacher": teacher, "promptgen": {"generator": fit}, "model": "m", "pipeline_root": "p"}

    monkeypatch.setattr(pipelines, "run_local_promptgen", fake)
    argv = ["kfp", "run-local", "--pipeline", "promptgen", "--catalog", "C.csv", "--workdir", tmp_path]
    result = cli(*argv, "--preset", "tiny", "--epochs", 1)
    assert result.code == 0, result.all
    assert calls["catalog"] == Path("C.csv") and calls["preset"] == "tiny" and calls["epochs"] == 1
    assert calls["workdir"] == tmp_path and "generator loss: 1.5000" in result.out
