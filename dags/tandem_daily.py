"""Airflow DAG tandem_daily: the loop once a day, for that day's data interval (ingest, the stages, the report).

Defined in the installed package (tandem.orchestration.airflow_dags); this file only builds it.
"""

from tandem.orchestration.airflow_dags import tandem_daily

dag = tandem_daily()
