"""Incremental daily co-occurrence mining (DuckDB), for follow='window' and mode='basket'.

s(A->B) = sum_u 1/N_u cannot be updated by adding a day's score delta: when u clicks a new
item, N_u changes and so does u's share of EVERY pair u ever contributed to. What does add up
day by day are the facts behind the scores:

- facts/day=D.parquet:  distinct (user_id, a, b) whose click of b falls on day D (UTC). In
  window mode the view of a may lie up to window_hours before, so the logs given for day D
  must also cover [D - window_hours, D) (views only); in basket mode a basket is one
  timestamp, hence one day.
- clicks/day=D.parquet: distinct (user_id, item_id) clicked on day D.

`update_day` recomputes only day D's two files from the logs given (replacing them: rerunning
a day is idempotent); `scores` then aggregates all days: distinct facts, N_u = distinct items
over all clicks, and the same integer fixed-point sum as `tandem.pairs` - a scan and a
group-by over compact facts, no view x click join over history. The result equals a full
recompute over all days (tested). follow='session' and 'next_k' are not incremental here: a
session, or a user's next k events, can reach back arbitrarily far across day boundaries, so
a day's facts would depend on an unbounded look-back; mine those over the full window.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig
from tandem.pairs.mine import SCORE_SQL, _user_pairs_sql, collect, duckdb_connect, log_source, score_params


def _check(cfg: PairsConfig) -> None:
    if cfg.mode == "sequential" and cfg.follow != "window":
        raise ValueError(
            f"incremental mining supports follow='window' and mode='basket', not follow={cfg.follow!r}: "
            "its look-back across days is unbounded; mine the full window with mine_pairs instead"
        )


def _day_bounds(day: date | str) -> tuple[int, int]:
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    return int(start.timestamp() * 1_000_000), int(end.timestamp() * 1_000_000)


def update_day(
    state: str | Path,
    logs,
    day: date | str,
    cfg: PairsConfig = PairsConfig(),
    contract: ContractConfig = ContractConfig(),
) -> dict[str, int]:
    """(Re)compute day `day`'s facts and clicks from `logs` (DataFrame or Parquet covering the day
    and, in window mode, the window_hours before it); returns their row counts."""
    _check(cfg)
    day = date.fromisoformat(day) if isinstance(day, str) else day
    start, end = _day_bounds(day)
    state = Path(state)
    for sub in ("facts", "clicks"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tandem-duckdb-") as tmp:
        con = duckdb_connect(cfg, tmp)
        try:
            source = log_source(con, logs)
            params = {
                "events": sorted({*contract.view_events, *contract.click_events}),
                "view": list(contract.view_events),
                "click": list(contract.click_events),
            }
            ctes = f"""
                WITH ev AS (
                    SELECT DISTINCT user_id, item_id, event, epoch_us(CAST(ts AS TIMESTAMPTZ)) AS t
                    FROM {source} WHERE event IN (SELECT unnest($events)) AND epoch_us(CAST(ts AS TIMESTAMPTZ)) < {end}
                ), viewed AS (
                    SELECT DISTINCT user_id, item_id, t FROM ev WHERE event IN (SELECT unnest($view))
                ), clicked AS (   -- only the day's clicks: facts are keyed by the click's day
                    SELECT DISTINCT user_id, item_id, t FROM ev
                    WHERE event IN (SELECT unnest($click)) AND t >= {start}
                ), {_user_pairs_sql(cfg)}
            """
            counts = {}
            for name, select in (
                ("facts", "SELECT user_id, a, b FROM user_pairs"),
                ("clicks", "SELECT DISTINCT user_id, item_id FROM clicked"),
            ):
                target = state / name / f"day={day.isoformat()}.parquet"
                tmp_target = target.with_suffix(".tmp")
                quoted = str(tmp_target).replace("'", "''")
                con.execute(f"COPY ({ctes} {select} ORDER BY ALL) TO '{quoted}' (FORMAT parquet)", params)
                tmp_target.replace(target)  # atomic: a rerun replaces the day, never appends
                counts[name] = con.execute("SELECT count(*) FROM read_parquet(?)", [str(target)]).fetchone()[0]
        finally:
            con.close()
    return counts


def scores(state: str | Path, cfg: PairsConfig = PairsConfig(), out: str | Path | None = None) -> pd.DataFrame:
    """The pairs over every day in `state`: the same table as `mine_pairs` on all those days."""
    _check(cfg)
    state = Path(state)
    facts, clicks = sorted((state / "facts").glob("day=*.parquet")), sorted((state / "clicks").glob("day=*.parquet"))
    if not facts:
        raise ValueError(f"no daily facts under {state}; run update_day first")

    def files(paths):
        return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"

    with tempfile.TemporaryDirectory(prefix="tandem-duckdb-") as tmp:
        con = duckdb_connect(cfg, tmp)
        try:
            con.execute(
                f"""
                CREATE TEMP TABLE result AS
                WITH user_pairs AS (SELECT DISTINCT user_id, a, b FROM read_parquet({files(facts)})),
                n_u AS (
                    SELECT user_id, count(DISTINCT item_id) AS n FROM read_parquet({files(clicks)}) GROUP BY user_id
                ),
                {SCORE_SQL}
                """,
                score_params(cfg),
            )
            return collect(con, out)
        finally:
            con.close()
