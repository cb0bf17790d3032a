"""Airflow DAG tandem_index_audit: checks the live index whenever promote moves it.

Defined in the installed package (tandem.orchestration.airflow_dags); this file only builds it.
"""

from tandem.orchestration.airflow_dags import tandem_index_audit

dag = tandem_index_audit()
