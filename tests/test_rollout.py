"""Staged A/B rollout: bucketing, the state file, the CTR stop rule, the alias lifecycle on Milvus Lite and on a
Milvus server, the CLI and what stages.promote does after the gate."""

import json
import math
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tandem.core import atomic
from tandem.core.config import RunConfig
from tandem.core.config_release import IndexConfig, RolloutConfig
from tandem.data.events import EVENT_COLUMNS
from tandem.release import rollout
from tandem.release.index import ItemIndex
from tandem.release.rollout import RolloutRefused, RolloutState, arm, bucket

CHAMPION, CHALLENGER = "tandem_a", "tandem_b"
# a fixed salt keeps the simulated traffic (hence the verdicts) the same in every run
CFG = RunConfig(index=IndexConfig(index_type="FLAT"), rollout=RolloutConfig(min_impressions=200, salt="test"))
USERS = [f"u{n}" for n in range(20_000)]


def state_at(stage: int, salt: str = "s", status: str = "running") -> RolloutState:
    return RolloutState("exp", salt, CHAMPION, CHALLENGER, (5.0, 25.0, 50.0, 100.0), stage, status)


def served(state: RolloutState, ctr: dict[str, float], n_users: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Events as the search service logs them: users routed by `arm`, one impression each, a click with the arm's
    probability, stamped now (i.e. inside the current stage)."""
    rng = np.random.default_rng(seed)
    rows, now = [], pd.Timestamp.now(tz="UTC")
    for n in range(n_users):
        user = f"{seed}-{n}"
        side = arm(state, user)
        base = {"user_id": user, "item_id": "i1", "ts": now, "query": "q", "arm": side, "experiment": state.experiment}
        rows.append(base | {"event": "impression", "request_id": f"r{n}", "position": 0})
        if rng.random() < ctr[side]:
            rows.append(base | {"event": "click", "request_id": f"r{n}", "position": 0})
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS))


def counts(impressions: int, clicks: int) -> dict:
    return {"impressions": impressions, "clicks": clicks, "ctr": clicks / impressions}


# ---------------------------------------------------------------------------------------- bucketing
def test_bucket_is_deterministic_in_range_and_salted():
    a = [bucket(u, "exp1") for u in USERS]
    assert a == [bucket(u, "exp1") for u in USERS]
    assert 0 <= min(a) and max(a) < 100
    b = [bucket(u, "exp2") for u in USERS]
    moved = np.mean([(x < 25) != (y < 25) for x, y in zip(a, b)])
    assert abs(moved - 2 * 0.25 * 0.75) < 0.03  # independent hashes: P(arm differs) = 2 p (1 - p)


def test_share_matches_each_stage_and_assignment_is_monotone():
    previous: set[str] = set()
    for stage, share in enumerate((5.0, 25.0, 50.0)):
        inside = {u for u in USERS if arm(state_at(stage), u) == "challenger"}
        p = share / 100
        assert abs(len(inside) / len(USERS) - p) <= 4 * math.sqrt(p * (1 - p) / len(USERS))
        assert previous <= inside  # a challenger user stays a challenger user as the share grows
        previous = inside
    assert all(arm(state_at(3), u) == "challenger" for u in USERS[:500])
    for done in ("completed", "aborted", "rolled_back"):
        assert state_at(2, status=done).share == 0 and arm(state_at(2, status=done), "u1") == "champion"
    assert arm(None, "u1") == "champion"


# ---------------------------------------------------------------------------------------- state file
def test_state_round_trips_and_is_replaced_atomically(tmp_path, monkeypatch):
    assert rollout.load_state(tmp_path) is None
    state = replace(state_at(1), history=[{"time": "t", "action": "start", "from_stage": 0, "to_stage": 0}])
    path = rollout.save_state(tmp_path, state)
    assert rollout.load_state(tmp_path) == state and json.loads(path.read_text())["stage"] == 1

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        rollout.save_state(tmp_path, replace(state, stage=2))
    assert rollout.load_state(tmp_path) == state  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left behind
    path.write_text("{not json")
    with pytest.raises(ValueError, match="state.json"):
        rollout.load_state(tmp_path)


def test_config_validation_names_the_field():
    for stages in ((5, 25, 50), (25, 5, 100), (0, 50, 100), (50, 50, 100), (10, 120)):
        with pytest.raises(ValueError, match="rollout.stages"):
            RolloutConfig(stages=stages)
    with pytest.raises(ValueError, match="rollout.alpha"):
        RolloutConfig(alpha=1.5)
    with pytest.raises(ValueError, match="rollout.min_impressions"):
        RolloutConfig(min_impressions=0)


# ---------------------------------------------------------------------------------------- stop rule
def test_stop_rule_fires_on_a_clearly_worse_challenger_and_not_on_equal_ctrs():
    cfg = RolloutConfig(min_impressions=500)
    assert rollout.stop_rule(counts(2000, 200), counts(2000, 120), cfg)["verdict"] == "stop"
    assert rollout.stop_rule(counts(2000, 200), counts(2000, 200), cfg)["verdict"] == "ok"
    assert rollout.stop_rule(counts(2000, 200), counts(2000, 260), cfg)["verdict"] == "ok"  # better is fine
    assert rollout.stop_rule(counts(400, 40), counts(400, 0), cfg)["verdict"] == "hold"  # too few impressions
    # 17 % lower but within noise at 600 impressions each: hold for more traffic, do not stop
    unsure = rollout.stop_rule(counts(600, 60), counts(600, 50), cfg)
    assert unsure["verdict"] == "hold" and unsure["p_value"] > cfg.alpha and unsure["relative_drop"] > 0.1


def test_stop_rule_z_test_matches_pearson_chi_square_and_its_p_value_is_never_below_the_one_look_one():
    stats = pytest.importorskip("scipy.stats")
    for n0, c0, n1, c1 in ((2000, 200, 1800, 150), (900, 45, 1100, 70), (5000, 400, 5000, 330)):
        got = rollout.stop_rule(counts(n0, c0), counts(n1, c1), RolloutConfig(min_impressions=1))
        table = [[c0, n0 - c0], [c1, n1 - c1]]
        chi2, p_two, _, _ = stats.chi2_contingency(table, correction=False)
        assert got["z"] ** 2 == pytest.approx(chi2)
        one_sided = p_two / 2 if got["z"] < 0 else 1 - p_two / 2
        assert got["fixed_p_value"] == pytest.approx(one_sided)  # shown for reference: valid for one look only
        assert got["p_value"] >= got["fixed_p_value"]  # the always-valid p-value pays for the looks


def test_served_events_give_ctr_per_arm_of_the_experiment_only():
    events = served(state_at(2), {"champion": 0.10, "challenger": 0.05})
    other = served(replace(state_at(2), experiment="older"), {"champion": 1.0, "challenger": 1.0}, seed=1)
    c = rollout.arm_counts(pd.concat([events, other]), "exp")
    for side in rollout.ARMS:
        mine = events[events["arm"] == side]
        assert c[side]["impressions"] == (mine["event"] == "impression").sum() > 0
        assert c[side]["clicks"] == (mine["event"] == "click").sum()
    assert c["challenger"]["ctr"] < c["champion"]["ctr"]
    later = datetime.now(UTC).replace(year=2100)
    assert rollout.arm_counts(events, "exp", since=later)["champion"]["impressions"] == 0


# ---------------------------------------------------------------------------------------- lifecycle on Milvus
@pytest.fixture(scope="module", params=["lite", "milvus-server"])
def shared_index(request, tmp_path_factory):
    """One Milvus Lite database, or the session's Milvus 2.3 server (tests/milvus_server.py), with two tiny
    run collections; each test resets the aliases."""
    rng = np.random.default_rng(0)
    index_cfg = CFG.index
    if request.param == "milvus-server":
        from milvus_server import wipe

        wipe(uri := request.getfixturevalue("milvus_server"))
        index_cfg = replace(index_cfg, milvus_uri=uri)
    with ItemIndex(index_cfg, tmp_path_factory.mktemp("milvus")) as idx:
        for name in (CHAMPION, CHALLENGER):
            idx.write(name, [f"i{n}" for n in range(20)], rng.normal(size=(20, 8)).astype(np.float32))
        yield idx


@pytest.fixture
def index(shared_index):
    if shared_index.live() != CHAMPION:
        shared_index.promote(CHAMPION)
    if CFG.index.challenger_alias in shared_index.aliases():
        shared_index.drop_alias(CFG.index.challenger_alias)
    return shared_index


def test_stages_advance_to_completion_then_roll_back(tmp_path, index):
    state = rollout.start(tmp_path, CHAMPION, CHALLENGER, CFG, index=index)
    assert state.share == 5 and state.salt == "test" and state.experiment.startswith(CHALLENGER)
    assert index.aliases()[CFG.index.challenger_alias] == CHALLENGER and index.live() == CHAMPION
    assert rollout.start(tmp_path, CHAMPION, CHALLENGER, CFG, index=index) == state  # idempotent
    good = {"champion": 0.10, "challenger": 0.12}
    for seed, share in enumerate((25, 50, 100)):
        state = rollout.advance(tmp_path, served(state, good, n_users=8000, seed=seed), CFG, index=index)
        assert state.status == "running" and state.share == share and index.live() == CHAMPION
    # at 100 % nobody is left in the champion arm: it is judged against the champion's earlier stages
    everything = pd.concat([served(state_at(s), good, seed=s) for s in range(3)])
    everything["experiment"] = state.experiment
    report = rollout.status(tmp_path, everything, CFG)
    assert report["arms"]["champion"]["window"] == "earlier stages" and report["can_advance"]
    state = rollout.advance(tmp_path, everything, CFG, index=index)
    assert state.status == "completed" and index.live() == CHALLENGER
    assert CFG.index.challenger_alias not in index.aliases()
    assert [h["action"] for h in state.history] == ["start", "advance", "advance", "advance", "complete"]
    assert all(h["stop_rule"]["verdict"] == "ok" for h in state.history[1:])
    with pytest.raises(RolloutRefused, match="completed"):
        rollout.advance(tmp_path, everything, CFG, index=index)
    state = rollout.rollback(tmp_path, CFG, index=index)
    assert state.status == "rolled_back" and index.live() == CHAMPION
    assert rollout.load_state(tmp_path) == state


def test_abort_leaves_live_unchanged(tmp_path, index):
    rollout.start(tmp_path, CHAMPION, CHALLENGER, CFG, index=index)
    state = rollout.abort(tmp_path, CFG, reason="manual", index=index)
    assert state.status == "aborted" and state.history[-1]["reason"] == "manual"
    assert index.live() == CHAMPION and CFG.index.challenger_alias not in index.aliases()
    assert arm(rollout.load_state(tmp_path), "u1") == "champion"
    index.set_alias(CFG.index.challenger_alias, CHALLENGER)  # as if the drop had failed: aborting again cleans up
    again = rollout.abort(tmp_path, CFG, index=index)
    assert again.history == state.history and CFG.index.challenger_alias not in index.aliases()
    with pytest.raises(RolloutRefused, match="aborted"):
        rollout.rollback(tmp_path, CFG, index=index)
    with pytest.raises(ValueError, match="tandem_zzz"):
        rollout.start(tmp_path, CHAMPION, "tandem_zzz", CFG, index=index)


def test_a_worse_challenger_is_stopped_and_thin_evidence_holds(tmp_path, index):
    state = rollout.start(tmp_path, CHAMPION, CHALLENGER, CFG, index=index)
    state = rollout.advance(tmp_path, None, CFG, force=True, index=index)  # 25 %: both arms get traffic
    with pytest.raises(RolloutRefused, match="each arm needs 200"):
        rollout.advance(tmp_path, served(state, {"champion": 0.1, "challenger": 0.1}, n_users=100), CFG, index=index)
    worse = served(state, {"champion": 0.20, "challenger": 0.05}, n_users=4000)
    assert rollout.status(tmp_path, worse, CFG)["stop_rule"]["verdict"] == "stop"
    for force in (False, True):
        with pytest.raises(RolloutRefused, match="stop rule fired"):
            rollout.advance(tmp_path, worse, CFG, force=force, index=index)
    report = rollout.enforce(tmp_path, worse, CFG, index=index)
    assert report["status"] == "aborted" and index.live() == CHAMPION
    assert rollout.load_state(tmp_path).history[-1]["reason"].startswith("stop rule")


# ---------------------------------------------------------------------------------------- CLI and stages.promote
def _two_collections(workdir, live: str | None = CHAMPION, names=(CHAMPION, CHALLENGER)) -> None:
    rng = np.random.default_rng(1)
    with ItemIndex(CFG.index, workdir) as idx:
        for name in names:
            idx.write(name, [f"i{n}" for n in range(10)], rng.normal(size=(10, 8)).astype(np.float32))
        if live:
            idx.promote(live)


def _live(workdir) -> str | None:
    with ItemIndex(CFG.index, workdir) as idx:
        return idx.live()


def test_cli_round_trip(tmp_path):
    from tandem.cli import app

    _two_collections(tmp_path)
    (tmp_path / "cfg.yaml").write_text("index: {index_type: FLAT}\nrollout: {min_impressions: 200}\n")
    runner = CliRunner()

    def call(*args):
        return runner.invoke(
            app, ["rollout", *args, "--workdir", str(tmp_path), "--config", str(tmp_path / "cfg.yaml")]
        )

    assert "no rollout" in call("status").output
    started = call("start", "--challenger", "b")
    assert started.exit_code == 0 and "challenger share 5 %" in started.output
    refused = call("advance")
    assert refused.exit_code == 1 and "not enough evidence" in refused.output
    assert call("rollback").exit_code == 1
    state = rollout.load_state(tmp_path)
    parts = tmp_path / "serving" / "events"
    parts.mkdir(parents=True)
    served(state, {"champion": 0.3, "challenger": 0.05}, n_users=8000).to_parquet(parts / "part-0.parquet")
    shown = call("status")
    assert "stop rule: stop" in shown.output and "impressions" in shown.output
    assert call("advance", "--force").exit_code == 1  # --force never overrides a fired stop rule
    assert json.loads(call("status", "--json").output)["stop_rule"]["verdict"] == "stop"
    assert call("abort", "--reason", "ctr").exit_code == 0 and _live(tmp_path) == CHAMPION
    assert "(aborted)" in call("status").output
    # a fresh experiment gets a fresh salt (the finished one is archived); with no events, --force completes it
    aborted = rollout.load_state(tmp_path)
    assert call("start", "--challenger", "b").exit_code == 0
    assert rollout.load_state(tmp_path).salt != aborted.salt
    archived = json.loads((tmp_path / "rollout" / "archive" / f"{aborted.experiment}.json").read_text())
    assert archived["status"] == "aborted" and archived["history"][-1]["reason"] == "ctr"
    for _ in range(4):
        assert call("advance", "--force").exit_code == 0
    assert rollout.load_state(tmp_path).status == "completed" and _live(tmp_path) == CHALLENGER
    back = call("rollback")
    assert back.exit_code == 0 and _live(tmp_path) == CHAMPION and "tandem_a is live" in back.output


def _gated(workdir, run_id: str, decision: str):
    from tandem.pipeline.stages import RunPaths

    run = RunPaths.of(workdir, run_id)
    run.save("gate", {"decision": decision})
    return run


def test_promote_goes_live_first_then_rolls_out(tmp_path):
    from tandem.pipeline import stages

    _two_collections(tmp_path, live=None, names=(CHAMPION, CHALLENGER, "tandem_c"))
    first = stages.promote(_gated(tmp_path, "a", "promote"), CFG)
    assert first["live_collection"] == CHAMPION and first["previous"] is None and first["rollout"] is None
    assert stages.promote(_gated(tmp_path, "b", "reject"), CFG)["rollout"] is None
    assert _live(tmp_path) == CHAMPION and rollout.load_state(tmp_path) is None
    second = stages.promote(_gated(tmp_path, "b", "promote"), CFG)
    assert second["live_collection"] == CHAMPION and second["rollout"]["challenger"] == CHALLENGER
    assert rollout.load_state(tmp_path).status == "running"
    assert stages.promote(_gated(tmp_path, "b", "promote"), CFG)["rollout"] == second["rollout"]  # idempotent
    later = stages.promote(_gated(tmp_path, "c", "promote"), CFG)  # a running experiment is not restarted
    assert later["rollout"] is None and "tandem_c waits" in later["note"]
    assert rollout.load_state(tmp_path).challenger == CHALLENGER and _live(tmp_path) == CHAMPION


def test_promote_switches_live_directly_when_rollout_is_disabled(tmp_path):
    from tandem.pipeline import stages

    _two_collections(tmp_path)
    direct = replace(CFG, rollout=replace(CFG.rollout, enabled=False))
    summary = stages.promote(_gated(tmp_path, "b", "promote"), direct)
    assert summary["live_collection"] == CHALLENGER and summary["previous"] == CHAMPION
    assert summary["rollout"] is None and rollout.load_state(tmp_path) is None
