"""The rollout's state file, WORKDIR/rollout/state.json, and how it may change (used by tandem.release.rollout).

Every change is a read-modify-write under an exclusive lock (`locked`: fcntl.flock on WORKDIR/rollout/state.lock,
re-entrant within a thread, so the hourly guard and a manual `tandem rollout advance` take turns) and a
compare-and-swap on the state's `version` (`commit`: refused with RolloutConflict when the file no longer holds the
version the change was decided on, e.g. a writer on a file system without flock). The file is written to a temp
file and renamed over the old one: readers (the search service) see the old or the new state, never half.

An action that moves an alias records its intent first (`pending`), then moves the alias, then marks itself done;
a crash in between leaves `pending` set, and the next action or guard run finishes it (rollout.recover).
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tandem.core import layout
from tandem.core.atomic import write_atomic

STATUSES = ("running", "completed", "aborted", "rolled_back")
LOCK_TIMEOUT_S = 120.0  # an alias move on a slow Milvus server; past this the second writer gives up and says why


class RolloutRefused(ValueError):
    """An action that the rollout's state or its evidence does not allow (the message says what to do)."""


class RolloutConflict(RolloutRefused):
    """The state changed between reading it and writing it (another process acted first): re-run the action."""


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
    version: int = 0  # +1 on every committed change (the compare-and-swap of `commit`)
    p_value: float = 1.0  # the stop rule's always-valid p-value: the minimum over all looks so far
    pending: dict | None = None  # an alias move decided but not yet confirmed done ({"action": ...})

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


def state_path(workdir: str | Path) -> Path:
    return layout.rollout_state(workdir)


def lock_path(workdir: str | Path) -> Path:
    return state_path(workdir).with_name("state.lock")


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
    """Write the state as given, atomically (core.atomic.write_atomic); no lock, no version check: the
    actions use `commit` under `locked`."""
    return write_atomic(state_path(workdir), json.dumps(state.to_dict(), indent=2))


def commit(workdir: str | Path, state: RolloutState, base: RolloutState | None) -> RolloutState:
    """Write `state` as the successor of `base` (the state the change was decided on; None: no state yet) with
    version base.version + 1; RolloutConflict when the file holds another version. Call it under `locked`."""
    current = load_state(workdir)
    have, expected = (None if s is None else (s.experiment, s.version) for s in (current, base))
    if have != expected:
        raise RolloutConflict(
            f"the rollout state changed while this action ran (expected {expected}, found {have}); "
            "check `tandem rollout status` and run the action again if it still applies"
        )
    new = replace(state, version=(base.version if base is not None else 0) + 1)
    save_state(workdir, new)
    return new


_held = threading.local()


@contextmanager
def locked(workdir: str | Path, timeout: float = LOCK_TIMEOUT_S):
    """Hold the workdir's rollout lock (exclusive across processes and threads; re-entrant in one thread)."""
    path = lock_path(workdir)
    key = str(path.resolve())
    held: set[str] = _held.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform: the version check of `commit` still refuses stale writes
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RolloutConflict(
                        f"another rollout action has held {path} for over {timeout:.0f} s; try again later"
                    ) from None
                time.sleep(0.02)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
