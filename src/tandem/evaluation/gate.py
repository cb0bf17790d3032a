"""Promotion gate: the challenger goes live only if it beats the champion on the same test pairs
by more than a margin, significantly (paired bootstrap), no guard metric regresses, and (by
default, a first run too) its primary metric is not below the strongest baseline's by more than
`gate.baseline_tolerance`: a model that loses to the popularity list is not worth serving.

Both models are scored on the same pairs, so the comparison is paired: every bootstrap round
draws one set of resampled units and applies it to both arms, which cancels the per-pair
difficulty that dominates the variance of either mean. The unit is the pair, or the query item
when `groups` says which pairs share one (pairs of one query are not independent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from tandem.core.config_release import GateConfig

LATENCY = "query_latency_ms"


def plural(unit: str) -> str:
    """The resampling unit in plural: pairs, queries."""
    return "queries" if unit == "query" else f"{unit}s"


_MAX_CELLS = 1 << 22  # bootstrap rounds are drawn in chunks of about this many indices (32 MiB)


def paired_bootstrap(
    challenger: np.ndarray,
    champion: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    margin: float = 0.0,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
) -> dict:
    """Paired bootstrap of mean(challenger) - mean(champion) over the pairs where both are not NaN.

    Returns the arms' means, `diff`, its percentile `ci` at `confidence`, and `p_value`: the
    share of bootstrap differences <= `margin`, i.e. the one-sided evidence that the challenger
    is not better by more than the margin (p < alpha exactly when the alpha-quantile of the
    bootstrap differences is above the margin). `groups` (one label per pair, e.g. the query
    item) resamples whole groups instead of pairs; the statistic stays the mean over pairs.
    """
    a, b = np.asarray(challenger, dtype=np.float64), np.asarray(champion, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"challenger and champion need one value per pair each, got shapes {a.shape} and {b.shape}")
    if groups is not None and np.shape(groups) != a.shape:
        raise ValueError(f"groups needs one label per pair ({a.shape[0]}), got shape {np.shape(groups)}")
    if n_boot < 1 or not 0 < confidence < 1:
        raise ValueError(f"n_boot ({n_boot}) must be at least 1 and confidence ({confidence}) in (0, 1)")
    keep = ~(np.isnan(a) | np.isnan(b))  # subset metrics are NaN outside their subset
    a, b = a[keep], b[keep]
    if not a.size:
        raise ValueError("no pair has a value in both arms: nothing to compare")
    if groups is None:  # every pair its own unit
        diff_sum, count = a - b, np.ones_like(a)
    else:
        _, unit = np.unique(np.asarray(groups)[keep], return_inverse=True)
        diff_sum, count = np.bincount(unit, a - b), np.bincount(unit).astype(np.float64)
    units = diff_sum.size
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    step = max(1, _MAX_CELLS // units)
    for start in range(0, n_boot, step):  # one index draw per round, shared by both arms
        idx = rng.integers(0, units, size=(min(step, n_boot - start), units))
        boot[start : start + len(idx)] = diff_sum[idx].sum(axis=1) / count[idx].sum(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    mean_a, mean_b = float(a.mean()), float(b.mean())
    return {
        "challenger": mean_a,
        "champion": mean_b,
        "diff": mean_a - mean_b,
        "ci": [float(lo), float(hi)],
        "confidence": confidence,
        "p_value": float(np.mean(boot <= margin)),
        "margin": margin,
        "n_pairs": int(a.size),
        "n_units": int(units),
        "unit": "pair" if groups is None else "query",
        "n_boot": n_boot,
        "seed": seed,
    }


@dataclass(frozen=True)
class GateDecision:
    decision: str  # "promote" | "reject"
    reason: str
    primary_metric: str
    challenger: float
    champion: float | None  # None when nothing is live yet
    champion_collection: str | None
    evidence: dict = field(default_factory=dict)  # {"primary": {...}, "guards": [{...}, ...]}; {} on a first run

    def to_dict(self) -> dict:
        return asdict(self)


def guard_metrics(primary_metric: str, cfg: GateConfig) -> dict[str, float]:
    """The configured guards with "{k}" replaced by the primary metric's K: {metric: allowed drop}."""
    k = re.search(r"@(\d+)$", primary_metric)
    out = {}
    for metric, tolerance in cfg.guards:
        if "{k}" in metric and not k:
            raise ValueError(f"gate.guards: {metric!r} needs a K but the primary metric {primary_metric!r} has none")
        out[metric.replace("{k}", k.group(1) if k else "")] = tolerance
    return out


def _empty_subset(metric: str, available: Mapping) -> bool:
    """Evaluation leaves out the metrics of an empty subset: e.g. short_query/recall@100 absent, recall@100 there."""
    from tandem.evaluation.evaluate import SUBSETS

    subset, _, base = metric.partition("/")
    return metric not in available and subset in SUBSETS and base in available


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else None


def _guard(metric, tolerance, challenger, champion, cfg, groups) -> dict:
    """One metric guard: ok unless the challenger's mean drops by more than `tolerance` (absolute)."""
    both = ~(np.isnan(np.asarray(challenger, float)) | np.isnan(np.asarray(champion, float)))
    entry = {"metric": metric, "tolerance": tolerance, "n_pairs": int(both.sum())}
    if not both.any():  # an empty subset says nothing either way
        return entry | {"challenger": None, "champion": None, "delta": None, "ok": None, "status": "not evaluated"}
    stats = paired_bootstrap(challenger, champion, cfg.n_boot, cfg.seed, -tolerance, 1 - 2 * cfg.alpha, groups)
    ok = stats["diff"] >= -tolerance
    return entry | {
        "challenger": stats["challenger"],
        "champion": stats["champion"],
        "delta": stats["diff"],
        "ci": stats["ci"],
        "ok": bool(ok),
        "status": "ok" if ok else "failed",
    }


def _latency_guard(latency_ms: Mapping[str, float] | None, max_ratio: float) -> dict:
    new, old = (latency_ms or {}).get("model"), (latency_ms or {}).get("champion")
    entry = {"metric": LATENCY, "tolerance": max_ratio, "kind": "max ratio challenger / champion"}
    if not max_ratio or new is None or old is None or not old > 0:
        status = "off" if not max_ratio else "not evaluated"
        return entry | {"challenger": new, "champion": old, "delta": None, "ok": None, "status": status}
    ratio = float(new) / float(old)
    return entry | {
        "challenger": float(new),
        "champion": float(old),
        "delta": ratio,
        "ok": ratio <= max_ratio,
        "status": "ok" if ratio <= max_ratio else "failed",
    }


def baseline_check(
    primary_metric: str,
    challenger: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, np.ndarray]] | None,
    cfg: GateConfig = GateConfig(),
    groups: np.ndarray | None = None,
) -> dict:
    """The challenger against the strongest baseline on the primary metric (highest mean on the same pairs):
    ok unless its mean is below the baseline's by more than cfg.baseline_tolerance; the paired-bootstrap
    interval of the difference is evidence only. status: ok, failed, off (beat_baselines false) or none."""
    out = {"metric": primary_metric, "tolerance": cfg.baseline_tolerance, "ok": None}
    means = {name: _mean(v[primary_metric]) for name, v in (baselines or {}).items() if primary_metric in v}
    means = {name: m for name, m in means.items() if m is not None}
    if not cfg.beat_baselines or not means:
        return out | {"status": "off" if not cfg.beat_baselines else "no baseline scored"}
    best = max(means, key=lambda name: (means[name], name))
    out |= {"baseline": best, "baselines": means, "baseline_value": means[best]}
    stats = paired_bootstrap(
        challenger[primary_metric], baselines[best][primary_metric], cfg.n_boot, cfg.seed, 0.0, 0.95, groups
    )
    ok = stats["diff"] >= -cfg.baseline_tolerance
    return out | {"challenger": stats["challenger"], "diff": stats["diff"], "ci": stats["ci"], "ok": bool(ok),
                  "status": "ok" if ok else "failed"}  # fmt: skip


def _baseline_problem(check: dict) -> str | None:
    if check.get("ok") is not False:
        return None
    lo, hi = check["ci"]
    return (
        f"loses to the {check['baseline']} baseline on {check['metric']}: {check['challenger']:.4f} vs "
        f"{check['baseline_value']:.4f} (diff {check['diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}]), "
        f"beyond the tolerance {check['tolerance']} (gate.baseline_tolerance; gate.beat_baselines: false turns it off)"
    )


def decide(
    primary_metric: str,
    challenger: Mapping[str, np.ndarray],
    champion: Mapping[str, np.ndarray] | None,
    champion_collection: str | None,
    cfg: GateConfig = GateConfig(),
    latency_ms: Mapping[str, float] | None = None,
    groups: np.ndarray | None = None,
    baselines: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> GateDecision:
    """Challenger vs champion from per-pair metric values on the same test pairs ({metric: array},
    NaN outside a subset metric's subset); `latency_ms` is {"model": ms, "champion": ms} for one
    query; `groups` optionally labels each pair with its query item (see `paired_bootstrap`).

    The first run (no champion) is promoted. Otherwise promote only if the primary metric improves
    by more than cfg.min_improvement with p < cfg.alpha, and no guard fails. Either way, with
    cfg.beat_baselines, a challenger below the strongest of `baselines` ({name: {metric: array}}) on
    the primary metric by more than cfg.baseline_tolerance is rejected.
    """
    available = sorted(challenger)
    if primary_metric not in challenger:
        raise ValueError(f"primary metric {primary_metric!r} not among {available}; fix eval.primary_metric")
    guards = guard_metrics(primary_metric, cfg)
    empty = {m for m in guards if _empty_subset(m, challenger)}  # "not evaluated"; any other absent guard is a typo
    unknown = sorted(set(guards) - set(challenger) - empty)
    if unknown:
        raise ValueError(f"gate.guards: unknown metric(s) {unknown}; available: {available}")
    new = _mean(challenger[primary_metric])
    versus = baseline_check(primary_metric, challenger, baselines, cfg, groups)
    if champion is None:
        lost = _baseline_problem(versus)
        reason = (
            f"no live model yet, but the challenger {lost}" if lost else "no live model yet: the first run is promoted"
        )
        evidence = {"baselines": versus} if versus.get("baseline") else {}
        return GateDecision("reject" if lost else "promote", reason, primary_metric, new, None, None, evidence)
    missing = sorted({primary_metric, *guards} - set(champion) - empty)
    if missing:
        raise ValueError(f"the champion has no per-pair values for {missing}; evaluate both on the same pairs")
    stats = paired_bootstrap(
        challenger[primary_metric],
        champion[primary_metric],
        cfg.n_boot,
        cfg.seed,
        cfg.min_improvement,
        1 - 2 * cfg.alpha,  # the two-sided CI whose lower end is the one-sided test at alpha
        groups,
    )
    stats |= {"metric": primary_metric, "alpha": cfg.alpha}
    nothing = np.full(len(challenger[primary_metric]), np.nan)
    checks = [
        _guard(m, tol, challenger.get(m, nothing), champion.get(m, nothing), cfg, groups) for m, tol in guards.items()
    ]
    checks.append(_latency_guard(latency_ms, cfg.max_latency_ratio))

    improved = stats["diff"] > cfg.min_improvement
    significant = stats["p_value"] < cfg.alpha
    stats["ok"] = improved and significant
    lo, hi = stats["ci"]
    summary = (
        f"{primary_metric} {stats['challenger']:.4f} vs champion {stats['champion']:.4f}: "
        f"diff {stats['diff']:+.4f}, {stats['confidence']:.0%} CI [{lo:+.4f}, {hi:+.4f}], "
        f"{_p(stats)} over {stats['n_units']} {plural(stats['unit'])}"
    )
    problems = []
    if not improved:
        problems.append(f"the diff is not above the margin {cfg.min_improvement}")
    elif not significant:
        problems.append(f"not significant (p >= alpha {cfg.alpha})")
    for g in checks:
        if g["ok"] is False and g["metric"] == LATENCY:
            problems.append(f"guard {LATENCY}: {g['delta']:.2f}x the champion's > {g['tolerance']}x")
        elif g["ok"] is False:
            problems.append(f"guard {g['metric']} dropped {-g['delta']:.4f} > tolerance {g['tolerance']}")
    if _baseline_problem(versus):
        problems.append(_baseline_problem(versus))
    verdict = "reject" if problems else "promote"
    reason = f"{summary}; " + ("; ".join(problems) if problems else "significant improvement, guards hold")
    return GateDecision(
        verdict,
        reason,
        primary_metric,
        stats["challenger"],
        stats["champion"],
        champion_collection,
        {"primary": stats, "guards": checks, "baselines": versus},
    )


def markdown(gate: Mapping) -> list[str]:
    """The report's Gate section: decision, reason, primary comparison and the guard table."""
    lines = ["## Gate", f"**{gate['decision']}** on `{gate['primary_metric']}`: {gate['reason']}."]
    evidence = gate.get("evidence") or {}
    primary = evidence.get("primary")
    if primary:
        lo, hi = primary["ci"]
        lines += [
            "",
            f"- {primary['metric']}: challenger {primary['challenger']:.4f}, champion {primary['champion']:.4f} "
            f"(`{gate['champion_collection']}`), diff {primary['diff']:+.4f}, "
            f"{primary['confidence']:.0%} CI [{lo:+.4f}, {hi:+.4f}], {_p(primary)} "
            f"(margin {primary['margin']}, alpha {primary['alpha']}; paired bootstrap, {primary['n_boot']} rounds "
            f"over {primary['n_units']} {plural(primary['unit'])}, {primary['n_pairs']} pairs)",
        ]
    versus = evidence.get("baselines") or {}
    if versus.get("baseline"):
        lo, hi = versus["ci"]
        lines += [
            "",
            f"- against the strongest baseline ({versus['baseline']}): {versus['metric']} {versus['challenger']:.4f} "
            f"vs {versus['baseline_value']:.4f}, diff {versus['diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], "
            f"tolerance {versus['tolerance']}: {versus['status']}",
        ]
    if evidence.get("guards"):
        lines += ["", "| guard | challenger | champion | delta | tolerance | status |", "|---|---|---|---|---|---|"]
        for g in evidence["guards"]:
            cells = [_cell(g.get(key)) for key in ("challenger", "champion", "delta")]
            limit = f"ratio <= {g['tolerance']}" if g["metric"] == LATENCY else f"drop <= {g['tolerance']}"
            lines.append(f"| {g['metric']} | " + " | ".join(cells) + f" | {limit} | {g['status']} |")
    return lines


def _p(stats: Mapping) -> str:
    """The p-value at the bootstrap's resolution: 0 of n rounds reads p < 1/n."""
    return f"p={stats['p_value']:.4f}" if stats["p_value"] else f"p<{1 / stats['n_boot']:.4f}"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}"
