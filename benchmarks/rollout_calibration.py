"""Calibration and power of the rollout's stop rule (tandem.release.sequential) by simulation, printed as tables.

    .venv/bin/python benchmarks/rollout_calibration.py [--experiments 4000] [--tau 0.01] [--alpha 0.05]

1. One stage, looked at every hour for a week (168 looks): the false-stop rate at equal CTRs (5 %) of the
   always-valid mSPRT, of the old rule (the fixed-horizon z-test re-run at every look) and of that z-test at the last
   look only; then the power (stopped within the week) and the median hour of stopping at a 5.5 % -> 5.0 % drop.
2. The staged rollout as the guard sees it: 5 / 25 / 50 / 100 % for one day each, looked at hourly, stages combined
   as strata, the 100 % stage against the champion's earlier stages (rollout.status); null and the same drop.
Pure numpy, a few seconds; the numbers in docs/serving.md come from the default run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tandem.release import sequential


def staged(ctr0: float, ctr1: float, per_hour: int, stages, hours: int, experiments: int, alpha, tau, minimum, seed):
    """Fraction of rollouts stopped (and by the naive per-stage z-test at every look) over all stages."""
    rng = np.random.default_rng(seed)
    score = np.zeros(experiments)  # the finished strata: sum of diff / var and of 1 / var
    info = np.zeros(experiments)
    champion_n = np.zeros(experiments)  # the champion's earlier-stage totals (for the 100 % stage)
    champion_c = np.zeros(experiments)
    msprt = np.zeros(experiments, bool)
    naive = np.zeros(experiments, bool)
    for share in stages:
        n1 = np.cumsum(rng.binomial(per_hour, share / 100, size=(experiments, hours)), axis=1)
        c1 = np.cumsum(rng.binomial(np.diff(n1, axis=1, prepend=0), ctr1), axis=1)
        if share < 100:
            n0 = np.cumsum(per_hour - np.diff(n1, axis=1, prepend=0), axis=1)
            c0 = np.cumsum(rng.binomial(np.diff(n0, axis=1, prepend=0), ctr0), axis=1)
        else:
            n0, c0 = (np.repeat(x[:, None], hours, axis=1) for x in (champion_n, champion_c))
        diff, var = sequential.difference(n0, c0, n1, c1)
        enough = (np.minimum(n0, n1) >= minimum) & (var > 0)
        inv = np.where(enough, 1 / np.where(var > 0, var, 1), 0.0)
        total_info = info[:, None] + inv
        total_score = score[:, None] + diff * inv
        v = np.where(total_info > 0, 1 / np.where(total_info > 0, total_info, 1), 0.0)  # var 0: no evidence, p 1
        p = sequential.p_value(total_score * v, v, tau)
        msprt |= (p <= alpha).any(axis=1)
        naive |= (enough & (sequential.fixed_p_value(diff, var) < alpha)).any(axis=1)
        score, info = score + diff[:, -1] * inv[:, -1], info + inv[:, -1]
        if share < 100:
            champion_n, champion_c = champion_n + n0[:, -1], champion_c + c0[:, -1]
    return float(msprt.mean()), float(naive.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=4000)
    parser.add_argument("--tau", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--min-impressions", type=int, default=500)
    args = parser.parse_args()
    a, tau, n, m = args.alpha, args.tau, args.experiments, args.min_impressions
    t0 = time.perf_counter()
    print(f"alpha {a}, tau {tau}, {n} simulated experiments per row, min_impressions {m}, 168 hourly looks\n")
    print(
        "| impressions/hour | challenger share | CTR champion -> challenger | mSPRT stops | z-test every look "
        "| z-test at the last look | mSPRT median stop hour |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|")
    for per_hour in (500, 2000):
        for share in (5.0, 25.0, 50.0):
            for c0, c1 in ((0.05, 0.05), (0.055, 0.05)):
                r = sequential.simulate(c0, c1, per_hour, share, 168, n, a, tau, m, seed=per_hour + int(share))
                median = "-" if r["msprt_median_stop_look"] is None else f"{r['msprt_median_stop_look']:.0f}"
                print(
                    f"| {per_hour} | {share:g} % | {c0:.1%} -> {c1:.1%} | {r['msprt_stop_rate']:.3f} "
                    f"| {r['naive_stop_rate']:.3f} | {r['naive_last_look_stop_rate']:.3f} | {median} |"
                )
    print("\nstaged 5/25/50/100 %, 24 hourly looks per stage, strata combined (the guard's view):\n")
    print("| impressions/hour | CTR champion -> challenger | mSPRT stops | per-stage z-test every look |")
    print("|---:|---|---:|---:|")
    for per_hour in (500, 2000):
        for c0, c1 in ((0.05, 0.05), (0.055, 0.05)):
            ms, nv = staged(c0, c1, per_hour, (5.0, 25.0, 50.0, 100.0), 24, n, a, tau, m, seed=per_hour)
            print(f"| {per_hour} | {c0:.1%} -> {c1:.1%} | {ms:.3f} | {nv:.3f} |")
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
