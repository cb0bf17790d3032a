"""benchmarks/quality.py without running the pipeline: recipe overrides, the goal verdicts, the rendered table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(model_all, pop_all, model_cold, untrained_cold, unavailable=None):
    metrics, ci = {}, {}
    for name, (all_, cold) in {"model": (model_all, model_cold), "untrained": (0.1, untrained_cold),
                               "popularity": (pop_all, 0.0)}.items():  # fmt: skip
        metrics[name] = {"recall@100": all_, "cold/recall@100": cold, "warm/recall@100": all_,
                         "mrr@10": all_ / 4, "ndcg@10": all_ / 3}  # fmt: skip
        ci[name] = {k: [v - 0.01, v + 0.01] for k, v in metrics[name].items()}
    return {
        "metrics": metrics, "ci": ci, "unavailable": unavailable or {}, "protocol": "hotelmatch", "pool": "p",
        "counts": {"pairs_evaluated": 10, "queries": 5, "warm": 6, "cold": 4},
        "pairs": {"train": 1, "valid": 1, "test": 1, "test_dropped_seen": 2, "test_dropped_reverse": 3},
        "gate": {"decision": "reject", "reason": "loses"}, "training": {"steps": 3, "final_loss": 1.0},
        "timings_s": {"train": 1.0}, "seconds": 10.0, "items": 5, "events": 9,
    }  # fmt: skip


def test_recipe_overrides_keep_strings_and_refuse_unknown_keys(quality):
    cfg = quality.recipe("hotelmatch", ["train.epochs=2"], max_steps=7)
    assert cfg.train.epochs == 2 and cfg.train.max_steps == 7 and cfg.model.family == "hotelmatch"
    assert quality.recipe("notellm2", [], 0).model.family == "notellm2"
    with pytest.raises(SystemExit, match="no recipe key"):
        quality.recipe("hotelmatch", ["train.epoch=2"], 0)


def test_goals_are_flagged_met_or_missed_with_the_figures(quality):
    won = dict((g, (v, f)) for g, v, f in quality.goals(_result(0.5, 0.4, 0.2, 0.05), _result(0.5, 0.4, 0.1, 0.05)))
    assert won["Recall@100 >= the best baseline (all pairs)"][0] == "met"
    assert won["cold Recall@100 >= 2x the untrained encoder's"] == ("met", "0.2000 vs 0.0500 (4.00x)")
    assert won["cold Recall@100 not below the recipe without popularity parts"][0] == "met"
    lost = dict((g, v) for g, v, _ in quality.goals(_result(0.3, 0.4, 0.06, 0.05), _result(0.3, 0.4, 0.065, 0.05)))
    assert lost["Recall@100 >= the best baseline (all pairs)"] == "missed"
    assert lost["cold Recall@100 >= 2x the untrained encoder's"] == "missed"
    assert lost["cold Recall@100 not below the recipe without popularity parts"] == "missed (inside the 95 % interval)"
    alone = dict((g, v) for g, v, _ in quality.goals(_result(0.3, 0.4, 0.06, 0.05), None))
    assert alone["cold Recall@100 not below the recipe without popularity parts"] == "not measured"


def test_render_has_every_row_the_intervals_and_the_goal_table(quality):
    meta = {"command": "python benchmarks/quality.py", "machine": "m", "time": "t", "code": "abc", "quick": False,
            "slice": "full training", "ablation": "model.popularity_feature=off"}  # fmt: skip
    default = _result(0.5, 0.4, 0.2, 0.05, {"bm25": "no text"})
    text = quality.render({("movielens", "hotelmatch"): [default, _result(0.5, 0.4, 0.1, 0.05)]}, [meta])
    assert "## movielens, hotelmatch" in text and "Command: `python benchmarks/quality.py`" in text
    assert "| trained (default recipe) | 0.5000 [0.490, 0.510] |" in text
    assert "| trained, popularity parts off |" in text and "| bm25 | n/a |" in text and "bm25: n/a, no text" in text
    assert "recall@100 cold" in text and "mrr@10 warm" in text and "ndcg@10 all" in text
    assert "| movielens | hotelmatch | Recall@100 >= the best baseline (all pairs) | **met** |" in text
    assert "2 the same, 3 reversed" in text


def test_the_demo_time_is_judged_on_the_run_that_timed_the_demo_data(quality):
    def meta(command, keep=False):
        return {"command": command, "machine": "m", "time": "t", "code": "abc", "quick": False,
                "slice": "full training", "ablation": "off", "keep_training": keep}  # fmt: skip

    results = {("completejourney", "hotelmatch"): [_result(0.5, 0.4, 0.2, 0.05), None],
               ("completejourney", "notellm2"): [_result(0.5, 0.4, 0.2, 0.05), None]}  # fmt: skip
    demo_run = meta("python benchmarks/quality.py --datasets completejourney --families hotelmatch")
    resumed = meta("python benchmarks/quality.py --keep-training --datasets completejourney --families notellm2", True)
    assert "the demo's run within 15 min | **met**" in quality.render(results, [demo_run, resumed])
    assert "the demo's run within 15 min" not in quality.render(results, [meta(demo_run["command"], True), resumed])
    everything = meta("python benchmarks/quality.py --keep-training", True)  # no --datasets: the demo pair too
    assert "the demo's run within 15 min" not in quality.render(results, [everything])
