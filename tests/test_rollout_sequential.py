"""The rollout's stop rule under repeated looks (tandem.release.sequential): the mixture likelihood ratio is the
integral it claims to be, false stops at equal CTRs stay below alpha over a week of hourly looks while the old
fixed-horizon z-test re-run at every look exceeds it, the power at a stated drop, stratification by stage, and the
always-valid p-value kept in the state only ever decreasing."""

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from tandem.core.config import RunConfig
from tandem.core.config_release import RolloutConfig
from tandem.data.events import EVENT_COLUMNS
from tandem.release import rollout, sequential
from tandem.release.rollout import RolloutState

ALPHA, EXPERIMENTS = 0.05, 4000
MARGIN = 3 * math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)  # three Monte-Carlo standard errors at rate alpha


def test_log_lr_is_the_half_normal_mixture_of_normal_likelihood_ratios():
    theta = np.linspace(-0.2, 0, 400_001)
    for diff, var, tau in ((-0.004, 1e-5, 0.01), (0.002, 4e-6, 0.005), (-0.03, 2e-4, 0.02)):
        prior = 2 * np.exp(-(theta**2) / (2 * tau**2)) / (tau * math.sqrt(2 * math.pi))
        lr = np.exp((theta * diff - theta**2 / 2) / var)  # N(theta, var) against N(0, var) at the observed diff
        y = lr * prior
        integral = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(theta)))
        assert float(sequential.log_lr(diff, var, tau)) == pytest.approx(math.log(integral), abs=1e-4)
    assert float(sequential.p_value(0.01, 1e-5, 0.01)) == 1.0  # a better challenger is never evidence of a drop


@pytest.mark.parametrize("share", [5.0, 50.0])
def test_false_stops_under_a_week_of_hourly_looks_stay_below_alpha_where_the_naive_rule_exceeds_it(share):
    sim = sequential.simulate(
        0.05, 0.05, impressions_per_look=2000, share=share, looks=7 * 24, experiments=EXPERIMENTS, alpha=ALPHA, seed=7
    )
    assert sim["msprt_stop_rate"] <= ALPHA + MARGIN, sim
    assert sim["naive_stop_rate"] > ALPHA + MARGIN, sim  # the old rule: a z-test at every look
    assert abs(sim["naive_last_look_stop_rate"] - ALPHA) <= MARGIN, sim  # ...which is calibrated for one look only


def test_power_at_a_ten_percent_ctr_drop():
    """5.5 % -> 5.0 % CTR, 2000 impressions an hour, half to the challenger: stopped within the week, in a day or so."""
    sim = sequential.simulate(0.055, 0.05, 2000, share=50, experiments=1000, alpha=ALPHA, seed=3)
    assert sim["msprt_stop_rate"] >= 0.95 and sim["msprt_median_stop_look"] <= 72, sim
    better = sequential.simulate(0.05, 0.055, 2000, share=50, experiments=1000, alpha=ALPHA, seed=3)
    assert better["msprt_stop_rate"] <= ALPHA, better  # a better challenger is not stopped


def test_strata_keep_a_changed_share_and_a_ctr_cycle_from_biasing_the_difference():
    # stage 1: 10 % challenger at a 10 % CTR hour; stage 2: 50 % at a 2 % CTR hour; both arms equal within a stage
    strata = [(18000, 1800, 2000, 200), (10000, 200, 10000, 200)]
    pooled_diff, _ = sequential.difference(*(sum(s[i] for s in strata) for i in range(4)))
    assert pooled_diff < -0.01  # pooling the stages makes the challenger look 1.5 points worse...
    diff, var = sequential.combine((float(d), float(v)) for d, v in (sequential.difference(*s) for s in strata))
    assert diff == pytest.approx(0.0, abs=1e-12) and var > 0  # ...stage by stage, it is not
    assert sequential.combine([(0.0, 0.0)]) == (0.0, 0.0)


def test_stop_rule_combines_the_earlier_stages_and_keeps_the_lowest_p_value():
    cfg = RolloutConfig(min_impressions=500, max_ctr_drop=0.99)

    def c(n, k):
        return {"impressions": n, "clicks": k}

    stage = (c(20000, 2000), c(20000, 1840))  # 8 % lower: z = -2.7, yet not enough on its own
    alone = rollout.stop_rule(*stage, cfg)
    both = rollout.stop_rule(*stage, cfg, earlier=[stage, stage])
    assert alone["verdict"] == "ok" and both["verdict"] == "stop" and both["strata"] == 3
    assert rollout.stop_rule(c(5000, 500), c(5000, 500), cfg, p_floor=0.01)["verdict"] == "stop"
    thin = rollout.stop_rule(c(100, 10), c(100, 1), cfg, earlier=[stage, stage])  # this stage is too thin to judge
    assert thin["verdict"] == "stop" and thin["strata"] == 2  # but the experiment's evidence already says stop


def _events(experiment: str, ts, ctr: dict[str, float], n: int, tag: str) -> list[dict]:
    """n impressions split between the arms, the first ctr * n / 2 of each arm clicked (exact counts)."""
    rows = []
    for i in range(n):
        side = ("champion", "challenger")[i % 2]
        base = {"user_id": f"u{i}", "item_id": "i", "ts": ts, "query": "q", "arm": side, "experiment": experiment}
        rows.append(base | {"event": "impression", "request_id": f"{tag}-{i}", "position": 0})
        if i // 2 < ctr[side] * n / 2:
            rows.append(base | {"event": "click", "request_id": f"{tag}-{i}", "position": 0})
    return rows


def test_the_guard_stores_the_always_valid_p_value_and_it_never_rises(tmp_path):
    cfg = RunConfig(rollout=RolloutConfig(min_impressions=200, max_ctr_drop=0.99))
    started = datetime.now(UTC) - timedelta(hours=1)
    history = [{"time": started.isoformat(), "action": "start", "from_stage": 0, "to_stage": 0}]
    rollout.save_state(tmp_path, RolloutState("exp", "s", "a", "b", (50.0, 100.0), history=history))
    now = pd.Timestamp.now(tz="UTC")
    worse = pd.DataFrame(
        _events("exp", now, {"champion": 0.10, "challenger": 0.0875}, 8000, "a"), columns=EVENT_COLUMNS
    )
    first = rollout.enforce(tmp_path, worse, cfg)
    p = first["stop_rule"]["p_value"]
    assert first["status"] == "running" and ALPHA < p < 1, first["stop_rule"]  # some evidence, not enough
    assert rollout.load_state(tmp_path).p_value == p and rollout.load_state(tmp_path).version == 1
    equal = pd.DataFrame(_events("exp", now, {"champion": 0.1, "challenger": 0.1}, 8000, "b"), columns=EVENT_COLUMNS)
    again = rollout.enforce(tmp_path, equal, cfg)  # this look alone would give p = 1
    assert again["stop_rule"]["p_value"] == p and rollout.load_state(tmp_path).version == 1  # kept, not rewritten
