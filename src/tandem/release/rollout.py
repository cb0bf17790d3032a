"""Staged A/B rollout of a challenger: deterministic user bucketing, persisted state, CTR per arm, a stop rule.

    start ──► running at stages[0] % ──advance──► ... ──► running at 100 % ──advance──► completed (live alias moved)
                 └──abort──► aborted (live unchanged)                         completed ──rollback──► rolled_back

The state is one JSON file, WORKDIR/rollout/state.json (tandem.release.rollout_state: changed under a lock with a
version check, replaced atomically); the search service reads it to route each user (`arm`): the champion arm
searches the live alias, the challenger arm the challenger alias. A user's bucket is a hash of the salt and the user
id, so assignment is stable and monotone: a user in the challenger at 5 % stays there at 25 %. Each arm's CTR
(clicks / impressions) is counted per stage, so both arms are compared over the same period; the stop rule
(tandem.release.sequential, see RolloutConfig) is an always-valid test over all stages so far, so looking at it
every hour (the guard) or at every `advance` does not inflate false stops. `status` only reads; `advance` refuses
while the rule says 'stop' (even forced) or 'hold' (unless forced); `enforce` aborts on 'stop' (for a scheduler)
and otherwise stores the lowered always-valid p-value. An action that moves the live alias records its intent in
the state first; `recover` (run by every action and the guard) finishes one that a crash interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.core.config import RunConfig
from tandem.release.rollout_state import (  # noqa: F401  (re-exported: the service and the CLI import them here)
    STATUSES,
    RolloutConflict,
    RolloutRefused,
    RolloutState,
    commit,
    load_state,
    locked,
    save_state,
    state_path,
)
from tandem.release.sequential import stop_rule

if TYPE_CHECKING:
    import pandas as pd

    from tandem.release.index import ItemIndex

log = logging.getLogger(__name__)
ARMS = ("champion", "challenger")


def bucket(user_id: str, salt: str) -> float:
    """A stable pseudo-random position of the user in [0, 100), resolution 1e-4 percent."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000 / 10_000


def arm(state: RolloutState | None, user_id: str) -> str:
    """'challenger' iff a rollout is running and the user's bucket is below its share, else 'champion'."""
    if state is None or state.status != "running":
        return "champion"
    return "challenger" if bucket(str(user_id), state.salt) < state.share else "champion"


# -------------------------------------------------------------------------------------------- evidence
def served_events(workdir: str | Path) -> pd.DataFrame:
    """The search service's logged events (`tandem.data.events.read_events`)."""
    from tandem.data.events import read_events

    return read_events(workdir)


def arm_counts(
    events: pd.DataFrame | None, experiment: str, since: datetime | None = None, until: datetime | None = None
) -> dict[str, dict]:
    """Impressions, clicks and CTR per arm among the experiment's events (at or after `since`, before `until`)."""
    import pandas as pd

    counts = {a: {"impressions": 0, "clicks": 0, "ctr": None} for a in ARMS}
    if events is None or len(events) == 0:
        return counts
    missing = {"event", "arm", "experiment", "ts"} - set(events.columns)
    if missing:
        from tandem.data.events import EVENT_COLUMNS

        raise ValueError(f"served events lack column(s) {', '.join(sorted(missing))}; expected {EVENT_COLUMNS}")
    mine = events[events["experiment"].astype(str) == experiment]
    ts = pd.to_datetime(mine["ts"], utc=True)
    if since is not None:
        mine, ts = mine[ts >= pd.Timestamp(since)], ts[ts >= pd.Timestamp(since)]
    if until is not None:
        mine = mine[ts < pd.Timestamp(until)]
    sizes = mine.groupby(["arm", "event"]).size()
    for a in ARMS:
        n, c = int(sizes.get((a, "impression"), 0)), int(sizes.get((a, "click"), 0))
        counts[a] = {"impressions": n, "clicks": c, "ctr": c / n if n else None}
    return counts


def _stage_windows(state: RolloutState) -> list[tuple[datetime | None, datetime | None]]:
    """[since, until) of each stage up to the current one, from the history (one unbounded window without it)."""
    starts: dict[int, datetime] = {}
    for h in state.history:
        if h.get("action") in ("start", "advance") and h.get("to_stage") is not None:
            starts[int(h["to_stage"])] = datetime.fromisoformat(h["time"])
    times = [starts[s] for s in sorted(starts) if s <= state.stage]
    if not times:
        return [(None, None)]
    return list(zip(times, [*times[1:], None]))


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
    windows = _stage_windows(state)
    per_stage = [arm_counts(events, state.experiment, since, until) for since, until in windows]
    arms = per_stage[-1]
    if state.share >= 100:  # nobody is left in the champion arm: compare with its earlier stages
        arms["champion"] = totals["champion"] | {"window": "earlier stages"}
    earlier = [(a["champion"], a["challenger"]) for a in per_stage[:-1]]
    verdict = stop_rule(arms["champion"], arms["challenger"], cfg.rollout, earlier, p_floor=state.p_value)
    since = windows[-1][0]
    return report | {
        "stage_since": since.isoformat() if since else None,
        "arms": arms,
        "stop_rule": verdict,
        "can_advance": verdict["verdict"] == "ok" and state.pending is None,
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


def _finish(workdir: str | Path, state: RolloutState, cfg: RunConfig, index: ItemIndex | None) -> RolloutState:
    """Carry out the committed intent `state.pending` (idempotent: the alias moves only if it has not yet), then
    commit its outcome with the intent as the history entry."""
    entry = dict(state.pending or {})
    with _index(cfg, workdir, index) as idx:
        if entry.get("action") == "complete":
            if idx.live() != state.challenger:
                idx.promote(state.challenger)
            done = commit(
                workdir, replace(state, status="completed", pending=None, history=[*state.history, entry]), state
            )
            if cfg.index.challenger_alias in idx.aliases():  # everyone now goes to the live alias
                idx.drop_alias(cfg.index.challenger_alias)
            return done
        if entry.get("action") == "rollback":
            live = idx.live()
            restored = idx.rollback() if live == state.challenger else live
            if restored != state.champion:
                log.warning("rollback restored %s, the rollout's champion was %s", restored, state.champion)
            entry["restored"] = restored
            return commit(
                workdir, replace(state, status="rolled_back", pending=None, history=[*state.history, entry]), state
            )
    raise ValueError(f"rollout {state.experiment}: unknown pending action {entry.get('action')!r} in the state")


def recover(workdir: str | Path, cfg: RunConfig = RunConfig(), index: ItemIndex | None = None) -> RolloutState | None:
    """Finish an alias move that a crash interrupted (the state's `pending` intent: 'complete' moves live to the
    challenger if it is not there yet, 'rollback' back to the champion) and return the state; every action and the
    guard run this first. Nothing pending: the state as it is (no Milvus call)."""
    with locked(workdir):
        state = load_state(workdir)
        if state is None or state.pending is None:
            return state
        log.warning("rollout %s: finishing the interrupted %s", state.experiment, state.pending.get("action"))
        return _finish(workdir, state, cfg, index)


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
    with locked(workdir):
        current = recover(workdir, cfg, index)
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
                raise ValueError(
                    f"champion {champion!r} is not the live collection ({idx.live()}); roll out against it"
                )
            idx.set_alias(cfg.index.challenger_alias, challenger)  # before the state: routed users find it
            experiment = f"{challenger}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
            state = RolloutState(experiment, cfg.rollout.salt or experiment, champion, challenger, cfg.rollout.stages)
            state = commit(workdir, replace(state, history=[_entry("start", state, 0, share=state.share)]), current)
    log.info("rollout %s: %s at %.0f%% against %s", experiment, challenger, state.share, champion)
    return state


def advance(
    workdir: str | Path,
    events: pd.DataFrame | None = None,
    cfg: RunConfig = RunConfig(),
    force: bool = False,
    index: ItemIndex | None = None,
) -> RolloutState:
    """Next stage; at the last one, complete: the live alias moves to the challenger (intent first, see
    `recover`). Refused when the stop rule says 'stop' (abort instead), and while it says 'hold' unless `force`."""
    if events is None:
        events = served_events(workdir)  # read before taking the lock: a large log takes a while
    with locked(workdir):
        recover(workdir, cfg, index)
        state = _running(workdir, "advance")
        report = status(workdir, events, cfg)
        verdict = report["stop_rule"]
        if verdict["verdict"] == "stop":
            raise RolloutRefused(f"stop rule fired: {verdict['reason']}; abort the rollout (`tandem rollout abort`)")
        if verdict["verdict"] == "hold" and not force:
            raise RolloutRefused(f"not enough evidence to advance: {verdict['reason']} (or advance with --force)")
        evidence = {"arms": report["arms"], "stop_rule": verdict, "forced": verdict["verdict"] != "ok"}
        looked = replace(state, p_value=verdict["p_value"])
        if state.stage + 1 < len(state.stages):
            nxt = state.stage + 1
            entry = _entry("advance", state, nxt, **evidence)
            state = commit(workdir, replace(looked, stage=nxt, history=[*state.history, entry]), state)
            log.info("rollout %s: challenger at %.0f%%", state.experiment, state.share)
            return state
        intent = commit(workdir, replace(looked, pending=_entry("complete", state, None, **evidence)), state)
        done = _finish(workdir, intent, cfg, index)
    log.info("rollout %s completed: %s is live", state.experiment, state.challenger)
    return done


def abort(
    workdir: str | Path,
    cfg: RunConfig = RunConfig(),
    reason: str = "",
    index: ItemIndex | None = None,
    p_value: float | None = None,
) -> RolloutState:
    """Stop the experiment: every user back on the champion, the challenger alias dropped, live unchanged.
    Aborting an aborted rollout again only finishes the clean-up (an alias left by a failed drop). Refused once
    live serves the challenger (a completion, finished first if a crash interrupted it): roll back instead."""
    with locked(workdir):
        state = recover(workdir, cfg, index)
        if state is None or state.status != "aborted":
            state = _running(workdir, "abort")
        with _index(cfg, workdir, index) as idx:
            if state.status == "running":
                if idx.live() == state.challenger:
                    raise RolloutRefused(
                        f"cannot abort: live already serves the challenger {state.challenger}; roll back"
                    )
                entry = _entry("abort", state, None, reason=reason)
                aborted = replace(state, status="aborted", history=[*state.history, entry])
                if p_value is not None:
                    aborted = replace(aborted, p_value=min(state.p_value, p_value))
                state = commit(workdir, aborted, state)  # first stop routing, then drop the challenger's alias
            if cfg.index.challenger_alias in idx.aliases():
                idx.drop_alias(cfg.index.challenger_alias)
    log.info("rollout %s aborted%s", state.experiment, f": {reason}" if reason else "")
    return state


def rollback(workdir: str | Path, cfg: RunConfig = RunConfig(), index: ItemIndex | None = None) -> RolloutState:
    """After completion: the live alias back to the previous champion (ItemIndex.rollback; intent first)."""
    with locked(workdir):
        state = recover(workdir, cfg, index)
        if state is None or state.status != "completed":
            what = "no rollout" if state is None else f"rollout {state.experiment} is {state.status}"
            hint = "; a running one is stopped with abort" if state is not None and state.status == "running" else ""
            raise RolloutRefused(f"cannot roll back: {what}, not completed{hint}")
        with _index(cfg, workdir, index) as idx:
            live = idx.live()
            if live != state.challenger:
                raise RolloutRefused(
                    f"live is {live}, not this rollout's challenger {state.challenger}; not rolling back"
                )
            intent = commit(workdir, replace(state, pending=_entry("rollback", state, None)), state)
            state = _finish(workdir, intent, cfg, idx)
    log.info("rollout %s rolled back: %s is live", state.experiment, state.history[-1]["restored"])
    return state


def enforce(
    workdir: str | Path,
    events: pd.DataFrame | None = None,
    cfg: RunConfig = RunConfig(),
    index: ItemIndex | None = None,
) -> dict:
    """For a scheduler: finish an interrupted action, then abort a running rollout whose stop rule fired, or store
    the look's lower always-valid p-value; returns the status afterwards."""
    if load_state(workdir) is None:
        return {"status": "none"}
    if events is None:
        events = served_events(workdir)
    with locked(workdir):
        state = recover(workdir, cfg, index)
        report = status(workdir, events, cfg)
        rule = report["stop_rule"]
        if report["status"] == "running" and rule["verdict"] == "stop":
            abort(workdir, cfg, reason="stop rule: " + rule["reason"], index=index, p_value=rule["p_value"])
            report = status(workdir, events, cfg)
        elif report["status"] == "running" and rule["p_value"] < state.p_value:
            commit(workdir, replace(state, p_value=rule["p_value"]), state)
            report = status(workdir, events, cfg)
    return report
