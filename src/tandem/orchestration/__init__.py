"""The orchestrators' wrappers: Airflow settings, Kubeflow pipelines, DVC stages."""
