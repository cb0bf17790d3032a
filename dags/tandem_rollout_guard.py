"""tandem_rollout_guard: every hour, enforces the stop rule of the running A/B rollout.

It reads WORKDIR/rollout/state.json and the served events (WORKDIR/serving/events/) and calls
`tandem.release.rollout.enforce`: when the challenger's CTR in the current stage is significantly below
the champion's (the stop rule says 'stop'), the rollout is aborted: every user goes back to the
champion, the challenger alias is dropped, the live alias stays where it was. Otherwise nothing
changes. It never advances a rollout: moving to a larger share is a human/product decision
(`tandem rollout advance`), taken on this evidence and more. With no rollout it returns
{"status": "none"}.

The task returns a summary (status, stage, share, per-arm impressions/clicks/CTR, the stop-rule
verdict, `action`: 'aborted' when this run aborted it). An abort is logged as a WARNING and
the task SUCCEEDS: stopping a bad challenger is the guard doing its job, the rollout state is
consistent, and a retry or a rerun must not turn a done abort into a failure (alert on the
warning or on `action == "aborted"` in the XCom). The task fails (after retries) only when it
cannot check: an unreadable state file or event log, or Milvus unreachable during an abort;
that is the case to alert on, since then nobody guards the experiment.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from airflow.sdk import CronTriggerTimetable, dag, task

log = logging.getLogger("tandem.rollout_guard")  # DAG files are imported under a mangled module name
STOP_RULE_KEYS = ("verdict", "reason", "z", "p_value", "relative_drop", "min_impressions")


def summary(before: dict, after: dict) -> dict:
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


@dag(
    dag_id="tandem_rollout_guard",
    schedule=CronTriggerTimetable("@hourly", timezone="UTC"),  # a check at a point in time, not a data interval
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=50),  # before the next hourly run
    default_args={"owner": "ml-platform"},
    tags=["tandem"],
    doc_md=__doc__,
)
def tandem_rollout_guard():
    @task(retries=2, retry_delay=timedelta(minutes=5), execution_timeout=timedelta(minutes=20))
    def enforce() -> dict:
        from tandem.orchestration import airflow_schedule as schedule
        from tandem.release import rollout

        settings = schedule.airflow_settings()
        if rollout.load_state(settings.workdir) is None:
            log.info("no rollout in %s; nothing to enforce", settings.workdir)
            return {"status": "none"}
        cfg = settings.run_config()
        events = rollout.served_events(settings.workdir)  # read once: the summary shows the evidence judged
        before = rollout.status(settings.workdir, events, cfg)
        after = rollout.enforce(settings.workdir, events, cfg)
        result = summary(before, after)
        aborted_now = result["action"] == "aborted"
        if aborted_now:
            log.warning(
                "ROLLOUT ABORTED by the stop rule: experiment %s, challenger %s back to 0%% (live stays %s): %s",
                result["experiment"],
                result["challenger"],
                result["champion"],
                result["stop_rule"]["reason"],
            )
        elif result["status"] == "running":
            rule = result["stop_rule"]
            log.info(
                "rollout %s at %.0f%%: %s (%s)", result["experiment"], result["share"], rule["verdict"], rule["reason"]
            )
        else:
            log.info("no running rollout (status %s); nothing to enforce", result["status"])
        return result

    enforce()


tandem_rollout_guard()
