"""Co-occurrence mining: `mine_pairs` on DuckDB (the default engine) or Spark (`tandem.pairs.spark`).

The semantics are documented in `tandem.pairs.core`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig
from tandem.core.engines import ENGINES  # one list for the library and the command line
from tandem.data.contract import reader_sql
from tandem.pairs.core import ORDER, SCALE, LogsInput, finalize, gap_us, parquet_files, window_us


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
        from tandem.pairs.spark import mine_pairs_spark

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
