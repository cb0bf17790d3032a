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
any order) and score = units / 1e12 as float64. DuckDB, Spark (`tandem.pairs_spark`) and the
pandas reference (`tandem.pairs_reference`) therefore return bit-identical scores; the
rounding error is at most support * 5e-13 of the true rational sum. Timestamps are compared
as integer microseconds since the epoch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from tandem.config import ContractConfig, PairsConfig, SplitConfig
from tandem.contract import log_files, reader_sql
from tandem.engines import ENGINES  # one list for the library and the command line

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


def mine_pairs(
    logs: LogsInput,
    cfg: PairsConfig = PairsConfig(),
    contract: ContractConfig = ContractConfig(),
    engine: str = "duckdb",
    out: str | Path | None = None,
) -> pd.DataFrame:
    """Co-occurrence pairs: item_id, related_item_id, score (float64), support (int64; distinct users).

    `logs` is a normalised DataFrame or normalised Parquet (a path, a folder or a list of paths,
    as written by the load stage). With `out`, the pairs are also written there as Parquet."""
    if engine == "spark":
        from tandem.pairs_spark import mine_pairs_spark

        return mine_pairs_spark(logs, cfg, contract, out=out)
    if engine != "duckdb":
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    return _mine_duckdb(logs, cfg, contract, out)


def _user_pairs_sql(cfg: PairsConfig) -> str:
    """CTEs ending in user_pairs(user_id, a, b): the distinct (user, A, B) facts of the config."""
    if cfg.mode == "basket":
        return """
        user_pairs AS (
            SELECT DISTINCT c1.user_id, c1.item_id AS a, c2.item_id AS b
            FROM clicked c1 JOIN clicked c2 ON c1.user_id = c2.user_id AND c1.t = c2.t
            WHERE c1.item_id <> c2.item_id
        )"""
    if cfg.follow == "window":
        return f"""
        user_pairs AS (
            SELECT DISTINCT v.user_id, v.item_id AS a, c.item_id AS b
            FROM viewed v JOIN clicked c
              ON v.user_id = c.user_id AND c.t > v.t AND c.t <= v.t + {window_us(cfg)}
            WHERE v.item_id <> c.item_id
        )"""
    if cfg.follow == "session":
        return f"""
        times AS (SELECT DISTINCT user_id, t FROM ev),
        gaps AS (
            SELECT user_id, t,
                   CASE WHEN t - lag(t) OVER (PARTITION BY user_id ORDER BY t) <= {gap_us(cfg)} THEN 0 ELSE 1 END
                   AS new
            FROM times
        ), sess AS (
            SELECT user_id, t, sum(new) OVER (PARTITION BY user_id ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid
            FROM gaps
        ), vs AS (SELECT * FROM viewed JOIN sess USING (user_id, t)),
        cs AS (SELECT * FROM clicked JOIN sess USING (user_id, t)),
        user_pairs AS (
            SELECT DISTINCT v.user_id, v.item_id AS a, c.item_id AS b
            FROM vs v JOIN cs c ON v.user_id = c.user_id AND v.sid = c.sid AND c.t > v.t
            WHERE v.item_id <> c.item_id
        )"""
    # next_k: lt = events strictly before t, le = events at or before t (per user)
    return f"""
        pos AS (
            SELECT DISTINCT user_id, t, lt, le FROM (
                SELECT user_id, t, rank() OVER w - 1 AS lt, count(*) OVER w AS le FROM ev
                WINDOW w AS (PARTITION BY user_id ORDER BY t RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            )
        ), vp AS (SELECT * FROM viewed JOIN pos USING (user_id, t)),
        cp AS (SELECT * FROM clicked JOIN pos USING (user_id, t)),
        user_pairs AS (
            SELECT DISTINCT v.user_id, v.item_id AS a, c.item_id AS b
            FROM vp v JOIN cp c ON v.user_id = c.user_id AND c.t > v.t AND c.lt < v.le + {cfg.next_k}
            WHERE v.item_id <> c.item_id
        )"""


# From user_pairs(user_id, a, b) and n_u(user_id, n) to the final pairs (integer fixed-point sums).
SCORE_SQL = f"""
                scored AS (
                    SELECT a AS item_id, b AS related_item_id,
                           CAST(sum(({SCALE} + n // 2) // n) AS BIGINT) AS units, count(*) AS support
                    FROM user_pairs JOIN n_u USING (user_id) GROUP BY a, b HAVING count(*) >= $min_support
                ), ranked AS (
                    SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY score DESC, related_item_id) AS rank
                    FROM (SELECT item_id, related_item_id, CAST(units AS DOUBLE) / {float(SCALE)} AS score,
                                 CAST(support AS BIGINT) AS support FROM scored)
                    WHERE score >= $low AND score <= $up
                )
                SELECT item_id, related_item_id, score, support FROM ranked
                WHERE rank <= $top_t ORDER BY item_id, rank
"""


def score_params(cfg: PairsConfig) -> dict:
    return {"min_support": cfg.min_support, "low": cfg.low, "up": cfg.up, "top_t": cfg.top_t}


def duckdb_connect(cfg: PairsConfig, tmp: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the memory limit and spill folder of `cfg`."""
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.execute(f"SET memory_limit='{cfg.duckdb_memory_limit}'")
    spill = cfg.duckdb_temp_directory or tmp
    con.execute("SET temp_directory='" + str(spill).replace("'", "''") + "'")
    con.execute("SET preserve_insertion_order=false")
    return con


def log_source(con: duckdb.DuckDBPyConnection, logs: LogsInput) -> str:
    """The SQL table expression for normalised logs: a registered DataFrame or Parquet read in place."""
    if isinstance(logs, pd.DataFrame):
        con.register("logs_df", logs)
        return "logs_df"
    return reader_sql(parquet_files(logs), "parquet")


def _mine_duckdb(logs: LogsInput, cfg: PairsConfig, contract: ContractConfig, out) -> pd.DataFrame:
    # Parquet is scanned by DuckDB itself and every intermediate (the view x click join included)
    # stays inside DuckDB, which spills to temp_directory beyond memory_limit.
    with tempfile.TemporaryDirectory(prefix="tandem-duckdb-") as tmp:
        con = duckdb_connect(cfg, tmp)
        try:
            source = log_source(con, logs)
            con.execute(
                f"""
                CREATE TEMP TABLE result AS
                WITH ev AS (
                    SELECT DISTINCT user_id, item_id, event, epoch_us(CAST(ts AS TIMESTAMPTZ)) AS t
                    FROM {source} WHERE event IN (SELECT unnest($events))
                ), viewed AS (
                    SELECT DISTINCT user_id, item_id, t FROM ev WHERE event IN (SELECT unnest($view))
                ), clicked AS (
                    SELECT DISTINCT user_id, item_id, t FROM ev WHERE event IN (SELECT unnest($click))
                ), n_u AS (
                    SELECT user_id, count(DISTINCT item_id) AS n FROM clicked GROUP BY user_id
                ), {_user_pairs_sql(cfg)},
                {SCORE_SQL}
                """,
                {
                    "events": sorted({*contract.view_events, *contract.click_events}),
                    "view": list(contract.view_events),
                    "click": list(contract.click_events),
                }
                | score_params(cfg),
            )
            return collect(con, out)
        finally:
            con.close()


def collect(con: duckdb.DuckDBPyConnection, out: str | Path | None) -> pd.DataFrame:
    """Table `result` in the pair order, written to `out` (Parquet) when given, as a finalized frame."""
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        target = str(out).replace("'", "''")
        con.execute(f"COPY (SELECT * FROM result ORDER BY {ORDER}) TO '{target}' (FORMAT parquet)")
    return finalize(con.sql(f"SELECT * FROM result ORDER BY {ORDER}").df())


def finalize(pairs: pd.DataFrame) -> pd.DataFrame:
    """The pair table's dtypes and order, the same for every engine."""
    pairs = pairs[PAIR_COLUMNS].copy()
    pairs["item_id"] = pairs["item_id"].astype(str)
    pairs["related_item_id"] = pairs["related_item_id"].astype(str)
    pairs["score"] = pairs["score"].astype("float64")
    pairs["support"] = pairs["support"].astype("int64")
    return pairs.reset_index(drop=True)


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
