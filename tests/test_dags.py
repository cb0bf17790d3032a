"""The Airflow DAGs: a DagBag import test and `dag.test()` runs of the daily loop on tiny data.

All Airflow work happens in one subprocess (tests/dag_harness.py) with its own AIRFLOW_HOME,
SQLite metadata DB, Variables (AIRFLOW_VAR_*) and Connections (AIRFLOW_CONN_*); these tests
read what it left behind. The `tandem.orchestration.airflow_schedule` units below need no Airflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tandem.data.events import EVENT_COLUMNS
from tandem.orchestration import airflow_schedule as schedule
from tandem.release import rollout

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("dag_harness.py")
RUN_ID = "daily-20240131"
RECIPE = """
model:
  {{item_encoder: "{encoder}", query_layers: 1, image_size: 32, patch_size: 8,
    vision_width: 32, vision_layers: 1, vision_heads: 2}}
train: {{epochs: 2, batch_size: 16, lr_item: 1.0e-3, lr_query: 1.0e-3}}
eval: {{batch_size: 32}}
"""


def _airflow_env(tmp: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TANDEM_"))}
    env |= {
        "AIRFLOW_HOME": str(tmp / "airflow_home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "GX_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env |= {f"AIRFLOW_VAR_{k.upper()}": v for k, v in variables.items()}
    return env


def _harness(out: Path, env: dict, mode: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(out), mode], env=env, capture_output=True, text=True, timeout=900
    )
    output = proc.stdout + proc.stderr
    if not out.is_file():
        pytest.fail(f"the harness wrote no result (exit {proc.returncode}):\n{output[-6000:]}")
    return json.loads(out.read_text()), output


@pytest.fixture(scope="module")
def airflow_runs(tmp_path_factory, tiny_encoder_dir):
    import pandas as pd

    from tandem.data.synth import make_dataset

    tmp = tmp_path_factory.mktemp("airflow")
    logs, catalog = make_dataset(tmp / "data", n_items=48, n_users=80)  # events 2024-01-01 .. 2024-01-31
    bad = pd.read_csv(logs)
    bad["ts"] = bad["ts"].str.replace("2024-", "2099-", regex=False)  # a clock bug: events in the future
    bad.to_csv(tmp / "data" / "bad_logs.csv", index=False)
    (tmp / "recipe.yaml").write_text(RECIPE.format(encoder=tiny_encoder_dir))
    workdir, milvus_db = tmp / "work", tmp / "milvus" / "vectors.db"
    milvus_db.parent.mkdir()
    env = _airflow_env(
        tmp,
        tandem_workdir=str(workdir),
        tandem_logs_source=str(logs),
        tandem_catalog=str(catalog),
        tandem_config=str(tmp / "recipe.yaml"),
        tandem_history_days="31",
        tandem_test_days="7",  # the synthetic month has too few events on its last day for a test window
    )
    # The Milvus URI comes from a connection (here a Milvus Lite file; a server URL in production).
    env["AIRFLOW_CONN_TANDEM_MILVUS"] = json.dumps({"conn_type": "generic", "extra": {"uri": str(milvus_db)}})
    env["HARNESS_BAD_LOGS"] = str(tmp / "data" / "bad_logs.csv")
    result, output = _harness(tmp / "result.json", env, "daily")
    return {"result": result, "output": output, "workdir": workdir, "milvus": milvus_db, "catalog": catalog}


def test_dagbag_imports_both_dags_without_heavy_modules(airflow_runs):
    bag = airflow_runs["result"]["dagbag"]
    assert bag["import_errors"] == {}
    assert {"tandem_daily", "tandem_index_audit", "tandem_rollout_guard"} <= set(bag["dag_ids"])
    heavy = {"torch", "transformers", "great_expectations", "feast", "pymilvus", "milvus_lite", "kfp"}
    assert not heavy & set(bag["heavy_modules"]), bag["heavy_modules"]


def test_daily_dag_runs_the_loop_end_to_end(airflow_runs):
    first = airflow_runs["result"].get("first")
    assert first, airflow_runs["output"][-6000:]
    assert first["interval"][0].startswith("2024-01-31") and first["interval"][1].startswith("2024-02-01")
    assert first["state"].endswith("success"), (first, airflow_runs["output"][-6000:])
    expected = {
        "ingest",
        "load",
        "mine",
        "validate",
        "features",
        "align",
        "train",
        "embed",
        "index",
        "evaluate",
        "gate",
        "promote",
        "report",
    }
    assert set(first["tasks"]) == expected
    assert all(s.endswith("success") for s in first["tasks"].values()), first["tasks"]
    run_dir = airflow_runs["workdir"] / "runs" / RUN_ID
    report = json.loads((run_dir / "report.json").read_text())
    assert report["run_id"] == RUN_ID and report["gate"]["decision"] == "promote"
    assert report["index"]["live_collection"] == "tandem_daily_20240131"
    assert report["index"]["uri"] == str(airflow_runs["milvus"])  # from the tandem_milvus connection
    assert report["config"]["index"]["token"] == ""
    assert len(report["inputs"]["logs"]) >= 31  # the whole look-back window was read
    assert report["report_files"]["html"] == str(run_dir / "report.html") and (run_dir / "report.html").is_file()
    partitions = sorted(p.name for p in (airflow_runs["workdir"] / "warehouse" / "logs").iterdir())
    assert len(partitions) == 31 and partitions[0] == "date=2024-01-01" and partitions[-1] == "date=2024-01-31"


def test_rerunning_the_interval_keeps_pairs_and_vector_count(airflow_runs):
    import pandas as pd

    from tandem.core.config_release import IndexConfig
    from tandem.data.contract import load_catalog
    from tandem.release.index import ItemIndex

    second = airflow_runs["result"].get("second")
    assert second and all(s.endswith("success") for s in second["tasks"].values()), second
    snaps = airflow_runs["workdir"] / "snapshots"
    for split in ("train", "valid", "test"):
        a, b = (pd.read_parquet(snaps / s / "pairs" / f"{split}.parquet") for s in ("first", "second"))
        pd.testing.assert_frame_equal(a, b)
    items = len(load_catalog(airflow_runs["catalog"]).kept)
    first_count = json.loads((snaps / "first" / "index.json").read_text())["vectors"]
    with ItemIndex(IndexConfig(milvus_uri=str(airflow_runs["milvus"]))) as index:
        assert index.count("tandem_daily_20240131") == first_count == items
        assert index.live() == "tandem_daily_20240131"
        assert index.run_collections() == ["tandem_daily_20240131"]


def test_audit_dag_checks_the_live_index(airflow_runs):
    audit = airflow_runs["result"].get("audit")
    assert audit and audit["tasks"]["audit"].endswith("success"), audit
    live = json.loads((airflow_runs["workdir"] / "audit" / "live.json").read_text())
    assert live["ok"] and live["run_id"] == RUN_ID and live["vectors"] == live["items"]


def test_events_in_the_future_fail_the_load_task_with_the_reason(airflow_runs):
    """Every event of the bad interval is in 2099 (after contract.max_ts, the load + 1 day): the contract
    quarantines them all, writes quarantine/logs.csv, and the load task fails saying why."""
    bad = airflow_runs["result"].get("bad")
    assert bad, airflow_runs["output"][-6000:]
    tasks = bad["tasks"]
    assert bad["state"].endswith("failed")
    assert tasks["ingest"].endswith("success") and tasks["load"].endswith("failed")
    assert all(tasks[t].endswith("upstream_failed") for t in ("mine", "validate", "features", "train", "promote"))
    assert "rows is usable (ts out of range: " in airflow_runs["output"] and "contract.max_ts" in airflow_runs["output"]
    run = airflow_runs["workdir"] / "runs" / "daily-20990131"
    assert (run / "quarantine" / "logs.csv").is_file() and not (run / "model").exists()


# ------------------------------------------------------------------ the rollout guard
GUARD_RECIPE = "index: {index_type: FLAT}\nrollout: {min_impressions: 200, salt: test}\n"
CHAMPION, CHALLENGER = "tandem_daily_20240130", "tandem_daily_20240131"
IMPRESSIONS = 1000  # per arm, well above min_impressions


def _served(experiment: str, clicks: dict[str, int]):
    """A Parquet part as the search service writes it, stamped now (inside the rollout's first stage). The arms
    are given, not routed: routing is tested in tests/test_rollout.py; here only the counts matter."""
    import pandas as pd

    rows, now = [], pd.Timestamp.now(tz="UTC")
    for side, n_clicks in clicks.items():
        for n in range(IMPRESSIONS):
            user = f"{side}-{n}"
            base = {"user_id": user, "item_id": f"i{n % 20}", "ts": now, "query": "red dress", "arm": side}
            base |= {"experiment": experiment, "request_id": f"r-{user}", "position": 0}
            rows.append(base | {"event": "impression"})
            if n < n_clicks:
                rows.append(base | {"event": "click"})
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS))


def _running_rollout(workdir: Path, cfg, clicks: dict[str, int]):
    """Two tiny runs in the workdir's Milvus Lite file, the first live, a rollout of the second, served events."""
    import numpy as np
    from milvus_lite.server_manager import server_manager_instance

    from tandem.release.index import ItemIndex

    rng = np.random.default_rng(0)
    with ItemIndex(cfg.index, workdir) as index:
        for name in (CHAMPION, CHALLENGER):
            index.write(name, [f"i{n}" for n in range(20)], rng.normal(size=(20, 8)).astype(np.float32))
        index.promote(CHAMPION)
        state = rollout.start(workdir, CHAMPION, CHALLENGER, cfg, index=index)
    server_manager_instance.release_server(index.uri)  # Milvus Lite locks its file until its server stops
    events = _served(state.experiment, clicks)
    folder = workdir / "serving" / "events"
    folder.mkdir(parents=True)
    events.to_parquet(folder / "part-000001.parquet", index=False)
    return state, rollout.arm_counts(events, state.experiment)


@pytest.fixture(scope="module")
def guard_runs(tmp_path_factory):
    from tandem.core.config import load_config

    tmp = tmp_path_factory.mktemp("guard")
    (tmp / "recipe.yaml").write_text(GUARD_RECIPE)
    cfg = load_config(tmp / "recipe.yaml")
    workdirs = {name: tmp / name for name in ("worse", "equal", "none")}
    for workdir in workdirs.values():
        workdir.mkdir()
    worse = _running_rollout(workdirs["worse"], cfg, {"champion": 120, "challenger": 40})  # CTR 12 % vs 4 %
    equal = _running_rollout(workdirs["equal"], cfg, {"champion": 120, "challenger": 120})
    env = _airflow_env(
        tmp,
        tandem_workdir=str(workdirs["none"]),
        tandem_logs_source=str(tmp / "unused"),  # required settings, shared with tandem_daily; the guard reads neither
        tandem_catalog=str(tmp / "unused"),
        tandem_config=str(tmp / "recipe.yaml"),
    )
    env["HARNESS_GUARD_WORKDIRS"] = json.dumps({k: str(v) for k, v in workdirs.items()})
    result, output = _harness(tmp / "result.json", env, "guard")
    return {"result": result, "output": output, "cfg": cfg, "workdirs": workdirs, "worse": worse, "equal": equal}


def _guarded(guard_runs, name: str) -> dict:
    run = guard_runs["result"].get("guard", {}).get(name)
    assert run, guard_runs["output"][-6000:]
    assert run["state"].endswith("success") and set(run["tasks"]) == {"retain", "enforce"}, guard_runs["output"][-6000:]
    assert run["tasks"]["retain"].endswith("success"), (run, guard_runs["output"][-6000:])  # retention, compaction
    assert run["tasks"]["enforce"].endswith("success"), (run, guard_runs["output"][-6000:])
    return run["returned"]


def test_guard_dag_parses_without_heavy_modules(guard_runs):
    bag = guard_runs["result"]["dagbag"]
    assert bag["import_errors"] == {} and "tandem_rollout_guard" in bag["dag_ids"]
    heavy = {"torch", "transformers", "great_expectations", "feast", "pymilvus", "milvus_lite", "kfp", "pandas"}
    assert not heavy & set(bag["heavy_modules"]), bag["heavy_modules"]


def test_guard_aborts_a_significantly_worse_challenger_and_keeps_live(guard_runs):
    from tandem.release.index import ItemIndex

    workdir, cfg = guard_runs["workdirs"]["worse"], guard_runs["cfg"]
    started, counts = guard_runs["worse"]
    returned = _guarded(guard_runs, "worse")
    assert (returned["status"], returned["action"], returned["share"]) == ("aborted", "aborted", 0.0)
    assert returned["experiment"] == started.experiment and returned["stage"] == 0
    assert returned["stop_rule"]["verdict"] == "stop" and returned["stop_rule"]["p_value"] < cfg.rollout.alpha
    assert returned["arms"] == counts  # the evidence judged: this stage's events, as written
    logged = [line for line in guard_runs["output"].splitlines() if "ROLLOUT ABORTED" in line]
    assert logged and "warning" in logged[0].lower() and started.experiment in logged[0]
    state = rollout.load_state(workdir)
    assert state.status == "aborted" and state.history[-1]["reason"].startswith("stop rule: ")
    with ItemIndex(cfg.index, workdir) as index:
        assert index.live() == CHAMPION and cfg.index.challenger_alias not in index.aliases()


def test_guard_never_advances_a_rollout_the_stop_rule_passes(guard_runs):
    from tandem.release.index import ItemIndex

    workdir, cfg = guard_runs["workdirs"]["equal"], guard_runs["cfg"]
    started, counts = guard_runs["equal"]
    returned = _guarded(guard_runs, "equal")
    assert (returned["status"], returned["action"], returned["stage"]) == ("running", "none", 0)
    assert returned["share"] == cfg.rollout.stages[0] and returned["stop_rule"]["verdict"] == "ok"
    assert returned["arms"] == counts
    assert rollout.load_state(workdir) == started  # untouched: advancing is a human decision
    with ItemIndex(cfg.index, workdir) as index:
        assert index.live() == CHAMPION and index.aliases()[cfg.index.challenger_alias] == CHALLENGER


def test_guard_without_a_rollout_does_nothing(guard_runs):
    assert _guarded(guard_runs, "none") == {"status": "none"}
    assert not (guard_runs["workdirs"]["none"] / "rollout").exists()


# ------------------------------------------------------------------ tandem.orchestration.airflow_schedule, no Airflow
VARS = {"tandem_workdir": "/w", "tandem_logs_source": "/in/logs", "tandem_catalog": "/in/catalog.csv"}


def test_settings_come_from_variables_then_environment_then_defaults():
    s = schedule.resolve(VARS, env={"TANDEM_HISTORY_DAYS": "7", "TANDEM_WORKDIR": "/ignored"})
    assert (s.workdir, s.warehouse, s.history_days, s.config) == (Path("/w"), Path("/w/warehouse"), 7, "")
    assert (s.milvus_uri, s.kfp_host) == ("", "")
    with pytest.raises(ValueError, match="tandem_catalog"):
        schedule.resolve({k: v for k, v in VARS.items() if k != "tandem_catalog"}, env={})
    with pytest.raises(ValueError, match="whole number"):
        schedule.resolve(VARS | {"tandem_history_days": "a week"}, env={})


def test_the_daily_run_tests_on_its_latest_day_unless_told_otherwise(tmp_path):
    """tandem_test_days (1): the daily run's split.test_days, so yesterday's served clicks train today's model."""
    s = schedule.resolve(VARS, env={})
    assert s.test_days == 1.0 and s.run_config().split.test_days == 1.0
    assert schedule.resolve(VARS | {"tandem_test_days": "0"}, env={}).run_config().split.test_days == 0.0
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("split:\n  test_days: 3\n")
    assert schedule.resolve(VARS | {"tandem_config": str(recipe)}, env={}).run_config().split.test_days == 3.0
    for bad in ("a day", "-1", "30"):  # 30: the whole look-back window would be test
        with pytest.raises(ValueError, match="tandem_test_days"):
            schedule.resolve(VARS | {"tandem_test_days": bad}, env={})


def test_connections_give_milvus_uri_token_and_kfp_host_and_secrets_stay_out():
    milvus = schedule.Conn("http", "milvus.internal", 19530, "root", "s3cret")
    kfp = schedule.Conn("https", "kfp.internal", None, schema="pipeline", extra={"experiment": "nightly"})
    s = schedule.resolve(VARS, {"tandem_milvus": milvus, "tandem_kfp": kfp}, env={})
    assert s.milvus_uri == "http://milvus.internal:19530" and s.milvus_token == "root:s3cret"
    assert s.kfp_host == "https://kfp.internal/pipeline" and s.kfp_experiment == "nightly"
    assert "s3cret" not in repr(s)
    cfg = s.run_config()
    assert cfg.index.milvus_uri == s.milvus_uri and cfg.index.token == "root:s3cret"
    run = schedule.daily_run(s, "2024-02-01T00:00:00+00:00")
    args = schedule.kfp_arguments(s, run, cfg)
    assert args["run_id"] == RUN_ID and "s3cret" not in json.dumps(args)
    assert schedule.milvus_token(schedule.Conn(password="api-key")) == "api-key"
    assert (
        schedule.milvus_uri(schedule.Conn(host="m", extra={"uri": "https://zilliz.example"}))
        == "https://zilliz.example"
    )


def test_run_id_and_interval_are_keyed_on_the_data_interval():
    day = datetime(2024, 2, 1, tzinfo=UTC)
    assert schedule.run_id(day) == RUN_ID
    assert schedule.interval(datetime(2024, 1, 31, tzinfo=UTC), day) == (datetime(2024, 1, 31, tzinfo=UTC), day)
    assert schedule.interval(day, day)[0] == datetime(2024, 1, 31, tzinfo=UTC)  # a manual trigger: the day before
    assert schedule.run_id(datetime(2024, 2, 1, 6, tzinfo=UTC)) == "daily-20240201T060000"


def test_ingest_fills_missing_history_once_then_only_the_interval(tmp_path):
    logs = tmp_path / "logs.csv"
    logs.write_text("user_id,item_id,event,ts\nu,a,view,2024-01-01T10:00:00Z\nu,b,click,2024-01-03T10:00:00Z\n")
    s = schedule.resolve(
        VARS | {"tandem_workdir": str(tmp_path), "tandem_logs_source": str(logs), "tandem_history_days": "3"}, env={}
    )
    first = schedule.ingest(s, "2024-01-03T00:00:00+00:00", "2024-01-04T00:00:00+00:00")
    assert first == {"2024-01-01": 1, "2024-01-02": 0, "2024-01-03": 1}
    assert schedule.missing_days(s.warehouse, "2024-01-04T00:00:00+00:00", 3) == []
    again = schedule.ingest(s, "2024-01-03T00:00:00+00:00", "2024-01-04T00:00:00+00:00")
    assert again == {"2024-01-03": 1}  # a rerun replaces its own day only
    assert len(schedule.log_files(s, "2024-01-04T00:00:00+00:00")) == 3


def test_training_goes_to_kubeflow_when_a_host_is_configured(tmp_path, monkeypatch):
    from tandem.orchestration import kubeflow as pipelines

    calls = []

    def submit(host, arguments, experiment="tandem", wait=False):
        calls.append((host, arguments, experiment, wait))
        run.save("train", {"steps": 3})  # the pipeline writes into the shared run folder
        for stage in schedule.DONE_BY_KFP:
            run.save(stage, {"by": "kubeflow"})
        return {"run_id": "kfp-1", "url": "http://kfp:8888/#/runs/details/kfp-1", "state": "SUCCEEDED"}

    monkeypatch.setattr(pipelines, "submit", submit)
    s = schedule.resolve(
        VARS | {"tandem_workdir": str(tmp_path)},
        env={"TANDEM_KFP_HOST": "http://kfp:8888", "TANDEM_MILVUS_TOKEN": "s3cret"},
    )
    run = schedule.daily_run(s, "2024-02-01T00:00:00+00:00")
    summary = schedule.train(s, run, s.run_config())
    host, args, experiment, wait = calls[0]
    assert (host, experiment, wait) == ("http://kfp:8888", "tandem", True)
    assert args["run_id"] == RUN_ID and args["workdir"] == str(tmp_path.resolve())
    assert args["logs"].endswith(f"runs/{RUN_ID}/data/logs.parquet") and "s3cret" not in json.dumps(args)
    assert summary["steps"] == 3 and summary["kubeflow"]["run_id"] == "kfp-1"
    assert schedule.run_stage(s, run, s.run_config(), "evaluate") == {"by": "kubeflow"}
    assert "Kubeflow" in schedule.align(s, run, s.run_config())["deferred"]  # the pipeline aligns on a GPU
