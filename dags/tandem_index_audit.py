"""tandem_index_audit: runs whenever the live index changes (the `tandem://index/live` asset,
updated by tandem_daily's promote task) and checks what is serving: one vector per catalogue
item of the promoted run, and items found by their own vectors through the live alias.
The result lands in WORKDIR/audit/live.json; an unhealthy index fails the task (alert on it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, dag, task

from tandem.orchestration.airflow_schedule import LIVE_INDEX_ASSET

LIVE_INDEX = Asset(name="tandem_live_index", uri=LIVE_INDEX_ASSET)


@dag(
    dag_id="tandem_index_audit",
    schedule=[LIVE_INDEX],
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "ml-platform"},
    tags=["tandem"],
    doc_md=__doc__,
)
def tandem_index_audit():
    @task(retries=2, retry_delay=timedelta(minutes=2), execution_timeout=timedelta(minutes=30))
    def audit(triggering_asset_events=None) -> dict:
        from tandem.orchestration import airflow_schedule as schedule
        from tandem.release.audit import audit_live

        events = triggering_asset_events.get(LIVE_INDEX, []) if triggering_asset_events else []  # a Mapping
        promoted = [e.extra.get("run_id") for e in events if e.extra]
        settings = schedule.airflow_settings()
        result = audit_live(settings.workdir, settings.run_config())
        return result | {"triggered_by_runs": promoted}

    audit()


tandem_index_audit()
