"""Query -> item pairs from search events (HotelMatch-LLM, SEEDS.md §2): the text a user typed, the item clicked.

A log row with a non-empty `query` and a click event (`ContractConfig.click_events`) is one search click.
Pairs are weighted like the co-occurrence pairs (`tandem.pairs.core`): s(q->B) = sum over the users u who
typed q and clicked B of 1/N_u, N_u = the distinct items u clicked in the same part of the log, in the same
exact fixed-point units; support = distinct users; `min_support` and [low, up] as there; the top
`pairs.query_top_t` items per query (a query names a set of items; 0 = the item pairs' top t).
Query texts are compared lower-cased with whitespace collapsed.

Rows: item_id = related_item_id = the clicked item (a query has no item of its own; item_id keys the pair
for in-batch negatives), query, score, support. They are split as the item pairs are (`tandem.pairs.split`),
so a window's search clicks train, validate or test as its item pairs do: test pairs from the log at or
after the test cutoff, minus those whose (query, item) the training window has (counted); with time
validation (the Split's valid cutoff), `query_train` from the log before the valid cutoff and `query_valid`
from [valid cutoff, test cutoff), minus the (query, item) pairs of `query_train` (counted); with random
validation, a seeded (`split.seed`) random `split.valid_fraction` share of the training window's pairs.
The trainer validates on `query_valid` when it has enough pairs (`tandem.training.data.choose_validation`),
as the test protocol evaluates on `query_test`.

`training_mix` mixes them with the item -> item pairs at `pairs.query_ratio` for the HotelMatch family.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tandem.core.atomic import write_atomic
from tandem.core.config import ContractConfig, PairsConfig, RunConfig
from tandem.pairs.core import SCALE
from tandem.pairs.split import Split

QUERY_PAIR_COLUMNS = ["item_id", "related_item_id", "score", "support", "query"]
QUERY_SPLITS = ("train", "valid", "test")


def normalize_query(texts: pd.Series) -> pd.Series:
    return texts.astype("string").str.lower().str.split().str.join(" ").fillna("")


def mine_query_pairs(
    logs: pd.DataFrame, cfg: PairsConfig = PairsConfig(), contract: ContractConfig = ContractConfig(), top_t=None
) -> pd.DataFrame:
    """Query -> item pairs of normalised logs (user_id, item_id, event, ts, query), ordered by query, score desc."""
    empty = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(QUERY_PAIR_COLUMNS, (str, str, float, int, str))})
    if "query" not in logs.columns or logs.empty:
        return empty
    clicks = logs[logs["event"].isin(contract.click_events)]
    n_u = clicks.groupby("user_id")["item_id"].nunique()
    searched = clicks.assign(query=normalize_query(clicks["query"]))
    searched = searched[searched["query"] != ""][["user_id", "query", "item_id"]].drop_duplicates()
    if searched.empty:
        return empty
    n = searched["user_id"].map(n_u).to_numpy(dtype=np.int64)
    searched = searched.assign(units=(SCALE + n // 2) // n)
    grouped = searched.groupby(["query", "item_id"], as_index=False).agg(
        units=("units", "sum"), support=("user_id", "size")
    )
    grouped["score"] = grouped["units"].astype("float64") / float(SCALE)
    keep = (grouped["support"] >= cfg.min_support) & (grouped["score"] >= cfg.low) & (grouped["score"] <= cfg.up)
    grouped = grouped[keep].sort_values(["query", "score", "item_id"], ascending=[True, False, True])
    grouped = grouped[grouped.groupby("query").cumcount() < (top_t or cfg.query_top_t or cfg.top_t)]
    out = pd.DataFrame(
        {
            "item_id": grouped["item_id"].astype(str),
            "related_item_id": grouped["item_id"].astype(str),
            "score": grouped["score"].astype("float64"),
            "support": grouped["support"].astype("int64"),
            "query": grouped["query"].astype(str),
        }
    )
    return out.reset_index(drop=True)


def split_query_pairs(
    logs: pd.DataFrame,
    cutoff,
    cfg: PairsConfig = PairsConfig(),
    contract: ContractConfig = ContractConfig(),
    valid_cutoff=None,
    valid_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int | str]]:
    """(train, valid, test, counts), split like the item pairs: test from events at or after `cutoff`, without
    the (query, item) pairs of the training window (events before it) or of train; with `valid_cutoff` (time validation)
    train from events before it and valid from [valid_cutoff, cutoff) without the pairs of train, else valid
    is a seeded random `valid_fraction` share of the training window's pairs."""
    early, late = logs[logs["ts"] < cutoff], logs[logs["ts"] >= cutoff]
    top_t = cfg.query_top_t or cfg.train_top_t or cfg.top_t  # training; the held-out splits: the query pairs' cut
    train = mine_query_pairs(early, cfg, contract, top_t=top_t)
    test, test_seen = _unseen(mine_query_pairs(late, cfg, contract), train)  # as the item test: the whole window
    if valid_cutoff is not None:
        train = mine_query_pairs(early[early["ts"] < valid_cutoff], cfg, contract, top_t=top_t)
        valid, valid_seen = _unseen(mine_query_pairs(early[early["ts"] >= valid_cutoff], cfg, contract), train)
        test, more = _unseen(test, train)  # a pair the earlier part keeps (the whole window's cut may not) trains
        test_seen += more
    else:
        held = np.random.default_rng(seed).random(len(train)) < valid_fraction
        train, valid, valid_seen = train[~held].reset_index(drop=True), train[held].reset_index(drop=True), 0
    searches = logs["query"].notna().sum() if "query" in logs.columns else 0
    counts = {
        "log_rows_with_query": int(searches),
        "train": len(train),
        "valid": len(valid),
        "test": len(test),
        "test_dropped_seen": test_seen,
        "valid_dropped_seen": valid_seen,
        "train_queries": int(train["query"].nunique()),
        "valid_queries": int(valid["query"].nunique()),
        "test_queries": int(test["query"].nunique()),
        "valid_by": "time" if valid_cutoff is not None else "random",
    }
    return train, valid, test, counts


def _unseen(later: pd.DataFrame, earlier: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """`later` without the (query, item) pairs that `earlier` has, and how many were dropped."""
    seen = pd.MultiIndex.from_arrays([later["query"], later["item_id"]]).isin(
        pd.MultiIndex.from_arrays([earlier["query"], earlier["item_id"]])
    )
    return later[~seen].reset_index(drop=True), int(seen.sum())


def write_query_pairs(folder: Path, logs: pd.DataFrame, split: Split, cfg: RunConfig) -> dict[str, int | str]:
    """Mine and split the query pairs as `split` split the item pairs (its cutoffs; random validation with
    `cfg.split`'s fraction and seed) into `folder`/query_{train,valid,test}.parquet; their counts."""
    frames = split_query_pairs(
        logs, split.cutoff, cfg.pairs, cfg.contract, split.valid_cutoff, cfg.split.valid_fraction, cfg.split.seed
    )
    for name, frame in zip(QUERY_SPLITS, frames):
        write_atomic(folder / f"query_{name}.parquet", lambda f, d=frame: d.to_parquet(f, index=False))
    return frames[-1]


def read_query_pairs(folder: Path, split: str) -> pd.DataFrame:
    """query_train / query_valid / query_test of a run's pairs folder; empty (with the columns) where a run
    predates them (query_valid: runs before the query pairs had a validation split)."""
    if split not in QUERY_SPLITS:
        raise ValueError(f"query pair split {split!r} is not one of {', '.join(QUERY_SPLITS)}")
    path = Path(folder) / f"query_{split}.parquet"
    return pd.read_parquet(path) if path.is_file() else mine_query_pairs(pd.DataFrame())


def training_mix(
    item_pairs: pd.DataFrame, query_pairs: pd.DataFrame, cfg: RunConfig
) -> tuple[pd.DataFrame, dict[str, int | float]]:
    """(training pairs, counts): the item -> item pairs mixed with the query -> item pairs at `pairs.query_ratio`.

    The mix keeps the size of both together (training time does not change with the ratio): round(ratio x n)
    slots for query pairs, the rest for item pairs, each kind drawn without replacement when it has enough
    pairs, else all of them plus seeded repeats. Where one kind is empty the other is used as it is, and
    families other than HotelMatch (NoteLLM-2 embeds items on both sides) train on the item pairs alone."""
    ratio = cfg.pairs.query_ratio
    counts = {"item_pairs": len(item_pairs), "query_pairs": len(query_pairs), "query_ratio": ratio}
    if cfg.model.family != "hotelmatch" or query_pairs.empty or ratio == 0:
        return item_pairs, counts | {"query_pairs_used": 0, "item_pairs_used": len(item_pairs)}
    if item_pairs.empty or ratio == 1:
        return query_pairs, counts | {"query_pairs_used": len(query_pairs), "item_pairs_used": 0}
    total = len(item_pairs) + len(query_pairs)
    n_query = min(max(1, round(ratio * total)), total - 1)
    rng = np.random.default_rng(cfg.split.seed)
    mixed = pd.concat([_draw(item_pairs, total - n_query, rng), _draw(query_pairs, n_query, rng)], ignore_index=True)
    return mixed, counts | {"query_pairs_used": n_query, "item_pairs_used": total - n_query}


def _draw(pairs: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    if n <= len(pairs):
        return pairs.iloc[np.sort(rng.choice(len(pairs), n, replace=False))]
    extra = rng.choice(len(pairs), n - len(pairs), replace=True)
    return pairs.iloc[np.concatenate([np.arange(len(pairs)), np.sort(extra)])]
