"""Training pairs from behaviour logs: NoteLLM-2 co-occurrence (DuckDB or Spark), and the time split.

s(A->B) = sum over users u in U(A->B) of 1/N_u, N_u = number of distinct items u clicked.
Per item, scores outside [low, up] are outliers and dropped; the top t remain, ties broken
on related_item_id (score desc, related_item_id asc) so runs repeat. Which events count as
"viewed" / "clicked" comes from ContractConfig; the other events are ignored.

U(A->B), by `PairsConfig` (A != B always; a user counts once per pair however often):
- mode='sequential', follow='window' (default): u viewed A at t and clicked B at t' with
  t < t' <= t + window_hours.
- follow='session': t < t' and both in the same session of u; sessions are the user's
  event timestamps split wherever two consecutive ones are more than session_gap_minutes
  apart (a gap of exactly session_gap_minutes stays in the session).
- follow='next_k': t < t' and fewer than next_k of u's events lie strictly between t and t'
  (u's events = distinct (item, event, ts) rows with a view or click event), i.e. the click
  is among the next k events, events sharing a timestamp counted in its favour.
- mode='basket' (co-purchase): A and B both clicked by u at the same timestamp (one basket =
  one (user, ts)), counted in both directions; `follow` is ignored.
min_support drops pairs with fewer distinct users before the outlier and top-t filters.

Exact, engine-independent scores: each user's share 1/N_u is rounded once to 12 decimals as
an integer, round(1e12 / N_u) = (10**12 + N_u // 2) // N_u; integers are summed exactly (in
any order) and score = units / 1e12 as float64. DuckDB, Spark (`tandem.pairs.spark`) and the
pandas reference (`tandem.pairs.reference`) therefore return bit-identical scores; the
rounding error is at most support * 5e-13 of the true rational sum. Timestamps are compared
as integer microseconds since the epoch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig
from tandem.data.contract import log_files

PAIR_COLUMNS = ["item_id", "related_item_id", "score", "support"]


SCALE = 10**12  # scores are sums of round(SCALE / N_u), exactly, then divided by SCALE


ORDER = "item_id, score DESC, related_item_id"  # the output order of every engine


LogsInput = pd.DataFrame | str | Path | list


def window_us(cfg: PairsConfig) -> int:
    return int(round(cfg.window_hours * 3600 * 1_000_000))


def gap_us(cfg: PairsConfig) -> int:
    return int(round(cfg.session_gap_minutes * 60 * 1_000_000))


def parquet_files(logs: str | Path | list) -> list[str]:
    """Normalised log Parquet: a file, a folder of files or a list of files."""
    files, fmt = log_files(logs)
    if fmt != "parquet":
        raise ValueError(f"logs {logs}: pair mining reads normalised Parquet (see `tandem pairs`), got {fmt}")
    return files


def finalize(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pair table's dtypes and order, the same for every engine."""
    pairs = pairs[PAIR_COLUMNS].copy()
    pairs["item_id"] = pairs["item_id"].astype(str)
    pairs["related_item_id"] = pairs["related_item_id"].astype(str)
    pairs["score"] = pairs["score"].astype("float64")
    pairs["support"] = pairs["support"].astype("int64")
    return pairs.reset_index(drop=True)


def popularity(logs: pd.DataFrame, contract: ContractConfig = ContractConfig()) -> pd.Series:
    """Distinct users who clicked each item: the popularity baseline's score, by item_id."""
    clicks = logs[logs["event"].isin(contract.click_events)]
    return clicks.groupby("item_id")["user_id"].nunique().sort_values(ascending=False)
