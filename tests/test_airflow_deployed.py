"""HEAVY: tandem_daily run by Airflow as it is deployed, not by `dag.test()` (tests/test_dags.py does that).

A fresh PostgreSQL database is the metadata DB (dropped afterwards), the executor is LocalExecutor, and
`airflow api-server`, `airflow scheduler` and `airflow dag-processor` run as their own processes
(tests/airflow_deployment.py). The DAG arrives paused; the test stores the Variables and the Milvus
connection with `airflow variables import` and `airflow connections add`, runs `airflow dags unpause
tandem_daily`, and the scheduler creates and runs the latest data interval (yesterday, no catchup) on
tiny logs dated to end yesterday, its tasks talking to the API server's Execution API. The outcome is
read from the REST API, from the metadata tables in PostgreSQL and from the run folder. About 3-4
minutes on 2 cores; skips without PostgreSQL on 127.0.0.1:5432. Deselect with `-m "not heavy"`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
from datetime import UTC, datetime, timedelta
from pathlib import Path

import airflow_deployment as deployed_airflow
import pytest

from tandem.orchestration import airflow_schedule as schedule

REPO = Path(__file__).resolve().parents[1]
RECIPE = """
model:
  {{item_encoder: "{encoder}", query_layers: 1, image_size: 32, patch_size: 8,
    vision_width: 32, vision_layers: 1, vision_heads: 2}}
train: {{epochs: 1, batch_size: 16, lr_item: 1.0e-3, lr_query: 1.0e-3}}
eval: {{batch_size: 32}}
"""
TASKS = {"ingest", "load", "mine", "validate", "features", "align", "train", "embed", "index", "evaluate", "gate"}
TASKS |= {"promote", "report"}
RUN_TIMEOUT_S = 480  # the scheduled run, from unpause to a final state

heavy = pytest.mark.heavy  # minutes: three Airflow services and a scheduled run


def _logs_ending_yesterday(tmp: Path) -> tuple[Path, Path]:
    """The synthetic shop (events 2024-01-01 .. 2024-01-30) moved so that its last day is yesterday (UTC):
    the interval the scheduler creates on unpause has data, and its look-back window holds the rest."""
    import pandas as pd

    from tandem.data.synth import make_dataset

    logs, catalog = make_dataset(tmp / "data", n_items=48, n_users=80)
    events = pd.read_csv(logs)
    yesterday = pd.Timestamp(datetime.now(UTC).date() - timedelta(days=1), tz="UTC")
    ts = pd.to_datetime(events["ts"], utc=True) + (yesterday - pd.Timestamp("2024-01-30", tz="UTC"))
    events["ts"] = ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    events.to_csv(logs, index=False)
    return logs, catalog


def _wait_for(what: str, probe, timeout: float, deployment, every: float = 2.0):
    """probe() until it returns something truthy; fails when a service died or time ran out (the fixture prints
    every log then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if died := deployment.dead():
            pytest.fail(f"{died} while waiting for {what}")
        if value := probe():
            return value
        time.sleep(every)
    pytest.fail(f"no {what} within {timeout:.0f} s")


FINISHED = re.compile(r"TaskInstance Finished: dag_id=tandem_daily, task_id=(\w+),.* executor=(\w+)\(")


def _scheduler_caught_up(deployment, tasks: int, timeout: float = 30) -> None:
    """A run's state flips when its last task reports success to the API server; the scheduler logs the
    executor's record of that task a loop later. Give it that loop before stopping it."""
    log, deadline = deployment.home / "scheduler.log", time.monotonic() + timeout
    while len(FINISHED.findall(log.read_text(errors="replace"))) < tasks and time.monotonic() < deadline:
        time.sleep(1)


@pytest.fixture(scope="module")
def postgres():
    if why := deployed_airflow.postgres_error():
        pytest.skip(why)


@pytest.fixture(scope="module")
def scheduled_run(postgres, tmp_path_factory, tiny_encoder_dir):  # postgres first: skip before building anything
    tmp = tmp_path_factory.mktemp("airflow_deployed")
    logs, catalog = _logs_ending_yesterday(tmp)
    (tmp / "recipe.yaml").write_text(RECIPE.format(encoder=tiny_encoder_dir))
    variables = {
        "tandem_workdir": str(tmp / "work"),
        "tandem_logs_source": str(logs),
        "tandem_catalog": str(catalog),
        "tandem_config": str(tmp / "recipe.yaml"),
        "tandem_history_days": "31",
        "tandem_test_days": "7",  # the synthetic month has too few events on its last day for a test window
    }
    (tmp / "variables.json").write_text(json.dumps(variables))
    milvus_db = tmp / "milvus" / "vectors.db"
    milvus_db.parent.mkdir()
    database = deployed_airflow.create_database()
    deployment = deployed_airflow.Deployment(tmp / "airflow_home", REPO / "dags", database)
    seconds: dict[str, float] = {}
    start = time.monotonic()
    try:
        deployment.cli("db", "migrate")
        seconds["migrate"] = round(time.monotonic() - start, 1)
        deployment.start()
        deployment.cli("variables", "import", str(tmp / "variables.json"))
        # Stored in PostgreSQL, read by the tasks through the Execution API (a Milvus server URL in production).
        milvus = json.dumps({"conn_type": "generic", "extra": {"uri": str(milvus_db)}})
        deployment.cli("connections", "add", "tandem_milvus", "--conn-json", milvus)
        deployment.wait_for_api(timeout=180)
        registered = "SELECT dag_id FROM dag WHERE dag_id = 'tandem_daily'"
        _wait_for("parsed tandem_daily", lambda: deployed_airflow.query(database, registered), 180, deployment)
        seconds["services_up"] = round(time.monotonic() - start, 1)
        deployment.cli("dags", "unpause", "tandem_daily")

        def finished():
            try:
                runs = deployment.api("GET", "/api/v2/dags/tandem_daily/dagRuns")["dag_runs"]
            except (urllib.error.URLError, TimeoutError):  # a busy API server; a dead one fails _wait_for
                return None
            return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else None

        runs = _wait_for("finished tandem_daily run", finished, RUN_TIMEOUT_S, deployment, every=3)
        seconds["run"] = round(time.monotonic() - start - seconds["services_up"], 1)
        run_id = runs[0]["dag_run_id"]
        instances = deployment.api("GET", f"/api/v2/dags/tandem_daily/dagRuns/{run_id}/taskInstances")
        _scheduler_caught_up(deployment, sum(ti["state"] == "success" for ti in instances["task_instances"]))
    except BaseException:
        deployment.stop()
        print(deployment.logs())  # pytest shows a failing fixture's output
        deployed_airflow.drop_database(database)
        raise
    deployment.stop()  # before the assertions: they read files and the metadata DB, not live services
    seconds["total"] = round(time.monotonic() - start, 1)
    print(f"deployed Airflow timings (s): {seconds}")
    try:
        yield {
            "runs": runs,
            "tasks": {ti["task_id"]: ti["state"] for ti in instances["task_instances"]},
            "database": database,
            "workdir": tmp / "work",
            "catalog": catalog,
            "milvus": milvus_db,
            "deployment": deployment,
        }
    finally:
        deployed_airflow.drop_database(database)


@heavy
@pytest.mark.timeout(900)
def test_the_scheduler_runs_one_interval_to_success_with_local_executor(scheduled_run):
    runs, logs = scheduled_run["runs"], scheduled_run["deployment"].logs
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["run_type"] == "scheduled", run  # created by the scheduler, not triggered
    assert run["state"] == "success", f"{run}\n{scheduled_run['tasks']}\n{logs()}"
    start, end = (datetime.fromisoformat(run[k]) for k in ("data_interval_start", "data_interval_end"))
    assert end - start == timedelta(days=1) and end.hour == 0 and end <= datetime.now(UTC), run
    assert set(scheduled_run["tasks"]) == TASKS
    assert all(state == "success" for state in scheduled_run["tasks"].values()), scheduled_run["tasks"]
    # The scheduler's record of each task: run by the LocalExecutor (Airflow 3 leaves job.executor_class empty).
    log = (scheduled_run["deployment"].home / "scheduler.log").read_text(errors="replace")
    finished = FINISHED.findall(log)
    assert dict(finished) == dict.fromkeys(TASKS, "LocalExecutor"), finished


@heavy
@pytest.mark.timeout(900)
def test_the_run_folder_has_the_report_and_a_live_collection(scheduled_run):
    from tandem.core.config_release import IndexConfig
    from tandem.data.contract import load_catalog
    from tandem.release.index import ItemIndex

    run = scheduled_run["runs"][0]
    run_id = schedule.run_id(run["data_interval_end"])  # the run folder is keyed on the interval
    run_dir = scheduled_run["workdir"] / "runs" / run_id
    report = json.loads((run_dir / "report.json").read_text())
    assert (run_dir / "report.md").is_file()
    assert report["run_id"] == run_id and report["gate"]["decision"] == "promote"
    collection = "tandem_" + run_id.replace("-", "_")
    assert report["index"]["live_collection"] == collection
    assert report["index"]["uri"] == str(scheduled_run["milvus"])  # from the tandem_milvus connection
    items = len(load_catalog(scheduled_run["catalog"]).kept)
    with ItemIndex(IndexConfig(milvus_uri=str(scheduled_run["milvus"]))) as index:
        assert index.live() == collection
        assert index.count(collection) == items


@heavy
@pytest.mark.timeout(900)
def test_the_metadata_db_is_postgresql(scheduled_run):
    database, run = scheduled_run["database"], scheduled_run["runs"][0]
    (version,) = deployed_airflow.query(database, "SELECT version()")[0]
    assert version.startswith("PostgreSQL")
    rows = deployed_airflow.query(
        database, "SELECT run_id, state, run_type FROM dag_run WHERE dag_id = %s", ("tandem_daily",)
    )
    assert rows == [(run["dag_run_id"], "success", "scheduled")]
    states = deployed_airflow.query(
        database, "SELECT task_id, state FROM task_instance WHERE run_id = %s", (run["dag_run_id"],)
    )
    assert dict(states) == scheduled_run["tasks"]


def test_an_unreachable_postgresql_is_a_reason_to_skip(monkeypatch):
    monkeypatch.setitem(deployed_airflow.PG, "port", deployed_airflow.free_port())  # nothing listens there
    reason = deployed_airflow.postgres_error()
    assert reason and "not reachable on 127.0.0.1:" in reason
