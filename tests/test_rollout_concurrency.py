"""The rollout's state under concurrent actions: the hourly guard (`enforce`) and a manual `advance` that completes
the rollout (moves the live alias) race; the lock and the version check keep the state and the alias consistent,
and an action interrupted between its alias move and its state write is finished by the next one."""

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from tandem.core.config import RunConfig
from tandem.core.config_release import IndexConfig, RolloutConfig
from tandem.data.events import EVENT_COLUMNS
from tandem.release import rollout
from tandem.release.rollout import RolloutRefused, RolloutState

CHAMPION, CHALLENGER = "tandem_a", "tandem_b"
CFG = RunConfig(index=IndexConfig(index_type="FLAT"), rollout=RolloutConfig(min_impressions=200, salt="t"))


class FakeIndex:
    """The ItemIndex calls a rollout makes, in memory; promote is slow (a Milvus round trip) to widen races."""

    uri = "memory"

    def __init__(self, delay: float = 0.03):
        self.alias = {"live": CHAMPION}
        self.previous: list[str] = []
        self.delay = delay
        self.client = type("Client", (), {"has_collection": staticmethod(lambda name: True)})()

    def live(self):
        return self.alias.get("live")

    def aliases(self):
        return dict(self.alias)

    def set_alias(self, alias, name):
        self.alias[alias] = name

    def drop_alias(self, alias):
        self.alias.pop(alias, None)

    def promote(self, name):
        time.sleep(self.delay)
        self.previous.append(self.alias["live"])
        self.alias["live"] = name
        return self.previous[-1]

    def rollback(self):
        time.sleep(self.delay)
        self.alias["live"] = self.previous.pop()
        return self.alias["live"]


def last_stage(workdir, index: FakeIndex) -> RolloutState:
    """A rollout at its 100 % stage, started 4 hours ago, one hour per earlier stage."""
    now = datetime.now(UTC)
    history = [
        {"time": (now - timedelta(hours=4 - s)).isoformat(), "action": "start" if s == 0 else "advance", "to_stage": s}
        for s in range(4)
    ]
    state = RolloutState("exp", "t", CHAMPION, CHALLENGER, (5.0, 25.0, 50.0, 100.0), 3, history=history)
    index.set_alias(CFG.index.challenger_alias, CHALLENGER)
    rollout.save_state(workdir, state)
    return state


def worse_events(seed: int = 0) -> pd.DataFrame:
    """The 50 % stage (2 hours ago) and the 100 % stage (now): the challenger's CTR 5 %, the champion's 20 %."""
    rng = np.random.default_rng(seed)
    rows = []
    for ts, arms in (
        (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1.5), ("champion", "challenger")),
        (pd.Timestamp.now(tz="UTC"), ("challenger",)),
    ):
        for n in range(2000):
            side = arms[n % len(arms)]
            base = {
                "user_id": f"u{n}",
                "item_id": "i",
                "ts": ts,
                "query": "q",
                "arm": side,
                "experiment": "exp",
                "request_id": f"r{n}",
                "position": 0,
            }
            rows.append(base | {"event": "impression"})
            if rng.random() < (0.2 if side == "champion" else 0.05):
                rows.append(base | {"event": "click"})
    return pd.DataFrame(rows, columns=list(EVENT_COLUMNS))


def race(workdir, index: FakeIndex, events: pd.DataFrame) -> dict:
    """advance (forced, no events: 'hold') and enforce (the challenger is worse: 'stop') at the same moment."""
    results: dict = {}
    barrier = threading.Barrier(2)

    def run(name, call):
        barrier.wait()
        try:
            results[name] = call()
        except Exception as e:  # noqa: BLE001  (kept for the assertions: only a refusal is expected)
            results[name] = e

    empty = events.iloc[:0]
    threads = [
        threading.Thread(target=run, args=("advance", lambda: rollout.advance(workdir, empty, CFG, True, index))),
        threading.Thread(target=run, args=("guard", lambda: rollout.enforce(workdir, events, CFG, index))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("round_", range(6))
def test_guard_and_advance_interleaved_leave_a_consistent_state(tmp_path, round_):
    index, events = FakeIndex(delay=0.01 * (round_ % 3 + 1)), worse_events(round_)
    last_stage(tmp_path, index)
    results = race(tmp_path, index, events)
    final = rollout.load_state(tmp_path)
    completed = isinstance(results["advance"], RolloutState) and results["advance"].status == "completed"
    aborted = results["guard"]["status"] == "aborted" and any(h["action"] == "abort" for h in final.history)
    assert completed != aborted, f"exactly one of them acts: {results}"
    assert final.pending is None
    if completed:  # the guard ran after the completion: nothing left to abort
        assert final.status == "completed" and index.live() == CHALLENGER
        assert results["guard"]["status"] == "completed"
        back = rollout.rollback(tmp_path, CFG, index)
        assert back.status == "rolled_back" and index.live() == CHAMPION
    else:  # the guard aborted first: the advance was refused and live never moved
        assert final.status == "aborted" and index.live() == CHAMPION
        assert isinstance(results["advance"], RolloutRefused)
        assert CFG.index.challenger_alias not in index.aliases()
    assert [h["action"] for h in final.history].count("complete") + aborted == 1


def test_a_stale_write_is_refused_by_the_version_check(tmp_path):
    index = FakeIndex()
    state = last_stage(tmp_path, index)
    first = rollout.commit(tmp_path, replace(state, p_value=0.5), state)
    assert first.version == state.version + 1 and rollout.load_state(tmp_path).p_value == 0.5
    with pytest.raises(rollout.RolloutConflict, match="changed"):
        rollout.commit(tmp_path, replace(state, status="aborted"), state)  # decided on the old version
    assert rollout.load_state(tmp_path) == first


def test_a_crash_between_the_alias_move_and_the_state_write_is_finished_by_the_next_guard(tmp_path, monkeypatch):
    index = FakeIndex(delay=0)
    last_stage(tmp_path, index)
    real_commit = rollout.commit

    def crash_after_intent(workdir, state, base):  # the process dies right after the live alias moved
        if state.status == "completed":
            raise KeyboardInterrupt("killed")
        return real_commit(workdir, state, base)

    monkeypatch.setattr(rollout, "commit", crash_after_intent)
    with pytest.raises(KeyboardInterrupt):
        rollout.advance(tmp_path, worse_events().iloc[:0], CFG, force=True, index=index)
    monkeypatch.setattr(rollout, "commit", real_commit)
    stuck = rollout.load_state(tmp_path)
    assert stuck.status == "running" and stuck.pending["action"] == "complete" and index.live() == CHALLENGER
    report = rollout.enforce(tmp_path, worse_events(), CFG, index=index)  # the guard must not abort it now
    assert report["status"] == "completed" and index.live() == CHALLENGER
    done = rollout.load_state(tmp_path)
    assert done.pending is None and [h["action"] for h in done.history][-1] == "complete"
    assert rollout.rollback(tmp_path, CFG, index).status == "rolled_back" and index.live() == CHAMPION


def test_abort_is_refused_while_live_serves_the_challenger(tmp_path):
    index = FakeIndex(delay=0)
    last_stage(tmp_path, index)
    index.promote(CHALLENGER)  # live moved outside the rollout: marking it aborted would misstate what serves
    with pytest.raises(RolloutRefused, match="roll back"):
        rollout.abort(tmp_path, CFG, reason="manual", index=index)
    assert rollout.load_state(tmp_path).status == "running" and rollout.load_state(tmp_path).version == 0
