"""Airflow DAG tandem_rollout_guard: every hour, enforces the stop rule of the running A/B rollout.

Defined in the installed package (tandem.orchestration.airflow_dags); this file only builds it.
"""

from tandem.orchestration.airflow_dags import tandem_rollout_guard

dag = tandem_rollout_guard()
