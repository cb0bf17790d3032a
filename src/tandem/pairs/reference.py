"""Reference co-occurrence mining in plain pandas + Python loops: FOR TESTS AND BENCHMARKS ONLY.

It follows the semantics documented in `tandem.pairs` as literally as possible (one user at a
time, every view against every click, the definitions spelt out), with no attempt at speed
or memory efficiency. The DuckDB and Spark engines must return exactly what this returns.
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig
from tandem.pairs.core import PAIR_COLUMNS, SCALE, finalize, gap_us, parquet_files, window_us


def _micros(ts: pd.Series) -> pd.Series:
    ts = pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]")
    return ts.astype("int64") // 1000


def _sessions(times: list[int], gap: int) -> dict[int, int]:
    """Session number of each distinct timestamp: a new session after a gap longer than `gap`."""
    sid, out, prev = 0, {}, None
    for t in sorted(set(times)):
        if prev is not None and t - prev > gap:
            sid += 1
        out[t] = sid
        prev = t
    return out


def _user_facts(events: pd.DataFrame, cfg: PairsConfig, contract: ContractConfig) -> set[tuple[str, str]]:
    """The (A, B) pairs one user contributes to."""
    views = [(r.item_id, r.t) for r in events.itertuples() if r.event in contract.view_events]
    clicks = [(r.item_id, r.t) for r in events.itertuples() if r.event in contract.click_events]
    all_times = list(events["t"])
    facts = set()
    if cfg.mode == "basket":
        for a, ta in clicks:
            for b, tb in clicks:
                if a != b and ta == tb:
                    facts.add((a, b))
        return facts
    session = _sessions(all_times, gap_us(cfg))
    for a, tv in views:
        for b, tc in clicks:
            if a == b or not tc > tv:
                continue
            if cfg.follow == "window":
                ok = tc <= tv + window_us(cfg)
            elif cfg.follow == "session":
                ok = session[tv] == session[tc]
            else:  # next_k: fewer than k of the user's events strictly between the view and the click
                ok = sum(1 for t in all_times if tv < t < tc) < cfg.next_k
            if ok:
                facts.add((a, b))
    return facts


def mine_pairs_reference(
    logs, cfg: PairsConfig = PairsConfig(), contract: ContractConfig = ContractConfig()
) -> pd.DataFrame:
    """Same inputs and output as `tandem.pairs.mine.mine_pairs`."""
    if not isinstance(logs, pd.DataFrame):
        logs = pd.concat([pd.read_parquet(f) for f in parquet_files(logs)], ignore_index=True)
    known = set(contract.view_events) | set(contract.click_events)
    ev = logs[logs["event"].isin(known)][["user_id", "item_id", "event"]].copy()
    ev["t"] = _micros(logs.loc[ev.index, "ts"])
    ev = ev.drop_duplicates()

    support: dict[tuple[str, str], int] = defaultdict(int)
    units: dict[tuple[str, str], int] = defaultdict(int)
    for _, events in ev.groupby("user_id", sort=True):
        n_u = events[events["event"].isin(contract.click_events)]["item_id"].nunique()
        for pair in _user_facts(events, cfg, contract):
            support[pair] += 1
            units[pair] += (SCALE + n_u // 2) // n_u  # round(1e12 / N_u) in integers

    rows = [
        (a, b, units[(a, b)] / float(SCALE), support[(a, b)])
        for (a, b) in support
        if support[(a, b)] >= cfg.min_support
    ]
    rows = [r for r in rows if cfg.low <= r[2] <= cfg.up]
    rows.sort(key=lambda r: (r[0], -r[2], r[1]))
    kept, count = [], defaultdict(int)
    for r in rows:
        if count[r[0]] < cfg.top_t:
            kept.append(r)
            count[r[0]] += 1
    return finalize(pd.DataFrame(kept, columns=PAIR_COLUMNS))
