"""Evaluation results on disk and their intervals: per-pair metric arrays (the gate's paired comparison reads
them back) and every ranker's means with percentile-bootstrap intervals from the same resamples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tandem.core.config import EvalConfig
from tandem.evaluation.metrics import bootstrap_cis, mean_metrics


def summarize(
    per_pair: dict[str, dict[str, np.ndarray]], cfg: EvalConfig
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """(metrics {model: {metric: mean}}, ci {model: {metric: [lo, hi]}}); every model's
    intervals come from the same bootstrap resamples of the pairs."""
    metrics = {name: mean_metrics(values) for name, values in per_pair.items()}
    flat = {f"{name}|{metric}": v for name, values in per_pair.items() for metric, v in values.items()}
    bounds = bootstrap_cis(flat, cfg.n_boot, cfg.level, cfg.seed)
    ci: dict[str, dict[str, list[float]]] = {name: {} for name in per_pair}
    for key, (lo, hi) in bounds.items():
        name, metric = key.split("|", 1)
        ci[name][metric] = [lo, hi]
    return metrics, ci


def save_per_pair(path: str | Path, per_pair: dict[str, dict[str, np.ndarray]]) -> Path:
    """One float array per f"{model}|{metric}" in a compressed .npz (NaN outside a subset)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        f"{name}|{metric}": np.asarray(v, dtype=np.float64) for name, d in per_pair.items() for metric, v in d.items()
    }
    with path.open("wb") as f:  # a file object: numpy would add .npz to a name without it
        np.savez_compressed(f, **arrays)
    return path


def load_per_pair(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """{model: {metric: per-pair array}} from `save_per_pair`'s file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no per-pair metrics at {path}; run the evaluate stage first")
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            name, metric = key.split("|", 1)
            out.setdefault(name, {})[metric] = data[key]
    return out
