"""Scheduled runs of the loop (the Airflow DAGs in `dags/`), as plain functions: no Airflow here.

A daily run is keyed on its data interval. Its run id names the last day of data it covers
(`daily-YYYYMMDD`), so a rerun of the same interval reuses the same run folder and the same
Milvus collection (`tandem_daily_YYYYMMDD`, written by upsert): reruns replace, never add.

Settings are read when a task runs, never when a DAG file is parsed: Airflow Variables and
Connections first (the DAG passes them in as plain mappings), then `TANDEM_*` environment
variables, then the YAML recipe, then defaults. Secrets (the Milvus token) only come from a
Connection or the environment, are kept out of reprs, reports and pipeline arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tandem.core.config import RunConfig
    from tandem.pipeline.stages import RunPaths

# Asset URIs: the daily DAG updates them, other DAGs are scheduled on them.
LOGS_ASSET = "tandem://warehouse/logs"  # date-partitioned behaviour logs
PAIRS_ASSET = "tandem://runs/pairs"  # validated training/test pairs of the latest run
LIVE_INDEX_ASSET = "tandem://index/live"  # the Milvus collection behind the live alias

# Airflow Variable -> (environment variable used when the Variable is not set, default).
VARIABLES: dict[str, tuple[str, str | None]] = {
    "tandem_workdir": ("TANDEM_WORKDIR", None),
    "tandem_logs_source": ("TANDEM_LOGS_SOURCE", None),
    "tandem_catalog": ("TANDEM_CATALOG", None),
    "tandem_warehouse": ("TANDEM_WAREHOUSE", ""),  # empty = WORKDIR/warehouse
    "tandem_config": ("TANDEM_CONFIG", ""),  # YAML recipe; empty = RunConfig defaults
    "tandem_history_days": ("TANDEM_HISTORY_DAYS", "30"),
    # the daily run tests on its latest days and trains on every earlier one: yesterday's served clicks train today
    "tandem_test_days": ("TANDEM_TEST_DAYS", "1"),
    "tandem_kfp_experiment": ("TANDEM_KFP_EXPERIMENT", "tandem"),
}
MILVUS_CONN, KFP_CONN = "tandem_milvus", "tandem_kfp"
CONNECTIONS = (MILVUS_CONN, KFP_CONN)


@dataclass(frozen=True)
class Conn:
    """The parts of an Airflow Connection that tandem reads."""

    conn_type: str = ""
    host: str = ""
    port: int | None = None
    login: str = ""
    password: str = field(default="", repr=False)
    schema: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Settings:
    workdir: Path
    logs_source: str
    catalog: str
    warehouse: Path
    config: str
    history_days: int
    test_days: float = 1.0
    milvus_uri: str = ""
    milvus_token: str = field(default="", repr=False)
    kfp_host: str = ""
    kfp_experiment: str = "tandem"

    def run_config(self) -> RunConfig:
        """The recipe, with the Milvus URI/token of the deployment (when one is configured)."""
        from tandem.core.config import RunConfig, load_config

        cfg = load_config(self.config) if self.config else RunConfig()
        if self.test_days and not cfg.split.test_days:  # a recipe that sets split.test_days keeps its own
            cfg = replace(cfg, split=replace(cfg.split, test_days=self.test_days))
        index = cfg.index
        if self.milvus_uri:
            index = replace(index, milvus_uri=self.milvus_uri)
        if self.milvus_token:
            index = replace(index, token=self.milvus_token)
        return replace(cfg, index=index)


def _url(conn: Conn, default_port: int | None = None) -> str:
    scheme = "https" if conn.conn_type == "https" or conn.extra.get("secure") else "http"
    port = conn.port or default_port
    host = conn.host + (f":{port}" if port else "")
    return f"{scheme}://{host}" + (f"/{conn.schema.strip('/')}" if conn.schema else "")


def milvus_uri(conn: Conn | None) -> str:
    """`extra.uri` as given (a server URL or a Milvus Lite path), else http(s)://host:port (19530)."""
    if conn is None:
        return ""
    if conn.extra.get("uri"):
        return str(conn.extra["uri"])
    return _url(replace(conn, schema=""), default_port=19530) if conn.host else ""


def milvus_token(conn: Conn | None) -> str:
    """`extra.token`, else `login:password` (Milvus user auth), else the password (an API key)."""
    if conn is None:
        return ""
    if conn.extra.get("token"):
        return str(conn.extra["token"])
    if conn.login and conn.password:
        return f"{conn.login}:{conn.password}"
    return conn.password or ""


def kfp_host(conn: Conn | None) -> str:
    """`extra.host` as given, else http(s)://host[:port][/schema] (the KFP API endpoint)."""
    if conn is None:
        return ""
    if conn.extra.get("host"):
        return str(conn.extra["host"])
    return _url(conn) if conn.host else ""


def resolve(
    variables: Mapping[str, str | None],
    connections: Mapping[str, Conn | None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from Airflow Variables and Connections, falling back to TANDEM_* environment variables."""
    env = os.environ if env is None else env
    connections = connections or {}
    values: dict[str, str] = {}
    missing = []
    for name, (env_name, default) in VARIABLES.items():
        value = variables.get(name)
        if value in (None, ""):
            value = env.get(env_name) or default
        if value is None:
            missing.append(f"Variable {name} (or ${env_name})")
        values[name] = value or ""
    if missing:
        raise ValueError(
            "tandem needs " + ", ".join(missing) + "; set them in Airflow (Admin > Variables, or "
            "AIRFLOW_VAR_<NAME> environment variables) or as TANDEM_* environment variables"
        )
    try:
        history_days = int(values["tandem_history_days"])
    except ValueError as e:
        raise ValueError(
            f"tandem_history_days must be a whole number of days, got {values['tandem_history_days']!r}"
        ) from e
    if history_days < 1:
        raise ValueError(f"tandem_history_days must be at least 1, got {history_days}")
    try:
        test_days = float(values["tandem_test_days"])
    except ValueError:
        test_days = -1.0
    if not 0 <= test_days < history_days:
        raise ValueError(
            f"tandem_test_days must be a number of days from 0 (the recipe's split) to below tandem_history_days "
            f"({history_days}), got {values['tandem_test_days']!r}"
        )
    workdir = Path(values["tandem_workdir"]).expanduser()
    milvus, kfp = connections.get(MILVUS_CONN), connections.get(KFP_CONN)
    return Settings(
        workdir=workdir,
        logs_source=values["tandem_logs_source"],
        catalog=values["tandem_catalog"],
        warehouse=Path(values["tandem_warehouse"] or workdir / "warehouse").expanduser(),
        config=values["tandem_config"],
        history_days=history_days,
        test_days=test_days,
        milvus_uri=milvus_uri(milvus) or env.get("TANDEM_MILVUS_URI", ""),
        milvus_token=milvus_token(milvus) or env.get("TANDEM_MILVUS_TOKEN", ""),
        kfp_host=kfp_host(kfp) or env.get("TANDEM_KFP_HOST", ""),
        kfp_experiment=(kfp.extra.get("experiment") if kfp else None) or values["tandem_kfp_experiment"],
    )


def airflow_settings() -> Settings:
    """`resolve` with this deployment's Airflow Variables and Connections; call it inside a task."""
    from airflow.sdk import Connection, Variable
    from airflow.sdk.exceptions import AirflowNotFoundException

    def conn(conn_id: str) -> Conn | None:
        try:
            c = Connection.get(conn_id)
        except AirflowNotFoundException:
            return None
        return Conn(
            c.conn_type or "", c.host or "", c.port, c.login or "", c.password or "", c.schema or "", c.extra_dejson
        )

    variables = {name: Variable.get(name, default=None) for name in VARIABLES}
    return resolve(variables, {conn_id: conn(conn_id) for conn_id in CONNECTIONS})


# ------------------------------------------------------------------------- the data interval
def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def interval(start: datetime | str | None, end: datetime | str) -> tuple[datetime, datetime]:
    """The interval [start, end) in UTC; an empty one (a manual trigger) means the day before `end`."""
    end = _utc(end)
    start = _utc(start) if start is not None else end
    return (start if start < end else end - timedelta(days=1)), end


def run_id(end: datetime | str) -> str:
    """`daily-YYYYMMDD` of the last day the interval ending at `end` covers (Airflow's `ds` for @daily)."""
    end = _utc(end)
    last = end - timedelta(microseconds=1)
    if end.time() == datetime.min.time():
        return f"daily-{last:%Y%m%d}"
    return f"daily-{end:%Y%m%dT%H%M%S}"  # intervals not aligned on midnight keep their own runs


def missing_days(warehouse: str | Path, end: datetime | str, days: int) -> list[date]:
    """Days of the look-back window that have no complete partition yet (a first run, a gap, a killed ingest)."""
    from tandem.data.partitions import complete

    end = _utc(end)
    first, last = (end - timedelta(days=days)).date(), (end - timedelta(microseconds=1)).date()
    root = Path(warehouse) / "logs"
    window = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    return [d for d in window if not complete(root / f"date={d.isoformat()}")]  # _DONE written last


def ingest(settings: Settings, start, end) -> dict[str, int]:
    """Copy the interval's events into its daily partitions (replacing them), and once, the
    look-back days that have none yet, so a first run brings its whole history. Rows per day."""
    from tandem.data import partitions

    start, end = interval(start, end)
    counts = partitions.ingest(settings.logs_source, settings.warehouse, start, end)
    gaps = [d for d in missing_days(settings.warehouse, end, settings.history_days) if d.isoformat() not in counts]
    for first, last in _ranges(gaps):
        lo = datetime(first.year, first.month, first.day, tzinfo=UTC)
        hi = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        counts |= partitions.ingest(settings.logs_source, settings.warehouse, lo, hi)
    return dict(sorted(counts.items()))


def _ranges(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive runs of days as (first, last)."""
    out: list[tuple[date, date]] = []
    for d in sorted(days):
        if out and d == out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], d)
        else:
            out.append((d, d))
    return out


def log_files(settings: Settings, end) -> list[Path]:
    """The partitions of the `history_days` days before the interval's end."""
    from tandem.data import partitions

    return partitions.select(settings.warehouse, interval(None, end)[1], settings.history_days)


def daily_run(settings: Settings, end) -> RunPaths:
    from tandem.pipeline.stages import RunPaths

    return RunPaths.of(settings.workdir, run_id(end))


# ------------------------------------------------------------------------- training
def public_config(cfg: RunConfig) -> RunConfig:
    """The config without secrets: for reports, XComs and pipeline arguments."""
    from tandem.core.setup import without_secrets

    return without_secrets(cfg)


def kfp_arguments(settings: Settings, run: RunPaths, cfg: RunConfig) -> dict:
    """Arguments of the Kubeflow pipeline (`tandem.orchestration.kubeflow`): this run's id and shared workdir, the
    look-back window as the normalised log the load task wrote there, the recipe without secrets."""
    from tandem.orchestration.kubeflow import arguments

    logs = run / "data" / "logs.parquet"
    return arguments(logs, settings.catalog, run.workdir, public_config(cfg), run.run_id)


# Stages the Kubeflow pipeline runs after training, into the same run folder of the shared workdir.
DONE_BY_KFP = ("embed", "index", "evaluate", "gate")


def align(settings: Settings, run: RunPaths, cfg: RunConfig) -> dict:
    """The align stage in-process; with a KFP host, nothing here: the pipeline that the train task submits aligns
    on a GPU (its align component) and writes align.json into the same run folder."""
    from tandem.pipeline import registry

    if settings.kfp_host:
        return {"deferred": "the Kubeflow pipeline's align component (GPU) aligns the vision tower"}
    return registry.run_stage("align", run, cfg, progress=False)


def train(settings: Settings, run: RunPaths, cfg: RunConfig) -> dict:
    """Train in-process, or, when a KFP host is configured, submit the tandem pipeline for this run
    id and wait: the cluster trains on GPUs and carries on (embed, index, evaluate, gate) into the
    same run folder, which must be storage both sides mount (tandem_workdir = the KFP volume)."""
    from tandem.pipeline import stages

    if not settings.kfp_host:
        return stages.train(run, cfg, progress=False)
    from tandem.orchestration.kubeflow import submit  # kfp is only needed where a KFP host is configured

    args = kfp_arguments(settings, run, cfg)
    result = submit(settings.kfp_host, args, experiment=settings.kfp_experiment, wait=True)
    state = str(result.get("state", "")).upper().rsplit(".", 1)[-1]
    if state not in ("SUCCEEDED", "SUCCESS"):
        raise RuntimeError(f"Kubeflow run {result.get('url') or result} ended in state {state or 'unknown'}")
    if not (run / "gate.json").is_file():
        raise ValueError(
            f"the Kubeflow run {result.get('url', '')} succeeded but wrote nothing to {run.dir}; the pipeline's "
            "workdir must be the storage Airflow reads too (set tandem_workdir to the KFP volume's mount)"
        )
    summary = run.summary("train") if (run / "train.json").is_file() else {}
    return run.save("train", summary | {"kubeflow": result})


def run_stage(settings: Settings, run: RunPaths, cfg: RunConfig, name: str) -> dict:
    """One stage after training: run it here, or (Kubeflow mode) return what the pipeline wrote."""
    from tandem.pipeline import registry

    if settings.kfp_host and name in DONE_BY_KFP:
        return run.summary(name)
    return registry.run_stage(name, run, cfg, progress=False)
