"""The promotion gate: margin + paired-bootstrap significance + guards, on small synthetic and real rankings."""

import json
from dataclasses import asdict

import numpy as np
import pytest

from tandem.core.config import config_from_dict, load_config
from tandem.core.config_release import GateConfig
from tandem.evaluation import gate as gate_module
from tandem.evaluation.evaluate import exact_top_k
from tandem.evaluation.gate import decide, markdown, paired_bootstrap
from tandem.evaluation.metrics import mrr_at_k, recall_at_k, target_ranks

FAST = GateConfig(n_boot=1000)
PRIMARY, GUARD = "recall@100", "short_query/recall@100"


def arms(n=400, base=0.4, gain=0.2, seed=0, short_every=2):
    """Per-pair hits of a champion and a challenger that wins `gain` of the champion's misses."""
    rng = np.random.default_rng(seed)
    old = (rng.random(n) < base).astype(float)
    new = np.maximum(old, (rng.random(n) < gain).astype(float))
    short = np.arange(n) % short_every == 0

    def metrics(hits):
        return {PRIMARY: hits, GUARD: np.where(short, hits, np.nan), "mrr@10": hits / 2}

    return metrics(new), metrics(old)


def test_first_run_is_promoted():
    new, _ = arms()
    d = decide(PRIMARY, new, None, None, FAST)
    assert d.decision == "promote" and d.champion is None and d.evidence == {}
    assert d.challenger == pytest.approx(new[PRIMARY].mean())


def test_clearly_better_challenger_is_promoted():
    new, old = arms()
    d = decide(PRIMARY, new, old, "tandem_old", FAST, latency_ms={"model": 10.0, "champion": 9.0})
    primary = d.evidence["primary"]
    assert d.decision == "promote", d.reason
    assert primary["diff"] == pytest.approx(new[PRIMARY].mean() - old[PRIMARY].mean())
    assert primary["p_value"] < 0.05 and 0 < primary["ci"][0] < primary["diff"] < primary["ci"][1]
    assert primary["n_pairs"] == 400 and primary["alpha"] == 0.05 and primary["margin"] == 0.0
    guards = {g["metric"]: g for g in d.evidence["guards"]}
    assert guards[GUARD]["ok"] and guards[GUARD]["n_pairs"] == 200 and guards["query_latency_ms"]["ok"]
    json.dumps(d.to_dict(), allow_nan=False)  # the saved summary is strict JSON


def test_equal_or_insignificant_challenger_is_rejected():
    _, old = arms()
    same = decide(PRIMARY, old, old, "tandem_old", FAST)
    assert same.decision == "reject" and same.evidence["primary"]["p_value"] == 1.0
    # 20 pairs won, 18 lost out of 400: better on average, but well within the noise
    hits = np.zeros(400)
    hits[:18] = 1.0
    champion = {PRIMARY: hits, GUARD: hits.copy()}
    challenger = {PRIMARY: np.r_[np.zeros(18), np.ones(20), np.zeros(362)], GUARD: hits.copy()}
    d = decide(PRIMARY, challenger, champion, "tandem_old", FAST)
    assert d.evidence["primary"]["diff"] == pytest.approx(2 / 400)
    assert d.decision == "reject" and "not significant" in d.reason
    assert d.evidence["primary"]["p_value"] > 0.2
    # a lenient margin says "not worse than 1.0 below the champion": an equal challenger passes it significantly
    lenient = decide(PRIMARY, old, old, "tandem_old", GateConfig(n_boot=1000, min_improvement=-1.0))
    assert lenient.decision == "promote" and lenient.evidence["primary"]["p_value"] == 0.0


def test_guard_breach_rejects_and_names_the_guard():
    new, old = arms()
    short = ~np.isnan(new[GUARD])
    new[GUARD] = np.where(short, np.where(np.arange(400) % 4 == 0, 0.0, new[GUARD]), np.nan)  # short queries lose
    assert np.nanmean(new[PRIMARY]) > np.nanmean(old[PRIMARY])
    d = decide(PRIMARY, new, old, "tandem_old", FAST)
    assert d.decision == "reject" and f"guard {GUARD}" in d.reason
    assert d.evidence["primary"]["ok"]  # the primary metric alone would have promoted
    (guard,) = [g for g in d.evidence["guards"] if g["metric"] == GUARD]
    assert guard["status"] == "failed" and guard["delta"] < -0.02
    loose = GateConfig(n_boot=1000, guards=((GUARD, 1.0), ("mrr@10", 0.01)))
    assert decide(PRIMARY, new, old, "tandem_old", loose).decision == "promote"


def test_guard_with_an_empty_subset_is_not_evaluated():
    new, old = arms()
    for m in (new, old):
        m[GUARD] = np.full(400, np.nan)
    d = decide(PRIMARY, new, old, "tandem_old", FAST)
    (guard,) = [g for g in d.evidence["guards"] if g["metric"] == GUARD]
    assert d.decision == "promote" and guard["status"] == "not evaluated" and guard["ok"] is None
    assert "| short_query/recall@100 | - | - | - | drop <= 0.02 | not evaluated |" in markdown(d.to_dict())
    for m in (new, old):  # the evaluation stage leaves an empty subset's metrics out altogether
        del m[GUARD]
    d = decide(PRIMARY, new, old, "tandem_old", FAST)
    assert d.decision == "promote" and d.evidence["guards"][0]["status"] == "not evaluated"


def test_latency_guard():
    new, old = arms()
    slow = decide(PRIMARY, new, old, "tandem_old", FAST, latency_ms={"model": 16.0, "champion": 10.0})
    assert slow.decision == "reject" and "guard query_latency_ms: 1.60x" in slow.reason
    ok = decide(PRIMARY, new, old, "tandem_old", FAST, latency_ms={"model": 14.0, "champion": 10.0})
    assert ok.decision == "promote"
    statuses = {
        "not evaluated": decide(PRIMARY, new, old, "x", FAST, latency_ms={"model": 99.0}),
        "off": decide(PRIMARY, new, old, "x", GateConfig(n_boot=1000, max_latency_ratio=0), {"model": 99.0}),
    }
    for status, d in statuses.items():
        assert d.decision == "promote" and d.evidence["guards"][-1]["status"] == status


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 0.0}, "gate.alpha"),
        ({"alpha": 0.6}, "gate.alpha"),
        ({"n_boot": 10}, "gate.n_boot"),
        ({"max_latency_ratio": -1.0}, "gate.max_latency_ratio"),
        ({"guards": ((GUARD, -0.1),)}, "allowed drop of 'short_query/recall@100' must be >= 0"),
        ({"guards": ((GUARD, "lots"),)}, "'lots' of 'short_query/recall@100' is not a number"),
        ({"guards": (GUARD,)}, "not a \\(metric, allowed drop\\) pair"),
    ],
)
def test_invalid_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GateConfig(**kwargs)


def test_unknown_metrics_are_named():
    new, old = arms()
    with pytest.raises(ValueError, match=r"gate.guards: unknown metric\(s\) \['short_qeury/recall@100'\].*mrr@10"):
        decide(PRIMARY, new, old, "x", GateConfig(guards={"short_qeury/recall@{k}": 0.01}))
    with pytest.raises(ValueError, match="primary metric 'recall@5' not among"):
        decide("recall@5", new, old, "x", FAST)
    with pytest.raises(ValueError, match="has none"):
        decide("mrr", {"mrr": new[PRIMARY]}, None, None, FAST)


def test_guards_from_yaml_and_round_trip(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("gate:\n  alpha: 0.01\n  guards:\n    short_query/recall@{k}: 0.05\n    mrr@10: 0\n")
    cfg = load_config(path)
    assert cfg.gate.guards == (("short_query/recall@{k}", 0.05), ("mrr@10", 0.0)) and cfg.gate.alpha == 0.01
    assert config_from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg  # lists of [metric, drop] come back
    assert gate_module.guard_metrics("recall@1000", cfg.gate) == {"short_query/recall@1000": 0.05, "mrr@10": 0.0}


def _loop_bootstrap(a, b, n_boot, seed, groups=None):
    """Reference: one round at a time, resampling pairs (or whole groups of pairs) with the same draws."""
    keep = ~(np.isnan(a) | np.isnan(b))
    d = (a - b)[keep]
    labels = np.arange(d.size) if groups is None else np.asarray(groups)[keep]
    members = [np.flatnonzero(labels == u) for u in np.unique(labels)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        chosen = np.concatenate([members[j] for j in rng.integers(0, len(members), size=len(members))])
        out.append(d[chosen].mean())
    return np.array(out)


@pytest.mark.parametrize("grouped", [False, True])
def test_paired_bootstrap_matches_a_loop(monkeypatch, grouped):
    rng = np.random.default_rng(1)
    a, b = rng.random(150), rng.random(150) * 0.9
    a[::7] = np.nan  # subset metrics: NaN pairs drop out of both arms
    groups = rng.integers(0, 40, size=150) if grouped else None
    ref = _loop_bootstrap(a, b, 300, seed=3, groups=groups)
    got = paired_bootstrap(a, b, n_boot=300, seed=3, margin=0.05, confidence=0.9, groups=groups)
    assert got["p_value"] == pytest.approx(np.mean(ref <= 0.05))
    assert got["ci"] == pytest.approx(np.quantile(ref, [0.05, 0.95]).tolist())
    keep = ~np.isnan(a)
    assert got["diff"] == pytest.approx(a[keep].mean() - b[keep].mean())
    assert got["n_pairs"] == int((~np.isnan(a)).sum()) and got["unit"] == ("query" if grouped else "pair")
    monkeypatch.setattr(gate_module, "_MAX_CELLS", 500)  # many small chunks: the same draws, the same answer
    assert paired_bootstrap(a, b, n_boot=300, seed=3, margin=0.05, confidence=0.9, groups=groups) == got


def test_paired_bootstrap_ci_covers_the_true_difference():
    """90% CIs on 200 synthetic evaluation sets (true diff 0.1) cover it about 90% of the time, and under
    no difference at all the one-sided test promotes about alpha of the time."""
    rng = np.random.default_rng(7)
    covered = false_promotions = 0
    for _ in range(200):
        difficulty = rng.random(300)  # shared per pair: what pairing cancels
        old = (rng.random(300) < difficulty * 0.8).astype(float)
        new = (rng.random(300) < difficulty * 0.8 + 0.1).astype(float)
        lo, hi = paired_bootstrap(new, old, n_boot=400, seed=int(rng.integers(1 << 30)), confidence=0.9)["ci"]
        covered += lo <= 0.1 <= hi
        twin = (rng.random(300) < difficulty * 0.8).astype(float)
        false_promotions += paired_bootstrap(twin, old, n_boot=400, seed=1)["p_value"] < 0.05
    assert 0.82 <= covered / 200 <= 0.97
    assert false_promotions / 200 <= 0.1


def test_paired_bootstrap_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a, b = rng.random(500), rng.random(500)
    ours = paired_bootstrap(a, b, n_boot=4000, seed=0, confidence=0.9)["ci"]
    theirs = stats.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        paired=True,
        n_resamples=4000,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert ours == pytest.approx([theirs.low, theirs.high], abs=0.006)


def _per_pair(vectors, queries, targets, short):
    """Per-pair metrics from exact rankings, with tandem.evaluation.metrics applied to each pair's rank."""
    ranks = target_ranks(exact_top_k(vectors[queries], vectors, 100, exclude=queries), targets)
    recall = np.array([recall_at_k(ranks[i : i + 1], 10) for i in range(len(ranks))])
    mrr = np.array([mrr_at_k(ranks[i : i + 1], 10) for i in range(len(ranks))])
    return {"recall@10": recall, "mrr@10": mrr, "short_query/recall@10": np.where(short, recall, np.nan)}


def test_a_deliberately_degraded_challenger_is_rejected():
    rng = np.random.default_rng(0)
    n_items, dim, n_pairs = 400, 32, 150
    good = rng.normal(size=(n_items, dim))
    queries = rng.choice(n_items, size=n_pairs, replace=False)
    targets = np.array([rng.choice(np.setdiff1d(np.arange(n_items), queries)) for _ in queries])
    good[targets] = good[queries] + 0.3 * rng.normal(size=(n_pairs, dim))  # related items lie near their query
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    degraded = good + 0.5 * rng.normal(size=good.shape)
    degraded /= np.linalg.norm(degraded, axis=1, keepdims=True)
    short = np.arange(n_pairs) % 3 == 0
    champion, challenger = _per_pair(good, queries, targets, short), _per_pair(degraded, queries, targets, short)
    assert challenger["recall@10"].mean() < champion["recall@10"].mean()
    groups = queries  # one pair per query here; the gate accepts the labels all the same
    d = decide("recall@10", challenger, champion, "tandem_good", FAST, groups=groups)
    assert d.decision == "reject" and d.evidence["primary"]["p_value"] > 0.95
    # the same machinery promotes the good model over the degraded one
    assert decide("recall@10", champion, challenger, "tandem_bad", FAST, groups=groups).decision == "promote"


def test_report_section_shows_the_evidence():
    new, old = arms()
    d = decide(PRIMARY, new, old, "tandem_old", FAST, latency_ms={"model": 30.0, "champion": 10.0}).to_dict()
    text = "\n".join(markdown(d))
    p = d["evidence"]["primary"]
    assert text.startswith("## Gate\n**reject** on `recall@100`")
    assert p["p_value"] == 0 and "p<0.0010" in text  # 0 of 1000 rounds at or below the margin
    assert f"90% CI [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]" in text
    assert "| query_latency_ms | 30.0000 | 10.0000 | 3.0000 | ratio <= 1.5 | failed |" in text
    first = decide(PRIMARY, new, None, None, FAST).to_dict()
    assert markdown(first) == ["## Gate", "**promote** on `recall@100`: no live model yet: the first run is promoted."]


def _run_folder(tmp_path, champion: str | None, per_pair: dict | None, n_pairs: int = 400):
    import pandas as pd

    from tandem.pipeline.stages import RunPaths

    run = RunPaths.of(tmp_path / "work", "r2")
    metrics = {"model": {PRIMARY: 0.5, GUARD: 0.5}} | ({"champion": {PRIMARY: 0.4, GUARD: 0.4}} if champion else {})
    run.save("evaluate", {"metrics": metrics, "champion_collection": champion, "latency_ms": {"model": 1.0}})
    (run / "pairs").mkdir()
    pd.DataFrame({"item_id": [f"q{i // 2}" for i in range(n_pairs)]}).to_parquet(run / "pairs" / "test.parquet")
    if per_pair is not None:  # the evaluation stage's file format: one array per "model|metric"
        (run / "evaluate").mkdir()
        arrays = {f"{name}|{m}": v for name, values in per_pair.items() for m, v in values.items()}
        np.savez(run / "evaluate" / "per_pair.npz", **arrays)
    return run


def test_stage_reads_per_pair_results_and_groups_by_query(tmp_path):
    from tandem.core.config import RunConfig
    from tandem.pipeline import stages

    new, old = arms()
    run = _run_folder(tmp_path, "tandem_old", {"model": new, "champion": old})
    saved = stages.gate(run, RunConfig())
    assert saved == json.loads((run / "gate.json").read_text())
    assert saved["decision"] == "promote" and saved["champion_collection"] == "tandem_old"
    primary = saved["evidence"]["primary"]
    assert primary["unit"] == "query" and primary["n_units"] == 200 and primary["n_pairs"] == 400
    assert saved["evidence"]["guards"][-1]["status"] == "not evaluated"  # no champion latency
    run = _run_folder(tmp_path / "b", "tandem_old", {"model": new, "champion": old}, n_pairs=7)
    assert stages.gate(run, RunConfig())["evidence"]["primary"]["unit"] == "pair"  # pairs do not line up
    labelled = {"model": new, "champion": old, "_pairs": {"query": np.arange(400) // 4}}  # the evaluated pairs' queries
    run = _run_folder(tmp_path / "c", "tandem_old", labelled, n_pairs=7)
    assert stages.gate(run, RunConfig())["evidence"]["primary"]["n_units"] == 100


def test_stage_needs_per_pair_results_once_a_champion_is_live(tmp_path):
    from tandem.core.config import RunConfig
    from tandem.pipeline import stages

    with pytest.raises(ValueError, match="per_pair.npz.*tandem_old; rerun evaluate"):
        stages.gate(_run_folder(tmp_path, "tandem_old", None), RunConfig())
    first = stages.gate(_run_folder(tmp_path / "first", None, None), RunConfig())
    assert first["decision"] == "promote" and first["challenger"] == 0.5 and first["champion"] is None
