"""Item (and user) features in a Feast feature store: built from a run's data, applied, materialised,
and read back by training (offline store, point in time); the online store holds the latest values for a
service or a user's own code to read (tandem's service reads Milvus' scalar fields, not Feast).

Where things live: the feature *definitions* are built here (`definitions`), so the library works
when installed as a package; `features/` (of a checkout, or written by `tandem init`) is a thin Feast
repository whose `definitions.py` calls the same builder for users of the `feast` CLI. The *store*
(registry, online and offline store) is what `features/feature_store.yaml` of the current folder says
(`store_config`; the package's copy where there is none): edit it, or point $TANDEM_FEATURE_STORE at a
copy, to move the registry or switch the online store (e.g. to Redis).
Its relative paths are relative to the workdir (`${TANDEM_WORKDIR}` names it too), so with the
shipped file the state lives per workdir, never in the git repository:

    WORKDIR/feast/registry.db                   Feast registry (file)
    WORKDIR/feast/online.db                     online store (SQLite): latest values per entity
    WORKDIR/feast/item_features/<run_id>.parquet offline store (files): one snapshot per run, so the
    WORKDIR/feast/user_features/<run_id>.parquet history allows point-in-time reads

Every row of a run's snapshot carries `run_id`, `event_timestamp` = the run's as-of time (its last
logged event) and `created` = when the snapshot was written. A run reads its own snapshot back
(`read_items(..., run_id=...)`: the views `item_features_by_run` / `user_features_by_run` join on item
and run), so two runs of the same as-of time never read each other's; without a run id a read takes
the latest snapshot at or before the as-of time. The online store only moves forward: a snapshot older
than what is online (a backfill) does not overwrite newer values (`features_online.write_online`).
Feature views have no TTL, so old demo data never expires.

`import feast` costs seconds: it happens inside the functions, never at import time.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml

from tandem.core import layout

PROJECT = "tandem"
ITEM_VIEW, USER_VIEW = "item_features", "user_features"
BY_RUN = "_by_run"  # offline-only views keyed on (entity, run_id): a run's own snapshot
OPTIONAL_TEXT = ("city", "country")
OPTIONAL_LIST = ("facilities",)
OPTIONAL_COLUMNS = (*OPTIONAL_TEXT, *OPTIONAL_LIST)
CATALOG_FEATURES = ("title", "topics", "content", "images", *OPTIONAL_COLUMNS)  # what `stages.items` returns
ITEM_FEATURES = (*CATALOG_FEATURES, "n_images", "popularity", "degree", "last_seen")
USER_FEATURES = ("n_events", "n_items", "last_seen")

_STR, _LIST = pa.string(), pa.list_(pa.string())
_INT, _TS = pa.int64(), pa.timestamp("us", tz="UTC")
ITEM_SCHEMA = pa.schema(
    [("item_id", _STR), ("title", _STR), ("topics", _LIST), ("content", _STR), ("images", _LIST)]
    + [(c, _STR) for c in OPTIONAL_TEXT]
    + [(c, _LIST) for c in OPTIONAL_LIST]
    + [("n_images", _INT), ("popularity", _INT), ("degree", _INT), ("last_seen", _TS)]
    + [("event_timestamp", _TS), ("created", _TS), ("run_id", _STR)]
)
USER_SCHEMA = pa.schema(
    [("user_id", _STR), ("n_events", _INT), ("n_items", _INT), ("last_seen", _TS), ("event_timestamp", _TS)]
    + [("created", _TS), ("run_id", _STR)]
)


# ------------------------------------------------------------------------------- tables
def _as_list(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(v) for v in value]


def item_feature_table(
    catalog: pd.DataFrame,
    logs: pd.DataFrame,
    train_pairs: pd.DataFrame,
    popularity: pd.DataFrame,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """One row per catalogue item, in catalogue order, with the columns of `ITEM_SCHEMA`.

    popularity: distinct users in the training window (`popularity` table: item_id, users), 0 if none;
    degree: distinct co-occurrence partners in the train pairs, either direction;
    last_seen: the item's last logged event at or before `as_of` (NaT if never seen).
    Optional catalogue columns the catalogue lacks are filled with "" / [] (the schema is fixed).
    """
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    ids = catalog["item_id"].astype(str)
    out = pd.DataFrame({"item_id": ids.to_numpy()})
    for col in ("title", "content", *OPTIONAL_TEXT):
        out[col] = catalog[col].fillna("").astype(str).to_numpy() if col in catalog else ""
    for col in ("topics", "images", *OPTIONAL_LIST):
        out[col] = catalog[col].map(_as_list).to_list() if col in catalog else [[] for _ in range(len(out))]
    out["n_images"] = out["images"].map(len).astype("int64")
    users = popularity.set_index(popularity["item_id"].astype(str))["users"]
    out["popularity"] = ids.map(users).fillna(0).astype("int64").to_numpy()
    edges = pd.concat(
        [
            train_pairs[["item_id", "related_item_id"]].set_axis(["a", "b"], axis=1),
            train_pairs[["related_item_id", "item_id"]].set_axis(["a", "b"], axis=1),
        ]
    ).astype(str)
    degree = edges[edges["a"] != edges["b"]].groupby("a")["b"].nunique()
    out["degree"] = ids.map(degree).fillna(0).astype("int64").to_numpy()
    seen = logs[logs["ts"] <= as_of].assign(item_id=lambda d: d["item_id"].astype(str))
    last = seen.groupby("item_id")["ts"].max()
    out["last_seen"] = pd.to_datetime(ids.map(last).to_numpy(), utc=True)
    out["event_timestamp"] = as_of
    out["created"] = pd.Timestamp.now(tz="UTC")
    out["run_id"] = ""  # set by apply_and_materialize
    return out[ITEM_SCHEMA.names]


def user_feature_table(logs: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """One row per user: events, distinct items and last event at or before `as_of`."""
    as_of = pd.Timestamp(as_of)
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    seen = logs[logs["ts"] <= as_of].assign(user_id=lambda d: d["user_id"].astype(str))
    out = seen.groupby("user_id").agg(
        n_events=("item_id", "size"), n_items=("item_id", "nunique"), last_seen=("ts", "max")
    )
    out = out.reset_index().astype({"n_events": "int64", "n_items": "int64"})
    out["last_seen"] = pd.to_datetime(out["last_seen"], utc=True)
    out["event_timestamp"] = as_of
    out["created"] = pd.Timestamp.now(tz="UTC")
    out["run_id"] = ""
    return out[USER_SCHEMA.names]


# ------------------------------------------------------------------------ definitions
def definitions(feast_dir: str | Path, relative_to: str | Path | None = None) -> list:
    """Feast objects (entities, sources, feature views) over the snapshot folders in `feast_dir`.

    With `relative_to` (the store's repo_path, i.e. the workdir), the sources' paths are relative to it,
    so a store copied or pulled elsewhere (e.g. by `dvc pull`) still finds its snapshots.
    Shared by the library (`store`, `apply_and_materialize`) and the repo's `features/definitions.py`.
    """
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Int64, String, UnixTimestamp

    feast_dir = Path(os.path.abspath(feast_dir))  # not resolve(): features/feast is a link that must stay one
    if relative_to is not None:
        feast_dir = Path(os.path.relpath(feast_dir, os.path.abspath(relative_to)))
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="a catalogue item")
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="a user of the logs")
    run = Entity(name="run", join_keys=["run_id"], value_type=ValueType.STRING, description="a pipeline run")

    def source(name: str):
        return FileSource(
            name=f"{name}_source",
            path=str(feast_dir / name),  # a folder: one parquet snapshot per run
            timestamp_field="event_timestamp",
            created_timestamp_column="created",
        )

    types = {_STR: String, _LIST: Array(String), _INT: Int64, _TS: UnixTimestamp}
    item_fields = [Field(name=f.name, dtype=types[f.type]) for f in ITEM_SCHEMA if f.name in ITEM_FEATURES]
    user_fields = [Field(name=f.name, dtype=types[f.type]) for f in USER_SCHEMA if f.name in USER_FEATURES]
    items = FeatureView(
        name=ITEM_VIEW,
        entities=[item],
        ttl=timedelta(0),  # 0 = never expires
        schema=[Field(name="item_id", dtype=String), *item_fields],
        source=source(ITEM_VIEW),
        online=True,
        description="catalogue text, images, popularity, co-occurrence degree and last event per item",
    )
    users = FeatureView(
        name=USER_VIEW,
        entities=[user],
        ttl=timedelta(0),
        schema=[Field(name="user_id", dtype=String), *user_fields],
        source=source(USER_VIEW),
        online=True,
        description="activity per user",
    )
    by_run = [  # offline only: what training reads back, the run's own snapshot
        FeatureView(
            name=view.name + BY_RUN,
            entities=[entity, run],
            ttl=timedelta(0),
            schema=[Field(name=key, dtype=String), Field(name="run_id", dtype=String), *fields],
            source=view.batch_source,
            online=False,
            description=f"{view.name} keyed per run: a run's own snapshot, whatever other runs of its as-of time wrote",
        )
        for view, entity, key, fields in ((items, item, "item_id", item_fields), (users, user, "user_id", user_fields))
    ]
    return [item, user, run, items, users, *by_run]


def feast_dir(workdir: str | Path) -> Path:
    """WORKDIR/feast: the offline snapshots (and, with the shipped feature_store.yaml, registry and online DB)."""
    return layout.feast_dir(workdir)


# --------------------------------------------------------------------------- the store
STORE_YAML_ENV = "TANDEM_FEATURE_STORE"  # path of the feature_store.yaml to use instead of the default
WORKDIR_VAR = "${TANDEM_WORKDIR}"  # replaced by the workdir in feature_store.yaml
LOCAL_STORE_YAML = Path("features") / "feature_store.yaml"  # of the current folder: a checkout or `tandem init DIR`
SHIPPED_STORE_YAML = "deploy/features/feature_store.yaml"  # in the package: what `tandem init` writes there


def shipped_store_yaml() -> str:
    """The feature_store.yaml the package ships (and `tandem init` writes to features/)."""
    from importlib import resources

    return (resources.files("tandem") / SHIPPED_STORE_YAML).read_text()


def store_yaml(path: str | Path | None = None) -> tuple[str, str]:
    """(text, source) of the store's feature_store.yaml: `path`, else $TANDEM_FEATURE_STORE, else
    features/feature_store.yaml of the current folder (a checkout, or a folder `tandem init` wrote), else
    the one the package ships."""
    path = path or os.environ.get(STORE_YAML_ENV) or None
    if path is None:
        if not LOCAL_STORE_YAML.is_file():
            return shipped_store_yaml(), f"tandem's shipped {SHIPPED_STORE_YAML}"
        path = LOCAL_STORE_YAML
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"feature store config {path} does not exist (from {STORE_YAML_ENV} or the path given)")
    return path.read_text(), str(path)


def store_config(workdir: str | Path, path: str | Path | None = None):
    """The RepoConfig of `store_yaml(path)` for this workdir: ${TANDEM_WORKDIR} is the workdir, other
    ${VARS} come from the environment (as Feast does), and relative paths are relative to the workdir."""
    from feast import RepoConfig
    from feast.errors import FeastError
    from pydantic import ValidationError

    workdir = Path(workdir).resolve()
    text, source = store_yaml(path)
    text = text.replace(WORKDIR_VAR, str(workdir))
    try:
        raw = yaml.safe_load(os.path.expandvars(text))
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(raw, dict) or not raw.get("project"):
        raise ValueError(f"{source}: not a feature_store.yaml (a mapping with project, registry, online_store, ...)")
    try:
        config = RepoConfig(**raw)
        _ = config.online_store, config.offline_store  # parsed lazily: check them here, not at the first read
    except (ValidationError, FeastError, ImportError) as e:  # the message names the bad key or store type
        raise ValueError(f"{source}: invalid feature store config: {e}") from e
    config.repo_path = workdir  # Feast resolves relative registry / SQLite paths against it
    return config


def registry_file(config) -> Path | None:
    """The registry's file for a file registry (None for a SQL or remote one)."""
    registry = config.registry
    if getattr(registry, "registry_type", "file") != "file" or "://" in str(registry.path):
        return None
    path = Path(registry.path)
    return path if path.is_absolute() else Path(config.repo_path) / path


def store(workdir: str | Path, path: str | Path | None = None):
    """The FeatureStore of `store_config(workdir, path)`, i.e. what features/feature_store.yaml says."""
    from feast import FeatureStore

    config = store_config(workdir, path)
    feast_dir(workdir).mkdir(parents=True, exist_ok=True)
    registry = registry_file(config)
    if registry is not None:
        registry.parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(config.repo_path), config=config)


def _write_snapshot(table: pd.DataFrame, schema: pa.Schema, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(table[schema.names], schema=schema, preserve_index=False), tmp)
    tmp.replace(path)  # dask reads every *.parquet of the folder: never leave a half-written one


def apply_and_materialize(
    workdir: str | Path, run_id: str, items: pd.DataFrame, users: pd.DataFrame | None = None
) -> dict:
    """Write the run's snapshots (keyed by `run_id`) to the offline store, apply the definitions, and
    put the run's as-of time into the online store, except entities whose online values are newer (an
    older backfill; counted in `online`). Rerunning a run replaces its snapshot."""
    from tandem.data.features_online import add_run_ids, online_lock, write_online

    root = feast_dir(workdir)
    tables = {ITEM_VIEW: (items.assign(run_id=run_id), ITEM_SCHEMA, "item_id")}
    if users is not None:
        tables[USER_VIEW] = (users.assign(run_id=run_id), USER_SCHEMA, "user_id")
    paths = {view: root / view / f"{run_id}.parquet" for view in tables}
    for view, (table, schema, _) in tables.items():
        add_run_ids(root / view)  # snapshots of older versions of tandem
        _write_snapshot(table, schema, paths[view])
    as_of = pd.Timestamp(items["event_timestamp"].iloc[0]).to_pydatetime()
    fs = store(workdir)
    fs.apply(definitions(root, relative_to=fs.config.repo_path))
    with online_lock(root):
        online = {view: write_online(fs, view, key, "n_events" if view == USER_VIEW else "n_images", table, as_of)
                  for view, (table, _, key) in tables.items()}  # fmt: skip
    return {
        "repo": str(root),
        "as_of": as_of.isoformat(),
        "run_id": run_id,
        "snapshots": {k: str(v) for k, v in paths.items()},
        "online": online,
    }


# ------------------------------------------------------------------------------- reads
def read_items(
    workdir: str | Path,
    item_ids,
    as_of: pd.Timestamp | str | None = None,
    columns: tuple[str, ...] | list[str] = CATALOG_FEATURES,
    run_id: str | None = None,
) -> pd.DataFrame:
    """Rows of `item_ids` (in that order) through Feast: item_id, then `columns` in that order. The
    default is the catalogue's shape: title, topics (list), content, images (list), city, country,
    facilities (list); any of `ITEM_FEATURES` may be asked for.

    With `as_of` (training): the offline store, point in time, i.e. the latest snapshot at or before
    `as_of`, whatever later runs materialised; with `run_id` too, that run's own snapshot (not another
    run's of the same as-of time). Without `as_of` (serving): the online store's latest values.
    Raises ValueError if an item has no features (the features stage has not run for it).
    """
    ids = pd.Index(pd.Series(item_ids, dtype=str), name="item_id")
    if ids.has_duplicates:
        raise ValueError("read_items: item_ids has duplicates")
    columns = list(columns)
    unknown = sorted(set(columns) - set(ITEM_FEATURES))
    if unknown:
        raise ValueError(f"unknown item feature(s) {unknown}; known: {', '.join(ITEM_FEATURES)}")
    fs = store(workdir)
    registry = registry_file(fs.config)
    if registry is not None and not registry.is_file():
        raise ValueError(f"no Feast registry at {registry}: run the features stage first")
    view = ITEM_VIEW if run_id is None or as_of is None else ITEM_VIEW + BY_RUN
    refs = [f"{view}:{c}" for c in columns] + ([f"{view}:n_images"] if "n_images" not in columns else [])
    if as_of is None:
        frame = fs.get_online_features(features=refs, entity_rows=[{"item_id": i} for i in ids]).to_df()
    else:
        as_of = pd.Timestamp(as_of)
        as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
        entity_df = pd.DataFrame({"item_id": ids, "event_timestamp": as_of})
        if run_id is not None:
            entity_df["run_id"] = str(run_id)
        frame = fs.get_historical_features(entity_df=entity_df, features=refs).to_df()
    frame = frame.drop_duplicates("item_id").set_index("item_id").reindex(ids)
    missing = ids[frame["n_images"].isna().to_numpy()]
    if len(missing):
        where = "online store" if as_of is None else f"offline store at or before {as_of}"
        where += f" for run {run_id}" if run_id is not None and as_of is not None else ""
        raise ValueError(
            f"{len(missing)} item(s) have no features in the {where} (e.g. {', '.join(missing[:3])}); "
            "run the features stage for this data first"
        )
    for col in columns:
        if col in ("topics", "images", *OPTIONAL_LIST):
            frame[col] = frame[col].map(_as_list)
        elif col in ("n_images", "popularity", "degree"):
            frame[col] = frame[col].astype("int64")
        elif col != "last_seen":
            frame[col] = frame[col].fillna("").astype(str)
    return frame[columns].reset_index()
