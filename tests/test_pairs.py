"""Co-occurrence scores on a hand-computed example, and the time split."""

import pandas as pd
import pytest

from tandem.core.config import PairsConfig, SplitConfig
from tandem.pairs.core import popularity
from tandem.pairs.mine import mine_pairs
from tandem.pairs.split import split_pairs

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def _logs(rows):
    return pd.DataFrame(
        [{"user_id": u, "item_id": i, "event": e, "ts": T0 + pd.Timedelta(hours=h)} for u, i, e, h in rows]
    )


# u1 clicked B and C (N=2): A->B, A->C, B->C each +1/2
# u2 clicked only B, twice (N=1): A->B +1, counted once
# u3 clicked C then B (N=2): C->B +1/2 and A->B +1/2 (A viewed before B, after C)
# u4 clicked D 100 h after viewing A: outside the 72 h window, no pair
EXAMPLE = _logs(
    [
        ("u1", "A", "view", 0),
        ("u1", "B", "click", 1),
        ("u1", "C", "click", 2),
        ("u2", "A", "view", 0),
        ("u2", "B", "click", 1),
        ("u2", "B", "click", 5),
        ("u3", "C", "click", 0),
        ("u3", "A", "view", 1),
        ("u3", "B", "click", 2),
        ("u4", "A", "view", 0),
        ("u4", "D", "click", 100),
    ]
)
EXPECTED = {("A", "B"): (2.0, 3), ("A", "C"): (0.5, 1), ("B", "C"): (0.5, 1), ("C", "B"): (0.5, 1)}


def as_dict(pairs):
    return {(r.item_id, r.related_item_id): (round(r.score, 9), r.support) for r in pairs.itertuples()}


def test_scores_match_hand_computation():
    assert as_dict(mine_pairs(EXAMPLE, PairsConfig(window_hours=72))) == EXPECTED


def test_window_extends_to_later_clicks():
    got = as_dict(mine_pairs(EXAMPLE, PairsConfig(window_hours=200)))
    assert got[("A", "D")] == (1.0, 1)  # u4 clicked only D: N=1


def test_thresholds_and_top_t():
    got = as_dict(mine_pairs(EXAMPLE, PairsConfig(low=0.6)))
    assert got == {("A", "B"): (2.0, 3)}
    got = as_dict(mine_pairs(EXAMPLE, PairsConfig(up=1.5)))  # A->B is an outlier now
    assert ("A", "B") not in got and ("A", "C") in got
    got = as_dict(mine_pairs(EXAMPLE, PairsConfig(top_t=1)))
    assert set(got) == {("A", "B"), ("B", "C"), ("C", "B")}


def test_ties_break_on_related_item_id():
    logs = _logs([("u", "A", "view", 0), ("u", "Z", "click", 1), ("u", "M", "click", 1)])
    pairs = mine_pairs(logs, PairsConfig(top_t=1))
    assert pairs[pairs.item_id == "A"].related_item_id.tolist() == ["M"]


def test_split_has_no_leakage():
    rows = []
    for day in range(20):
        for u in range(6):
            rows += [
                (f"u{u}", f"i{day % 5}", "view", day * 24),
                (f"u{u}", f"i{(day + 1) % 5}", "click", day * 24 + 1),
                (f"u{u}", f"j{day}", "click", day * 24 + 2),
            ]
    split = split_pairs(_logs(rows), PairsConfig(low=0.0), SplitConfig(test_fraction=0.25, valid_fraction=0.2))
    train = set(zip(split.train.item_id, split.train.related_item_id))
    valid = set(zip(split.valid.item_id, split.valid.related_item_id))
    test = set(zip(split.test.item_id, split.test.related_item_id))
    assert train and valid and test
    assert not (train | valid) & test and not train & valid
    assert (split.train_logs.ts < split.cutoff).all()
    # j-items of the last days only exist after the cutoff: they can only be in test pairs
    assert any(b.startswith("j1") for _, b in test) and all(int(b[1:]) < 15 for _, b in train | valid if b[0] == "j")


def _daily(days=20):
    """Every day six users view i(d % 5), click i(d + 1 % 5), then j(d), an item new that day."""
    rows = []
    for day in range(days):
        for u in range(6):
            rows += [
                (f"u{u}", f"i{day % 5}", "view", day * 24),
                (f"u{u}", f"i{(day + 1) % 5}", "click", day * 24 + 1),
                (f"u{u}", f"j{day}", "click", day * 24 + 2),
            ]
    return _logs(rows)


def test_time_validation_follows_training_as_the_test_follows_both():
    split = split_pairs(_daily(), PairsConfig(low=0.0), SplitConfig(test_fraction=0.25, valid_fraction=0.2))
    assert split.valid_by == "time" and split.counts()["valid_by"] == "time"
    assert split.train_logs.ts.min() < split.valid_cutoff < split.cutoff
    assert (split.logs_before_validation().ts < split.valid_cutoff).all()
    assert len(split.logs_before_validation()) < len(split.train_logs)
    day = lambda item: int(item[1:])  # noqa: E731  (j-items are named by their day)
    cut_day = (split.valid_cutoff - T0) / pd.Timedelta(days=1)
    train_j = [b for b in split.train.related_item_id if b[0] == "j"]
    valid_j = [b for b in split.valid.related_item_id if b[0] == "j"]
    # training pairs come from before the validation window, validation pairs from inside it: its new items
    # (cold for the model, like the test window's) are validation targets
    assert train_j and valid_j and max(map(day, train_j)) < cut_day <= min(map(day, valid_j))
    assert not set(zip(split.train.item_id, split.train.related_item_id)) & set(
        zip(split.valid.item_id, split.valid.related_item_id)
    )


def test_random_validation_and_the_fallback_of_a_short_log():
    logs = _daily()
    random_cfg = SplitConfig(test_fraction=0.25, valid_fraction=0.2, valid_by="random")
    rnd = split_pairs(logs, PairsConfig(low=0.0), random_cfg)
    assert rnd.valid_by == "random" and rnd.valid_cutoff is None and len(rnd.valid) > 0
    assert rnd.logs_before_validation() is rnd.train_logs
    # by time, the same log trains on fewer pairs (the validation window is mined apart)
    timed = split_pairs(logs, PairsConfig(low=0.0), SplitConfig(test_fraction=0.25, valid_fraction=0.2))
    assert len(timed.train) < len(rnd.train) + len(rnd.valid)
    # one day of training window: its latest share has no co-occurrence, so validation falls back to random
    short = split_pairs(_daily(2), PairsConfig(low=0.0), SplitConfig(test_fraction=0.5, valid_fraction=0.01))
    assert short.valid_by == "random" and short.counts()["valid_by"] == "random"


def test_popularity_counts_distinct_users():
    pop = popularity(EXAMPLE)
    assert pop["B"] == 3 and pop["C"] == 2 and pop["D"] == 1 and "A" not in pop


def test_empty_logs_are_an_error():
    with pytest.raises(ValueError, match="quarantine"):
        split_pairs(EXAMPLE.iloc[0:0])


def test_split_drops_test_pairs_whose_reverse_trained():
    # before the cutoff users go A -> B; after it, B -> A (the reverse) and C -> D (new)
    early = [(f"u{u}", a, e, h) for u in range(3) for a, e, h in (("A", "view", u), ("B", "click", u + 0.5))]
    late = [
        (f"u{u}", a, e, 100 + h)
        for u in range(3)
        for a, e, h in (("B", "view", u), ("A", "click", u + 0.5), ("C", "view", u + 1), ("D", "click", u + 1.5))
    ]
    cfg = (PairsConfig(low=0.0), SplitConfig(test_fraction=0.3, valid_fraction=0.0))
    split = split_pairs(_logs(early + late), *cfg)
    test = set(zip(split.test.item_id, split.test.related_item_id))
    assert ("A", "B") in set(zip(split.train.item_id, split.train.related_item_id))
    assert ("B", "A") not in test and ("C", "D") in test
    assert split.counts()["test_dropped_reverse"] >= 1 and split.counts()["test_dropped_seen"] == 0
    kept = split_pairs(
        _logs(early + late), cfg[0], SplitConfig(test_fraction=0.3, valid_fraction=0.0, drop_reverse=False)
    )
    assert ("B", "A") in set(zip(kept.test.item_id, kept.test.related_item_id))
    assert kept.counts()["test_dropped_reverse"] == 0


def test_a_test_split_emptied_by_dropping_names_the_drop():
    # before the cutoff A -> B, after it only B -> A: its one test pair is a reverse and is dropped
    early = [(f"u{u}", a, e, h) for u in range(3) for a, e, h in (("A", "view", u), ("B", "click", u + 0.5))]
    late = [(f"u{u}", a, e, 100 + h) for u in range(3) for a, e, h in (("B", "view", u), ("A", "click", u + 0.5))]
    split = split_pairs(_logs(early + late), PairsConfig(low=0.0), SplitConfig(test_fraction=0.3, valid_fraction=0.0))
    with pytest.raises(ValueError, match=r"no test pairs left.*0 as the same pair, 1 reversed.*drop_reverse: false"):
        split.require_pairs()
    lonely = [("u9", "C", "view", 100.0)]  # the later part: one view, no co-occurrence
    empty = split_pairs(_logs(early + lonely), PairsConfig(low=0.0), SplitConfig(test_fraction=0.3, valid_fraction=0.0))
    with pytest.raises(ValueError, match="no test pairs: the later part of the log has no co-occurrence"):
        empty.require_pairs()


def test_a_pair_only_the_earlier_part_keeps_trains_and_does_not_test():
    # top_t 1. Before the validation window 3 users go A -> B; in it 6 go A -> C, so over the whole training
    # window A's one partner is C. Time validation trains on the earlier part alone, where it is B: A -> B
    # trains, so A -> B of the test window is dropped as seen although the whole window's cut did not keep it.
    before = [(f"b{u}", a, e, u + h) for u in range(3) for a, e, h in (("A", "view", 0), ("B", "click", 0.5))]
    inside = [(f"c{u}", a, e, 60 + u + h) for u in range(6) for a, e, h in (("A", "view", 0), ("C", "click", 0.5))]
    late = [(f"d{u}", a, e, 100 + u + h) for u in range(3) for a, e, h in (("A", "view", 0), ("B", "click", 0.5))]
    pairs_cfg = PairsConfig(low=0.0, top_t=1)
    split_cfg = SplitConfig(test_fraction=0.3, valid_fraction=0.3, valid_by="time")
    split = split_pairs(_logs(before + inside + late), pairs_cfg, split_cfg)
    assert split.valid_by == "time"
    assert set(zip(split.train.item_id, split.train.related_item_id)) == {("A", "B")}
    assert ("A", "C") in set(zip(split.valid.item_id, split.valid.related_item_id))
    assert split.test.empty and split.counts()["test_dropped_seen"] == 1
