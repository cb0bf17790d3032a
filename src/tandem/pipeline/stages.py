"""The loop's stages as plain functions over one run folder, so that `tandem run`, an Airflow
task and a Kubeflow component all call the same code.

Each stage reads what earlier stages wrote under `WORKDIR/runs/<run_id>/`, writes its own
outputs there (replacing them, so a rerun is idempotent) plus `<stage>.json` with its
summary, and returns that summary. The Milvus database is shared by all runs of a workdir.

    load -> pairs -> validate -> features -> align -> train -> embed -> index -> evaluate -> gate -> promote

From `features` on, item rows come through the Feast store (`tandem.data.features`), not the raw files.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.core import layout
from tandem.core.atomic import write_atomic
from tandem.core.config import RunConfig
from tandem.data.contract import load_catalog, load_logs
from tandem.pairs.core import popularity
from tandem.pairs.queries import read_query_pairs, training_mix, write_query_pairs
from tandem.pairs.split import split_pairs
from tandem.pipeline import hard_negatives
from tandem.pipeline.model_term import attach_popularity, pair_counts
from tandem.pipeline.vision_tower import with_vision
from tandem.release.index import ItemIndex, collection_name, model_dir_of

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class RunPaths:
    """Where one run's artefacts live."""

    workdir: Path
    run_id: str

    @classmethod
    def of(cls, workdir: str | Path, run_id: str) -> RunPaths:
        return cls(Path(workdir).resolve(), run_id)

    @property
    def dir(self) -> Path:
        return layout.run_dir(self.workdir, self.run_id)

    def __truediv__(self, name: str) -> Path:
        return self.dir / name

    @property
    def base_collection(self) -> str:
        return collection_name(self.run_id)

    @property
    def collection(self) -> str:  # the index stage's attempt (tandem.release.attempts), else the base name
        done = self / "index.json"
        return json.loads(done.read_text())["collection"] if done.is_file() else self.base_collection

    def summary(self, stage: str) -> dict:
        path = self / f"{stage}.json"
        if not path.is_file():
            raise ValueError(f"the {stage} stage has not run for {self.dir} (no {path.name}); run it first")
        return json.loads(path.read_text())

    def save(self, stage: str, summary: dict) -> dict:
        # written last, temp-then-rename: the stage's marker (its outputs were written before it)
        write_atomic(self / f"{stage}.json", json.dumps(summary, indent=2, default=_json_default))
        return summary


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (pd.Timestamp, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def catalog(run: RunPaths) -> pd.DataFrame:
    """The run's normalised catalogue as loaded (quarantined rows removed): the input of validate/features."""
    return pd.read_parquet(run / "data" / "catalog.parquet")


def items(run: RunPaths) -> pd.DataFrame:
    """The run's items read through Feast (offline store, as of the run's data), in catalogue order.

    Same columns as the catalogue, in its column order: item_id, title, content, topics (list),
    images (list), plus the optional ones it has. Vectors are stored in this row order.
    """
    from tandem.data.features import read_items

    summary = run.summary("features")  # names the missing stage when features has not run
    ids = pd.read_parquet(run / "data" / "catalog.parquet", columns=["item_id"])["item_id"]  # the order only
    own = summary.get("run_id")  # the run's own snapshot (older summaries: the latest at the as-of time)
    return read_items(run.workdir, ids, as_of=summary["as_of"], columns=summary["catalog_columns"], run_id=own)


def pairs(run: RunPaths, split: str) -> pd.DataFrame:
    return pd.read_parquet(run / "pairs" / f"{split}.parquet")


# --------------------------------------------------------------------------------- stages
def load(run: RunPaths, logs_path: str | Path, catalog_path: str | Path, cfg: RunConfig) -> dict:
    """Read the inputs into the contract; bad rows go to quarantine/ with their reason."""
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "quarantine").mkdir(exist_ok=True)
    catalog = load_catalog(catalog_path, cfg.contract)
    logs = load_logs(logs_path, cfg.contract, catalog_ids=catalog.kept["item_id"])
    write_atomic(run / "data" / "catalog.parquet", lambda f: catalog.kept.to_parquet(f, index=False))
    write_atomic(run / "data" / "logs.parquet", lambda f: logs.kept.to_parquet(f, index=False))
    logs.quarantined.to_csv(run / "quarantine" / "logs.csv", index=False)
    catalog.quarantined.to_csv(run / "quarantine" / "catalog.csv", index=False)
    catalog.dropped_images.to_csv(run / "quarantine" / "images.csv", index=False)
    logs.require_kept("logs", run / "quarantine" / "logs.csv")  # none kept: say why, not later at pairs
    return run.save(
        "load",
        {
            "inputs": {
                "logs": [str(p) for p in logs_path] if isinstance(logs_path, (list, tuple)) else str(logs_path),
                "catalog": str(catalog_path),
            },
            "logs": logs.counts(),
            "catalog": catalog.counts() | {"images_dropped": len(catalog.dropped_images)},
            "quarantine_dir": str(run / "quarantine"),
        },
    )


def mine(run: RunPaths, cfg: RunConfig) -> dict:
    """Co-occurrence pairs (DuckDB), time split, and the popularity of the training window."""
    (run / "pairs").mkdir(parents=True, exist_ok=True)
    logs = pd.read_parquet(run / "data" / "logs.parquet")
    split = split_pairs(logs, cfg.pairs, cfg.split, cfg.contract)
    for name in SPLITS:
        write_atomic(run / "pairs" / f"{name}.parquet", lambda f, n=name: getattr(split, n).to_parquet(f, index=False))
    for name, part in (("popularity", split.train_logs), ("popularity_valid", split.logs_before_validation())):
        pop = popularity(part, cfg.contract).rename("users").rename_axis("item_id").reset_index()
        write_atomic(run / "pairs" / f"{name}.parquet", lambda f, p=pop: p.to_parquet(f, index=False))
    queries = write_query_pairs(run / "pairs", logs, split, cfg)  # search text -> clicked item (§2), split likewise
    split.require_pairs(queries)
    return run.save("pairs", split.counts() | {"cutoff": split.cutoff.isoformat(), "query_pairs": queries})


def validate(run: RunPaths, cfg: RunConfig) -> dict:
    """GX suites on logs, catalogue and pairs; raises DataValidationError (a ValueError) on failure."""
    from tandem.data.validate import validate_run

    logs = pd.read_parquet(run / "data" / "logs.parquet")
    all_pairs = pd.concat([pairs(run, s).assign(split=s) for s in SPLITS], ignore_index=True)
    result = validate_run(logs, catalog(run), all_pairs, run / "validation", cfg.contract, cfg.pairs)
    return run.save(
        "validate",
        {
            "success": result.success,
            "data_docs": str(result.docs_path),
            "suites": {k: v["success"] for k, v in result.suites.items()},
        },
    )


def features(run: RunPaths, cfg: RunConfig) -> dict:
    """Item and user features of the run's data into Feast (offline snapshot + online store).

    The as-of time is the run's last logged event: every feature row carries it, and later
    stages read the offline store at that time.
    """
    from tandem.data import features as fs

    cat = catalog(run)
    logs = pd.read_parquet(run / "data" / "logs.parquet")
    if logs.empty:
        raise ValueError(f"run {run.run_id} has no usable log rows; the features need an as-of time from the logs")
    as_of = logs["ts"].max()
    item_table = fs.item_feature_table(
        cat, logs, pairs(run, "train"), pd.read_parquet(run / "pairs" / "popularity.parquet"), as_of
    )
    user_table = fs.user_feature_table(logs, as_of)
    stored = fs.apply_and_materialize(run.workdir, run.run_id, item_table, user_table)
    return run.save(
        "features",
        stored
        | {
            "items": len(item_table),
            "users": len(user_table),
            "catalog_columns": [c for c in cat.columns if c != "item_id"],  # what `items` gives back
            "items_with_popularity": int((item_table["popularity"] > 0).sum()),
            "items_with_pairs": int((item_table["degree"] > 0).sum()),
        },
    )


def _new_model(cfg: RunConfig, catalog: pd.DataFrame):
    import torch

    from tandem.models import build_model

    torch.manual_seed(cfg.train.seed)  # the new layers' initial weights: same seed, same model
    return build_model(cfg.model, catalog)


def train(run: RunPaths, cfg: RunConfig, progress: bool = True) -> dict:
    """Train the recipe's model family on the train pairs (early stopping on the valid pairs);
    checkpoints and TensorBoard logs go to training/, the final model to model/."""
    from tandem.models import build_loss
    from tandem.training.trainer import fit

    catalog, cfg = items(run), with_vision(run, cfg)  # the align stage's vision tower, if it trained one
    out = run / "training"
    # the popularity term is attached after training: changing it alone resumes the finished training
    model_cfg = {k: v for k, v in asdict(cfg.model).items() if not k.startswith("popularity_")}
    recipe = json.dumps({"model": model_cfg, "train": asdict(cfg.train)}, sort_keys=True)
    if (out / "recipe.json").is_file() and (out / "recipe.json").read_text() != recipe:
        log.info("the model or training settings changed since %s was written: training from scratch", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(recipe)  # same recipe = an interrupted run: the trainer resumes
    model = _new_model(cfg, catalog)
    train_pairs, valid_pairs = pairs(run, "train"), pairs(run, "valid")
    queries, query_valid = (read_query_pairs(run / "pairs", s) for s in ("train", "valid"))
    mixed, mix = training_mix(train_pairs, queries, cfg)
    hard, mined = hard_negatives.mine(run, cfg, mixed, catalog, [train_pairs, queries], progress)  # champion's index
    stats = fit(
        model,
        build_loss(cfg.model, cfg.train),
        mixed,
        catalog,
        cfg.train,
        valid_pairs=valid_pairs,
        eval_cfg=cfg.eval,
        out_dir=out,
        progress=progress,
        hard_negatives=hard,
        query_valid=query_valid,  # validates on held-out real queries when there are enough
    )
    term = attach_popularity(model, cfg, run, catalog, train_pairs, valid_pairs)
    model.save(run / "model")  # with its popularity term: what embed, evaluate and serving use
    counts = pair_counts(train_pairs, valid_pairs) | {"mix": mix, "hard_negatives": mined}
    return run.save("train", {"family": cfg.model.family, **stats, **counts, "popularity": term})


def embed(run: RunPaths, cfg: RunConfig, progress: bool = True) -> dict:
    """Embed every catalogue item with the trained model: vectors/items.npy in catalogue order."""
    from tandem.models import load_model

    catalog = items(run)
    vectors = load_model(run / "model").embed_items(catalog, batch_size=cfg.eval.batch_size, progress=progress)
    write_atomic(run / "vectors" / "items.npy", lambda f: np.save(f, vectors))
    bias = (run / "model" / "popularity.json").is_file()  # the term's coordinates close every vector
    return run.save("embed", {"items": len(catalog), "dim": int(vectors.shape[1]), "popularity_coordinate": bias})


def index(run: RunPaths, cfg: RunConfig) -> dict:
    """Write the item vectors and their filter fields to a new collection of this attempt (never one that serves;
    the same content again reuses its complete collection: tandem.release.attempts), then apply retention."""
    from tandem.release.attempts import index_run
    from tandem.release.scalars import catalog_scalars

    catalog = items(run)
    vectors = np.load(run / "vectors" / "items.npy")
    icfg = cfg.index
    if (run / "model" / "popularity.json").is_file() and icfg.metric == "COSINE":
        icfg = replace(icfg, metric="IP")  # cosine would renormalise the popularity coordinate away
    scalars, ids = catalog_scalars(catalog, cfg.index.scalar_fields), catalog["item_id"].tolist()
    done = index_run(run.workdir, run.dir, run.base_collection, icfg, ids, vectors, scalars, cfg.index.keep_collections)
    return run.save("index", done | {"items": len(catalog)})


def _champion_model(run: RunPaths, collection: str) -> Path:
    return model_dir_of(run.workdir, collection)


def evaluate(run: RunPaths, cfg: RunConfig, progress: bool = True) -> dict:
    """Recall@K / MRR@K / nDCG@K with bootstrap intervals on the test pairs, for the model, the
    baselines and the live champion, under one protocol and pool (see tandem.evaluation.evaluate); the
    per-pair values go to evaluate/per_pair.npz for the gate's paired comparison."""
    import torch

    from tandem.evaluation import baselines
    from tandem.evaluation.evaluate import query_latency_ms
    from tandem.evaluation.queries import eval_set
    from tandem.evaluation.results import save_per_pair, summarize
    from tandem.models import load_model

    ecfg, model = cfg.eval, load_model(run / "model")
    catalog, test, train = items(run), pairs(run, "test"), pairs(run, "train")
    queries = {s: read_query_pairs(run / "pairs", s) for s in ("train", "test")}  # real queries when the logs have them
    ev = eval_set(test, queries["test"], catalog, ecfg, model.symmetric, train, queries["train"])
    if ecfg.primary_metric not in ev.metric_names():
        raise ValueError(
            f"eval.primary_metric {ecfg.primary_metric!r} is not measured here; choose one of {ev.metric_names()}"
        )
    per_pair = {"model": ev.score_encoder(model, catalog, np.load(run / "vectors" / "items.npy"), progress)}
    latency = {"model": query_latency_ms(model, ev, catalog, ecfg.latency_queries)}
    pop, logs = pd.read_parquet(run / "pairs" / "popularity.parquet"), pd.read_parquet(run / "data" / "logs.parquet")
    clicks = baselines.training_clicks(logs, run.summary("pairs")["cutoff"], cfg.contract.click_events)
    scored, unavailable = baselines.score_baselines(
        ev, ecfg.baselines, catalog, train, pop, lambda: _new_model(with_vision(run, cfg), catalog), progress, clicks
    )  # a baseline the data cannot support (BM25 without text) is n/a with its reason; clicks: the training window's
    per_pair |= scored
    with ItemIndex(cfg.index, run.workdir) as idx:
        live = idx.live()
    champion = live if live and live != run.collection else None
    if champion:
        champion_model = load_model(_champion_model(run, champion))
        per_pair["champion"] = ev.score_encoder(champion_model, catalog, progress=progress)
        latency["champion"] = query_latency_ms(champion_model, ev, catalog, ecfg.latency_queries)
    metrics, ci = summarize(per_pair, ecfg)
    # with each pair's query (item, or typed text: its index), so that the gate resamples a query's pairs together
    query_of_pair = {"query": ev.query_of_pair.astype(np.float64)}
    per_pair_path = save_per_pair(run / "evaluate" / "per_pair.npz", per_pair | {"_pairs": query_of_pair})
    return run.save(
        "evaluate",
        {
            "metrics": metrics,
            "ci": ci,
            "latency_ms": latency,
            "latency_threads": torch.get_num_threads(),
            "protocol": ev.protocol,
            "pool": ev.description,
            "counts": ev.counts,
            "ci_method": f"percentile bootstrap over test pairs, {ecfg.n_boot} resamples, level {ecfg.level}",
            "primary_metric": ecfg.primary_metric,
            "champion_collection": champion,
            "test_pairs": ev.counts["pairs_evaluated"],
            "query_items": ev.counts["queries"],
            "per_pair": str(per_pair_path),
            "unavailable": unavailable,
        },
    )


def gate(run: RunPaths, cfg: RunConfig) -> dict:
    """Promote only if the challenger beats the champion on the same test pairs: by the margin, significantly
    (paired bootstrap over query items), with no guard metric or query latency regressing (tandem.evaluation.gate)."""
    from tandem.evaluation.gate import decide

    ev = run.summary("evaluate")
    champion = ev.get("champion_collection")
    per_pair = run / "evaluate" / "per_pair.npz"
    if per_pair.is_file():
        from tandem.evaluation.results import load_per_pair

        values = load_per_pair(per_pair)
    elif champion is None:  # a first run is promoted on its means alone
        values = {"model": {m: np.atleast_1d(float(v)) for m, v in ev["metrics"]["model"].items()}}
    else:
        raise ValueError(f"no {per_pair}: the gate needs per-pair results against {champion}; rerun evaluate")
    if champion and "champion" not in values:
        raise ValueError(f"{per_pair} has no 'champion' results although {champion} is live; rerun evaluate")
    # Pairs of one query are resampled together: the query of each evaluated pair ("_pairs|query" in the file), or
    # the test pairs' own when none was dropped (evaluation only drops pairs, so equal lengths mean the same order).
    queries = values.pop("_pairs", {}).get("query")
    test = run / "pairs" / "test.parquet"
    if queries is None and test.is_file():
        queries = pd.read_parquet(test, columns=["item_id"])["item_id"].to_numpy()
    n = len(next(iter(values["model"].values())))
    decision = decide(
        cfg.eval.primary_metric,
        values["model"],
        values["champion"] if champion else None,
        champion,
        cfg.gate,
        ev.get("latency_ms"),
        groups=queries if queries is not None and len(queries) == n else None,
        baselines={name: v for name, v in values.items() if name not in ("model", "champion")},
    )
    return run.save("gate", decision.to_dict())


def promote(run: RunPaths, cfg: RunConfig) -> dict:
    """Act on the gate (idempotent): a first run goes live at once; a winner over a live champion starts a staged
    A/B rollout (tandem.release.rollout; live unchanged) unless cfg.rollout.enabled is False, then it goes live at once.
    A rollout already running for another challenger is left alone: experiments are not restarted by daily runs."""
    from tandem.release import rollout

    decision = run.summary("gate")["decision"]
    state, note = None, ""
    with ItemIndex(cfg.index, run.workdir) as idx:
        previous = idx.live()
        if decision == "promote" and previous != run.collection:
            running = rollout.load_state(run.workdir)
            if previous is None or not cfg.rollout.enabled:
                idx.promote(run.collection)
            elif running is not None and running.status == "running" and running.challenger != run.collection:
                note = f"rollout {running.experiment} of {running.challenger} is running; {run.collection} waits"
                log.warning(note)
            else:
                state = rollout.start(run.workdir, previous, run.collection, cfg, index=idx).to_dict()
        live = idx.live()
        idx.retain(cfg.index.keep_collections)  # never drops an aliased collection (live, challenger)
    summary = {"decision": decision, "previous": previous, "live_collection": live, "alias": cfg.index.alias}
    return run.save("promote", summary | {"rollout": state} | ({"note": note} if note else {}))
