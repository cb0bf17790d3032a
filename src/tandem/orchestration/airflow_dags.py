"""The Airflow DAGs of tandem, built by plain functions; a DAG file only calls one (`dags/*.py`, the
files `tandem init` writes), so a deployment's DAGs come from the installed package, not from a checkout.

Airflow is imported inside the builders: importing this module has no side effects. Every task is a few
lines over `tandem`; settings are read when a task runs (`tandem.orchestration.airflow_schedule`), never
when a DAG file is parsed, and parsing imports nothing heavy. The daily DAG's task ids are the stage names
of `tandem.pipeline.registry`, with its `ingest` before and `report` after (tests/test_stage_names.py).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from tandem.orchestration.airflow_schedule import LIVE_INDEX_ASSET, LOGS_ASSET, PAIRS_ASSET

START = datetime(2024, 1, 1, tzinfo=UTC)
TRANSIENT = {"retries": 2, "retry_delay": timedelta(minutes=5)}  # storage, Milvus, Kubeflow hiccups
log = logging.getLogger("tandem.rollout_guard")
STOP_RULE_KEYS = ("verdict", "reason", "z", "p_value", "relative_drop", "min_impressions")

DAILY_DOC = """tandem_daily: the loop once a day, for that day's data interval.

ingest (the interval's log partitions, replaced on rerun) -> load -> mine -> validate (GX; a
failing suite fails here and names the Data Docs page) -> features (Feast) -> align (a vision
tower trained on the catalogue's photos when the recipe names none; cached by catalogue content,
a no-op without images) -> train (Kubeflow when the `tandem_kfp` connection exists, else
in-process) -> embed -> index (Milvus, upsert) -> evaluate -> gate -> promote (moves the live
alias) -> report. With Kubeflow, the align task leaves the alignment to the pipeline's GPU
component, the train task submits the whole pipeline for this run id and the embed..gate tasks
collect what it wrote.

The run id is `daily-YYYYMMDD`, the last day of the interval, so rerunning an interval rewrites
the same run folder and the same Milvus collection. Paths, the Milvus URI and the KFP host come
from Airflow Variables / Connections (see `tandem.orchestration.airflow_schedule`), read when the tasks run.
"""

AUDIT_DOC = """tandem_index_audit: runs whenever the live index changes (the `tandem://index/live` asset,
updated by tandem_daily's promote task) and checks what is serving: one vector per catalogue
item of the promoted run, and items found by their own vectors through the live alias.
The result lands in WORKDIR/audit/live.json; an unhealthy index fails the task (alert on it).
"""

GUARD_DOC = """tandem_rollout_guard: every hour, enforces the stop rule of the running A/B rollout.

It reads WORKDIR/rollout/state.json and the served events (WORKDIR/serving/events/) and calls
`tandem.release.rollout.enforce`: when the challenger's CTR is significantly below the champion's
(the stop rule's always-valid p-value over the stages so far reaches alpha: valid however often it
looks), the rollout is aborted: every user goes back to the champion, the challenger alias is
dropped, the live alias stays where it was. Otherwise only a lower p-value is stored in the state.
It holds the rollout's lock (a concurrent `tandem rollout advance` waits for it) and first finishes
an alias move that a crash interrupted. It never advances a rollout: moving to a larger share is a
human/product decision (`tandem rollout advance`), taken on this evidence and more. With no rollout
it returns {"status": "none"}.

The task returns a summary (status, stage, share, per-arm impressions/clicks/CTR, the stop-rule
verdict, `action`: 'aborted' when this run aborted it). An abort is logged as a WARNING and
the task SUCCEEDS: stopping a bad challenger is the guard doing its job, the rollout state is
consistent, and a retry or a rerun must not turn a done abort into a failure (alert on the
warning or on `action == "aborted"` in the XCom). The task fails (after retries) only when it
cannot check: an unreadable state file or event log, or Milvus unreachable during an abort;
that is the case to alert on, since then nobody guards the experiment.

Before it, the `retain` task applies the retention policy (`tandem.release.retention.retain`, the recipe's
`retention` section): served-event parts older than `retention.compact_after_hours` are compacted into
one file per hour, so the guard reads a few files instead of one per ten seconds, and old runs'
checkpoints are removed (never a live, challenger or rollback run's). `enforce` runs whatever `retain`
did (trigger rule all_done): a failed clean-up never leaves the experiment unguarded.
"""


def _run(data_interval_end):
    """(settings, config, run folder) of this interval, resolved now (at run time)."""
    from tandem.orchestration import airflow_schedule as schedule

    settings = schedule.airflow_settings()
    return settings, settings.run_config(), schedule.daily_run(settings, data_interval_end)


def _stage(name: str, data_interval_end) -> dict:
    """A stage after training: here, or (Kubeflow mode) what the pipeline wrote."""
    from tandem.orchestration import airflow_schedule as schedule

    settings, cfg, run = _run(data_interval_end)
    return schedule.run_stage(settings, run, cfg, name)


def tandem_daily():
    """The `tandem_daily` DAG (see DAILY_DOC)."""
    from airflow.sdk import Asset, CronDataIntervalTimetable, chain, dag, task

    logs = Asset(name="tandem_logs", uri=LOGS_ASSET)
    pairs = Asset(name="tandem_pairs", uri=PAIRS_ASSET)
    live_index = Asset(name="tandem_live_index", uri=LIVE_INDEX_ASSET)

    @dag(
        dag_id="tandem_daily",
        schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),  # an interval per day, not a point in time
        start_date=START,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=20),
        default_args={"owner": "ml-platform", "retries": 0, "execution_timeout": timedelta(hours=2)},
        tags=["tandem"],
        doc_md=DAILY_DOC,
    )
    def daily():
        @task(outlets=[logs], **TRANSIENT)
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
        def mine(data_interval_end=None) -> dict:
            from tandem.pipeline import stages

            _, cfg, run = _run(data_interval_end)
            return stages.mine(run, cfg)

        @task(outlets=[pairs])
        def validate(data_interval_end=None) -> dict:
            from tandem.pipeline import stages

            _, cfg, run = _run(data_interval_end)
            return stages.validate(run, cfg)  # DataValidationError: the failed expectations + the Data Docs path

        @task(**TRANSIENT)
        def features(data_interval_end=None) -> dict:
            from tandem.pipeline import stages

            _, cfg, run = _run(data_interval_end)
            return stages.features(run, cfg)

        @task(execution_timeout=timedelta(hours=4))
        def align(data_interval_end=None) -> dict:
            from tandem.orchestration import airflow_schedule as schedule

            settings, cfg, run = _run(data_interval_end)
            return schedule.align(settings, run, cfg)

        @task(retries=1, retry_delay=timedelta(minutes=10), execution_timeout=timedelta(hours=12))
        def train(data_interval_end=None) -> dict:
            from tandem.orchestration import airflow_schedule as schedule

            settings, cfg, run = _run(data_interval_end)
            return schedule.train(settings, run, cfg)

        @task(execution_timeout=timedelta(hours=4))
        def embed(data_interval_end=None) -> dict:
            return _stage("embed", data_interval_end)

        @task(**TRANSIENT)
        def index(data_interval_end=None) -> dict:
            return _stage("index", data_interval_end)

        @task(execution_timeout=timedelta(hours=4))
        def evaluate(data_interval_end=None) -> dict:
            return _stage("evaluate", data_interval_end)

        @task
        def gate(data_interval_end=None) -> dict:
            return _stage("gate", data_interval_end)

        @task(outlets=[live_index], **TRANSIENT)
        def promote(data_interval_end=None, outlet_events=None) -> dict:
            from tandem.pipeline import stages

            _, cfg, run = _run(data_interval_end)
            summary = stages.promote(run, cfg)
            outlet_events[live_index].extra = {"run_id": run.run_id, **summary}
            return summary

        @task
        def report(data_interval_end=None) -> dict:
            from tandem.orchestration import airflow_schedule as schedule
            from tandem.pipeline import run as loop

            _, cfg, run = _run(data_interval_end)
            written = loop.write(run, schedule.public_config(cfg))
            return {"run_id": run.run_id, "decision": written["gate"]["decision"], **written["report_files"]}

        steps = (ingest, load, mine, validate, features, align, train, embed, index, evaluate, gate, promote, report)
        chain(*(step() for step in steps))

    return daily()


def tandem_index_audit():
    """The `tandem_index_audit` DAG (see AUDIT_DOC)."""
    from airflow.sdk import Asset, dag, task

    live_index = Asset(name="tandem_live_index", uri=LIVE_INDEX_ASSET)

    @dag(
        dag_id="tandem_index_audit",
        schedule=[live_index],
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args={"owner": "ml-platform"},
        tags=["tandem"],
        doc_md=AUDIT_DOC,
    )
    def index_audit():
        @task(retries=2, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(minutes=30))
        def audit(triggering_asset_events=None) -> dict:
            from tandem.orchestration import airflow_schedule as schedule
            from tandem.release.audit import audit_live

            events = triggering_asset_events.get(live_index, []) if triggering_asset_events else []  # a Mapping
            promoted = [e.extra.get("run_id") for e in events if e.extra]
            settings = schedule.airflow_settings()
            result = audit_live(settings.workdir, settings.run_config())
            return result | {"triggered_by_runs": promoted}

        audit()

    return index_audit()


def guard_summary(before: dict, after: dict) -> dict:
    """What an operator reads from `rollout.status` before and after enforcing (JSON-able, no history)."""
    if after["status"] == "none":
        return {"status": "none"}
    aborted_now = before["status"] == "running" and after["status"] == "aborted"
    judged = before if aborted_now else after  # an aborted rollout's status no longer carries the stage's verdict
    rule = judged.get("stop_rule")
    arms = {arm: {k: counts.get(k) for k in ("impressions", "clicks", "ctr")} for arm, counts in judged["arms"].items()}
    return {
        "status": after["status"],
        "action": "aborted" if aborted_now else "none",
        "experiment": after["experiment"],
        "champion": after["champion"],
        "challenger": after["challenger"],
        "stage": after["stage"],
        "share": after["share"],  # percent of users on the challenger now: 0 once aborted
        "stage_since": judged.get("stage_since"),
        "arms": arms,  # this stage's while running, the experiment's totals once it has ended
        "stop_rule": {k: rule.get(k) for k in STOP_RULE_KEYS} if rule else None,
    }


def _enforce() -> dict:
    from tandem.orchestration import airflow_schedule as schedule
    from tandem.release import rollout

    settings = schedule.airflow_settings()
    if rollout.load_state(settings.workdir) is None:
        log.info("no rollout in %s; nothing to enforce", settings.workdir)
        return {"status": "none"}
    cfg = settings.run_config()
    events = rollout.served_events(settings.workdir)  # read once: the summary shows the evidence judged
    before = rollout.status(settings.workdir, events, cfg)
    result = guard_summary(before, rollout.enforce(settings.workdir, events, cfg))
    if result["action"] == "aborted":
        log.warning(
            "ROLLOUT ABORTED by the stop rule: experiment %s, challenger %s back to 0%% (live stays %s): %s",
            result["experiment"],
            result["challenger"],
            result["champion"],
            result["stop_rule"]["reason"],
        )
    elif result["status"] == "running":
        rule = result["stop_rule"]
        share = f"{result['share']:.0f}%"
        log.info("rollout %s at %s: %s (%s)", result["experiment"], share, rule["verdict"], rule["reason"])
    else:
        log.info("no running rollout (status %s); nothing to enforce", result["status"])
    return result


def tandem_rollout_guard():
    """The `tandem_rollout_guard` DAG (see GUARD_DOC)."""
    from airflow.sdk import CronTriggerTimetable, dag, task

    @dag(
        dag_id="tandem_rollout_guard",
        schedule=CronTriggerTimetable("@hourly", timezone="UTC"),  # a check at a point in time, not a data interval
        start_date=START,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=50),  # before the next hourly run
        default_args={"owner": "ml-platform"},
        tags=["tandem"],
        doc_md=GUARD_DOC,
    )
    def rollout_guard():
        @task(retries=1, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(minutes=10))
        def retain() -> dict:
            from tandem.orchestration import airflow_schedule as schedule
            from tandem.release.retention import retain as apply_policy

            settings = schedule.airflow_settings()
            return apply_policy(settings.workdir, settings.run_config())

        guarded = {"retries": 2, "retry_delay": timedelta(minutes=5), "execution_timeout": timedelta(minutes=20)}

        @task(trigger_rule="all_done", **guarded)  # runs even when retain failed
        def enforce() -> dict:
            return _enforce()

        retain() >> enforce()

    return rollout_guard()
