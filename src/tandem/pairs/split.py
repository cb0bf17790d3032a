"""The train / validation split of mined pairs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from tandem.core.config import ContractConfig, PairsConfig, SplitConfig
from tandem.pairs.mine import mine_pairs


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp  # train logs are before it, test logs at or after it
    train_logs: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)  # test pairs removed, by reason
    valid_by: str = "random"  # how the validation pairs were drawn ("time" or "random")
    valid_cutoff: pd.Timestamp | None = None  # valid_by "time": validation pairs are mined from logs at or after it

    def require_pairs(self, queries: dict[str, int] | None = None) -> None:
        """Raise a ValueError that names the fix when the training or the test split is empty; `queries`,
        the query pair counts (`tandem.pairs.queries`), stand in for an empty side (search logs alone)."""
        queries = queries or {}
        no_train = self.train.empty and not queries.get("train")
        if no_train or (self.test.empty and not queries.get("test") and not any(self.dropped.values())):
            name, part = ("train", "earlier") if no_train else ("test", "later")
            raise ValueError(
                f"no {name} pairs: the {part} part of the log has no co-occurrence within the window and "
                "thresholds; widen --window-hours, lower the 'low' threshold, change --test-fraction, or bring "
                "more logs"
            )
        if self.test.empty and not queries.get("test"):
            raise ValueError(
                f"no test pairs left: every pair of the later part of the log was trained already "
                f"({self.dropped.get('seen', 0)} as the same pair, {self.dropped.get('reverse', 0)} reversed); "
                "bring logs with new co-occurrences, change --test-fraction, or set split.drop_reverse: false "
                "in the recipe (reversed pairs then count as test pairs)"
            )

    def all(self) -> pd.DataFrame:
        """All pairs with a `split` column."""
        parts = [
            df.assign(split=name) for name, df in (("train", self.train), ("valid", self.valid), ("test", self.test))
        ]
        return pd.concat(parts, ignore_index=True)

    def counts(self) -> dict[str, int]:
        """Pairs per split, how validation was drawn (and from when), and the test pairs dropped for leakage
        (`test_dropped_seen`: the same pair trained; `test_dropped_reverse`: its reverse A->B trained, B->A in test)."""
        out = {"train": len(self.train), "valid": len(self.valid), "test": len(self.test), "valid_by": self.valid_by,
               "valid_cutoff": None if self.valid_cutoff is None else self.valid_cutoff.isoformat()}  # fmt: skip
        return out | {f"test_dropped_{why}": n for why, n in self.dropped.items()}

    def logs_before_validation(self) -> pd.DataFrame:
        """The training logs the validation pairs follow (all of them when validation is random): a feature
        chosen on the validation pairs is computed on these, as the test's is on `train_logs`."""
        if self.valid_cutoff is None:
            return self.train_logs
        return self.train_logs[self.train_logs["ts"] < self.valid_cutoff]


def split_pairs(
    logs: pd.DataFrame,
    pairs_cfg: PairsConfig = PairsConfig(),
    split: SplitConfig = SplitConfig(),
    contract: ContractConfig = ContractConfig(),
) -> Split:
    """Mine the earlier and the later part of the log separately (no view/click crosses the cutoff),
    hold out validation pairs (`split.valid_by`: the latest part of the training window, mined on its
    own like the test window, or a random share of the training pairs), and drop test pairs seen in
    the training window or among the training pairs, and (`split.drop_reverse`) those whose reverse was
    seen there: A->B in training makes B->A in test a pair whose evidence the model has already seen
    (co-occurrences are symmetric in practice)."""
    if logs.empty:
        raise ValueError("no usable log rows left after loading; check the quarantine file for the reasons")
    t0, t1 = logs["ts"].min(), logs["ts"].max()
    cutoff = t0 + (t1 - t0) * (1 - split.test_fraction)
    if split.test_days > 0:  # the latest days test, every earlier day (served clicks included) trains
        cutoff = max(t0, t1 - pd.Timedelta(days=split.test_days))
    early, late = logs[logs["ts"] < cutoff], logs[logs["ts"] >= cutoff]
    train_cfg = replace(pairs_cfg, top_t=pairs_cfg.train_top_t or pairs_cfg.top_t)
    train = mine_pairs(early, train_cfg, contract)
    test, dropped = _unseen(mine_pairs(late, pairs_cfg, contract), train, split.drop_reverse)
    valid_by, valid_cutoff = "random", None
    # a daily run (test_days) trains on every earlier interval, the served clicks of the latest included (the
    # closed loop): a validation window would take exactly those, so it validates on a random share instead
    if split.valid_by == "time" and split.valid_fraction > 0 and not early.empty and not split.test_days:
        # validation follows training in time as the test follows both: mined the same way, pairs seen earlier dropped
        t_valid = t0 + (early["ts"].max() - t0) * (1 - split.valid_fraction)
        before, after = early[early["ts"] < t_valid], early[early["ts"] >= t_valid]
        fit = mine_pairs(before, train_cfg, contract)
        valid, _ = _unseen(mine_pairs(after, pairs_cfg, contract), fit, split.drop_reverse)
        if not fit.empty and not valid.empty:  # else (too short a log): the random share below
            train, valid_by, valid_cutoff = fit, "time", t_valid
            # the earlier part alone can keep a pair the whole window's top-t cut: it trains, so it cannot test
            test, more = _unseen(test, fit, split.drop_reverse)
            dropped = {why: n + more[why] for why, n in dropped.items()}
    if valid_by == "random":
        held = np.random.default_rng(split.seed).random(len(train)) < split.valid_fraction
        train, valid = train[~held], train[held]
    return Split(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=test,
        cutoff=cutoff,
        train_logs=early,
        dropped=dropped,
        valid_by=valid_by,
        valid_cutoff=valid_cutoff,
    )


def _unseen(later: pd.DataFrame, earlier: pd.DataFrame, drop_reverse: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """`later` without the pairs `earlier` holds (and, with `drop_reverse`, those whose reverse it holds), counted."""
    seen = pd.MultiIndex.from_arrays([earlier["item_id"], earlier["related_item_id"]])
    forward = pd.MultiIndex.from_arrays([later["item_id"], later["related_item_id"]]).isin(seen)
    backward = pd.MultiIndex.from_arrays([later["related_item_id"], later["item_id"]]).isin(seen)
    backward = backward & ~forward if drop_reverse else np.zeros(len(later), dtype=bool)
    kept = later[~(forward | backward)].reset_index(drop=True)
    return kept, {"seen": int(forward.sum()), "reverse": int(backward.sum())}
