"""Rankers a user could build from the training window's logs alone, on a finished run's test pairs: how far
popularity and co-occurrence reach beyond the pipeline's own baselines (issue 16: the strongest baseline).

    .venv/bin/python benchmarks/log_signals.py RUN_DIR [RUN_DIR ...] [--half-lives 14,30,90]

RUN_DIR is a finished run of item pairs (e.g. /tmp/tandem-quality/completejourney/notellm2/runs/
completejourney-notellm2 after `benchmarks/quality.py`). The evaluate stage's pairs and pool are rebuilt from the
run's files (the same EvalSet, each query's training partners left out as there), and ranked by:

- popularity with recency: distinct users per item, each weighted 2^(-age / half-life) by the days between the
  user's latest click on it and the test window's start (the pipeline's popularity baseline: no decay);
- item co-occurrence over users: how many users clicked both the query item and the candidate in the training
  window (item-to-item collaborative filtering, ties by popularity), raw and cosine-normalised (divided by the
  square root of both items' user counts).

The model's and the pipeline baselines' per-pair figures are read from evaluate/per_pair.npz beside them.
`--hybrid-weights` adds the served model's scores (its vectors re-read, the query titles embedded by a query
tower) plus a weight times a rank-`--hybrid-rank` approximation of log(1 + users in common), scaled to [0, 1]:
what collaborative coordinates appended to the vectors would add (an item query's factors on one side, a
candidate's on the other), and what they would cost the cold targets, which have few clicks or none.
Nothing here is chosen for the pipeline: it says where the non-learned signals stand on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from cold_targets import rebuild

from tandem.evaluation.baselines import click_matrix, training_clicks
from tandem.evaluation.evaluate import EvalSet
from tandem.evaluation.metrics import bootstrap_ci, per_pair_metrics
from tandem.evaluation.results import load_per_pair

FROM_RUN = ("model", "popularity", "cooccurrence")
METRICS = ("recall@100", "cold recall@100", "mrr@10")


def train_clicks(run: Path, logs: pd.DataFrame, cfg, catalog: pd.DataFrame) -> tuple[pd.DataFrame, pd.Timestamp]:
    """The training window's click events on catalogue items (user_id, row, ts), and the test window's start."""
    cutoff = pd.Timestamp(json.loads((run / "pairs.json").read_text())["cutoff"])
    clicks = training_clicks(logs, cutoff, cfg.contract.click_events)  # what the co-occurrence baseline counts
    pos = pd.Series(np.arange(len(catalog)), index=catalog["item_id"].astype(str).to_numpy())
    rows = pos.reindex(clicks["item_id"].astype(str).to_numpy()).to_numpy()
    known = ~np.isnan(rows)
    return pd.DataFrame({"user_id": clicks["user_id"].to_numpy()[known], "row": rows[known].astype(np.int64),
                         "ts": clicks["ts"].to_numpy()[known]}), cutoff  # fmt: skip


def recency_popularity(clicks: pd.DataFrame, cutoff: pd.Timestamp, n_items: int, half_life: float) -> np.ndarray:
    """Per catalogue row: sum over distinct users of 2^(-days since their latest click / half_life)."""
    latest = clicks.groupby(["row", "user_id"])["ts"].max().reset_index()
    age = (cutoff - pd.to_datetime(latest["ts"], utc=True)).dt.total_seconds().to_numpy() / 86400.0
    return np.bincount(latest["row"].to_numpy(), weights=0.5 ** (age / half_life), minlength=n_items)


def user_item(clicks: pd.DataFrame, n_items: int) -> sp.csc_matrix:
    """(users, catalogue rows) 0/1, as the co-occurrence baseline counts them."""
    return click_matrix(np.arange(n_items), clicks.assign(item_id=clicks["row"]))


def cooccurrence_over_users(ev: EvalSet, clicks: pd.DataFrame, n_items: int, cosine: bool):
    """Scorer: users who clicked both the query item and each pool item (optionally cosine-normalised), plus the
    item's popularity scaled below the smallest step of the first (ties only)."""
    x = user_item(clicks, n_items)
    degree = np.asarray(x.sum(0)).ravel()
    both = (x[:, ev.query_item].T @ x[:, ev.pool]).toarray()  # (queries, pool): users in common
    if cosine:
        both = both / np.sqrt(np.maximum(degree[ev.query_item], 1.0))[:, None]
        both = both / np.sqrt(np.maximum(degree[ev.pool], 1.0))[None, :]
    tie = degree[ev.pool] / (degree.max() + 1.0) * (1e-9 if cosine else 1.0)  # below one user in common
    scores = both + tie[None, :]
    return lambda batch: scores[batch]


def hybrid_scores(ev: EvalSet, run: Path, catalog: pd.DataFrame, clicks: pd.DataFrame, rank: int):
    """(the served model's (queries, pool) scores, the rank-`rank` log co-occurrence on the same cells)."""
    from scipy.sparse.linalg import eigsh

    from tandem.models import load_model
    from tandem.training.factors import cooccurrence_matrix

    model = load_model(run / "model")
    queries, pool = ev.encode(model, catalog, np.load(run / "vectors" / "items.npy"), progress=False)
    both = cooccurrence_matrix(np.arange(len(catalog)), clicks.assign(item_id=clicks["row"]))
    values, vectors = eigsh(both, k=min(rank, len(catalog) - 2), which="LM")
    factors = vectors * values  # query side; the candidate side is `vectors`
    return queries @ pool.T, factors[ev.query_item] @ vectors[ev.pool].T


def signals(run: Path, half_lives: list[float], hybrid_weights: list[float], hybrid_rank: int) -> str:
    ev, catalog, logs, cfg = rebuild(run)
    clicks, cutoff = train_clicks(run, logs, cfg, catalog)
    n = len(catalog)
    per_pair = load_per_pair(run / "evaluate" / "per_pair.npz")
    figures = {f"{name} (the run's)": per_pair[name] for name in FROM_RUN if name in per_pair}
    for half_life in half_lives:
        pop = recency_popularity(clicks, cutoff, n, half_life)[ev.pool]
        ranks = ev.ranks(lambda batch, pop=pop: np.broadcast_to(pop, (len(batch), len(pop))))
        figures[f"popularity, half-life {half_life:g} d"] = per_pair_metrics(ranks, (100,), 10)
    for cosine in (False, True):
        ranks = ev.ranks(cooccurrence_over_users(ev, clicks, n, cosine))
        figures[f"co-occurrence over users{', cosine' if cosine else ''}"] = per_pair_metrics(ranks, (100,), 10)
    if hybrid_weights:
        served, collaborative = hybrid_scores(ev, run, catalog, clicks, hybrid_rank)
        for weight in [0.0, *hybrid_weights]:
            ranks = ev.ranks(lambda batch, w=weight: served[batch] + w * collaborative[batch])
            name = f"model + {weight:g} x co-occurrence (log, rank {hybrid_rank})" if weight else "model (re-scored)"
            figures[name] = per_pair_metrics(ranks, (100,), 10)
    lines = [f"{run}: {len(ev.target)} test pairs, {ev.description}; training window: {len(clicks)} clicks of "
             f"{clicks['user_id'].nunique()} users before {cutoff:%Y-%m-%d}", "",
             "| ranker | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]  # fmt: skip
    for name, values in figures.items():
        cells = []
        for metric in METRICS:
            column = np.asarray(values[metric.split()[-1]], dtype=np.float64)
            column = column[ev.subsets["cold"]] if metric.startswith("cold") else column
            low, high = bootstrap_ci(column)
            cells.append(f"{column.mean():.4f} [{low:.3f}, {high:.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--half-lives", default="14,30,90", help="comma-separated recency half-lives in days")
    parser.add_argument("--hybrid-weights", default="", help="comma-separated weights of the co-occurrence part")
    parser.add_argument("--hybrid-rank", type=int, default=32, help="rank of the co-occurrence approximation")
    args = parser.parse_args()
    started = time.time()
    floats = lambda text: [float(x) for x in text.split(",") if x]  # noqa: E731
    for run in args.runs:
        print(signals(run, floats(args.half_lives), floats(args.hybrid_weights), args.hybrid_rank) + "\n")
    runs = " ".join(str(r) for r in args.runs)
    hybrid = f" --hybrid-weights {args.hybrid_weights} --hybrid-rank {args.hybrid_rank}" if args.hybrid_weights else ""
    command = f"python benchmarks/log_signals.py {runs} --half-lives {args.half_lives}{hybrid}"
    print(f"({time.time() - started:.0f} s; {command})")


if __name__ == "__main__":
    main()
