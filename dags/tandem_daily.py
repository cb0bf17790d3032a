"""tandem_daily: the loop once a day, for that day's data interval.

ingest (the interval's log partitions, replaced on rerun) -> load -> pairs -> validate (GX; a
failing suite fails here and names the Data Docs page) -> features (Feast) -> train (Kubeflow
when the `tandem_kfp` connection exists, else in-process) -> embed -> index (Milvus, upsert)
-> evaluate -> gate -> promote (moves the live alias) -> report. With Kubeflow, the train task
submits the whole pipeline for this run id and the embed..gate tasks collect what it wrote.

The run id is `daily-YYYYMMDD`, the last day of the interval, so rerunning an interval rewrites
the same run folder and the same Milvus collection. Paths, the Milvus URI and the KFP host come
from Airflow Variables / Connections (see `tandem.orchestration.airflow_schedule`), read when the tasks run.
Every task is a few lines over `tandem`; nothing heavy is imported when this file is parsed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, CronDataIntervalTimetable, chain, dag, task

from tandem.orchestration.airflow_schedule import LIVE_INDEX_ASSET, LOGS_ASSET, PAIRS_ASSET

LOGS = Asset(name="tandem_logs", uri=LOGS_ASSET)
PAIRS = Asset(name="tandem_pairs", uri=PAIRS_ASSET)
LIVE_INDEX = Asset(name="tandem_live_index", uri=LIVE_INDEX_ASSET)
TRANSIENT = {"retries": 2, "retry_delay": timedelta(minutes=5)}  # storage, Milvus, Kubeflow hiccups


def _run(data_interval_end):
    """(settings, config, run folder) of this interval, resolved now (at run time)."""
    from tandem.orchestration import airflow_schedule as schedule

    settings = schedule.airflow_settings()
    return settings, settings.run_config(), schedule.daily_run(settings, data_interval_end)


@dag(
    dag_id="tandem_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),  # an interval per day, not a point in time
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=20),
    default_args={"owner": "ml-platform", "retries": 0, "execution_timeout": timedelta(hours=2)},
    tags=["tandem"],
    doc_md=__doc__,
)
def tandem_daily():
    @task(outlets=[LOGS], **TRANSIENT)
    def ingest(data_interval_start=None, data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule

        return schedule.ingest(schedule.airflow_settings(), data_interval_start, data_interval_end)

    @task
    def load(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule
        from tandem.pipeline import stages

        settings, cfg, run = _run(data_interval_end)
        return stages.load(run, schedule.log_files(settings, data_interval_end), settings.catalog, cfg)["logs"]

    @task
    def pairs(data_interval_end=None) -> dict:
        from tandem.pipeline import stages

        _, cfg, run = _run(data_interval_end)
        return stages.mine(run, cfg)

    @task(outlets=[PAIRS])
    def validate(data_interval_end=None) -> dict:
        from tandem.pipeline import stages

        _, cfg, run = _run(data_interval_end)
        return stages.validate(run, cfg)  # DataValidationError: the failed expectations + the Data Docs path

    @task(**TRANSIENT)
    def features(data_interval_end=None) -> dict:
        from tandem.pipeline import stages

        _, cfg, run = _run(data_interval_end)
        return stages.features(run, cfg)

    @task(retries=1, retry_delay=timedelta(minutes=10), execution_timeout=timedelta(hours=12))
    def train(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule

        settings, cfg, run = _run(data_interval_end)
        return schedule.train(settings, run, cfg)

    @task(execution_timeout=timedelta(hours=4))
    def embed(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule

        settings, cfg, run = _run(data_interval_end)
        return schedule.run_stage(settings, run, cfg, "embed")

    @task(**TRANSIENT)
    def index(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule

        settings, cfg, run = _run(data_interval_end)
        return schedule.run_stage(settings, run, cfg, "index")

    @task(execution_timeout=timedelta(hours=4))
    def evaluate(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule

        settings, cfg, run = _run(data_interval_end)
        return schedule.run_stage(settings, run, cfg, "evaluate")

    @task
    def gate(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule

        settings, cfg, run = _run(data_interval_end)
        return schedule.run_stage(settings, run, cfg, "gate")

    @task(outlets=[LIVE_INDEX], **TRANSIENT)
    def promote(data_interval_end=None, outlet_events=None) -> dict:
        from tandem.pipeline import stages

        _, cfg, run = _run(data_interval_end)
        summary = stages.promote(run, cfg)
        outlet_events[LIVE_INDEX].extra = {"run_id": run.run_id, **summary}
        return summary

    @task
    def report(data_interval_end=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule
        from tandem.pipeline import run as loop

        _, cfg, run = _run(data_interval_end)
        written = loop.write(run, schedule.public_config(cfg))
        return {"run_id": run.run_id, "decision": written["gate"]["decision"], **written["report_files"]}

    chain(
        ingest(),
        load(),
        pairs(),
        validate(),
        features(),
        train(),
        embed(),
        index(),
        evaluate(),
        gate(),
        promote(),
        report(),
    )


tandem_daily()
