"""Training pairs from behaviour logs: NoteLLM-2 co-occurrence in DuckDB, and the time split.

s(A->B) = sum over users u who viewed A and subsequently (within `window_hours`) clicked B
of 1/N_u, N_u = number of distinct items u clicked. Per item, scores outside [low, up]
are outliers and dropped; the top t remain. Ties break on related_item_id so runs repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from tandem.config import ContractConfig, PairsConfig, SplitConfig

PAIR_COLUMNS = ["item_id", "related_item_id", "score", "support"]


def mine_pairs(
    logs: pd.DataFrame, cfg: PairsConfig = PairsConfig(), contract: ContractConfig = ContractConfig()
) -> pd.DataFrame:
    """Co-occurrence pairs of one log window: item_id, related_item_id, score, support."""
    con = duckdb.connect()
    con.register("logs", logs)
    window_us = int(cfg.window_hours * 3600 * 1e6)
    pairs = con.execute(
        f"""
        WITH viewed AS (
            SELECT DISTINCT user_id, item_id, ts FROM logs WHERE event IN (SELECT unnest($view))
        ), clicked AS (
            SELECT DISTINCT user_id, item_id, ts FROM logs WHERE event IN (SELECT unnest($click))
        ), n_u AS (
            SELECT user_id, count(DISTINCT item_id) AS n FROM clicked GROUP BY user_id
        ), user_pairs AS (   -- a user counts once per (A, B), however often it happened
            SELECT DISTINCT v.user_id, v.item_id AS a, c.item_id AS b
            FROM viewed v JOIN clicked c
              ON v.user_id = c.user_id AND c.ts > v.ts AND c.ts <= v.ts + to_microseconds({window_us})
            WHERE v.item_id <> c.item_id
        ), scored AS (
            SELECT a AS item_id, b AS related_item_id, sum(1.0 / n_u.n) AS score, count(*) AS support
            FROM user_pairs JOIN n_u USING (user_id) GROUP BY a, b
        ), ranked AS (
            SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY score DESC, related_item_id) AS rank
            FROM scored WHERE score >= $low AND score <= $up
        )
        SELECT item_id, related_item_id, score, support FROM ranked
        WHERE rank <= $top_t ORDER BY item_id, rank
        """,
        {
            "view": list(contract.view_events),
            "click": list(contract.click_events),
            "low": cfg.low,
            "up": cfg.up,
            "top_t": cfg.top_t,
        },
    ).df()
    con.close()
    pairs["support"] = pairs["support"].astype("int64")
    return pairs[PAIR_COLUMNS]


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp  # train logs are before it, test logs at or after it
    train_logs: pd.DataFrame

    def all(self) -> pd.DataFrame:
        """All pairs with a `split` column."""
        parts = [
            df.assign(split=name) for name, df in (("train", self.train), ("valid", self.valid), ("test", self.test))
        ]
        return pd.concat(parts, ignore_index=True)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def split_pairs(
    logs: pd.DataFrame,
    pairs_cfg: PairsConfig = PairsConfig(),
    split: SplitConfig = SplitConfig(),
    contract: ContractConfig = ContractConfig(),
) -> Split:
    """Mine the earlier and the later part of the log separately (no view/click crosses the cutoff),
    hold out a validation share of the training pairs, and drop test pairs seen in training."""
    if logs.empty:
        raise ValueError("no usable log rows left after loading; check the quarantine file for the reasons")
    t0, t1 = logs["ts"].min(), logs["ts"].max()
    cutoff = t0 + (t1 - t0) * (1 - split.test_fraction)
    early, late = logs[logs["ts"] < cutoff], logs[logs["ts"] >= cutoff]
    train = mine_pairs(early, pairs_cfg, contract)
    test = mine_pairs(late, pairs_cfg, contract)
    seen = train.set_index(["item_id", "related_item_id"]).index
    test = test[~test.set_index(["item_id", "related_item_id"]).index.isin(seen)].reset_index(drop=True)
    held = np.random.default_rng(split.seed).random(len(train)) < split.valid_fraction
    return Split(
        train=train[~held].reset_index(drop=True),
        valid=train[held].reset_index(drop=True),
        test=test,
        cutoff=cutoff,
        train_logs=early,
    )


def popularity(logs: pd.DataFrame, contract: ContractConfig = ContractConfig()) -> pd.Series:
    """Distinct users who clicked each item: the popularity baseline's score, by item_id."""
    clicks = logs[logs["event"].isin(contract.click_events)]
    return clicks.groupby("item_id")["user_id"].nunique().sort_values(ascending=False)
