"""What a run's cold Recall@100 is made of: its cold test pairs grouped by target item (issue 16's cold goal).

    .venv/bin/python benchmarks/cold_targets.py RUN_DIR [--new-priors 0.75,0.8,0.9] [--weights 0.5,0.8,1.2]

RUN_DIR is a finished run of item pairs (e.g. /tmp/tandem-quality/movielens/hotelmatch/runs/movielens-hotelmatch
after `benchmarks/quality.py`). The evaluate stage's pairs are rebuilt from the run's files (the same EvalSet),
and its per-pair Recall@100 (evaluate/per_pair.npz) is read per ranker. For each cold target (an item in no
training pair): its test pairs, the distinct users it had before the test window, the days between its first
event and the window's start (negative: first seen inside the test window, a new item), and the pairs each
ranker finds in its top 100. A cold figure resting on a few targets moves by whole targets.

`--new-priors`: a diagnosis on the test pairs, never a way to choose anything: the served vectors ranked again
with every cold item unseen before the window given the popularity term's b = PRIOR (at each of `--weights`),
to show what a constant new-item prior trades between all pairs and the cold ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tandem.core.config import config_from_dict
from tandem.evaluation.evaluate import EvalSet
from tandem.evaluation.metrics import per_pair_metrics
from tandem.evaluation.results import load_per_pair

RANKERS = ("model", "untrained", "popularity", "cooccurrence", "bm25")


def rebuild(run: Path) -> tuple[EvalSet, pd.DataFrame, pd.DataFrame, object]:
    """(the evaluate stage's EvalSet of item pairs, catalogue, logs, recipe) from a finished run's files."""
    cfg = config_from_dict(json.loads((run / "training" / "recipe.json").read_text()))
    summary = json.loads((run / "evaluate.json").read_text())
    if summary.get("counts", {}).get("queries_are", "").startswith("real search"):
        raise SystemExit(f"{run} was evaluated on real search queries: this breakdown is for item pairs")
    catalog, logs = (pd.read_parquet(run / "data" / f"{name}.parquet") for name in ("catalog", "logs"))
    test, train = (pd.read_parquet(run / "pairs" / f"{name}.parquet") for name in ("test", "train"))
    ev = EvalSet.from_pairs(test, catalog, cfg.eval, summary["protocol"], train_pairs=train)
    if ev.counts["pairs_evaluated"] != summary["test_pairs"]:
        raise SystemExit(f"rebuilt {ev.counts['pairs_evaluated']} pairs, the run evaluated {summary['test_pairs']}")
    return ev, catalog, logs, cfg


def breakdown(run: Path) -> str:
    ev, catalog, logs, _ = rebuild(run)
    cutoff = pd.Timestamp(json.loads((run / "pairs.json").read_text())["cutoff"])
    per_pair = load_per_pair(run / "evaluate" / "per_pair.npz")
    cold = ev.subsets["cold"]
    ids = catalog["item_id"].astype(str).to_numpy()
    events = logs.assign(item_id=logs["item_id"].astype(str))
    before = events[events["ts"] < cutoff].groupby("item_id")["user_id"].nunique()
    first = events.groupby("item_id")["ts"].min()
    rankers = [r for r in RANKERS if r in per_pair]
    rows = []
    for target in np.unique(ev.target[cold]):
        mask = cold & (ev.target == target)
        item = ids[target]
        hits = {r: int(np.nansum(per_pair[r]["recall@100"][mask])) for r in rankers}
        age = (cutoff - first[item]).days if item in first.index else None
        rows.append({"target": str(catalog["title"].iloc[target])[:40], "pairs": int(mask.sum()),
                     "users before": int(before.get(item, 0)), "days seen": age, **hits})  # fmt: skip
    table = pd.DataFrame(rows).sort_values("pairs", ascending=False)
    top3 = int(table["pairs"].head(3).sum())
    head = (
        f"{run}: {int(cold.sum())} cold pairs on {len(table)} target items; the 3 largest hold {top3} "
        f"({top3 / max(int(cold.sum()), 1):.0%}); hits in the top 100 per ranker: "
        + ", ".join(f"{r} {int(table[r].sum())}" for r in rankers)
    )
    return head + "\n\n" + table.to_markdown(index=False)


def new_prior_sweep(run: Path, priors: list[float], weights: list[float]) -> str:
    """Recall@100 on all / cold pairs with every cold item unseen before the window at b = prior."""
    from tandem.models import load_model

    ev, catalog, logs, cfg = rebuild(run)
    model = load_model(run / "model")
    term = model.popularity
    if term is None or ev.item_queries(model):
        raise SystemExit("--new-priors needs a query-tower model with its popularity term attached")
    item_vecs = np.load(run / "vectors" / "items.npy")
    queries, pool = ev.encode(model, catalog, item_vecs, progress=False)
    cutoff = pd.Timestamp(json.loads((run / "pairs.json").read_text())["cutoff"])
    seen = set(logs.loc[logs["ts"] < cutoff, "item_id"].astype(str))
    pool_ids = catalog["item_id"].astype(str).to_numpy()[ev.pool]
    new = np.array([i not in term.bias and i not in seen for i in pool_ids])
    b = pool[:, -1] / term.scale - 1.0  # the served b of every pool item

    def score(weight: float, prior: float | None) -> tuple[float, float]:
        a = np.sqrt(weight)
        q, p = queries.copy(), pool.copy()
        q[:, -1], p[:, -1] = a, a * (1.0 + (b if prior is None else np.where(new, prior, b)))
        recall = per_pair_metrics(ev.ranks(lambda batch: q[batch] @ p.T), (100,), 10)["recall@100"]
        return float(recall.mean()), float(recall[ev.subsets["cold"]].mean())

    served = score(term.weight, None)
    lines = [f"served (weight {term.weight:g}): all {served[0]:.4f}, cold {served[1]:.4f}; {int(new.sum())} pool "
             "items unseen before the window", "", "| weight | new-item b | recall@100 all | recall@100 cold |",
             "|---|---|---|---|"]  # fmt: skip
    for weight in weights:
        for prior in priors:
            every, cold = score(weight, prior)
            lines.append(f"| {weight:g} | {prior:g} | {every:.4f} | {cold:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--new-priors", default="", help="comma-separated b for unseen cold items (a diagnosis)")
    parser.add_argument("--weights", default="0.5,0.8,1.2", help="comma-separated popularity weights for the sweep")
    args = parser.parse_args()
    started = time.time()
    print(breakdown(args.run))
    if args.new_priors:
        as_floats = lambda text: [float(x) for x in text.split(",") if x]  # noqa: E731
        print("\n" + new_prior_sweep(args.run, as_floats(args.new_priors), as_floats(args.weights)))
    print(f"\n({time.time() - started:.0f} s; python benchmarks/cold_targets.py {args.run}"
          + (f" --new-priors {args.new_priors} --weights {args.weights})" if args.new_priors else ")"))  # fmt: skip


if __name__ == "__main__":
    main()
