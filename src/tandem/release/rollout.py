"""Staged A/B rollout of a challenger: deterministic user bucketing, persisted state, CTR per arm, a stop rule.

    start ──► running at stages[0] % ──advance──► ... ──► running at 100 % ──advance──► completed (live alias moved)
                 └──abort──► aborted (live unchanged)                         completed ──rollback──► rolled_back

The state is one JSON file, WORKDIR/rollout/state.json, replaced atomically; the search service reads it to route
each user (`arm`): the champion arm searches the live alias, the challenger arm the challenger alias. A user's
bucket is a hash of the salt and the user id, so assignment is stable and monotone: a user in the challenger at
5 % stays there at 25 %. Each arm's CTR (clicks / impressions) comes from the served events of the current stage
only, so both arms are compared over the same period (see RolloutConfig for the stop rule). `status` only reads;
`advance` refuses while the stop rule says 'stop' (even forced) or 'hold' (unless forced); `enforce` aborts on
'stop' (for a scheduler). Checking status often ("peeking") inflates false stops, never false advances: the safe
side, since a wrongly stopped challenger only costs a new run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING

from tandem.core import layout
from tandem.core.config import RunConfig
from tandem.core.config_release import RolloutConfig

if TYPE_CHECKING:
    import pandas as pd

    from tandem.release.index import ItemIndex

log = logging.getLogger(__name__)
ARMS = ("champion", "challenger")
STATUSES = ("running", "completed", "aborted", "rolled_back")


class RolloutRefused(ValueError):
    """An action that the rollout's state or its evidence does not allow (the message says what to do)."""


@dataclass(frozen=True)
class RolloutState:
    experiment: str
    salt: str
    champion: str  # collection names
    challenger: str
    stages: tuple[float, ...]
    stage: int = 0  # index into stages
    status: str = "running"
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"rollout status {self.status!r} is not one of {', '.join(STATUSES)}")
        if not 0 <= self.stage < len(self.stages):
            raise ValueError(f"rollout stage {self.stage} is outside stages {tuple(self.stages)}")

    @property
    def share(self) -> float:
        """Percent of users in the challenger arm; 0 unless running."""
        return float(self.stages[self.stage]) if self.status == "running" else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"stages": list(self.stages)}

    @classmethod
    def from_dict(cls, values: dict) -> RolloutState:
        return cls(**(values | {"stages": tuple(float(s) for s in values["stages"]), "history": values["history"]}))


def bucket(user_id: str, salt: str) -> float:
    """A stable pseudo-random position of the user in [0, 100), resolution 1e-4 percent."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 / 10_000


def arm(state: RolloutState | None, user_id: str) -> str:
    """'challenger' iff a rollout is running and the user's bucket is below its share, else 'champion'."""
    if state is None or state.status != "running":
        return "champion"
    return "challenger" if bucket(str(user_id), state.salt) < state.share else "champion"


# -------------------------------------------------------------------------------------------- state file
def state_path(workdir: str | Path) -> Path:
    return layout.rollout_state(workdir)


def load_state(workdir: str | Path) -> RolloutState | None:
    """The persisted rollout, or None when none was ever started in this workdir."""
    path = state_path(workdir)
    if not path.is_file():
        return None
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid rollout state ({e}); restore it or delete it to start over") from e


def save_state(workdir: str | Path, state: RolloutState) -> Path:
    """Write the state atomically (temp file + os.replace): readers see the old or the new file, never half."""
    path = state_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_dict(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -------------------------------------------------------------------------------------------- evidence
def served_events(workdir: str | Path) -> pd.DataFrame:
    """The search service's logged events (`tandem.data.events.read_events`)."""
    from tandem.data.events import read_events

    return read_events(workdir)


def arm_counts(events: pd.DataFrame | None, experiment: str, since: datetime | None = None) -> dict[str, dict]:
    """Impressions, clicks and CTR per arm among the experiment's events (at or after `since`)."""
    import pandas as pd

    counts = {a: {"impressions": 0, "clicks": 0, "ctr": None} for a in ARMS}
    if events is None or len(events) == 0:
        return counts
    missing = {"event", "arm", "experiment", "ts"} - set(events.columns)
    if missing:
        from tandem.data.events import EVENT_COLUMNS

        raise ValueError(f"served events lack column(s) {', '.join(sorted(missing))}; expected {EVENT_COLUMNS}")
    mine = events[events["experiment"].astype(str) == experiment]
    if since is not None:
        mine = mine[pd.to_datetime(mine["ts"], utc=True) >= pd.Timestamp(since)]
    sizes = mine.groupby(["arm", "event"]).size()
    for a in ARMS:
        n, c = int(sizes.get((a, "impression"), 0)), int(sizes.get((a, "click"), 0))
        counts[a] = {"impressions": n, "clicks": c, "ctr": c / n if n else None}
    return counts


def stop_rule(champion: dict, challenger: dict, cfg: RolloutConfig = RolloutConfig()) -> dict:
    """'stop' | 'hold' | 'ok' with the test's evidence (see RolloutConfig): a one-sided two-proportion z-test
    (pooled variance) of H1 'the challenger's CTR is below the champion's'."""
    n0, n1 = champion["impressions"], challenger["impressions"]
    out = {"verdict": "hold", "z": None, "p_value": None, "relative_drop": None, "min_impressions": cfg.min_impressions}
    if min(n0, n1) < cfg.min_impressions:
        why = f"champion has {n0} and challenger {n1} impressions this stage; each arm needs {cfg.min_impressions}"
        return out | {"reason": why}
    c0, c1 = min(champion["clicks"], n0), min(challenger["clicks"], n1)  # clicks without a logged impression
    p0, p1, pooled = c0 / n0, c1 / n1, (c0 + c1) / (n0 + n1)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n0 + 1 / n1))
    z = (p1 - p0) / se if se > 0 else 0.0
    p_value = NormalDist().cdf(z)
    drop = 1 - p1 / p0 if p0 > 0 else 0.0
    out |= {"z": z, "p_value": p_value, "relative_drop": drop}
    ctrs = f"CTR challenger {p1:.4f} vs champion {p0:.4f}"
    if p_value < cfg.alpha:
        return out | {"verdict": "stop", "reason": f"{ctrs}: significantly lower (p={p_value:.2g} < {cfg.alpha})"}
    if drop > cfg.max_ctr_drop:
        why = f"{ctrs}: {drop:.1%} lower (> {cfg.max_ctr_drop:.0%}) but not significant (p={p_value:.2g})"
        return out | {"reason": why + "; collect more traffic at this stage"}
    return out | {"verdict": "ok", "reason": f"{ctrs}: no significant drop (p={p_value:.2g})"}


def _stage_since(state: RolloutState) -> datetime | None:
    starts = [h["time"] for h in state.history if h.get("action") in ("start", "advance")]
    return datetime.fromisoformat(starts[-1]) if starts else None


def status(workdir: str | Path, events: pd.DataFrame | None = None, cfg: RunConfig = RunConfig()) -> dict:
    """The state plus this stage's per-arm impressions/clicks/CTR, the experiment's totals and the stop-rule
    verdict; {"status": "none"} when no rollout exists. `events` default: the served events of `workdir`."""
    state = load_state(workdir)
    if state is None:
        return {"status": "none"}
    if events is None:
        events = served_events(workdir)
    totals = arm_counts(events, state.experiment)
    report = state.to_dict() | {"share": state.share, "totals": totals, "stop_rule": None, "can_advance": False}
    if state.status != "running":
        return report | {"arms": totals}
    since = _stage_since(state)
    arms = arm_counts(events, state.experiment, since)
    if state.share >= 100:  # nobody is left in the champion arm: compare with its earlier stages
        arms["champion"] = totals["champion"] | {"window": "earlier stages"}
    verdict = stop_rule(arms["champion"], arms["challenger"], cfg.rollout)
    since_text = since.isoformat() if since else None
    return report | {
        "stage_since": since_text,
        "arms": arms,
        "stop_rule": verdict,
        "can_advance": verdict["verdict"] == "ok",
    }


# -------------------------------------------------------------------------------------------- actions
@contextmanager
def _index(cfg: RunConfig, workdir: str | Path, index: ItemIndex | None):
    """The caller's open index (Milvus Lite allows one client per database file), else a fresh one."""
    if index is not None:
        yield index
        return
    from tandem.release.index import ItemIndex

    with ItemIndex(cfg.index, workdir) as idx:
        yield idx


def _entry(action: str, state: RolloutState, to_stage: int | None, **evidence) -> dict:
    now = datetime.now(UTC).isoformat()
    return {"time": now, "action": action, "from_stage": state.stage, "to_stage": to_stage} | evidence


def _running(workdir: str | Path, action: str) -> RolloutState:
    state = load_state(workdir)
    if state is None:
        raise RolloutRefused(f"cannot {action}: no rollout in {workdir}; start one with `tandem rollout start`")
    if state.status != "running":
        raise RolloutRefused(f"cannot {action}: rollout {state.experiment} is {state.status}, not running")
    return state


def start(
    workdir: str | Path,
    champion: str,
    challenger: str,
    cfg: RunConfig = RunConfig(),
    index: ItemIndex | None = None,
) -> RolloutState:
    """Route stages[0] % of users to `challenger` (the challenger alias points at it; live stays on `champion`).
    Starting the same pair again while it runs returns the running state (idempotent)."""
    if champion == challenger:
        raise ValueError(f"challenger {challenger!r} is the champion itself; nothing to roll out")
    current = load_state(workdir)
    if current is not None and current.status == "running":
        if (current.champion, current.challenger) == (champion, challenger):
            return current
        raise RolloutRefused(
            f"rollout {current.experiment} of {current.challenger} is running; advance or abort it first"
        )
    if current is not None:  # keep the finished experiment's record before state.json is replaced
        archived = state_path(workdir).parent / "archive" / f"{current.experiment}.json"
        archived.parent.mkdir(parents=True, exist_ok=True)
        archived.write_text(json.dumps(current.to_dict(), indent=2))
    with _index(cfg, workdir, index) as idx:
        for name in (champion, challenger):
            if not idx.client.has_collection(name):
                raise ValueError(f"collection {name!r} does not exist in {idx.uri}; index that run first")
        if idx.live() != champion:
            raise ValueError(f"champion {champion!r} is not the live collection ({idx.live()}); roll out against it")
        idx.set_alias(cfg.index.challenger_alias, challenger)  # before the state: routed users find it
        experiment = f"{challenger}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
        state = RolloutState(experiment, cfg.rollout.salt or experiment, champion, challenger, cfg.rollout.stages)
        state = replace(state, history=[_entry("start", state, 0, share=state.share)])
        save_state(workdir, state)
    log.info("rollout %s: %s at %.0f%% against %s", experiment, challenger, state.share, champion)
    return state


def advance(
    workdir: str | Path,
    events: pd.DataFrame | None = None,
    cfg: RunConfig = RunConfig(),
    force: bool = False,
    index: ItemIndex | None = None,
) -> RolloutState:
    """Next stage; at the last one, complete: the live alias moves to the challenger. Refused when the stop rule
    says 'stop' (abort instead), and while it says 'hold' unless `force`."""
    state = _running(workdir, "advance")
    report = status(workdir, events, cfg)
    verdict = report["stop_rule"]
    if verdict["verdict"] == "stop":
        raise RolloutRefused(f"stop rule fired: {verdict['reason']}; abort the rollout (`tandem rollout abort`)")
    if verdict["verdict"] == "hold" and not force:
        raise RolloutRefused(f"not enough evidence to advance: {verdict['reason']} (or advance with --force)")
    evidence = {"arms": report["arms"], "stop_rule": verdict, "forced": verdict["verdict"] != "ok"}
    if state.stage + 1 < len(state.stages):
        nxt = state.stage + 1
        state = replace(state, stage=nxt, history=[*state.history, _entry("advance", state, nxt, **evidence)])
        save_state(workdir, state)
        log.info("rollout %s: challenger at %.0f%%", state.experiment, state.share)
        return state
    with _index(cfg, workdir, index) as idx:
        if idx.live() != state.challenger:
            idx.promote(state.challenger)
        done = replace(state, status="completed", history=[*state.history, _entry("complete", state, None, **evidence)])
        save_state(workdir, done)  # everyone now goes to the live alias, so the challenger alias can go
        if cfg.index.challenger_alias in idx.aliases():
            idx.drop_alias(cfg.index.challenger_alias)
    log.info("rollout %s completed: %s is live", state.experiment, state.challenger)
    return done


def abort(
    workdir: str | Path, cfg: RunConfig = RunConfig(), reason: str = "", index: ItemIndex | None = None
) -> RolloutState:
    """Stop the experiment: every user back on the champion, the challenger alias dropped, live unchanged.
    Aborting an aborted rollout again only finishes the clean-up (an alias left by a failed drop)."""
    state = load_state(workdir)
    if state is None or state.status != "aborted":
        state = _running(workdir, "abort")
        state = replace(state, status="aborted", history=[*state.history, _entry("abort", state, None, reason=reason)])
        save_state(workdir, state)  # first stop routing, then drop the alias the challenger arm searched
    with _index(cfg, workdir, index) as idx:
        if cfg.index.challenger_alias in idx.aliases():
            idx.drop_alias(cfg.index.challenger_alias)
    log.info("rollout %s aborted%s", state.experiment, f": {reason}" if reason else "")
    return state


def rollback(workdir: str | Path, cfg: RunConfig = RunConfig(), index: ItemIndex | None = None) -> RolloutState:
    """After completion: the live alias back to the previous champion (ItemIndex.rollback)."""
    state = load_state(workdir)
    if state is None or state.status != "completed":
        what = "no rollout" if state is None else f"rollout {state.experiment} is {state.status}"
        hint = "; a running one is stopped with abort" if state is not None and state.status == "running" else ""
        raise RolloutRefused(f"cannot roll back: {what}, not completed{hint}")
    with _index(cfg, workdir, index) as idx:
        live = idx.live()
        if live != state.challenger:
            raise RolloutRefused(f"live is {live}, not this rollout's challenger {state.challenger}; not rolling back")
        restored = idx.rollback()
        if restored != state.champion:
            log.warning("rollback restored %s, the rollout's champion was %s", restored, state.champion)
        entry = _entry("rollback", state, None, restored=restored)
        state = replace(state, status="rolled_back", history=[*state.history, entry])
        save_state(workdir, state)
    log.info("rollout %s rolled back: %s is live", state.experiment, restored)
    return state


def enforce(
    workdir: str | Path,
    events: pd.DataFrame | None = None,
    cfg: RunConfig = RunConfig(),
    index: ItemIndex | None = None,
) -> dict:
    """Abort a running rollout whose stop rule fired (for a scheduler); returns the status afterwards."""
    report = status(workdir, events, cfg)
    if report["status"] == "running" and report["stop_rule"]["verdict"] == "stop":
        abort(workdir, cfg, reason="stop rule: " + report["stop_rule"]["reason"], index=index)
        report = status(workdir, events, cfg)
    return report
