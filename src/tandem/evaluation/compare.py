"""The report's first table: the model beside every baseline (and the champion) on the same test pairs,
on all pairs and on the warm and cold subsets, each cell a mean with its bootstrap interval.

Pure data in, rows out: `tandem.pipeline.report` (Markdown) and `report_html` render the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("all", "warm", "cold")
ORDER = ("model", "champion", "untrained", "popularity", "cooccurrence", "bm25")


@dataclass(frozen=True)
class Comparison:
    columns: list[tuple[str, str]]  # (metric, subset): the metric key is f"{subset}/{metric}" unless "all"
    rows: list[tuple[str, list[tuple[float | None, list[float] | None]] | str]]  # (name, cells or "n/a: why")
    strongest: str | None  # the best baseline on the primary metric, all pairs

    @property
    def header(self) -> list[str]:
        return [f"{metric} {subset}" for metric, subset in self.columns]


def key(metric: str, subset: str) -> str:
    return metric if subset == "all" else f"{subset}/{metric}"


def comparison(
    metrics: dict[str, dict[str, float]], ci: dict | None, primary: str, unavailable: dict[str, str] | None = None
) -> Comparison:
    """Columns: the primary metric, then MRR@k and nDCG@k, each on all / warm / cold pairs (a subset
    without pairs is left out); rows: the model, the champion, each baseline, then n/a baselines."""
    ci = ci or {}
    present = set().union(*(v.keys() for v in metrics.values())) if metrics else set()
    base = [m for m in present if "/" not in m]
    wanted = [primary] + sorted(m for m in base if m.startswith(("mrr@", "ndcg@")) and m != primary)
    columns = [(m, s) for m in wanted for s in SPLITS if key(m, s) in present]
    names = sorted(metrics, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    rows = [
        (name, [(metrics[name].get(key(m, s)), ci.get(name, {}).get(key(m, s))) for m, s in columns]) for name in names
    ]
    rows += [(name, f"n/a: {why}") for name, why in (unavailable or {}).items()]
    scores = {n: metrics[n].get(primary) for n in names if n not in ("model", "champion")}
    scores = {n: v for n, v in scores.items() if v is not None and v == v}
    strongest = max(scores, key=lambda n: (scores[n], n)) if scores else None
    return Comparison(columns, rows, strongest)
