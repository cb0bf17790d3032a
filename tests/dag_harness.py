"""Run by tests/test_dags.py in its own interpreter, so that Airflow's settings (AIRFLOW_HOME,
Variables and Connections as environment variables, the SQLite metadata DB) never leak into
other tests. Usage: python dag_harness.py OUT_JSON [daily|guard|bag-only]; prints nothing useful.

Steps: parse the DAG folder (recording which heavy modules got imported), migrate the DB, then
`dag.test()` tandem_daily twice for the same interval, tandem_index_audit once, and tandem_daily
once more on logs that fail validation. Results (task states, timings) go to OUT_JSON.
Mode `guard`: `dag.test()` tandem_rollout_guard once per workdir of HARNESS_GUARD_WORKDIRS (a JSON
mapping name -> workdir), recording each run's task states and the task's returned summary.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HEAVY = ("torch", "transformers", "great_expectations", "feast", "pymilvus", "milvus_lite", "kfp", "pandas", "duckdb")


def _states(dr) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def main(out_path: str, mode: str) -> None:
    out: dict = {}
    save = lambda: Path(out_path).write_text(json.dumps(out, indent=2, default=str))  # noqa: E731
    start = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    out["dagbag"] = {
        "dag_ids": sorted(bag.dag_ids),
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "heavy_modules": [m for m in HEAVY if m in sys.modules],
        "seconds": round(time.perf_counter() - start, 1),
    }
    save()
    if mode == "bag-only":
        return

    from airflow.utils.db import initdb

    t = time.perf_counter()
    initdb()
    out["migrate_s"] = round(time.perf_counter() - t, 1)
    save()

    if mode == "guard":
        _guard(bag.dags["tandem_rollout_guard"], out, save)
        return
    workdir = Path(os.environ["AIRFLOW_VAR_TANDEM_WORKDIR"])
    daily, audit = bag.dags["tandem_daily"], bag.dags["tandem_index_audit"]
    logical = datetime(2024, 2, 1, tzinfo=UTC)  # interval 2024-01-31 .. 2024-02-01, run daily-20240131
    for attempt in ("first", "second"):
        t = time.perf_counter()
        dr = daily.test(logical_date=logical)
        out[attempt] = {"state": str(dr.state), "tasks": _states(dr), "seconds": round(time.perf_counter() - t, 1)}
        out[attempt]["interval"] = [str(dr.data_interval_start), str(dr.data_interval_end)]
        snap = workdir / "snapshots" / attempt
        run_dir = workdir / "runs" / "daily-20240131"
        if run_dir.is_dir():
            shutil.copytree(run_dir / "pairs", snap / "pairs", dirs_exist_ok=True)
            for name in ("index.json", "report.json", "gate.json"):
                if (run_dir / name).is_file():
                    shutil.copy(run_dir / name, snap / name)
        save()
        if attempt == "first":  # the live index changed: its consumer DAG runs
            t = time.perf_counter()
            dr = audit.test(logical_date=None)
            out["audit"] = {"state": str(dr.state), "tasks": _states(dr), "seconds": round(time.perf_counter() - t, 1)}
            save()

    # Logs that break a GX expectation (events dated after "now") fail the validate task.
    os.environ["AIRFLOW_VAR_TANDEM_LOGS_SOURCE"] = os.environ["HARNESS_BAD_LOGS"]
    os.environ["AIRFLOW_VAR_TANDEM_WAREHOUSE"] = str(workdir / "bad_warehouse")
    t = time.perf_counter()
    dr = daily.test(logical_date=datetime(2099, 2, 1, tzinfo=UTC))
    out["bad"] = {"state": str(dr.state), "tasks": _states(dr), "seconds": round(time.perf_counter() - t, 1)}
    save()


def _guard(guard, out: dict, save) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    out["guard"] = {}
    for name, workdir in json.loads(os.environ["HARNESS_GUARD_WORKDIRS"]).items():
        os.environ["AIRFLOW_VAR_TANDEM_WORKDIR"] = workdir  # Variables are read when the task runs
        t = time.perf_counter()
        dr = guard.test()
        query = XComModel.get_many(run_id=dr.run_id, dag_ids=guard.dag_id, task_ids="enforce", key="return_value")
        with create_session() as session:
            row = session.scalars(query).first()
            returned = XComModel.deserialize_value(row) if row is not None else None
        run = {"state": str(dr.state), "tasks": _states(dr), "returned": returned}
        out["guard"][name] = run | {"seconds": round(time.perf_counter() - t, 1)}
        save()


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "daily")
    except Exception:
        traceback.print_exc()
        sys.exit(1)
