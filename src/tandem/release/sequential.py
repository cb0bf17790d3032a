"""The rollout's stop rule as an always-valid test: a one-sided mixture SPRT (mSPRT) for a difference of two
click-through rates, valid however often it is looked at (Johari, Pekelis, Walsh 2017, "Always valid inference").

Model (normal approximation): the challenger-minus-champion CTR difference observed so far, `diff`, is
N(theta, var), with var the pooled two-proportion variance; S = diff / var is then a Brownian motion with drift
theta in the information time 1 / var. The test of H0 'theta >= 0' (the challenger is not worse) against H1
'theta < 0' mixes the likelihood ratio exp(theta S - theta^2 / (2 var)) over a half-normal prior on theta < 0 with
scale tau (`rollout.tau`, an absolute CTR difference):

    Lambda = 2 sqrt(var / (var + tau^2)) exp(z^2 / 2) Phi(-z),   z = diff tau / sqrt(var (var + tau^2))

Under H0, Lambda is a non-negative (super)martingale with mean <= 1, so P(Lambda ever reaches 1 / alpha) <= alpha
(Ville's inequality): the always-valid p-value min over looks of min(1, 1 / Lambda) may be checked after every
event. A fixed-horizon z-test re-run at every look has no such bound: its false stops grow with the looks.

Stages: each stage of a rollout is one stratum (both arms served over the same period, at that stage's share);
strata combine by inverse-variance weighting (S and the information add), so a daily CTR cycle or a changed share
does not bias the difference. Everything here is pure numpy on counts: the functions take scalars or arrays.
`stop_rule` is the rollout's verdict on per-arm counts; `simulate` replays many experiments at once: the
calibration that tests/test_rollout_sequential.py and benchmarks/rollout_calibration.py run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from tandem.core.config_release import RolloutConfig

_erfc = np.frompyfunc(math.erfc, 1, 1)


def difference(n0, c0, n1, c1) -> tuple[np.ndarray, np.ndarray]:
    """Challenger minus champion CTR and its pooled variance (the one-look z-test's se squared); var is 0 when
    an arm has no impressions or no arm has a click (no information)."""
    n0, c0, n1, c1 = (np.asarray(x, dtype=float) for x in (n0, c0, n1, c1))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (c0 + c1) / (n0 + n1)
        var = pooled * (1 - pooled) * (1 / n0 + 1 / n1)
        diff = c1 / n1 - c0 / n0
    ok = (n0 > 0) & (n1 > 0) & np.isfinite(var) & (var > 0)
    return np.where(ok, diff, 0.0), np.where(ok, var, 0.0)


def combine(strata: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """One (diff, var) from independent strata, each weighted by its information 1 / var (strata with var 0 carry
    none); (0, 0) when none carries information."""
    score = information = 0.0
    for diff, var in strata:
        if var > 0:
            score, information = score + diff / var, information + 1 / var
    return (score / information, 1 / information) if information > 0 else (0.0, 0.0)


def log_lr(diff, var, tau: float) -> np.ndarray:
    """log Lambda, the one-sided mixture likelihood ratio of 'the challenger is worse' (see the module doc);
    0 where var is 0 (no evidence either way)."""
    diff, var = np.asarray(diff, dtype=float), np.asarray(var, dtype=float)
    tau2 = float(tau) ** 2
    safe = np.where(var > 0, var, 1.0)
    z = diff * math.sqrt(tau2) / np.sqrt(safe * (safe + tau2))
    with np.errstate(divide="ignore"):  # a huge positive z (a much better challenger): Phi(-z) = 0, log = -inf
        log_phi = np.log(0.5 * np.asarray(_erfc(z / math.sqrt(2)), dtype=float))
    out = math.log(2) + 0.5 * np.log(safe / (safe + tau2)) + z**2 / 2 + log_phi
    return np.where(var > 0, out, 0.0)


def p_value(diff, var, tau: float) -> np.ndarray:
    """This look's always-valid p-value min(1, 1 / Lambda); keep the running minimum over looks."""
    return np.minimum(1.0, np.exp(-np.clip(log_lr(diff, var, tau), -700, 700)))


def fixed_p_value(diff, var) -> np.ndarray:
    """The one-look, fixed-horizon one-sided z-test p-value Phi(diff / se): valid once, not under repeated looks."""
    diff, var = np.asarray(diff, dtype=float), np.asarray(var, dtype=float)
    z = np.where(var > 0, diff / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
    return 0.5 * np.asarray(_erfc(-z / math.sqrt(2)), dtype=float)


def simulate(
    ctr_champion: float,
    ctr_challenger: float,
    impressions_per_look: int,
    share: float = 50.0,
    looks: int = 7 * 24,
    experiments: int = 2000,
    alpha: float = 0.05,
    tau: float = 0.01,
    min_impressions: int = 500,
    seed: int = 0,
) -> dict:
    """Replay `experiments` rollouts at one stage: each look adds `impressions_per_look` impressions, `share` %
    of them to the challenger, clicks drawn at each arm's CTR; the rule is judged at every look once each arm has
    `min_impressions`. Returns the fraction of experiments stopped by the mSPRT (p <= alpha at some look) and by
    the naive rule (the fixed-horizon z-test p < alpha at some look), and the mSPRT's median look of stopping."""
    rng = np.random.default_rng(seed)
    n1 = rng.binomial(impressions_per_look, share / 100, size=(experiments, looks))
    n0 = impressions_per_look - n1
    c0, c1 = rng.binomial(n0, ctr_champion), rng.binomial(n1, ctr_challenger)
    n0, c0, n1, c1 = (np.cumsum(x, axis=1) for x in (n0, c0, n1, c1))
    diff, var = difference(n0, c0, n1, c1)
    judged = (np.minimum(n0, n1) >= min_impressions) & (var > 0)
    msprt = judged & (p_value(diff, var, tau) <= alpha)
    naive = judged & (fixed_p_value(diff, var) < alpha)
    stopped = msprt.any(axis=1)
    first = np.argmax(msprt, axis=1)[stopped] + 1
    return {
        "experiments": experiments,
        "looks": looks,
        "msprt_stop_rate": float(stopped.mean()),
        "naive_stop_rate": float(naive.any(axis=1).mean()),
        "naive_last_look_stop_rate": float(naive[:, -1].mean()),  # the z-test at the horizon only: about alpha
        "msprt_median_stop_look": float(np.median(first)) if first.size else None,
    }


def _nc(side: dict) -> tuple[int, int]:
    n = int(side["impressions"])
    return n, min(int(side["clicks"]), n)  # clicks without a logged impression do not count


def stop_rule(
    champion: dict,
    challenger: dict,
    cfg: RolloutConfig = RolloutConfig(),
    earlier: tuple[tuple[dict, dict], ...] | list = (),
    p_floor: float = 1.0,
) -> dict:
    """'stop' | 'hold' | 'ok' with the evidence. The test (tandem.release.sequential) is the one-sided mSPRT of
    'the challenger's CTR is below the champion's' over this stage's counts and the `earlier` stages' (champion,
    challenger) counts, each stage a stratum once both its arms have min_impressions. `p_value` is always valid:
    the minimum of `p_floor` (the looks before, kept in the state) and this look's. 'stop' when p_value <= alpha;
    else 'hold' while an arm of this stage lacks min_impressions or its relative CTR drop exceeds max_ctr_drop;
    else 'ok'. `z` and `fixed_p_value` are this stage's one-look z-test, shown for reference: not valid under
    repeated looks, never used to stop."""

    def enough(pair: tuple[dict, dict]) -> bool:
        return min(pair[0]["impressions"], pair[1]["impressions"]) >= cfg.min_impressions

    strata = [pair for pair in (*earlier, (champion, challenger)) if enough(pair)]
    diff, var = combine((float(d), float(v)) for d, v in (difference(*_nc(a), *_nc(b)) for a, b in strata))
    p = min(float(p_floor), float(p_value(diff, var, cfg.tau)))
    out = {
        "verdict": "hold",
        "p_value": p,
        "difference": diff if var > 0 else None,  # challenger minus champion CTR over the strata
        "strata": len(strata),
        "z": None,
        "fixed_p_value": None,
        "relative_drop": None,
        "min_impressions": cfg.min_impressions,
    }
    (n0, c0), (n1, c1) = _nc(champion), _nc(challenger)
    stage_ok = enough((champion, challenger))
    ctrs = f"CTR challenger {c1 / n1:.4f} vs champion {c0 / n0:.4f}" if n0 and n1 else "this stage too thin to show"
    if stage_ok:
        d, v = (float(x) for x in difference(n0, c0, n1, c1))
        z = d / math.sqrt(v) if v > 0 else 0.0
        p0, p1 = c0 / n0, c1 / n1
        drop = 1 - p1 / p0 if p0 > 0 else 0.0
        out |= {"z": z, "fixed_p_value": float(fixed_p_value(d, v)), "relative_drop": drop}
    evidence = f"always-valid p={p:.2g} over {len(strata)} stage(s)"
    if p <= cfg.alpha:
        return out | {"verdict": "stop", "reason": f"{ctrs}: significantly lower ({evidence} <= {cfg.alpha})"}
    if not stage_ok:
        why = f"champion has {n0} and challenger {n1} impressions this stage; each arm needs {cfg.min_impressions}"
        return out | {"reason": f"{why} ({evidence})"}
    if out["relative_drop"] > cfg.max_ctr_drop:
        why = f"{ctrs}: {out['relative_drop']:.1%} lower (> {cfg.max_ctr_drop:.0%}) but not significant ({evidence})"
        return out | {"reason": why + "; collect more traffic at this stage"}
    return out | {"verdict": "ok", "reason": f"{ctrs}: no significant drop ({evidence})"}
